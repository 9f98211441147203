"""Makes `import slideformer` work in every Python test; importing it loads the op library once.

By default the package is the source tree's (python/) and the library is $SLIDEFORMER_LIBRARY
(set by ./run) or build/lib/libslideformer.so; the test library of the host-executed CUDA kernels
(libslideformer_cuda_host, tests/cuda_host) lies next to it. With SLIDEFORMER_TEST_INSTALLED=1
the tests use the installed package and the library inside it, and no test library
(test_package_install.py runs test_package.py that way).
"""
import contextlib
import gzip
import os
import pathlib
import subprocess
import sys

# Idle OpenMP threads sleep rather than spin, in this process and the programs the tests start
# (tests/gtest_suites.cmake says why); read by libgomp when torch loads it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
INSTALLED = os.environ.get("SLIDEFORMER_TEST_INSTALLED") == "1"
if not INSTALLED:
    sys.path.insert(0, str(ROOT / "python"))
    library = pathlib.Path(os.environ.setdefault("SLIDEFORMER_LIBRARY", str(ROOT / "build" / "lib" / "libslideformer.so")))
    if not library.exists():
        raise RuntimeError(f"slideformer library not found at {library}: run ./run build first")

import slideformer  # noqa: E402

LIBRARY = pathlib.Path(slideformer.library_path)
if not INSTALLED:
    CUDA_HOST_LIBRARY = LIBRARY.parent / "libslideformer_cuda_host.so"
    if not CUDA_HOST_LIBRARY.exists():
        raise RuntimeError(f"test library not found at {CUDA_HOST_LIBRARY}: run ./run build first")
    torch.ops.load_library(str(CUDA_HOST_LIBRARY))
    # The data library's test probe (tests/data/data_probe.cpp): torch.ops.slideformer_data_test.
    DATA_PROBE_LIBRARY = LIBRARY.parent / "libslideformer_data_probe.so"
    if not DATA_PROBE_LIBRARY.exists():
        raise RuntimeError(f"test library not found at {DATA_PROBE_LIBRARY}: run ./run build first")
    torch.ops.load_library(str(DATA_PROBE_LIBRARY))


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


def nudged_timm_reference(name="mvitv2_tiny"):
    """timm's model `name` (seed 0, eval), every parameter nudged so that none sits at a neutral
    value, two seeded 224 x 224 images and its logits for them: (state dict, images, logits)."""
    import timm
    torch.manual_seed(0)
    reference = timm.create_model(name).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        images = torch.randn(2, 3, 224, 224)
        return reference.state_dict(), images, reference(images)


def short_training(tmp_path_factory, preset):
    """A checkpoint of the C++ program: `preset`, one short epoch on Fashion-MNIST."""
    out = tmp_path_factory.mktemp(f"{preset}_run")
    run_program("train", "--preset", preset, "--limit", "256", "--batch-size", "64", "--threads", "1",
                "--epochs", "1", "--out", out)
    return out / "checkpoint.pt"


def exportable_model(config):
    """A model of `config` taking [0, 1] images (seed 0, eval mode), its head scaled by 50 so that
    the logits are larger than a fresh head gives: a stricter comparison of exports."""
    torch.manual_seed(0)
    model = slideformer.nn.InputNormalization(slideformer.nn.build(config)).eval()
    with torch.no_grad():
        model.model.head.weight.mul_(50)
    return model


@pytest.fixture(scope="session")
def fashion_checkpoint(tmp_path_factory):
    return short_training(tmp_path_factory, "fashion")


@pytest.fixture(scope="session")
def fashion_mvit_checkpoint(tmp_path_factory):
    return short_training(tmp_path_factory, "fashion_mvit")


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
