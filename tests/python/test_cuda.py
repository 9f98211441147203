"""The CUDA kernels from Python: registration (checked without a GPU), then opcheck, gradcheck,
CPU-vs-CUDA agreement and bad inputs on a GPU (skipped without one)."""
import math

import pytest
import torch

from conftest import requires_cuda

OPS = torch.ops.slideformer
BUILT_WITH_CUDA = "cuda sm_80;sm_90" in OPS.build_info()
ATTENTION_OPS = ["attention", "_attention_forward", "_attention_backward"]


def reference_attention(q, k, v, bias=None, causal=False, scale=None):
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = q @ k.transpose(-2, -1) * scale
    if bias is not None:
        logits = logits + bias
    if causal:
        nq, nk = q.shape[2], k.shape[2]
        mask = torch.ones(nq, nk, dtype=torch.bool, device=q.device).triu(nk - nq + 1)
        logits = logits.masked_fill(mask, float("-inf"))
    return torch.softmax(logits, -1).nan_to_num(0.0) @ v


@pytest.mark.skipif(not BUILT_WITH_CUDA, reason="built without CUDA kernels")
@pytest.mark.parametrize("name", ATTENTION_OPS)
def test_dispatch_dump_lists_a_cuda_kernel(name):
    dump = torch._C._dispatch_dump(f"slideformer::{name}")
    assert any(line.startswith("CUDA:") for line in dump.splitlines()), dump


def make_inputs(device, dtype, b=2, h=3, nq=37, nk=45, d=16, dv=24, bias_shape=(1, 3, 37, 45)):
    gen = torch.Generator().manual_seed(0)
    shapes = [(b, h, nq, d), (b, h, nk, d), (b, h, nk, dv)]
    if bias_shape is not None:
        shapes.append(bias_shape)
    return [torch.randn(s, generator=gen).to(device=device, dtype=dtype).requires_grad_()
            for s in shapes]


@requires_cuda
@pytest.mark.parametrize("causal", [False, True])
def test_opcheck_cuda(causal):
    q, k, v, bias = make_inputs("cuda", torch.float32)
    torch.library.opcheck(OPS.attention.default, (q, k, v, bias, causal, None))
    torch.library.opcheck(OPS._attention_forward.default, (q, k, v, bias, causal, 0.5))


@requires_cuda
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_cuda_float64(causal):
    inputs = make_inputs("cuda", torch.float64, b=1, h=2, nq=5, nk=7, d=3, dv=4,
                         bias_shape=(2, 1, 7))
    assert torch.autograd.gradcheck(
        lambda q, k, v, bias: OPS.attention(q, k, v, bias, causal), inputs)


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5),
                                       (torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_agrees_with_cpu(dtype, tol, causal):
    cpu = make_inputs("cpu", dtype, nq=70, nk=100, d=40, dv=33, bias_shape=(3, 1, 100))
    gpu = [x.detach().cuda().requires_grad_() for x in cpu]
    out_cpu = OPS.attention(*cpu, causal)
    out_gpu = OPS.attention(*gpu, causal)
    assert out_gpu.is_cuda and out_gpu.dtype == dtype
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=tol, atol=tol)
    grad = torch.randn_like(out_cpu)
    grads_cpu = torch.autograd.grad(out_cpu, cpu, grad)
    grads_gpu = torch.autograd.grad(out_gpu, gpu, grad.cuda())
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=4 * tol, atol=4 * tol)


@requires_cuda
def test_cuda_matches_reference_and_is_deterministic():
    q, k, v, bias = make_inputs("cuda", torch.float64)
    out = OPS.attention(q, k, v, bias, True)
    torch.testing.assert_close(out, reference_attention(q, k, v, bias, True))
    grads = [torch.autograd.grad(OPS.attention(q, k, v, bias, True).square().sum(), [q, k, v, bias])
             for _ in range(2)]
    for first, second in zip(*grads):
        assert torch.equal(first, second)


@requires_cuda
def test_cuda_bad_inputs_name_op_and_devices():
    q, k, v, _ = make_inputs("cuda", torch.float32)
    with pytest.raises(RuntimeError, match=r"slideformer::attention: key must be on the device "
                                           r"of query \(cuda:0\), got cpu"):
        OPS.attention(q, k.cpu(), v)
    with pytest.raises(RuntimeError, match=r"slideformer::attention: query must be float32, "
                                           r"float64, float16 or bfloat16, got Int"):
        OPS.attention(q.int(), k, v)
