"""Weight files without pickle's code execution: safetensors files (read and written) and torch.save
archives (read), by the C++ readers of libslideformer_io (docs/pretrained.md). Nothing in a file
is imported or run: a checkpoint that also pickles an optimizer, a scheduler or a yacs CfgNode
reads without those classes, and a damaged file is refused with a ValueError naming it and what
is wrong, before anything it declares is allocated.

    tensors = slideformer.weights.read("model.safetensors")      # {name: tensor}, in the file's order
    tensors = slideformer.weights.read("ckpt_epoch_299.pth")     # the checkpoint's "model" state dict
    ema = slideformer.weights.read("ckpt_epoch_299.pth", entry="state_dict_ema")
    slideformer.weights.save_safetensors(model.state_dict(), "model.safetensors", {"format": "pt"})

Published weights map into this library's models by one table per source family (SOURCES;
mapping_table lists the rows, docs/pretrained.md explains them):

    model = slideformer.nn.SlideTransformer(slideformer.nn.preset("slide_swin_tiny"))
    slideformer.weights.import_weights(model, "slide_swin_t.pth", "slide-transformer")
    mapped = slideformer.weights.map_weights("timm", timm_state, cpp_model_state)  # names and shapes only
"""
import os
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor

from . import _library

PathLike = Union[str, os.PathLike]
IO_LIBRARY = "libslideformer_io.so"
# The source families of map_weights and import_weights.
SOURCES = ("slideformer", "slide-transformer", "timm")


def _ops():
    """torch.ops.slideformer_io, loading libslideformer_io.so (next to the operator library) once."""
    _library.load_beside(IO_LIBRARY, lambda: torch.ops.slideformer_io.read_weights.default, "weight-file")
    return torch.ops.slideformer_io


def _call(function, *args):
    """The readers' errors ("<file>: <problem>") as ValueError."""
    try:
        return function(*args)
    except (RuntimeError, ValueError) as error:
        raise ValueError(str(error).split("\nException raised from")[0]) from None


def read(path: PathLike, entry: str = "") -> Dict[str, Tensor]:
    """The state dict in a safetensors file or a torch.save archive. `entry` picks a state dict
    nested in a checkpoint ("model", "state_dict_ema", ...); by default the file's own when it is
    one, else the first of "state_dict", "model", "model_state", "module" it has."""
    return _call(_ops().read_weights, os.fspath(path), entry)


def read_safetensors(path: PathLike) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """The tensors of a safetensors file and its "__metadata__"."""
    return _call(_ops().read_safetensors, os.fspath(path))


def save_safetensors(tensors: Mapping[str, Tensor], path: PathLike, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes `tensors` as a safetensors file, atomically; each tensor is written whole and
    contiguous (views and shared storages become copies)."""
    _call(_ops().save_safetensors, dict(tensors), os.fspath(path), dict(metadata) if metadata else None)


def state_dict_entries(path: PathLike) -> List[str]:
    """The state dicts of a torch.save archive: "" for the top level, else the keys that hold one."""
    return _call(_ops().torch_save_state_dict_entries, os.fspath(path))


def check_torch_archive(path: PathLike) -> None:
    """Checks a torch archive's ZIP structure and every length its pickles declare (ValueError if
    damaged); torch.load and torch.jit.load reserve a declared length before reading it."""
    _call(_ops().check_torch_archive, os.fspath(path))


def map_weights(source: str, tensors: Mapping[str, Tensor], model_state: Mapping[str, Tensor],
                file: str = "weights") -> Dict[str, Tensor]:
    """`tensors` of a `source` family file (SOURCES) under the names of `model_state` (a model's
    state_dict(): only its names and shapes are used, meta tensors will do), reshaped to its
    shapes. ValueError naming `file` for tensors the family's table does not map."""
    return _call(_ops().map_weights, source, dict(tensors), dict(model_state), file)


def mapping_table(source: str) -> List[Tuple[str, str, str]]:
    """The rows of a family's table: (source names as a regular expression, the model's names, change)."""
    return [tuple(row) for row in _call(_ops().mapping_table, source)]


def import_weights(model: torch.nn.Module, path: PathLike, source: str, entry: str = "") -> torch.nn.Module:
    """Loads a weight file of `source`'s family (SOURCES) into `model`, a slideformer.nn module:
    every parameter must come from the file with the model's shape and every tensor of the file
    must have a place; buffers may be absent (they are computed). ValueError naming the file and
    every mismatch otherwise, and the model is unchanged. Returns `model`."""
    path = os.fspath(path)
    state = model.state_dict()
    mapped = map_weights(source, read(path, entry), state, path)
    parameters = dict(model.named_parameters())
    buffers = {name: tensor for name, tensor in state.items() if name not in parameters}
    _call(_ops().check_weights_fit, mapped, parameters, buffers, path)
    model.load_state_dict(mapped, strict=False)
    return model


__all__ = ["SOURCES", "check_torch_archive", "import_weights", "map_weights", "mapping_table", "read",
           "read_safetensors", "save_safetensors", "state_dict_entries"]
