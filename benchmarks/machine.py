"""The machine line the Python benchmarks print (the C++ ones print the same line): CPU model and
vendor, the ISA of slideformer's kernels and of ATen's, and threads, from the library the
benchmark measures (slideformer::cpu_info)."""

import os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def describe(threads: int) -> str:
    build = Path(os.environ.get("SLIDEFORMER_BUILD", ROOT / "build"))
    if not hasattr(torch.ops.slideformer, "cpu_info"):
        torch.ops.load_library(str(build / "lib" / "libslideformer.so"))
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return torch.ops.slideformer.cpu_info()
    finally:
        torch.set_num_threads(previous)
