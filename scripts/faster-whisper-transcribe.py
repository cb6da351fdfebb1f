"""Transcribes WAV files with faster-whisper, printing `FILE<TAB>text` lines
as `call-coach transcribe` does, and the time taken on stderr: the peer in
scripts/bench-accuracy.sh.

Usage: faster-whisper-transcribe.py MODEL_DIR BEAM THREADS FILE...
"""
import sys
import time

from faster_whisper import WhisperModel


def main():
    model_dir, beam, threads, files = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=threads)
    started = time.monotonic()
    for path in files:
        # The library's defaults (temperature fallback on), the language
        # forced as call-coach forces it, each file on its own.
        segments, _ = model.transcribe(
            path, language="es", beam_size=beam, condition_on_previous_text=False
        )
        text = " ".join(s.text.strip() for s in segments)
        print(f"{path}\t{text}", flush=True)
    print(f"{time.monotonic() - started:.1f}", file=sys.stderr)


if __name__ == "__main__":
    main()
