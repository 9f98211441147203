"""Loads the slideformer op library once for every Python test.

The library comes from $SLIDEFORMER_LIBRARY (set by ./run) or build/lib/libslideformer.so; the test
library of the host-executed CUDA kernels (libslideformer_cuda_host, tests/cuda_host) lies next to it.
"""
import contextlib
import os
import pathlib

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]
LIBRARY = pathlib.Path(os.environ.get("SLIDEFORMER_LIBRARY", ROOT / "build" / "lib" / "libslideformer.so"))

if not LIBRARY.exists():
    raise RuntimeError(f"slideformer library not found at {LIBRARY}: run ./run build first")
torch.ops.load_library(str(LIBRARY))
CUDA_HOST_LIBRARY = LIBRARY.parent / "libslideformer_cuda_host.so"
if not CUDA_HOST_LIBRARY.exists():
    raise RuntimeError(f"test library not found at {CUDA_HOST_LIBRARY}: run ./run build first")
torch.ops.load_library(str(CUDA_HOST_LIBRARY))


@pytest.fixture(scope="session")
def library_path():
    return str(LIBRARY)


def cuda_available():
    return torch.cuda.is_available()


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@contextlib.contextmanager
def cuda_host_execution(on=True):
    """Inside the block the internal ops on CPU tensors run the CUDA kernels on the host (on=True),
    or the CPU kernels (on=False)."""
    previous = torch.ops.slideformer_cuda_host.set_enabled(on)
    try:
        yield
    finally:
        torch.ops.slideformer_cuda_host.set_enabled(previous)


class CudaKernels:
    """Where a test runs the CUDA kernels: "cuda" on a GPU, "emulated" on the host (the same kernel
    source compiled for the CPU, each CUDA thread a fiber, with the GPU launch configurations)."""

    def __init__(self, name):
        self.name = name
        self.device = torch.device("cuda:0" if name == "cuda" else "cpu")
        # A test that launches no kernel (bad or empty inputs) sets it to False; otherwise the
        # fixture fails an emulated test in which no kernel ran on the host.
        self.expect_launches = True

    def put(self, *tensors):
        """Copies of the (CPU) tensors on the device, as leaves with the same requires_grad."""
        return [None if t is None else t.detach().to(self.device).requires_grad_(t.requires_grad)
                for t in tensors]

    def scope(self):
        return contextlib.nullcontext() if self.name == "cuda" else cuda_host_execution()

    def cpu_kernels(self):
        """Inside the fixture's scope: a block in which CPU tensors run the CPU kernels again."""
        return contextlib.nullcontext() if self.name == "cuda" else cuda_host_execution(False)


@pytest.fixture(params=["cuda", "emulated"])
def cuda_kernels(request):
    """The test runs on a GPU (skipped without one), then on the host-executed kernels."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    kernels = CudaKernels(request.param)
    launches = torch.ops.slideformer_cuda_host.launches()
    with kernels.scope():
        yield kernels
    if kernels.name == "emulated" and kernels.expect_launches:
        assert torch.ops.slideformer_cuda_host.launches() > launches, "no CUDA kernel ran on the host"
