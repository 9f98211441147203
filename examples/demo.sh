#!/usr/bin/env bash
# ./run demo: script a model that calls slideformer::attention in Python, run it from C++ and
# from Python. (Called by ./run with PYTHON and BUILD set.)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
out=$BUILD/demo
mkdir -p "$out"
"$PYTHON" "$ROOT/examples/script_attention_model.py" "$BUILD/lib/libslideformer.so" "$out/attention_model.pt"
echo "C++:"
"$BUILD/bin/run_scripted" "$out/attention_model.pt" 4 1 28 28
"$PYTHON" "$ROOT/examples/script_attention_model.py" "$BUILD/lib/libslideformer.so" "$out/attention_model.pt" --check
