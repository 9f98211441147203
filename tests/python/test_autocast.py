"""Both operators and the models of both families under torch.autocast: the Autocast kernels'
cast policy, opcheck, the models' logits and gradients against float32 (on the CPU kernels and on
the host-executed CUDA kernels), and the TorchScript, torch.export and AOTInductor forms.
The C++ twin (at::autocast): tests/cpp/test_autocast.cpp."""
import contextlib
import dataclasses
import math
import subprocess

import pytest
import torch

import slideformer
from conftest import LIBRARY, cuda_host_execution
from precision import unit_roundoff

HALF_TYPES = [torch.bfloat16, torch.float16]
slide_attention = torch.ops.slideformer.slide_attention
attention = torch.ops.slideformer.attention


def slide_inputs():
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 2, 5, 6, 4)] * 3 + [(2, 9), (4, 9, 9), (4, 9)]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def attention_inputs():
    g = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 7, 8), (2, 3, 9, 8), (2, 3, 9, 5), (1, 3, 7, 9)]
    return [torch.randn(s, generator=g).requires_grad_() for s in shapes]


def run_slide(q, k, v, key_bias, shift_weight, shift_bias):
    return slide_attention(q, k, v, 3, 1, key_bias, shift_weight, shift_bias)


def run_attention(q, k, v, bias):
    return attention(q, k, v, bias)


OPS = [pytest.param(run_slide, slide_inputs, id="slide_attention"),
       pytest.param(run_attention, attention_inputs, id="attention")]


def expect_autocast_casts_every_input(op, leaves, dtype, device_type="cpu"):
    """Under autocast the op's output equals its output on inputs cast by hand (activations and
    parameters alike), and each float32 gradient is the cast inputs' gradient in float32: the
    backward is exact for the cast inputs."""
    with torch.autocast(device_type, dtype=dtype):
        out = op(*leaves)
    assert out.dtype == dtype
    cast = [t.detach().to(dtype).requires_grad_() for t in leaves]
    expected = op(*cast)
    assert torch.equal(out, expected)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device, dtype)
    ours = torch.autograd.grad(out, leaves, grad)
    theirs = torch.autograd.grad(expected, cast, grad)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert a.dtype == torch.float32, f"gradient {i}"
        assert torch.equal(a, b.float()), f"gradient {i}"


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("op,inputs", OPS)
def test_autocast_casts_every_input(op, inputs, dtype):
    expect_autocast_casts_every_input(op, inputs(), dtype)


INTERNAL_FORWARDS = [
    pytest.param(lambda q, k, v, key_bias, shift_weight, shift_bias:
                 torch.ops.slideformer._slide_attention_forward(q, k, v, 3, 1, key_bias, shift_weight,
                                                                shift_bias, "zeros", None),
                 slide_inputs, id="_slide_attention_forward"),
    pytest.param(lambda q, k, v, bias: torch.ops.slideformer._attention_forward(q, k, v, bias, False, None),
                 attention_inputs, id="_attention_forward")]


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("forward,inputs", INTERNAL_FORWARDS)
def test_the_internal_forwards_cast_as_the_operators(forward, inputs, dtype):
    # A program traced through the autograd kernels calls these directly.
    leaves = [t.detach() for t in inputs()]
    with torch.autocast("cpu", dtype=dtype):
        output, logsumexp = forward(*leaves)
    expected_output, expected_logsumexp = forward(*[t.to(dtype) for t in leaves])
    assert output.dtype == dtype and logsumexp.dtype == torch.float32
    assert torch.equal(output, expected_output)
    assert torch.equal(logsumexp, expected_logsumexp)


@pytest.mark.parametrize("dtype", HALF_TYPES)
@pytest.mark.parametrize("op,inputs", OPS)
def test_autocast_casts_every_input_on_the_cuda_kernels(cuda_kernels, op, inputs, dtype):
    expect_autocast_casts_every_input(op, cuda_kernels.put(*inputs()), dtype, cuda_kernels.device.type)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_opcheck_under_autocast(dtype):
    with torch.autocast("cpu", dtype=dtype):
        torch.library.opcheck(slide_attention, (*slide_inputs()[:3], 3, 1, *slide_inputs()[3:], "zeros", None))
        torch.library.opcheck(attention, (*attention_inputs(), False, None))


def test_an_autocast_dtype_other_than_the_half_types_is_an_error():
    previous = torch.get_autocast_dtype("cpu")
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.set_autocast_dtype("cpu", torch.float32)
            with pytest.raises(RuntimeError, match=r"slideformer::slide_attention: autocast on cpu must cast "
                                                   r"to float16 or bfloat16, got Float"):
                run_slide(*slide_inputs())
            with pytest.raises(RuntimeError, match=r"slideformer::attention: autocast on cpu must cast "
                                                   r"to float16 or bfloat16, got Float"):
                run_attention(*attention_inputs())
    finally:
        torch.set_autocast_dtype("cpu", previous)


def test_float64_is_left_alone():
    inputs = [t.detach().double() for t in slide_inputs()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert run_slide(*inputs).dtype == torch.float64
        inputs[3] = inputs[3].float()
        with pytest.raises(RuntimeError, match=r"slideformer::slide_attention: key_bias must have the dtype "
                                               r"of query \(Double\), got Float"):
            run_slide(*inputs)


# --- models -----------------------------------------------------------------------------------
#
# The bound (as tests/cpp/test_autocast.cpp derives it). Each reduced-precision layer (linear,
# convolution, attention) rounds its inputs and output to the half type, a relative error of at
# most u per element (2^-8 bfloat16, 2^-11 float16), and accumulates in float32; independent
# rounding errors of L such layers add in quadrature, so the logits err by about u sqrt(L) relative
# to their norm, and a gradient, which passes each layer three times (forward and the two products
# of its backward), by about u sqrt(3 L). Each bound allows four times that:
#   ||logits - logits_32|| <= 4 u sqrt(L) ||logits_32||,
#   ||g - g_32|| <= 4 u sqrt(3 L) (||g_32|| + rms(all gradients) sqrt(numel(g)))
# (the second term is a typical gradient's size: a gradient that cancels to about 0, like that
# of a bias added to every key, keeps the rounding error of the terms it cancels).
# L counts the weights of two or more dimensions (linear and convolution layers, position
# tables) and the attention layers.

def reduced_precision_layers(model):
    weights = sum(1 for p in model.parameters() if p.dim() >= 2)
    attention_layers = sum(1 for m in model.modules()
                           if getattr(m, "original_name", type(m).__name__).endswith("Attention"))
    return weights + attention_layers


def nudge_parameters(model):
    """Moves every trainable parameter off its neutral initial value (zero biases, unit norms)."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_((torch.rand(p.shape, generator=g) - 0.5) * 0.2)


def logits_and_gradients(model, images, weight, dtype):
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext():
        logits = model(images)
    (logits.float() * weight).sum().backward()
    return logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]


def assert_within_autocast_error(model, images, dtype):
    model.eval()
    nudge_parameters(model)
    weight = torch.randn(images.shape[0], 10 if images.shape[1] == 1 else 1000,
                         generator=torch.Generator().manual_seed(4))
    logits32, grads32 = logits_and_gradients(model, images, weight, None)
    logits, grads = logits_and_gradients(model, images, weight, dtype)
    assert logits.dtype == dtype, "the logits were not computed in the half type"
    u, layers = unit_roundoff(dtype), reduced_precision_layers(model)
    error = (logits.double() - logits32.double()).norm() / logits32.double().norm()
    assert error <= 4 * u * math.sqrt(layers), f"logits: relative error {error:.3g}"
    rms = math.sqrt(sum(g.double().square().sum().item() for g in grads32) / sum(g.numel() for g in grads32))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for name, g, g32 in zip(names, grads, grads32):
        assert g.dtype == torch.float32, name
        scale = g32.double().norm().item() + rms * math.sqrt(g32.numel())
        error = (g.double() - g32.double()).norm().item() / scale
        assert error <= 4 * u * math.sqrt(3 * layers), f"gradient of {name}: error / scale {error:.3g}"


def images(batch, channels, size):
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(5))


def slide_model(name, image_size=None):
    torch.manual_seed(0)
    config = slideformer.nn.preset(name)
    if image_size is not None:
        config = dataclasses.replace(config, image_size=image_size)
    return slideformer.nn.SlideTransformer(config)


def cpp_model_script(tmp_path, preset):
    """The C++ preset's TorchScript export (tests/tools/model_parity.cpp), loaded here, its
    parameters trainable."""
    torch.save(images(1, 1, 28), tmp_path / "images.pt")
    subprocess.run([str(LIBRARY.parent.parent / "bin" / "model_parity"), preset, "-", str(tmp_path / "images.pt"),
                    str(tmp_path / "logits.pt"), str(tmp_path / "export.pt")], check=True, timeout=600)
    model = torch.jit.load(str(tmp_path / "export.pt"))
    for p in model.parameters():
        p.requires_grad_()
    return model


def test_fashion_within_bfloat16_error():
    assert_within_autocast_error(slide_model("fashion"), images(4, 1, 28), torch.bfloat16)


def test_slide_swin_tiny_within_bfloat16_error():
    assert_within_autocast_error(slide_model("slide_swin_tiny"), images(1, 3, 224), torch.bfloat16)


@pytest.mark.parametrize("preset", ["fashion", "fashion_mvit"])
def test_torchscript_exports_of_the_cpp_models_within_bfloat16_error(tmp_path, preset):
    assert_within_autocast_error(cpp_model_script(tmp_path, preset), images(4, 1, 28), torch.bfloat16)


@pytest.mark.parametrize("dtype", HALF_TYPES)
def test_models_within_half_type_error_on_the_cuda_kernels(tmp_path, dtype):
    launches = torch.ops.slideformer_cuda_host.launches()
    with cuda_host_execution():
        assert_within_autocast_error(slide_model("fashion"), images(2, 1, 28), dtype)
        assert_within_autocast_error(cpp_model_script(tmp_path, "fashion_mvit"), images(2, 1, 28), dtype)
        assert_within_autocast_error(slide_model("slide_swin_tiny", image_size=32), images(1, 3, 32), dtype)
    assert torch.ops.slideformer_cuda_host.launches() > launches, "no CUDA kernel ran on the host"


# --- exports ----------------------------------------------------------------------------------

class Autocast(torch.nn.Module):
    """`model` under autocast inside its forward, so that an export records the casts."""

    def __init__(self, model, dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x):
        with torch.autocast("cpu", dtype=self.dtype):
            return self.model(x)


def fashion_under_autocast():
    """The fashion model (eval), an image batch and the model's bfloat16 logits under autocast."""
    model = slide_model("fashion").eval()
    x = images(2, 1, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(x)
    return model, x, expected


def test_export_runs_under_autocast_as_the_model():
    # torch.export records no ambient autocast: its program runs in the autocast of its caller.
    model, x, expected = fashion_under_autocast()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = torch.export.export(model, (x,)).module()(x)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_export_of_a_model_with_autocast_inside_records_the_casts(tmp_path):
    model, x, expected = fashion_under_autocast()
    program = torch.export.export(Autocast(model, torch.bfloat16), (x,)).run_decompositions()
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert {"slideformer._slide_attention_forward.default", "slideformer._attention_forward.default",
            "aten._to_copy.default"} <= ops, ops
    torch.export.save(program, tmp_path / "model.pt2")
    actual = torch.export.load(tmp_path / "model.pt2").module()(x)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_aoti_package_of_a_model_with_autocast_inside(tmp_path):
    import slideformer.aoti
    model, x, expected = fashion_under_autocast()
    path = slideformer.aoti.export(Autocast(model, torch.bfloat16), tmp_path / "model.pt2", example_input=x)
    actual = slideformer.aoti.load(path)(x)
    # Inductor fuses the casts into its kernels: the same products, rounded at other places.
    assert actual.dtype == torch.bfloat16
    layers = reduced_precision_layers(model)
    error = (actual.double() - expected.double()).norm() / expected.double().norm()
    assert error <= 4 * unit_roundoff(torch.bfloat16) * math.sqrt(layers), f"relative error {error:.3g}"
