"""slideformer::attention from Python: parity, opcheck, gradcheck, TorchScript, export, compile."""
import math
import subprocess
import sys

import pytest
import torch

from precision import assert_matches_float64

attention = torch.ops.slideformer.attention


def reference(q, k, v, bias=None, is_causal=False, scale=None):
    """softmax(scale q k^T + bias, causal mask) v in plain torch ops; fully masked rows give 0."""
    if scale is None:  # with D = 0 every logit is 0 whatever the scale
        scale = 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    logits = q @ k.transpose(-2, -1) * scale
    if bias is not None:
        logits = logits + bias
    if is_causal:
        nq, nk = q.shape[-2], k.shape[-2]
        mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).triu(nk - nq + 1)
        logits = logits.masked_fill(mask, float("-inf"))
    row_max = logits.amax(-1, keepdim=True).detach()
    row_max = torch.where(torch.isinf(row_max), torch.zeros_like(row_max), row_max)
    e = torch.exp(logits - row_max)
    denom = e.sum(-1, keepdim=True)
    return (e / torch.where(denom == 0, torch.ones_like(denom), denom)) @ v


def make_inputs(b=2, h=3, nq=5, nk=7, d=4, dv=6, bias_shape=(1, 3, 5, 7), dtype=torch.float64, grad=True):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(b, h, nq, d, generator=g, dtype=dtype)
    k = torch.randn(b, h, nk, d, generator=g, dtype=dtype)
    v = torch.randn(b, h, nk, dv, generator=g, dtype=dtype)
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=g, dtype=dtype)
    tensors = [q, k, v] + ([bias] if bias is not None else [])
    for t in tensors:
        t.requires_grad_(grad)
    return q, k, v, bias


def assert_matches_reference(q, k, v, bias, is_causal):
    """Output and the gradients of all four inputs against the composite reference."""
    out = attention(q, k, v, bias, is_causal)
    assert out.device == q.device
    ref = reference(q, k, v, bias, is_causal)
    torch.testing.assert_close(out, ref)
    if out.numel():
        grad = torch.randn_like(out)
        ours = torch.autograd.grad(out, (q, k, v, bias), grad)
        theirs = torch.autograd.grad(ref, (q, k, v, bias), grad)
        for a, e in zip(ours, theirs):
            torch.testing.assert_close(a, e)


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 4, 6), (1, 2, 130, 520, 16, 8), (0, 2, 3, 3, 4, 4)])
def test_matches_reference_forward_and_backward(shape, is_causal):
    b, h, nq, nk, d, dv = shape
    assert_matches_reference(*make_inputs(b, h, nq, nk, d, dv, bias_shape=(h, nq, nk)), is_causal)


def test_keyword_arguments_and_scale():
    q, k, v, _ = make_inputs(bias_shape=None, grad=False)
    out = attention(q, k, v, scale=0.25)
    torch.testing.assert_close(out, reference(q, k, v, scale=0.25))


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradients_without_bias_with_scale_of_strided_inputs(is_causal):
    """No bias, an explicit scale, (B, N, H, D) tensors transposed as a module passes them and a
    transposed output gradient: output and all three gradients."""
    g = torch.Generator().manual_seed(3)
    q, k = (torch.randn(2, n, 3, 4, generator=g, dtype=torch.float64).transpose(1, 2) for n in (7, 9))
    v = torch.randn(2, 9, 3, 5, generator=g, dtype=torch.float64).transpose(1, 2)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    assert not q.is_contiguous()
    out = attention(q, k, v, None, is_causal, 0.3)
    ref = reference(q, k, v, None, is_causal, 0.3)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(2, 7, 3, 5, generator=g, dtype=torch.float64).transpose(1, 2)
    for ours, theirs in zip(torch.autograd.grad(out, (q, k, v), grad), torch.autograd.grad(ref, (q, k, v), grad)):
        torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("bias_shape", [None, (7,), (5, 1), (3, 5, 7), (2, 1, 1, 7), (2, 3, 5, 7)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_opcheck(bias_shape, is_causal):
    q, k, v, bias = make_inputs(bias_shape=bias_shape)
    torch.library.opcheck(attention, (q, k, v, bias, is_causal))


def test_opcheck_internal_ops():
    q, k, v, bias = make_inputs(grad=False)
    torch.library.opcheck(torch.ops.slideformer._attention_forward, (q, k, v, bias, False, None))
    out, lse = torch.ops.slideformer._attention_forward(q, k, v, bias, False, None)
    grad = torch.randn_like(out)
    torch.library.opcheck(torch.ops.slideformer._attention_backward,
                          (grad, q, k, v, bias, out, lse, False, None, True))


@pytest.mark.parametrize("is_causal", [False, True])
def test_gradcheck_all_inputs(is_causal):
    q, k, v, bias = make_inputs(1, 2, 4, 5, 3, 2, bias_shape=(2, 1, 5))
    assert torch.autograd.gradcheck(lambda *x: attention(*x, is_causal), (q, k, v, bias))


def check_dtype_matches_float64(dtype, is_causal, put=lambda *tensors: list(tensors)):
    """Output and the four gradients in `dtype` (on the device `put` copies to) against float64 on
    the same rounded inputs and output gradient, per element."""
    low = put(*make_inputs(2, 2, 33, 40, 16, 16, bias_shape=(33, 40), dtype=dtype))
    assert_matches_float64(lambda *x: attention(*x, is_causal), lambda *x: reference(*x, is_causal), low, dtype,
                           ("output", "dq", "dk", "dv", "dbias"))


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_half_types_close_to_float64(dtype, is_causal):
    check_dtype_matches_float64(dtype, is_causal)


def test_bad_input_message():
    q, k, v, _ = make_inputs(grad=False)
    with pytest.raises(RuntimeError, match=r"slideformer::attention: key must have the head count H of query = 3"):
        attention(q, k[:, :2], v)
    with pytest.raises(RuntimeError, match=r"slideformer::attention: query must be float32, float64, float16 or bfloat16, got Long"):
        attention(q.long(), k, v)


def test_build_info():
    info = torch.ops.slideformer.build_info()
    assert info.startswith("slideformer ") and "torch 2.11" in info


def test_cpu_info_names_the_machine_as_lscpu_and_torch_see_it():
    lscpu = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True,
                                                                 check=True).stdout.splitlines() if ":" in line)
    info = torch.ops.slideformer.cpu_info()
    isa = torch.ops.slideformer.build_info().split("cpu ")[1].split(",")[0]
    assert info == (f"{lscpu['Model name'].strip()} ({lscpu['Vendor ID'].strip()}), slideformer kernels {isa}, "
                    f"ATen {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")
    assert isa in ("avx512", "avx2", "default")


class BiasedAttention(torch.nn.Module):
    """A module holding a learnable relative-position style bias, calling the op."""

    def __init__(self, heads: int, tokens: int):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(heads, tokens, tokens) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.slideformer.attention(x, x, x, self.bias, False, None)


def scripted_function(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.ops.slideformer.attention(q, k, v, None, True, 0.5)


def test_torchscript_function_and_module_roundtrip_in_fresh_process(tmp_path, library_path):
    q, k, v, _ = make_inputs(bias_shape=None, grad=False)
    fn = torch.jit.script(scripted_function)
    torch.testing.assert_close(fn(q, k, v), reference(q, k, v, is_causal=True, scale=0.5))

    module = torch.jit.script(BiasedAttention(3, 5).double())
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    expected = module(x)
    torch.testing.assert_close(expected, reference(x, x, x, module.bias))
    model_path, io_path = tmp_path / "model.pt", tmp_path / "io.pt"
    module.save(str(model_path))
    torch.save({"x": x, "expected": expected}, io_path)
    code = (
        "import sys, torch\n"
        f"torch.ops.load_library({library_path!r})\n"
        f"m = torch.jit.load({str(model_path)!r})\n"
        f"io = torch.load({str(io_path)!r})\n"
        "torch.testing.assert_close(m(io['x']), io['expected'], rtol=0, atol=0)\n"
        "print('roundtrip ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "roundtrip ok" in result.stdout


def test_torch_export_roundtrip(tmp_path):
    module = BiasedAttention(3, 5).double()
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    program = torch.export.export(module, (x,))
    assert "slideformer.attention" in str(program.graph)
    torch.testing.assert_close(program.module()(x), module(x))
    path = tmp_path / "attention.pt2"
    torch.export.save(program, str(path))
    torch.testing.assert_close(torch.export.load(str(path)).module()(x), module(x))


def test_torch_compile_through_meta_kernel():
    q, k, v, bias = make_inputs()
    compiled = torch.compile(lambda *x: attention(*x, True), backend="aot_eager", fullgraph=True, dynamic=True)
    out = compiled(q, k, v, bias)
    torch.testing.assert_close(out, reference(q, k, v, bias, True))
    grads = torch.autograd.grad(out.sum(), (q, k, v, bias))
    expected = torch.autograd.grad(reference(q, k, v, bias, True).sum(), (q, k, v, bias))
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e)
