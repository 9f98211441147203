"""Data loading throughput: slideformer::data's Loader against torchvision's ImageFolder +
DataLoader, and against TurboJPEG's full-size decode rate, at 1 and 2 threads.

The images: JPEGs of about ImageNet's size (500 x 375, quality 90, 4:2:0) cut from the photographs
that scikit-image ships, written to a temporary folder of ImageFolder layout. Each contender turns
them into normalised 224 x 224 float batches of 64 with RandomResizedCrop + horizontal flip:

- ours: `data_rates --what loader` (Loader, ImageTransform::train: TurboJPEG with DCT scaling, fused
  crop + resize + flip + normalise), N threads;
- torchvision: ImageFolder (Pillow) + DataLoader(num_workers=N, persistent workers), transforms.v2
  RandomResizedCrop(224, antialias=True), RandomHorizontalFlip, ToImage, ToDtype, Normalize;
- the practical limit: `data_rates --what decode`, TurboJPEG decoding every file at full size to
  RGB from memory on N threads, nothing else.

The contenders alternate, each rate is a median over rounds of whole epochs, and the ratios are
taken in this one run. The bars at 2 threads: ours >= 2x torchvision and >= 0.6 of decode-only.

    python benchmarks/bench_data.py [--images 320] [--rounds 3] [--threads 1 2] [--binary build/bin/data_rates]
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import machine

ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
          "rocket.jpg", "hubble_deep_field.jpg", "retina.jpg", "camera.png", "brick.png"]
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def default_binary():
    return str(Path(os.environ.get("SLIDEFORMER_BUILD", ROOT / "build")) / "bin" / "data_rates")


def make_folder(root, count):
    """`count` 500 x 375 quality-90 JPEGs cut from the photographs, one class per photograph."""
    from PIL import Image

    photo_dir = Path(importlib.util.find_spec("skimage").submodule_search_locations[0]) / "data"
    generator = torch.Generator().manual_seed(0)
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        image = Image.open(photo_dir / name).convert("RGB")
        scale = max(500 / image.width, 375 / image.height) * (1 + 0.6 * torch.rand(1, generator=generator).item())
        image = image.resize((max(500, round(image.width * scale)), max(375, round(image.height * scale))), Image.BILINEAR)
        left = int(torch.randint(image.width - 500 + 1, (1,), generator=generator))
        top = int(torch.randint(image.height - 375 + 1, (1,), generator=generator))
        image = image.crop((left, top, left + 500, top + 375))
        if i % 2:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        folder = Path(root) / Path(name).stem
        folder.mkdir(exist_ok=True)
        image.save(folder / f"{i:05d}.jpg", quality=90)


class Torchvision:
    """ImageFolder + DataLoader with `workers` persistent worker processes."""

    def __init__(self, root, workers, batch_size):
        import torchvision
        from torchvision.transforms import v2

        transform = v2.Compose([v2.RandomResizedCrop(224, antialias=True), v2.RandomHorizontalFlip(),
                                v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
        dataset = torchvision.datasets.ImageFolder(root, transform=transform)
        self.loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                                  persistent_workers=True, prefetch_factor=2)
        self.epoch()  # starts the workers

    def epoch(self):
        start, images = time.perf_counter(), 0
        for batch, _ in self.loader:
            images += batch.shape[0]
        return images / (time.perf_counter() - start)


def ours(binary, root, what, threads, rounds):
    command = [binary, "--folder", str(root), "--what", what, "--threads", str(threads), "--rounds", str(rounds)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["images_per_second"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--binary", default=default_binary())
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        make_folder(root, args.images)
        print(f"{args.images} JPEGs of 500x375 (quality 90) -> 224x224 float batches of 64; {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at the start\n{machine.describe(max(args.threads))}")
        results = []
        for threads in args.threads:
            torchvision = Torchvision(root, threads, 64)
            rates = {"ours": [], "torchvision": [], "decode": []}
            for _ in range(args.rounds):
                rates["torchvision"].append(torchvision.epoch())
                rates["ours"].append(ours(args.binary, root, "loader", threads, 1))
                rates["decode"].append(ours(args.binary, root, "decode", threads, 1))
            del torchvision
            median = {name: statistics.median(values) for name, values in rates.items()}
            results.append((threads, median))
            print(f"threads {threads}: ours {median['ours']:.0f} img/s, torchvision {median['torchvision']:.0f} img/s, "
                  f"TurboJPEG decode-only {median['decode']:.0f} img/s | ours / torchvision "
                  f"{median['ours'] / median['torchvision']:.2f}x, ours / decode-only "
                  f"{median['ours'] / median['decode']:.2f}", flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end (figures from a loaded machine are noisy; "
              f"the ratios are measured in the same run)")
        for threads, median in results:
            if threads == 2:
                ok = median["ours"] >= 2 * median["torchvision"] and median["ours"] >= 0.6 * median["decode"]
                print(f"bars at 2 threads (>= 2x torchvision, >= 0.6 of decode-only): {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
