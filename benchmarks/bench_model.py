"""Model throughput: slideformer's preset (``slideformer bench``) against timm's Swin-T.

Runs ``slideformer bench --json`` (our C++ modules) and timm's ``swin_tiny_patch4_window7_224``
(random weights, nothing downloaded) alternately in the same run, at equal threads and batch
size, and prints forward (eval) and training-step (cross-entropy + AdamW) images per second,
FLOPs per image, each one's fraction of its process's ``at::mm`` 1024^3 rate, and the ratios.
Every figure is a median over the rounds. timm is an optional benchmark dependency: without it
only our figures are printed.

    python benchmarks/bench_model.py [--preset slide_swin_tiny] [--batch-size 8] [--threads N]
                                     [--rounds 3] [--binary build/bin/slideformer] [--quick]
"""

import argparse
import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def default_binary():
    build = Path(os.environ.get("SLIDEFORMER_BUILD", ROOT / "build"))
    return str(build / "bin" / "slideformer")


def ours(args):
    """One `slideformer bench --json` run (its own warm-up and medians)."""
    command = [args.binary, "bench", "--json", "--preset", args.preset,
               "--batch-size", str(args.batch_size), "--threads", str(args.threads),
               "--rounds", str(args.inner_rounds)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


class Timm:
    """timm's Swin-T at the same batch size, in this process."""

    def __init__(self, batch_size):
        import timm  # optional benchmark dependency
        from torch.utils.flop_counter import FlopCounterMode

        torch.manual_seed(0)
        self.images = torch.randn(batch_size, 3, 224, 224)
        self.labels = torch.randint(1000, (batch_size,))
        self.inference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).eval()
        self.training = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False).train()
        self.optimizer = torch.optim.AdamW(self.training.parameters(), lr=1e-4)
        self.a, self.b = torch.randn(1024, 1024), torch.randn(1024, 1024)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            self.inference(self.images[:1])
        self.flops_per_image = counter.get_total_flops()

    def forward(self):
        with torch.no_grad():
            self.inference(self.images)

    def train_step(self):
        self.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(self.training(self.images), self.labels).backward()
        self.optimizer.step()

    def mm(self):
        torch.mm(self.a, self.b)

    def measure(self, rounds):
        steps = [self.mm, self.forward, self.train_step]
        for step in steps:
            step()
        times = [[] for _ in steps]
        for _ in range(rounds):
            for i, step in enumerate(steps):
                start = time.perf_counter()
                step()
                times[i].append(time.perf_counter() - start)
        mm, forward, train = (statistics.median(t) for t in times)
        n = self.images.shape[0]
        mm_rate = 2 * 1024**3 / mm
        return {"forward_img_s": n / forward, "train_img_s": n / train,
                "flops_per_image": self.flops_per_image, "mm_flop_s": mm_rate,
                "forward_mm_fraction": self.flops_per_image * n / forward / mm_rate,
                "train_mm_fraction": 3 * self.flops_per_image * n / train / mm_rate}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="slide_swin_tiny")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two models")
    parser.add_argument("--inner-rounds", type=int, default=3, help="timed steps per alternation")
    parser.add_argument("--binary", default=default_binary())
    parser.add_argument("--quick", action="store_true", help="one alternation of one step each")
    args = parser.parse_args()
    if args.quick:
        args.rounds = args.inner_rounds = 1
    torch.set_num_threads(args.threads)

    try:
        timm_model = Timm(args.batch_size)
    except ImportError:
        timm_model = None
        print("timm is not installed: only slideformer's figures (pip install timm)")

    runs = {"ours": [], "timm": []}
    for _ in range(args.rounds):
        runs["ours"].append(ours(args))
        if timm_model is not None:
            runs["timm"].append(timm_model.measure(args.inner_rounds))

    def median(name, key):
        return statistics.median(r[key] for r in runs[name])

    print(f"\n== model throughput, CPU fp32, batch {args.batch_size}, threads {args.threads}, "
          f"medians of {args.rounds} alternations ==")
    print(f"ours: {runs['ours'][0]['cpu']}; {runs['ours'][0]['linear_backends']}")
    if timm_model is not None:
        print(f"timm: torch {torch.__version__}, ATen {torch.backends.cpu.get_cpu_capability()}, "
              f"at::linear on {'MKL' if torch.backends.mkl.is_available() else 'the BLAS torch was built with'}")
    header = (f"{'model':<34} {'forward img/s':>13} {'train img/s':>11} {'GFLOPs/img':>10} "
              f"{'fwd / at::mm':>12} {'train / at::mm':>14}")
    print(header)
    rows = [("ours", f"slideformer {args.preset}")]
    if timm_model is not None:
        rows.append(("timm", "timm swin_tiny_patch4_window7_224"))
    for name, label in rows:
        print(f"{label:<34} {median(name, 'forward_img_s'):>13.2f} {median(name, 'train_img_s'):>11.2f} "
              f"{median(name, 'flops_per_image') / 1e9:>10.2f} "
              f"{median(name, 'forward_mm_fraction'):>12.2f} {median(name, 'train_mm_fraction'):>14.2f}")
    if timm_model is not None:
        def ratio(key):  # median over the alternations of ours / timm
            return statistics.median(o[key] / t[key] for o, t in zip(runs["ours"], runs["timm"]))
        print(f"{'ours / timm (>1: faster)':<34} {ratio('forward_img_s'):>13.2f} "
              f"{ratio('train_img_s'):>11.2f}")
    print("(FLOPs: 2 per multiply-add of linear layers, convolutions and attention products; "
          "a training step counts 3x the forward)")


if __name__ == "__main__":
    main()
