"""Makes `import slideformer` work in every Python test; importing it loads the op library once.

By default the package is the source tree's (python/) and the library is $SLIDEFORMER_LIBRARY
(set by ./run) or build/lib/libslideformer.so. With SLIDEFORMER_TEST_INSTALLED=1 the tests use
the installed package and the library inside it (test_package_install.py runs them that way).
"""
import gzip
import os
import pathlib
import subprocess
import sys

import numpy as np

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
INSTALLED = os.environ.get("SLIDEFORMER_TEST_INSTALLED") == "1"
if not INSTALLED:
    sys.path.insert(0, str(ROOT / "python"))
    library = pathlib.Path(os.environ.setdefault("SLIDEFORMER_LIBRARY", str(ROOT / "build" / "lib" / "libslideformer.so")))
    if not library.exists():
        raise RuntimeError(f"slideformer library not found at {library}: run ./run build first")

import slideformer  # noqa: E402

LIBRARY = pathlib.Path(slideformer.library_path)


@pytest.fixture(scope="session")
def library_path():
    return str(LIBRARY)


# The C++ program of the build whose library the tests load.
PROGRAM = LIBRARY.parent.parent / "bin" / "slideformer"
FASHION_DATA = "/usr/share/datasets/fashion-mnist"


def program_result(*args):
    """Runs the slideformer program: its subprocess.CompletedProcess (text stdout, stderr)."""
    return subprocess.run([str(PROGRAM), *map(str, args)], capture_output=True, text=True, timeout=1200)


def run_program(*args):
    """Runs the slideformer program; its stdout, after asserting that it succeeded."""
    result = program_result(*args)
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


def fashion_test_images(count):
    """The first `count` Fashion-MNIST test images as (count, 1, 28, 28) floats in [0, 1]."""
    with gzip.open(f"{FASHION_DATA}/t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)[:count]
    return torch.from_numpy(images.copy()).float() / 255


def read_logits(path, classes=10):
    """Logits written by `slideformer eval/predict --logits` (raw float32, N x classes)."""
    return torch.from_numpy(np.fromfile(path, dtype=np.float32).reshape(-1, classes))


@pytest.fixture(scope="session")
def fashion_checkpoint(tmp_path_factory):
    """A checkpoint of the C++ program: fashion, one short epoch."""
    out = tmp_path_factory.mktemp("fashion_run")
    run_program("train", "--preset", "fashion", "--limit", "256", "--batch-size", "64", "--threads", "1",
                "--epochs", "1", "--out", out)
    return out / "checkpoint.pt"


def cuda_available():
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
