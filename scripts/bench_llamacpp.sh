#!/usr/bin/env bash
# steer against llama.cpp on the same GGUF files, on this machine, alternated (README,
# "Performance"). Builds what it needs once, then runs scripts/bench_llamacpp.py:
#   - llama.cpp as llama-cpp-python, compiled for this CPU (CMAKE_ARGS=-DGGML_NATIVE=ON, ~15 min
#     on 2 cores), with gguf, numpy, in $VENV;
#   - steer's release build;
#   - the XL-shaped random checkpoint (steer random-model --shape xl) and its GGUF files in f32
#     and q8_0, written by the gguf package with llama.cpp's GPT-2 names (scripts/make_gguf.py).
#
#   scripts/bench_llamacpp.sh [--rounds 3] [--tokens 16]
# Env: VENV (default target/llamacpp-venv), MODEL (default bench-models/xl), TYPES (f32,q8_0).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-target/llamacpp-venv}
MODEL=${MODEL:-bench-models/xl}
TYPES=${TYPES:-f32,q8_0}
if ! "$VENV/bin/python" -c 'import llama_cpp, gguf, numpy' 2>/dev/null; then
  python3 -m venv "$VENV"
  echo "building llama-cpp-python for this CPU (about 15 minutes on 2 cores)" >&2
  CMAKE_ARGS="-DGGML_NATIVE=ON" "$VENV/bin/pip" install --quiet llama-cpp-python gguf numpy
fi
cargo build --release --quiet -p steer-cli
[ -f "$MODEL/model.safetensors" ] || target/release/steer random-model --shape xl --out "$MODEL"
files=()
for t in ${TYPES//,/ }; do
  f="$MODEL-gguf/$(basename "$MODEL")-$t.gguf"
  [ -f "$f" ] || "$VENV/bin/python" scripts/make_gguf.py --src "$MODEL" --out "$MODEL-gguf" --types "$t" --with-output
  files+=("$f")
done
exec "$VENV/bin/python" scripts/bench_llamacpp.py --steer target/release/steer "$@" "${files[@]}"
