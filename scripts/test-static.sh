#!/usr/bin/env bash
# Checks the static binary and the release tarball (run by scripts/test.sh,
# so by CI; alone: scripts/test-static.sh):
#   1. builds the tarball (scripts/release.sh, which builds the binary);
#   2. the binary has no interpreter and no dynamic section (readelf, file);
#   3. in an empty root (the binary, the model, one recording, /tmp and
#      /dev/{random,urandom}: no /lib, no /etc, no /proc) relay and stt run, stt posts to the relay
#      at `localhost`, bench-stt streams the recording to stt at
#      `localhost`, and `transcribe` reads it; the words come out;
#   4. the tarball unpacked into a temporary root: the links, the example
#      configuration (every key uncommented is accepted), and the units
#      pass `systemd-analyze verify` against that root's binary.
# Needs root for chroot, or unprivileged user namespaces (`unshare -r`).
# TEST_MODEL_DIR: where ggml-base-q8_0.bin is (scripts/test.sh sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
model=${TEST_MODEL_DIR:?set TEST_MODEL_DIR to the folder holding ggml-base-q8_0.bin}/ggml-base-q8_0.bin
[ -f "$model" ] || { echo "missing $model (call-coach model fetch base --quant q8_0)" >&2; exit 1; }
prompt=/usr/share/asterisk/sounds/es/conf-onlyperson.wav
[ -f "$prompt" ] || { echo "missing $prompt: apt-get install asterisk-core-sounds-es-wav" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }

echo "== release tarball (static build)"
bash scripts/release.sh "$work/out" | tail -n 2
tarball=$(ls "$work"/out/call-coach-*-x86_64-linux.tar.gz)
bin=${CARGO_TARGET_DIR:-target/static}/x86_64-unknown-linux-gnu/release/call-coach

echo "== static"
file "$bin"
file "$bin" | grep -q 'statically linked' || fail "file does not call it statically linked"
readelf -l "$bin" | grep -Eq '^ *(INTERP|DYNAMIC)' && fail "it has an interpreter or a dynamic section"
pass "no interpreter, no dynamic section ($(du -h "$bin" | cut -f1))"

echo "== an empty root: relay + stt + bench-stt + transcribe, through localhost"
root=$work/root
mkdir -p "$root/bin" "$root/models" "$root/clips" "$root/tmp" "$root/state" "$root/dev"
cp "$bin" "$root/bin/call-coach"
cp "$model" "$root/models/"
cp "$prompt" "$root/clips/"
find "$root" -mindepth 1 | sed "s|^$root||" | sort | tr '\n' ' '
echo
# Absolute paths: the services start with an empty environment (env -i).
# The devices any process has: /dev/random and /dev/urandom (the websocket
# client's masking keys; systemd's PrivateDevices= gives them too).
chroot=$(command -v chroot)
if [ "$(id -u)" -eq 0 ]; then
  mknod -m 0444 "$root/dev/random" c 1 8
  mknod -m 0444 "$root/dev/urandom" c 1 9
  in_root=("$chroot" "$root")
else
  touch "$root/dev/random" "$root/dev/urandom"
  in_root=("$(command -v unshare)" -rm "$(command -v sh)" -c "mount --bind /dev/random '$root/dev/random' && mount --bind /dev/urandom '$root/dev/urandom' && exec '$chroot' '$root' \"\$@\"" sh)
fi
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rp=$(port) sp=$(port)
env -i RUST_LOG=warn STATE_DIR=/state RELAY_LISTEN="127.0.0.1:$rp" \
  "${in_root[@]}" /bin/call-coach relay > "$work/relay.log" 2>&1 &
pids+=($!)
env -i RUST_LOG=warn STATE_DIR=/state MODEL_DIR=/models MODEL_SIZE=base \
  STT_LISTEN="127.0.0.1:$sp" RELAY_URL="http://localhost:$rp/event" CALL_COACH_STT__CAPACITY=4 \
  "${in_root[@]}" /bin/call-coach stt > "$work/stt.log" 2>&1 &
pids+=($!)
for _ in $(seq 240); do
  curl -fs "http://127.0.0.1:$sp/healthz" >/dev/null 2>&1 && curl -fs "http://127.0.0.1:$rp/healthz" >/dev/null 2>&1 && break
  sleep 0.5
done
curl -fs "http://127.0.0.1:$sp/healthz" >/dev/null || { cat "$work/relay.log" "$work/stt.log" >&2; fail "relay or stt did not come up in the empty root"; }
env -i RUST_LOG=warn "${in_root[@]}" /bin/call-coach bench-stt --url "ws://localhost:$sp" --once \
  --speech-ratio 0.9 --clips /clips/conf-onlyperson.wav --hypotheses /tmp/heard.tsv > "$work/bench.log" 2>&1 ||
  { cat "$work/bench.log" "$work/stt.log" >&2; fail "bench-stt in the empty root"; }
heard=$(cat "$root/tmp/heard.tsv")
echo "stt heard: $heard"
grep -qi persona <<<"$heard" || fail "stt's final lacks \"persona\""
calls=$(curl -fs "http://127.0.0.1:$rp/calls")
echo "relay: $calls"
grep -q '"lastSeq":[1-9]' <<<"$calls" || fail "the relay got no event from stt (RELAY_URL at localhost)"
pass "relay and stt in the empty root, stt -> relay and bench-stt -> stt by the name localhost"
said=$(env -i RUST_LOG=warn MODEL_DIR=/models MODEL_SIZE=base "${in_root[@]}" /bin/call-coach transcribe /clips/conf-onlyperson.wav 2>/dev/null)
echo "transcribe: $said"
grep -qi persona <<<"$said" || fail "transcribe in the empty root"
pass "transcribe in the empty root"

echo "== the tarball unpacked into a root"
unpacked=$work/unpacked
mkdir -p "$unpacked"
tar -tzf "$tarball" | sed 's|^[^/]*/||' | grep -v '/$' | sort | tr '\n' ' '
echo
tar -xzf "$tarball" --strip-components=1 -C "$unpacked"
for service in stt rtp2ws relay orchestrator ari-coach; do
  [ "$(readlink "$unpacked/usr/local/bin/$service")" = call-coach ] || fail "usr/local/bin/$service is not a link to call-coach"
done
"$unpacked/usr/local/bin/relay" --help | head -n 1 | grep -qi relay || fail "the relay link does not run the relay"
[ -f "$unpacked/usr/local/lib/sysusers.d/call-coach.conf" ] || fail "no sysusers file"
[ -f "$unpacked/usr/local/share/call-coach/rules.es.toml" ] || fail "no rules file"
units=("$unpacked"/usr/local/lib/systemd/system/call-coach-*.service)
[ ${#units[@]} -eq 5 ] || fail "${#units[@]} units, not 5"
for u in "${units[@]}"; do
  exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$u")
  [ -x "$unpacked$exec_path" ] || fail "$(basename "$u"): ExecStart=$exec_path is not in the tarball"
done
pass "the units' ExecStart paths are the tarball's binary"
example=$unpacked/etc/call-coach/call-coach.toml.example
keys=$(grep -c '^# [a-z0-9_]* = ' "$example")
# Every key with a default, uncommented, is a valid configuration.
sed -e '/# unset$/d' -e 's/^# \([a-z0-9_]* = \)/\1/' "$example" > "$work/all-keys.toml"
env -i "$bin" check-config --config "$work/all-keys.toml" > "$work/check.log" 2>&1 ||
  { cat "$work/check.log" >&2; fail "the example configuration, uncommented, is refused"; }
from_file=$(grep -c '# TOML file' "$work/check.log" || true)
[ "$from_file" -ge $((keys - $(grep -c '# unset$' "$example"))) ] || fail "only $from_file keys read from the uncommented example of $keys"
pass "the example configuration: $keys keys, every one with a default accepted uncommented ($from_file read from the file)"
if command -v systemd-analyze >/dev/null; then
  # The units' binary is the tarball's: verify resolves ExecStart= in the
  # root. systemd's own units (sysinit.target, ...) come from this host.
  mkdir -p "$unpacked/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$unpacked/usr/lib/systemd/"
  (cd "$unpacked/usr/local/lib/systemd/system" &&
    SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root="$unpacked" call-coach-*.service) > "$work/verify.log" 2>&1 ||
    { cat "$work/verify.log" >&2; fail "systemd-analyze verify --root"; }
  if grep -v '^$' "$work/verify.log"; then fail "systemd-analyze verify printed warnings"; fi
  # And it would notice: without the binary the same check fails.
  mv "$unpacked/usr/local/bin/call-coach" "$work/moved"
  if (cd "$unpacked/usr/local/lib/systemd/system" &&
    SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --root="$unpacked" call-coach-stt.service) >/dev/null 2>&1; then
    fail "systemd-analyze verify --root passed with no binary in the root"
  fi
  mv "$work/moved" "$unpacked/usr/local/bin/call-coach"
  pass "systemd-analyze verify --root of the unpacked units (and it fails without the binary)"
else
  fail "systemd-analyze is missing (apt-get install systemd)"
fi
echo "static: all checks passed"
