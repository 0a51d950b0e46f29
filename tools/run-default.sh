#!/usr/bin/env bash
# `make run`: serve the built-in default (./data/model + ./data/adapters) on 127.0.0.1:8080.
# Override with ADAPTERD_PORT / ADAPTERD_HOST or pass flags through ARGS="...".
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build/adapterd}
PORT=${ADAPTERD_PORT:-8080}
HOST=${ADAPTERD_HOST:-127.0.0.1}
cat <<MSG
Starting adapterd on http://$HOST:$PORT with the built-in default model (data/model)
and two demo adapters (data/adapters/demo-a, data/adapters/demo-b). Try, in another shell:

  curl -s http://$HOST:$PORT/v1/completions -H 'Content-Type: application/json' \\
    -d '{"model": "demo-a", "prompt": "Once upon a time", "max_tokens": 16, "temperature": 0}'

  curl -s http://$HOST:$PORT/v1/models

Stop with Ctrl-C.
MSG
exec "$BIN" serve --host "$HOST" --port "$PORT" --model data/model --model-name tiny-llama \
  --adapters-dir data/adapters --data-dir data ${ARGS:-}
