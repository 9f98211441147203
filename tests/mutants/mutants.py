"""Mutation testing of the CUDA kernels (`./run mutants`, docs/cuda.md).

Each mutant is one fault planted in csrc/ops/cuda: a dropped barrier, a wrong shuffle offset or
mask, an off-by-one halo or tile bound, a missing final reduction step, a wrong bias broadcast.
The build this runs in (configured with -DSLIDEFORMER_MUTANT_DIR) compiles the host-executed
kernels of libslideformer_cuda_host from copies of the kernel headers in that directory, which
come first on its include path; the shipped library and every other build never see them. For
each mutant the script writes the faulty copy, rebuilds the library (the tests load it), runs the
emulated suites of the op and restores the copy. A mutant is killed when the tests fail (or crash,
or hang past --timeout) and survives when they pass. Usage:
  mutants.py --source ROOT --planted DIR --build BUILD [--only NAME ...] [--timeout S]
"""
import argparse
import subprocess
import sys
import time
from pathlib import Path

KERNELS = ("attention_kernels.cuh", "slide_attention_kernels.cuh", "launch.h")
# The emulated suites of each op (parameterized ones carry an instantiation prefix).
ATTENTION = "AttentionEmulated*:*/AttentionEmulated*"
SLIDE = "SlideAttentionEmulated*:*/SlideAttentionEmulated*"
BOTH = f"{ATTENTION}:{SLIDE}"

# (name, file, original text, faulty text, occurrence of the original (1-based), tests)
MUTANTS = [
    # Barriers.
    ("stage-barrier-before", "launch.h", "    __syncthreads();\n    stage(c0);", "    stage(c0);", 1, BOTH),
    ("stage-barrier-after", "launch.h", "    stage(c0);\n    __syncthreads();", "    stage(c0);", 1, BOTH),
    ("forward-tile-barrier", "attention_kernels.cuh",
     "    __syncthreads();  // the previous tile's readers of prob_tile are done", "", 1, ATTENTION),
    ("backward-query-tile-barrier", "attention_kernels.cuh",
     "    __syncthreads();  // the previous tile's readers of dlogit_tile are done", "", 1, ATTENTION),
    ("backward-key-value-tile-barrier", "attention_kernels.cuh",
     "    __syncthreads();  // the previous tile's readers of prob_tile and dlogit_tile are done", "", 1,
     ATTENTION),
    ("bias-grad-tile-barrier", "attention_kernels.cuh",
     "          __syncthreads();  // the previous tile's readers of dlogit_tile are done", "", 1, ATTENTION),
    ("bias-grad-publish-barrier", "attention_kernels.cuh",
     "          }\n          __syncthreads();\n", "          }\n", 1, ATTENTION),
    # Shuffles.
    ("row-max-offset-merges-rows", "attention_kernels.cuh",
     "for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {\n    v = math::merged_max",
     "for (int offset = kLanesPerRow; offset > 0; offset /= 2) {\n    v = math::merged_max", 1, ATTENTION),
    ("row-max-missing-last-step", "attention_kernels.cuh",
     "for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {\n    v = math::merged_max",
     "for (int offset = kLanesPerRow / 2; offset > 1; offset /= 2) {\n    v = math::merged_max", 1, ATTENTION),
    ("row-sum-offset-merges-rows", "attention_kernels.cuh",
     "for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {\n    v +=",
     "for (int offset = kLanesPerRow; offset > 0; offset /= 2) {\n    v +=", 1, ATTENTION),
    ("row-sum-missing-last-step", "attention_kernels.cuh",
     "for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {\n    v +=",
     "for (int offset = kLanesPerRow / 2; offset > 1; offset /= 2) {\n    v +=", 1, ATTENTION),
    ("row-max-half-warp-mask", "attention_kernels.cuh",
     "merged_max(v, __shfl_xor_sync(0xffffffffu, v, offset))",
     "merged_max(v, __shfl_xor_sync(0x0000ffffu, v, offset))", 1, ATTENTION),
    # Tile and halo bounds.
    ("stage-column-bound", "attention_kernels.cuh", "(r < rows && col0 + c < dim)", "(r < rows && col0 + c <= dim)",
     1, ATTENTION),
    ("visible-key-bound", "attention_kernels.cuh", "    if (j < visible) {", "    if (j <= visible) {", 1, ATTENTION),
    ("output-last-column", "attention_kernels.cuh",
     "for (int64_t c = lane; c < dv; c += kLanesPerRow) {\n      out_row[c]",
     "for (int64_t c = lane; c < dv - 1; c += kLanesPerRow) {\n      out_row[c]", 1, ATTENTION),
    ("key-value-first-query-tile", "attention_kernels.cuh", "first_query / kTile * kTile;",
     "first_query / kTile * kTile + kTile;", 1, ATTENTION),
    ("bias-grad-last-row", "attention_kernels.cuh", "if (gi < g.rows && gj < g.cols)",
     "if (gi < g.rows - 1 && gj < g.cols)", 1, ATTENTION),
    ("slide-halo-origin", "slide_attention_kernels.cuh", "t.y0 - g.halo, t.x0 - g.halo, g.region_rows()",
     "t.y0 - g.halo + 1, t.x0 - g.halo, g.region_rows()", 1, SLIDE),
    ("slide-halo-rows", "slide_attention_kernels.cuh", "return tile_rows + 2 * halo; }",
     "return tile_rows + 2 * halo - 1; }", 1, SLIDE),
    ("slide-stage-map-bound", "slide_attention_kernels.cuh", "y >= 0 && y < g.height", "y >= 0 && y <= g.height",
     1, SLIDE),
    ("slide-stage-channel-bound", "slide_attention_kernels.cuh", "channel < g.head_dim;",
     "channel <= g.head_dim;", 1, SLIDE),
    ("slide-partials-row-range", "slide_attention_kernels.cuh",
     "const int64_t row_begin = blockIdx.x * total_rows / gridDim.x;",
     "const int64_t row_begin = blockIdx.x * total_rows / gridDim.x + 1;", 1, SLIDE),
    ("slide-reader-slot-transposed", "slide_attention_kernels.cuh",
     "const int64_t slot = ry.slot * g.kernel_size + rx.slot;",
     "const int64_t slot = rx.slot * g.kernel_size + ry.slot;", 1, SLIDE),
    # Missing final reduction steps.
    ("online-softmax-sum-rescale", "attention_kernels.cuh", "row_sum = row_sum * correction + row_group_sum",
     "row_sum = row_sum + row_group_sum", 1, ATTENTION),
    ("bias-grad-summed-rows", "attention_kernels.cuh", "r_end = g.sum_queries ? kTile : gr + 1",
     "r_end = g.sum_queries ? kTile - 1 : gr + 1", 1, ATTENTION),
    ("slide-softmax-sum-last-slot", "slide_attention_kernels.cuh",
     "    for (int64_t n = 0; n < g.k2; ++n) {\n      acc_t& e = probs",
     "    for (int64_t n = 0; n < g.k2 - 1; ++n) {\n      acc_t& e = probs", 1, SLIDE),
    ("slide-partials-last-block", "slide_attention_kernels.cuh", "for (int64_t i = 0; i < blocks; ++i) sum +=",
     "for (int64_t i = 0; i < blocks - 1; ++i) sum +=", 1, SLIDE),
    # Bias broadcasting.
    ("bias-batch-head-swapped", "attention_kernels.cuh",
     "(bh / p.heads) * p.bias_stride[0] + (bh % p.heads) * p.bias_stride[1]",
     "(bh % p.heads) * p.bias_stride[0] + (bh / p.heads) * p.bias_stride[1]", 1, ATTENTION),
    ("bias-key-stride-ignored", "attention_kernels.cuh", "bias_row[j * p.bias_stride[3]]", "bias_row[j]", 1,
     ATTENTION),
    ("slide-key-bias-head", "slide_attention_kernels.cuh", "if (row / g.height % g.heads != h) continue;",
     "if (row % g.heads != h) continue;", 1, SLIDE),
]


def plant(text, original, faulty, occurrence, where):
    parts = text.split(original)
    if len(parts) - 1 < occurrence:
        sys.exit(f"mutants.py: {where}: the original text of the mutant occurs {len(parts) - 1} times, "
                 f"not {occurrence} or more (did the kernel change?): {original!r}")
    return original.join(parts[:occurrence]) + faulty + original.join(parts[occurrence:])


def run_mutant(build, filter_, timeout):
    """'killed' or 'survived', and the first failing test (or why)."""
    built = subprocess.run(["cmake", "--build", str(build), "--target", "slideformer_cuda_host"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        return "killed", "does not compile"
    try:
        tested = subprocess.run([str(build / "bin" / "slideformer_tests"), f"--gtest_filter={filter_}",
                                 "--gtest_fail_fast", "--gtest_brief=1"],
                                capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed", f"hangs (> {timeout} s)"
    if tested.returncode == 0:
        return "survived", ""
    failed = [line.split("]", 1)[1].strip().split()[0] for line in tested.stdout.splitlines()
              if line.startswith("[  FAILED  ]") and "." in line]
    return "killed", failed[0] if failed else f"exit status {tested.returncode}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--planted", type=Path, required=True)
    parser.add_argument("--build", type=Path, required=True)
    parser.add_argument("--only", nargs="*", default=None)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()
    kernels = args.source / "csrc" / "ops" / "cuda"
    planted = args.planted / "ops" / "cuda"
    originals = {name: (kernels / name).read_text() for name in KERNELS}
    mutants = [m for m in MUTANTS if args.only is None or m[0] in args.only]
    # Every faulty text is checked before anything is built.
    faulty = {m[0]: plant(originals[m[1]], m[2], m[3], m[4], f"{m[1]} ({m[0]})") for m in mutants}
    for file in KERNELS:
        (planted / file).write_text(originals[file])
    # Without a fault every suite must pass, or a killed mutant would mean nothing.
    every_suite = ":".join(sorted({suite for m in mutants for suite in m[5].split(":")}))
    outcome, detail = run_mutant(args.build, every_suite, args.timeout)
    if outcome != "survived":
        sys.exit(f"mutants.py: the tests fail without a fault ({detail})")
    rows = []
    try:
        for name, file, _, _, _, filter_ in mutants:
            started = time.monotonic()
            (planted / file).write_text(faulty[name])
            outcome, detail = run_mutant(args.build, filter_, args.timeout)
            (planted / file).write_text(originals[file])
            rows.append((name, file, outcome, detail))
            print(f"{name:34} {outcome:8} {detail} ({time.monotonic() - started:.0f} s)", flush=True)
    finally:
        for file in KERNELS:
            (planted / file).write_text(originals[file])
    killed = sum(outcome == "killed" for _, _, outcome, _ in rows)
    print("\n| mutant | file | outcome | first failing test |\n|---|---|---|---|")
    for name, file, outcome, detail in rows:
        print(f"| {name} | {file} | {outcome} | {detail} |")
    print(f"\n{len(rows)} mutants: {killed} killed, {len(rows) - killed} survived")
    return 0 if killed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
