"""slideformer: fused attention operators for vision Transformers, their modules and exporters.

Importing the package loads the operator library (libslideformer.so) that `pip install` put
inside it, or the one $SLIDEFORMER_LIBRARY names, and registers torch.ops.slideformer.*; nothing
else (a TorchScript or AOTInductor model needs no more). slideformer.nn and load_checkpoint load
the modules' library (libslideformer_nn.so, beside it) on first use.

    import slideformer
    out = slideformer.ops.slide_attention(q, k, v, kernel_size=3)
    model = slideformer.nn.SlideTransformer(slideformer.nn.preset("fashion"))
    model = slideformer.load_checkpoint("runs/a/checkpoint.pt")   # a checkpoint of the C++ program
"""
import importlib
import pathlib

from . import _library

library_path: str = _library.load()

from . import ops  # noqa: E402  (the operators must be registered first)
from .ops import build_info, cpu_info  # noqa: E402

# "slideformer 0.1.0 (torch 2.11.0, ...)": the library is the one source of the version.
__version__: str = build_info().split()[1]

# For C++ projects built against the copy inside an installed package (find_package(slideformer)):
# cmake -DCMAKE_PREFIX_PATH="$(python -c 'import slideformer; print(slideformer.cmake_prefix_path)')"
cmake_prefix_path: str = str(pathlib.Path(__file__).resolve().parent)

__all__ = ["__version__", "build_info", "cmake_prefix_path", "cpu_info", "library_path", "load_checkpoint", "nn", "ops"]


def __getattr__(name: str):
    """slideformer.nn, slideformer.checkpoint and slideformer.load_checkpoint, imported (with the
    modules' library) when first used."""
    if name in ("nn", "checkpoint"):
        return importlib.import_module("." + name, __name__)
    if name == "load_checkpoint":
        return importlib.import_module(".checkpoint", __name__).load_checkpoint
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
