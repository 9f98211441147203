#!/usr/bin/env bash
# ./run demo: train the small `fashion_mvit` preset (MViTv2 pooling attention) on Fashion-MNIST
# from C++, evaluate it, export a TorchScript model, and predict with that model from C++ and from
# Python.
# (Called by ./run with PYTHON and BUILD set; extra arguments go to `slideformer train`.)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
bin=$BUILD/bin/slideformer
out=$BUILD/demo
rm -rf "$out" && mkdir -p "$out"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
step "model"
"$bin" summary --preset fashion_mvit
step "training (C++)"
start=$(date +%s)
"$bin" train --preset fashion_mvit --out "$out" "$@"
echo "training took $(( $(date +%s) - start )) s"
step "evaluation of the checkpoint"
"$bin" eval --checkpoint "$out/checkpoint.pt"
step "export to TorchScript"
"$bin" export --checkpoint "$out/checkpoint.pt" --out "$out/fashion_mvit_scripted.pt"
step "prediction with the scripted model from C++ (torch::jit::load)"
"$bin" predict --model "$out/fashion_mvit_scripted.pt"
step "prediction with the scripted model from Python (torch.jit.load)"
"$PYTHON" "$ROOT/examples/predict.py" "$BUILD/lib/libslideformer.so" "$out/fashion_mvit_scripted.pt"
echo
echo "outputs in $out: checkpoint.pt, metrics.jsonl, curves.png, fashion_mvit_scripted.pt"
