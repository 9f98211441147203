"""Loading checkpoints of the C++ `slideformer` program into the Python modules.

A checkpoint is a torch::serialize archive (readable with torch.jit.load). Its "model_config"
entry is the JSON {"family": ..., "options": {...}} that describes the model in full, and its
"model" entry holds the weights under the C++ modules' names, which the Python modules share.
Checkpoints written before "model_config" existed name a preset ("preset") instead.
"""
import json
import os
from typing import Any, Callable, Dict, NamedTuple, Union

import torch
from torch import nn as torch_nn

from . import nn


class Family(NamedTuple):
    """How to build the models of one family from a checkpoint's "options"."""
    config_from_options: Callable[[Dict[str, Any], str], Any]
    module: Callable[[Any], torch_nn.Module]


# Model families a checkpoint's "model_config" may name: one entry per family.
FAMILIES: Dict[str, Family] = {
    "slide_transformer": Family(nn.SlideTransformerConfig.from_options, nn.SlideTransformer),
}


def build_model(model_config: Union[str, Dict[str, Any]], source: str = "model_config") -> torch_nn.Module:
    """A freshly initialised model from a description {"family": ..., "options": {...}} (a dict or
    its JSON text)."""
    description = json.loads(model_config) if isinstance(model_config, str) else model_config
    if not isinstance(description, dict) or not isinstance(description.get("options"), dict):
        raise ValueError(f'{source}: a model description must be {{"family": ..., "options": {{...}}}}, '
                         f"got {str(description)[:200]}")
    family = description.get("family")
    if family not in FAMILIES:
        raise ValueError(f"{source}: unknown model family {family!r} (this package builds: {', '.join(FAMILIES)})")
    entry = FAMILIES[family]
    return entry.module(entry.config_from_options(description["options"], source))


def load_checkpoint(path: Union[str, os.PathLike], map_location: str = "cpu") -> torch_nn.Module:
    """The model a checkpoint of the C++ program holds, with its weights, in eval mode.

    The model's family and options come from the checkpoint's "model_config" (or, in checkpoints
    older than it, from its preset name); every parameter and buffer must be there with the
    model's shape. The result takes normalised images: wrap it in
    slideformer.nn.InputNormalization for [0, 1] images.
    """
    path = os.fspath(path)
    try:
        archive = torch.jit.load(path, map_location=map_location)
    except Exception as error:  # torch raises RuntimeError, ValueError or OSError here
        raise ValueError(f"{path}: not a readable checkpoint (missing, truncated or corrupt): {error}") from None
    if not str(getattr(archive, "format", "")).startswith("slideformer-checkpoint"):
        raise ValueError(f"{path}: not a slideformer checkpoint (no 'slideformer-checkpoint' format marker)")
    if hasattr(archive, "model_config"):
        model = build_model(archive.model_config, path)
    elif hasattr(archive, "preset"):
        model = nn.SlideTransformer(nn.preset(archive.preset))
    else:
        raise ValueError(f"{path}: the checkpoint describes no model (neither 'model_config' nor 'preset')")
    if not hasattr(archive, "model"):
        raise ValueError(f"{path}: checkpoint lacks 'model'")
    state = archive.model.state_dict()
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit the model (missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            raise ValueError(f"{path}: weights do not fit the model ({name} has shape {list(state[name].shape)}, "
                             f"the model expects {list(tensor.shape)})")
    model.load_state_dict(state)
    return model.eval()
