"""AOTInductor packages of models that call the slideformer operators (docs/export.md).

torch.export traces the whole model (the operators' Meta kernels give the shapes) and
AOTInductor compiles it ahead of time into a .pt2 package: a shared library of generated C++
kernels plus the weights. The slideformer operators stay calls into the op library, so a process
that runs the package must have it loaded: `import slideformer` in Python, or a C++ program
linked against libslideformer (torch::inductor::AOTIModelPackageLoader; `slideformer predict
--model model.pt2`).
"""
import os
from typing import Callable, Dict, Optional, Union

import torch

from ._export import batch_dynamic_shapes, eval_mode, example_images, replaced_on_success

__all__ = ["export", "load"]


def export(model: torch.nn.Module, path: Union[str, os.PathLike], example_input: Optional[torch.Tensor] = None,
           dynamic_batch: bool = True, metadata: Optional[Dict[str, str]] = None) -> str:
    """Compiles `model` (in eval mode) into an AOTInductor package at `path` (a .pt2 file).

    Args:
        model: a module taking one image batch, e.g. slideformer.nn.SlideTransformer or
            slideformer.nn.InputNormalization(model).
        path: the .pt2 file to write (written to a temporary file, then renamed).
        example_input: an input of the shape to compile for (batch size aside); by default a
            (2, C, S, S) batch from the model's config.
        dynamic_batch: the package takes any batch size (otherwise only the example's).
        metadata: strings stored in the package (AOTInductor's metadata; `load(path).get_metadata()`
            and the C++ AOTIModelPackageLoader::get_metadata() read them back).

    Returns:
        The path written. The compilation runs a C++ compiler: expect a minute or more.
    """
    example_input = example_images(model, example_input, "slideformer.aoti.export")
    with eval_mode(model):
        program = torch.export.export(model, (example_input,), dynamic_shapes=batch_dynamic_shapes(dynamic_batch))
    with replaced_on_success(path, ".pt2") as temporary:
        torch._inductor.aoti_compile_and_package(
            program, package_path=temporary, inductor_configs={"aot_inductor.metadata": dict(metadata or {})})
    return os.fspath(path)


def load(path: Union[str, os.PathLike]) -> Callable[..., torch.Tensor]:
    """The compiled model of a .pt2 package, callable like the module it came from."""
    return torch._inductor.aoti_load_package(os.fspath(path))
