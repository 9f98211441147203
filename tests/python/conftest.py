"""Loads the slideformer op library once for every Python test.

The library comes from $SLIDEFORMER_LIBRARY (set by ./run) or build/lib/libslideformer.so.
"""
import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBRARY = pathlib.Path(os.environ.get("SLIDEFORMER_LIBRARY", ROOT / "build" / "lib" / "libslideformer.so"))

if not LIBRARY.exists():
    raise RuntimeError(f"slideformer library not found at {LIBRARY}: run ./run build first")
torch.ops.load_library(str(LIBRARY))


@pytest.fixture(scope="session")
def library_path():
    return str(LIBRARY)


def cuda_available():
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
