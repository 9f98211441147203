"""Runs an exported slideformer model from Python on the Fashion-MNIST test set.

    python predict.py LIBRARY MODEL.pt [--data DIR] [--limit N]
Needs only torch and the op library: the model normalises [0, 1] images by itself.
"""
import argparse
import gzip
import pathlib

import numpy as np
import torch


def read_idx(path: pathlib.Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("library")
    parser.add_argument("model")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--limit", type=int, default=0)
    args = parser.parse_args()
    torch.ops.load_library(args.library)
    model = torch.jit.load(args.model).eval()
    data = pathlib.Path(args.data)
    images = torch.from_numpy(read_idx(data / "t10k-images-idx3-ubyte.gz").copy())
    labels = torch.from_numpy(read_idx(data / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    with torch.no_grad():
        predictions = torch.cat([model(batch.unsqueeze(1).float() / 255).argmax(1)
                                 for batch in images.split(500)])
    accuracy = (predictions == labels).double().mean().item()
    print(f"python, scripted model {args.model}: test accuracy {100 * accuracy:.2f}% ({len(labels)} images)")


if __name__ == "__main__":
    main()
