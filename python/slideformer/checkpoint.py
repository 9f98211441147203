"""Loading checkpoints of the C++ `slideformer` program into the Python modules.

A checkpoint is a torch::serialize archive (readable with torch.jit.load). Its "model_config"
entry is the JSON {"family": ..., "options": {...}} that describes the model in full, and its
"model" entry holds the weights under the C++ modules' names, which the Python modules share.
Checkpoints written before "model_config" existed (format v1) name a preset ("preset") instead:
the architecture of that preset's time whose weights fit (the library's list of them).
"""
import json
import os
from typing import Any, Dict, Union

import torch
from torch import nn as torch_nn

from . import nn, weights


def build_model(model_config: Union[str, Dict[str, Any]], source: str = "model_config") -> torch_nn.Module:
    """A freshly initialised model from a description {"family": ..., "options": {...}} (a dict or
    its JSON text)."""
    description = json.loads(model_config) if isinstance(model_config, str) else model_config
    return nn.build(nn.config_from_description(description, source))


def _fits(model: torch_nn.Module, state: Dict[str, torch.Tensor]) -> str:
    """Why `state` does not fit `model` ("" when it does: the same names and shapes)."""
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    if missing or unexpected:
        return f"missing: {missing[:5]}, unexpected: {unexpected[:5]}"
    for name, tensor in expected.items():
        if state[name].shape != tensor.shape:
            return f"{name} has shape {list(state[name].shape)}, the model expects {list(tensor.shape)}"
    return ""


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
    if not hasattr(archive, "model"):
        raise ValueError(f"{path}: checkpoint lacks 'model'")
    state = archive.model.state_dict()
    if hasattr(archive, "model_config"):
        models = [build_model(archive.model_config, path)]
    elif hasattr(archive, "preset"):  # v1: the preset's architecture of that time whose weights fit
        models = [nn.build(config) for config in nn.v1_preset_versions(archive.preset)]
    else:
        raise ValueError(f"{path}: the checkpoint describes no model (neither 'model_config' nor 'preset')")
    # Under today's names: the library's own table renames those of earlier releases.
    states = [weights.map_weights("slideformer", state, model.state_dict(), path) for model in models]
    problems = [_fits(model, mapped) for model, mapped in zip(models, states)]
    if all(problems):
        raise ValueError(f"{path}: weights do not fit the model ({problems[0]})")
    model = models[problems.index("")]
    model.load_state_dict(states[problems.index("")])
    return model.eval()
