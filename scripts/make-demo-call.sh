#!/usr/bin/env bash
# Builds demo/call.wav.gz, the demo's sample call, from demo/call.es.txt with
# espeak-ng (Latin-American Spanish, two voices: the agent lower and
# slower, the customer higher) and sox: stereo, 16 kHz G.711 u-law (small
# enough to commit; played as slin16, as ExternalMedia sends), the agent left and the
# customer right, each side silent while the other speaks, as a telephone
# tap delivers them. Needs: apt-get install espeak-ng sox.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v espeak-ng >/dev/null && command -v sox >/dev/null || {
  echo "needs espeak-ng and sox: apt-get install espeak-ng sox" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# 0.6 s of silence before the call, 0.5 s between turns.
sox -n -r 16000 -c 1 -b 16 "$work/gap.wav" trim 0 0.35
sox -n -r 16000 -c 1 -b 16 "$work/lead.wav" trim 0 0.6
agent=("$work/lead.wav"); customer=("$work/lead.wav")
n=0
while IFS= read -r line; do
  case "$line" in
    ''|'#'*) continue ;;
    PAUSE*)
      secs=${line#PAUSE }
      sox -n -r 16000 -c 1 -b 16 "$work/pause$n.wav" trim 0 "$secs"
      agent+=("$work/pause$n.wav"); customer+=("$work/pause$n.wav") ;;
    A:*|C:*)
      text=${line#?: }
      if [ "${line:0:1}" = A ]; then pitch=45; speed=150; else pitch=60; speed=155; fi
      espeak-ng -v es-419 -p "$pitch" -s "$speed" -w "$work/raw$n.wav" "$text"
      sox "$work/raw$n.wav" -r 16000 -c 1 -b 16 "$work/say$n.wav" norm -3
      sox "$work/say$n.wav" -n stat 2>&1 | awk '/Length/ {print $3}' > "$work/len$n"
      sox -n -r 16000 -c 1 -b 16 "$work/quiet$n.wav" trim 0 "$(cat "$work/len$n")"
      if [ "${line:0:1}" = A ]; then
        agent+=("$work/say$n.wav" "$work/gap.wav"); customer+=("$work/quiet$n.wav" "$work/gap.wav")
      else
        customer+=("$work/say$n.wav" "$work/gap.wav"); agent+=("$work/quiet$n.wav" "$work/gap.wav")
      fi ;;
    *) echo "demo/call.es.txt: cannot read: $line" >&2; exit 1 ;;
  esac
  n=$((n + 1))
done < demo/call.es.txt
sox "${agent[@]}" "$work/agent.wav"
sox "${customer[@]}" "$work/customer.wav"
sox -M "$work/agent.wav" "$work/customer.wav" -e u-law -b 8 "$work/call.wav"
soxi "$work/call.wav" | grep -E 'Channels|Sample Rate|Duration'
gzip -9 -n -c "$work/call.wav" > demo/call.wav.gz
