"""Data-parallel training throughput: ``slideformer train --nproc 2 --threads 1`` against
``--nproc 1 --threads 2`` (the same cores, the same global batch), on Fashion-MNIST.

Runs the two configurations alternately, each a fresh training run of the fashion preset, and
reads every run's metrics.jsonl: training images per second (the epochs' training time, without
the evaluation), and for the 2-process runs rank 0's view of each step: the backward, the time a
gradient all-reduce was in flight, the part of it that overlapped the backward's computation, what
the backward waited for communication after its computation ended (exposed), and the per-step
metric all-reduce (the loss and the interrupt flag; it also absorbs the ranks' imbalance). Every
figure is a median over the rounds. Gloo over loopback: NCCL needs GPUs.

    python benchmarks/bench_data_parallel.py [--limit 4096] [--batch-size 128] [--epochs 1]
                                             [--rounds 2] [--binary build/bin/slideformer]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def default_binary():
    build = Path(os.environ.get("SLIDEFORMER_BUILD", ROOT / "build"))
    return str(build / "bin" / "slideformer")


def train(args, nproc, threads):
    """One training run; the epochs' metrics lines."""
    with tempfile.TemporaryDirectory(prefix="bench_data_parallel_") as out:
        command = [args.binary, "train", "--preset", "fashion", "--out", out, "--limit", str(args.limit),
                   "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                   "--nproc", str(nproc), "--threads", str(threads)]
        subprocess.run(command, check=True, capture_output=True, text=True)
        return [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=4096, help="training (and test) images")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--binary", default=default_binary())
    parser.add_argument("--quick", action="store_true", help="1 round of 1024 images")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.limit = 1, 1024

    steps = args.epochs * -(-args.limit // args.batch_size)
    single, parallel, shares = [], [], {}
    for _ in range(args.rounds):
        single.append(statistics.mean(m["images_per_second"] for m in train(args, 1, 2)))
        records = train(args, 2, 1)
        parallel.append(statistics.mean(m["images_per_second"] for m in records))
        step = sum(m["seconds"] for m in records) / steps
        for key in ("backward_seconds", "allreduce_seconds", "allreduce_overlapped_seconds",
                    "allreduce_exposed_seconds", "metric_sync_seconds"):
            shares.setdefault(key, []).append(sum(m[key] for m in records) / steps / step)
    median = {key: statistics.median(values) for key, values in shares.items()}
    ips_single, ips_parallel = statistics.median(single), statistics.median(parallel)
    print(f"fashion, {args.limit} images, global batch {args.batch_size}, {args.epochs} epoch(s), "
          f"median of {args.rounds} round(s); Gloo on loopback")
    print(f"  1 process  x 2 threads: {ips_single:8.1f} img/s")
    print(f"  2 processes x 1 thread: {ips_parallel:8.1f} img/s  ({ips_parallel / ips_single:.2f}x)")
    print("  2 processes, share of a step (rank 0):")
    print(f"    backward                         {100 * median['backward_seconds']:5.1f}%")
    print(f"    gradient all-reduce in flight    {100 * median['allreduce_seconds']:5.1f}%")
    print(f"      of it overlapping the backward {100 * median['allreduce_overlapped_seconds']:5.1f}%")
    print(f"    backward waiting on it (exposed) {100 * median['allreduce_exposed_seconds']:5.1f}%")
    print(f"    metric all-reduce (and waiting)  {100 * median['metric_sync_seconds']:5.1f}%")
    print(json.dumps({"benchmark": "data_parallel", "images_per_second_1x2": ips_single,
                      "images_per_second_2x1": ips_parallel, "step_shares_2x1": median}))


if __name__ == "__main__":
    main()
