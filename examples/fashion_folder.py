"""Writes Fashion-MNIST as image folders: OUT/train/<class>/<n>.jpg (60,000 images) and
OUT/val/<class>/<n>.jpg (the 10,000 test images), the layout `slideformer train --data OUT` reads.

    python examples/fashion_folder.py OUT [--format jpg|png] [--quality 95] [--limit N]
Needs Pillow and numpy. Class folders are named "<index>_<name>", so that sorting them by name
keeps Fashion-MNIST's label order.
"""
import argparse
import gzip
import pathlib

import numpy as np
from PIL import Image

CLASSES = ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"]


def read_idx(path):
    data = gzip.decompress(pathlib.Path(path).read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def write_split(source, prefix, out, fmt, quality, limit):
    pictures = read_idx(f"{source}/{prefix}-images-idx3-ubyte.gz")
    labels = read_idx(f"{source}/{prefix}-labels-idx1-ubyte.gz")
    count = min(limit, len(labels)) if limit else len(labels)
    for c, name in enumerate(CLASSES):
        (out / f"{c}_{name}").mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = out / f"{labels[i]}_{CLASSES[labels[i]]}" / f"{i:05d}.{fmt}"
        options = {"quality": quality} if fmt == "jpg" else {}
        Image.fromarray(pictures[i]).save(path, **options)
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=pathlib.Path)
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--format", choices=["jpg", "png"], default="jpg")
    parser.add_argument("--quality", type=int, default=95)
    parser.add_argument("--limit", type=int, default=0, help="at most N images per split")
    args = parser.parse_args()
    train = write_split(args.data, "train", args.out / "train", args.format, args.quality, args.limit)
    val = write_split(args.data, "t10k", args.out / "val", args.format, args.quality, args.limit)
    print(f"{train} training and {val} validation images in {args.out}/train and {args.out}/val")


if __name__ == "__main__":
    main()
