"""ONNX export (slideformer.onnx): the operators in standard ONNX operators, run by ONNX Runtime
against the library: the operators alone (both borders, with and without the shift weight,
dilation, short axes, masks) and whole models (fashion, slide_swin_tiny, both borders;
fashion_mvit, mvitv2_tiny), with a free batch size."""
import dataclasses

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import slideformer
import slideformer.onnx
from slideformer import nn as snn
from conftest import exportable_model

TOLERANCE = dict(rtol=1e-4, atol=1e-4)


def export_and_session(module, example, path):
    slideformer.onnx.export(module, path, example_input=example)
    model = onnx.load(str(path))
    # Standard operators only: nothing from a custom domain, no custom-op library needed.
    assert {node.domain for node in model.graph.node} <= {"", "ai.onnx"}
    assert all(function.domain in ("", "pkg.onnxscript.torch_lib") for function in model.functions)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run(session, x):
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


class SlideOp(torch.nn.Module):
    """slide_attention on the input's projections (q, k, v differ), parameters as given."""

    def __init__(self, heads, dim, kernel_size, dilation, border, shift_weight):
        super().__init__()
        window = kernel_size * kernel_size
        self.kernel_size, self.dilation, self.border = kernel_size, dilation, border
        self.key_bias = torch.nn.Parameter(torch.randn(heads, window))
        self.shift_weight = torch.nn.Parameter(torch.eye(window) + 0.3 * torch.randn(dim, window, window)) \
            if shift_weight else None
        self.shift_bias = torch.nn.Parameter(0.5 * torch.randn(dim, window))

    def forward(self, x):
        return slideformer.ops.slide_attention(x, 2 * x.flip(-1), x.tanh(), self.kernel_size, self.dilation,
                                               self.key_bias, self.shift_weight, self.shift_bias, self.border)


@pytest.mark.parametrize("border,shift_weight,kernel_size,dilation", [
    ("zeros", True, 3, 1),
    ("zeros", False, 3, 2),
    ("clamp", True, 5, 2),   # 7x6 map, dilation 2: groups of 3 or 4 < 5, so slots are masked
    ("clamp", False, 3, 1),
])
def test_slide_attention_in_onnx_runtime_matches_the_library(tmp_path, border, shift_weight, kernel_size, dilation):
    torch.manual_seed(0)
    module = SlideOp(3, 8, kernel_size, dilation, border, shift_weight).eval()
    session = export_and_session(module, torch.randn(2, 3, 7, 6, 8), tmp_path / "slide.onnx")
    for batch in (1, 4):  # the batch size stays free
        x = torch.randn(batch, 3, 7, 6, 8)
        with torch.no_grad():
            torch.testing.assert_close(run(session, x), module(x), **TOLERANCE)


class AttentionOp(torch.nn.Module):
    def __init__(self, is_causal):
        super().__init__()
        self.is_causal = is_causal
        bias = torch.randn(1, 2, 5, 7)
        bias[0, 1, 2] = float("-inf")  # a query whose keys are all masked: output 0
        self.register_buffer("bias", bias)

    def forward(self, x):
        q, kv = x[:, :, :5], x
        return slideformer.ops.attention(q, kv, kv.sin(), self.bias, self.is_causal, 0.7)


@pytest.mark.parametrize("is_causal", [False, True])
def test_attention_in_onnx_runtime_matches_the_library(tmp_path, is_causal):
    torch.manual_seed(0)
    module = AttentionOp(is_causal).eval()
    session = export_and_session(module, torch.randn(2, 2, 7, 16), tmp_path / "attention.onnx")
    for batch in (1, 3):
        x = torch.randn(batch, 2, 7, 16)
        with torch.no_grad():
            expected = module(x)
        assert torch.all(expected[:, 1, 2] == 0)
        torch.testing.assert_close(run(session, x), expected, **TOLERANCE)


def check_model_in_onnx_runtime(tmp_path, config):
    """The exported model of `config` gives the module's logits in ONNX Runtime, at other batch sizes."""
    model = exportable_model(config)
    shape = (config.in_channels, config.image_size, config.image_size)
    session = export_and_session(model, torch.rand(2, *shape), tmp_path / "model.onnx")
    for batch in (1, 3):
        images = torch.rand(batch, *shape)
        with torch.no_grad():
            expected = model(images)
        assert expected.abs().max() > 1
        torch.testing.assert_close(run(session, images), expected, **TOLERANCE)


@pytest.mark.parametrize("preset", ["fashion", "slide_swin_tiny"])
@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_models_in_onnx_runtime_match_the_library(tmp_path, preset, border):
    check_model_in_onnx_runtime(tmp_path, dataclasses.replace(snn.preset(preset), border=border))


@pytest.mark.parametrize("preset", ["fashion_mvit", "mvitv2_tiny"])
def test_mvit_models_in_onnx_runtime_match_the_library(tmp_path, preset):
    check_model_in_onnx_runtime(tmp_path, snn.preset(preset))


def test_window_index_of_the_clamp_border_moves_windows_inside_the_map():
    from test_slide_attention import clamp_window_slots
    for length, kernel_size, dilation in [(7, 3, 1), (7, 5, 2), (3, 5, 1), (9, 3, 4)]:
        slots = slideformer.onnx._axis_slots(length, kernel_size, dilation, "clamp")
        assert np.array_equal(slots, clamp_window_slots(length, kernel_size, dilation).numpy())


def test_export_needs_an_example_for_models_without_a_config(tmp_path):
    with pytest.raises(ValueError, match="pass example_input"):
        slideformer.onnx.export(torch.nn.Linear(3, 4), tmp_path / "linear.onnx")
