# make.sh OUT_DIR: the recordings of bench/numbers.es.tsv and OUT_DIR/refs.tsv
set -euo pipefail
# -R: sox dithers the same way each run, so every run makes the same files.
out=$1; mkdir -p "$out"; D=/usr/share/asterisk/sounds/es/digits
sox -R -n -r 8000 -c 1 -b 16 "$out/gap.wav" trim 0 0.15
sox -R -n -r 8000 -c 1 -b 16 "$out/lead.wav" trim 0 0.5
: > "$out/refs.tsv"
grep -v '^#' "$(dirname "$0")/../bench/numbers.es.tsv" | while IFS=$'\t' read -r name text digits; do
  if [ "$text" = - ]; then
    parts=("$out/lead.wav")
    for ((i = 0; i < ${#digits}; i++)); do parts+=("$D/${digits:i:1}.wav" "$out/gap.wav"); done
    sox -R "${parts[@]}" "$out/lead.wav" "$out/$name.wav"
    printf '%s\t%s\n' "$name.wav" "$digits" >> "$out/refs.tsv"
  else
    for voice in es es-419; do
      espeak-ng -v "$voice" -s 150 -w "$out/raw.wav" "$text"
      sox -R "$out/raw.wav" -r 8000 -c 1 -b 16 "$out/say.wav" norm -3
      sox -R "$out/lead.wav" "$out/say.wav" "$out/lead.wav" "$out/$name-$voice.wav"
      printf '%s\t%s\n' "$name-$voice.wav" "$digits" >> "$out/refs.tsv"
    done
  fi
done
rm -f "$out/raw.wav" "$out/say.wav" "$out/gap.wav" "$out/lead.wav"
