#!/usr/bin/env bash
# ./run gpu-check, after the build (PYTHON and BUILD come from ./run): on a machine with a GPU,
# the CUDA tests (GoogleTest and pytest; a skip counts as a failure here), compute-sanitizer
# memcheck, racecheck and synccheck on a short CUDA test, then the GPU benchmarks.
set -uo pipefail
: "${PYTHON:?set by ./run}" "${BUILD:?set by ./run}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export SLIDEFORMER_LIBRARY=${SLIDEFORMER_LIBRARY:-$BUILD/lib/libslideformer.so}

log() { printf '\033[1m[gpu-check]\033[0m %s\n' "$*" >&2; }
die() { printf '[gpu-check] error: %s\n' "$*" >&2; exit 1; }

"$PYTHON" - <<PY || die "this machine cannot run the CUDA kernels (see above)"
import sys, torch
torch.ops.load_library("$SLIDEFORMER_LIBRARY")
info = torch.ops.slideformer.build_info()
print(info, "| device:", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
sys.exit(0 if torch.cuda.is_available() and "cuda sm_80;sm_90" in info else 1)
PY

failures=()
log_dir=$BUILD/gpu-check
mkdir -p "$log_dir"

log "CUDA GoogleTest cases"
"$BUILD/bin/slideformer_tests" --gtest_filter='*Cuda*' 2>&1 | tee "$log_dir/gtest.log"
[ "${PIPESTATUS[0]}" = 0 ] || failures+=("gtest")
grep -q '^\[  SKIPPED \]' "$log_dir/gtest.log" && failures+=("gtest skipped CUDA tests on a GPU machine")

log "CUDA pytest cases"
(cd "$ROOT" && "$PYTHON" -m pytest -q -rs tests/python/test_cuda.py tests/python/test_cuda_slide.py \
  -p no:cacheprovider) 2>&1 \
  | tee "$log_dir/pytest.log"
[ "${PIPESTATUS[0]}" = 0 ] || failures+=("pytest")
tail -1 "$log_dir/pytest.log" | grep -q skipped && failures+=("pytest skipped CUDA tests on a GPU machine")

sanitizer=/usr/local/cuda/bin/compute-sanitizer
[ -x "$sanitizer" ] || sanitizer=$(command -v compute-sanitizer || true)
if [ -z "$sanitizer" ]; then
  failures+=("compute-sanitizer not found (/usr/local/cuda/bin or PATH)")
else
  short_test='Shapes/AttentionCudaParity.*/B2H3Nq5Nk7D4Dv6Causal:Shapes/AttentionCudaParity.*/B1H1Nq70Nk40D40Dv72Full:AttentionCuda.BiasBroadcastGradientHasBiasShape'
  # slide_attention: ragged tiles with dilation, short clamp sub-axes, a halo wider than the tile.
  short_test+=':Shapes/SlideAttentionCudaParity.*/B2_H1_6x7_D9_k3_dil2_*:Shapes/SlideAttentionCudaParity.*/B1_H2_7x9_D4_k3_dil3_clamp_params:Shapes/SlideAttentionCudaParity.*/B1_H1_14x15_D2_k13_dil1_*'
  for tool in memcheck racecheck synccheck; do
    log "compute-sanitizer --tool $tool on $short_test"
    "$sanitizer" --tool "$tool" --error-exitcode 1 \
      "$BUILD/bin/slideformer_tests" --gtest_filter="$short_test" >"$log_dir/$tool.log" 2>&1 \
      || failures+=("compute-sanitizer $tool (log: $log_dir/$tool.log)")
    tail -3 "$log_dir/$tool.log"
  done
fi

log "GPU benchmarks"
"$BUILD/bin/bench_cuda" "$@" || failures+=("bench_cuda")
"$BUILD/bin/bench_cuda_slide" "$@" || failures+=("bench_cuda_slide")

if ((${#failures[@]})); then
  printf '[gpu-check] FAILED: %s\n' "${failures[@]}" >&2
  exit 1
fi
log "passed"
