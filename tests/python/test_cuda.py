"""The CUDA kernels from Python: registration of every op (checked without a GPU), then the
parity, opcheck, gradcheck, reduced-precision and bad-input cases of test_attention.py on a GPU,
CPU-vs-CUDA agreement and determinism (skipped without one). slide_attention: test_cuda_slide.py."""
import pytest
import torch

from conftest import requires_cuda
from test_attention import assert_matches_reference, make_inputs, reference

OPS = torch.ops.slideformer
BUILT_WITH_CUDA = "cuda sm_80;sm_90" in OPS.build_info()
SLIDEFORMER_OPS = ["attention", "_attention_forward", "_attention_backward",
                   "slide_attention", "_slide_attention_forward", "_slide_attention_backward"]


def on_cuda(*tensors):
    """Copies of the (CPU) inputs on the GPU, as leaves with the same requires_grad."""
    return [None if t is None else t.detach().cuda().requires_grad_(t.requires_grad) for t in tensors]


@pytest.mark.skipif(not BUILT_WITH_CUDA, reason="built without CUDA kernels")
@pytest.mark.parametrize("name", SLIDEFORMER_OPS)
def test_dispatch_dump_lists_a_cuda_kernel(name):
    dump = torch._C._dispatch_dump(f"slideformer::{name}")
    assert any(line.startswith("CUDA:") for line in dump.splitlines()), dump


@requires_cuda
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 4, 6), (1, 2, 130, 520, 16, 8), (0, 2, 3, 3, 4, 4),
                                   (1, 1, 70, 40, 40, 72)])
def test_cuda_matches_reference_forward_and_backward(shape, is_causal):
    b, h, nq, nk, d, dv = shape
    assert_matches_reference(*on_cuda(*make_inputs(b, h, nq, nk, d, dv, bias_shape=(h, nq, nk))),
                             is_causal)


@requires_cuda
@pytest.mark.parametrize("bias_shape", [None, (7,), (5, 1), (3, 5, 7), (2, 1, 1, 7), (2, 3, 5, 7)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_opcheck(bias_shape, is_causal):
    q, k, v, bias = on_cuda(*make_inputs(bias_shape=bias_shape))
    torch.library.opcheck(OPS.attention, (q, k, v, bias, is_causal))


@requires_cuda
def test_cuda_opcheck_internal_ops():
    q, k, v, bias = on_cuda(*make_inputs(grad=False))
    torch.library.opcheck(OPS._attention_forward, (q, k, v, bias, False, None))
    out, lse = OPS._attention_forward(q, k, v, bias, False, None)
    grad = torch.randn_like(out)
    torch.library.opcheck(OPS._attention_backward, (grad, q, k, v, bias, out, lse, False, None, True))


@requires_cuda
@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_gradcheck_all_inputs(is_causal):
    inputs = on_cuda(*make_inputs(1, 2, 4, 5, 3, 2, bias_shape=(2, 1, 5)))
    assert torch.autograd.gradcheck(lambda *x: OPS.attention(*x, is_causal), inputs)


@requires_cuda
def test_cuda_half_types_close_to_float64():
    for dtype, tol in [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)]:
        q, k, v, bias = on_cuda(*make_inputs(2, 2, 33, 40, 16, 16, bias_shape=(33, 40), dtype=dtype,
                                             grad=False))
        out = OPS.attention(q, k, v, bias)
        assert out.dtype == dtype and out.is_cuda
        ref = reference(*(t.double() for t in (q, k, v, bias)))
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@requires_cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5),
                                       (torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_agrees_with_cpu(dtype, tol, causal):
    cpu = make_inputs(2, 3, 70, 100, 40, 33, bias_shape=(3, 1, 100), dtype=dtype)
    gpu = on_cuda(*cpu)
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
    q, k, v, bias = on_cuda(*make_inputs(2, 3, 37, 45, 16, 24, bias_shape=(1, 3, 37, 45)))
    out = OPS.attention(q, k, v, bias, True)
    torch.testing.assert_close(out, reference(q, k, v, bias, True))
    grads = [torch.autograd.grad(OPS.attention(q, k, v, bias, True).square().sum(), [q, k, v, bias])
             for _ in range(2)]
    for first, second in zip(*grads):
        assert torch.equal(first, second)


@requires_cuda
def test_cuda_bad_inputs_name_op_and_devices():
    q, k, v, _ = on_cuda(*make_inputs(bias_shape=None, dtype=torch.float32, grad=False))
    with pytest.raises(RuntimeError, match=r"slideformer::attention: key must have the head count H of query = 3"):
        OPS.attention(q, k[:, :2], v)
    with pytest.raises(RuntimeError, match=r"slideformer::attention: key must be on the device "
                                           r"of query \(cuda:0\), got cpu"):
        OPS.attention(q, k.cpu(), v)
    with pytest.raises(RuntimeError, match=r"slideformer::attention: query must be float32, "
                                           r"float64, float16 or bfloat16, got Int"):
        OPS.attention(q.int(), k, v)
