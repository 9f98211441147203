"""What the ONNX and AOTInductor exporters share: the example input, eval mode during the trace,
the free batch dimension and the write-then-rename of the output."""
import contextlib
import os
from typing import Iterator, Optional, Union

import torch

from . import nn as snn


def example_images(model: torch.nn.Module, example_input: Optional[torch.Tensor], exporter: str) -> torch.Tensor:
    """`example_input`, or a (2, C, S, S) batch of the size the model's config says."""
    if example_input is not None:
        return example_input
    config = getattr(model, "config", None) or getattr(getattr(model, "model", None), "config", None)
    if not isinstance(config, snn.ClassifierConfig):
        raise ValueError(f"{exporter}: pass example_input for a model without the config of a model family")
    return torch.rand(2, config.in_channels, config.image_size, config.image_size)


def batch_dynamic_shapes(dynamic_batch: bool):
    """dynamic_shapes for a model of one input whose dimension 0 is the batch size."""
    return ({0: torch.export.Dim("batch", min=1, max=1 << 16)},) if dynamic_batch else None


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def replaced_on_success(path: Union[str, os.PathLike], suffix: str) -> Iterator[str]:
    """A temporary path next to `path` to write; renamed to `path` when the block succeeds."""
    path = os.fspath(path)
    temporary = path + ".tmp" + suffix
    yield temporary
    os.replace(temporary, path)
