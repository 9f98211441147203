"""Finds and loads the operator library (libslideformer.so), once per process, and the libraries
that lie beside it (the modules' libslideformer_nn.so, the weight files' libslideformer_io.so)
when a part of the package needs them."""
import os
import pathlib
from typing import Callable

import torch

# Where `pip install` puts the library: inside the package.
PACKAGED_LIBRARY = pathlib.Path(__file__).resolve().parent / "lib" / "libslideformer.so"


def _registered() -> bool:
    """Whether the slideformer operators are in this process already (a library loaded earlier
    by path, or a C++ program that links the library and embeds Python)."""
    try:
        torch.ops.slideformer.build_info.default
    except (AttributeError, RuntimeError):
        return False
    return True


def load() -> str:
    """Loads the operator library unless its operators are registered already, and returns the
    library's path. $SLIDEFORMER_LIBRARY, when set, names the library to use instead of the
    packaged one (a development build, say)."""
    override = os.environ.get("SLIDEFORMER_LIBRARY")
    path = pathlib.Path(override).absolute() if override else PACKAGED_LIBRARY
    if _registered():
        loaded = [p for p in torch.ops.loaded_libraries if "libslideformer" in pathlib.Path(p).name]
        return loaded[0] if loaded else "(linked into this program)"
    if not path.is_file():
        source = "SLIDEFORMER_LIBRARY" if override else "the package"
        raise ImportError(
            f"slideformer: the operator library is not at {path} ({source}): install the package "
            "with `pip install --no-build-isolation <repository>` (docs/python.md), or set "
            "SLIDEFORMER_LIBRARY to a built libslideformer.so")
    torch.ops.load_library(str(path))
    return str(path)


def load_beside(name: str, registered: Callable[[], object], what: str) -> None:
    """Loads the library `name` from beside the operator library unless `registered()` (a look-up
    of one of its operators) finds its operators already (a program that links it)."""
    try:
        registered()
        return
    except (AttributeError, RuntimeError):
        pass
    path = pathlib.Path(load()).with_name(name)
    if not path.is_file():
        raise ImportError(f"slideformer: the {what} library is not at {path} (it is built and installed "
                          "next to libslideformer.so)")
    torch.ops.load_library(str(path))
