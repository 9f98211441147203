"""Data-parallel training throughput: ``slideformer train --nproc 2 --threads 1`` against
``--nproc 1 --threads 2`` (the same cores, the same global batch), on Fashion-MNIST.

Runs three configurations alternately, each a fresh training run of the fashion preset: 1 process
x 2 threads, 2 processes x 1 thread at the default buckets (the fashion model's gradients fit
one), and 2 x 1 with small buckets (``--bucket-kb``), so that all-reduces can overlap the
backward. Reads every run's metrics.jsonl: training images per second (the epochs' training
time, without the evaluation), and for the 2-process runs rank 0's view of each step: the
backward, the time a gradient all-reduce was in flight, the part of it that overlapped the
backward's computation, what the backward waited for communication after its computation ended
(exposed), and the per-step metric all-reduce (the loss and the interrupt flag; it also absorbs
the ranks' imbalance). Every figure is a median over the rounds. Gloo over loopback: NCCL needs
GPUs.

    python benchmarks/bench_data_parallel.py [--limit 4096] [--batch-size 128] [--epochs 1]
                                             [--rounds 2] [--bucket-kb 64] [--quick]
                                             [--binary build/bin/slideformer]
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import machine

ROOT = Path(__file__).resolve().parent.parent


def default_binary():
    build = Path(os.environ.get("SLIDEFORMER_BUILD", ROOT / "build"))
    return str(build / "bin" / "slideformer")


def train(args, nproc, threads, *extra):
    """One training run; the epochs' metrics lines."""
    with tempfile.TemporaryDirectory(prefix="bench_data_parallel_") as out:
        command = [args.binary, "train", "--preset", "fashion", "--out", out, "--limit", str(args.limit),
                   "--batch-size", str(args.batch_size), "--epochs", str(args.epochs),
                   "--nproc", str(nproc), "--threads", str(threads), *extra]
        subprocess.run(command, check=True, capture_output=True, text=True)
        return [json.loads(line) for line in Path(out, "metrics.jsonl").read_text().splitlines()]


SHARES = {"backward_seconds": "backward",
          "allreduce_seconds": "gradient all-reduce in flight",
          "allreduce_overlapped_seconds": "  of it overlapping the backward",
          "allreduce_exposed_seconds": "backward waiting on it (exposed)",
          "metric_sync_seconds": "metric all-reduce (and waiting)"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=4096, help="training (and test) images")
    parser.add_argument("--batch-size", type=int, default=128, help="the global batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bucket-kb", type=int, default=64, help="the small buckets of the third configuration")
    parser.add_argument("--binary", default=default_binary())
    parser.add_argument("--quick", action="store_true", help="1 round of 1024 images")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.limit = 1, 1024

    steps = args.epochs * -(-args.limit // args.batch_size)
    configurations = {"1 process  x 2 threads": (1, 2), "2 processes x 1 thread": (2, 1),
                      f"2 processes x 1 thread, {args.bucket_kb} KiB buckets": (2, 1, "--bucket-kb", str(args.bucket_kb))}
    throughput = {name: [] for name in configurations}
    shares = {name: {key: [] for key in SHARES} for name in configurations}
    for _ in range(args.rounds):
        for name, configuration in configurations.items():
            records = train(args, *configuration)
            throughput[name].append(statistics.mean(m["images_per_second"] for m in records))
            step = sum(m["seconds"] for m in records) / steps
            for key in SHARES if configuration[0] > 1 else ():
                shares[name][key].append(sum(m[key] for m in records) / steps / step)
    print(f"fashion, {args.limit} images, global batch {args.batch_size}, {args.epochs} epoch(s), "
          f"median of {args.rounds} round(s); Gloo on loopback (NCCL needs GPUs)\n{machine.describe(2)}")
    baseline = statistics.median(throughput["1 process  x 2 threads"])
    report = {"benchmark": "data_parallel"}
    for name in configurations:
        ips = statistics.median(throughput[name])
        print(f"  {name:<36} {ips:8.1f} img/s  ({ips / baseline:.2f}x)")
        median = {key: statistics.median(values) for key, values in shares[name].items() if values}
        for key, label in SHARES.items() if median else ():
            print(f"      {label:<34} {100 * median[key]:5.1f}% of a step (rank 0)")
        report[name] = {"images_per_second": ips, "step_shares": median}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
