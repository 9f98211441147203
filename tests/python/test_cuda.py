"""The CUDA kernels from Python: registration of every op (checked without a GPU), then the
parity, opcheck, gradcheck, reduced-precision and bad-input cases of test_attention.py, CPU-vs-CUDA
agreement and determinism, each on a GPU ([cuda], skipped without one) and on the host execution of
the same kernels ([emulated], tests/cuda_host). slide_attention: test_cuda_slide.py."""
import pytest
import torch

from test_attention import assert_matches_reference, make_inputs, reference

OPS = torch.ops.slideformer
BUILT_WITH_CUDA = "cuda sm_80;sm_90" in OPS.build_info()
SLIDEFORMER_OPS = ["attention", "_attention_forward", "_attention_backward",
                   "slide_attention", "_slide_attention_forward", "_slide_attention_backward"]


@pytest.mark.skipif(not BUILT_WITH_CUDA, reason="built without CUDA kernels")
@pytest.mark.parametrize("name", SLIDEFORMER_OPS)
def test_dispatch_dump_lists_a_cuda_kernel(name):
    dump = torch._C._dispatch_dump(f"slideformer::{name}")
    assert any(line.startswith("CUDA:") for line in dump.splitlines()), dump


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 4, 6), (1, 2, 130, 520, 16, 8), (0, 2, 3, 3, 4, 4),
                                   (1, 1, 70, 40, 40, 72)])
def test_cuda_matches_reference_forward_and_backward(cuda_kernels, shape, is_causal):
    b, h, nq, nk, d, dv = shape
    cuda_kernels.expect_launches = b * h * nq > 0
    assert_matches_reference(*cuda_kernels.put(*make_inputs(b, h, nq, nk, d, dv, bias_shape=(h, nq, nk))),
                             is_causal)


@pytest.mark.parametrize("bias_shape", [None, (7,), (5, 1), (3, 5, 7), (2, 1, 1, 7), (2, 3, 5, 7)])
@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_opcheck(cuda_kernels, bias_shape, is_causal):
    q, k, v, bias = cuda_kernels.put(*make_inputs(bias_shape=bias_shape))
    torch.library.opcheck(OPS.attention, (q, k, v, bias, is_causal))


def test_cuda_opcheck_internal_ops(cuda_kernels):
    q, k, v, bias = cuda_kernels.put(*make_inputs(grad=False))
    torch.library.opcheck(OPS._attention_forward, (q, k, v, bias, False, None))
    out, lse = OPS._attention_forward(q, k, v, bias, False, None)
    grad = torch.randn_like(out)
    torch.library.opcheck(OPS._attention_backward, (grad, q, k, v, bias, out, lse, False, None, True))


@pytest.mark.parametrize("is_causal", [False, True])
def test_cuda_gradcheck_all_inputs(cuda_kernels, is_causal):
    inputs = cuda_kernels.put(*make_inputs(1, 2, 4, 5, 3, 2, bias_shape=(2, 1, 5)))
    assert torch.autograd.gradcheck(lambda *x: OPS.attention(*x, is_causal), inputs)


def test_cuda_half_types_close_to_float64(cuda_kernels):
    for dtype, tol in [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)]:
        q, k, v, bias = cuda_kernels.put(*make_inputs(2, 2, 33, 40, 16, 16, bias_shape=(33, 40), dtype=dtype,
                                                      grad=False))
        out = OPS.attention(q, k, v, bias)
        assert out.dtype == dtype and out.device == cuda_kernels.device
        ref = reference(*(t.double() for t in (q, k, v, bias)))
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-5),
                                       (torch.float16, 1e-2), (torch.bfloat16, 6e-2)])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_agrees_with_cpu(cuda_kernels, dtype, tol, causal):
    cpu = make_inputs(2, 3, 70, 100, 40, 33, bias_shape=(3, 1, 100), dtype=dtype)
    gpu = cuda_kernels.put(*cpu)
    with cuda_kernels.cpu_kernels():
        out_cpu = OPS.attention(*cpu, causal)
        grad = torch.randn_like(out_cpu)
        grads_cpu = torch.autograd.grad(out_cpu, cpu, grad)
    out_gpu = OPS.attention(*gpu, causal)
    assert out_gpu.device == cuda_kernels.device and out_gpu.dtype == dtype
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=tol, atol=tol)
    grads_gpu = torch.autograd.grad(out_gpu, gpu, grad.to(cuda_kernels.device))
    for g_gpu, g_cpu in zip(grads_gpu, grads_cpu):
        torch.testing.assert_close(g_gpu.cpu(), g_cpu, rtol=4 * tol, atol=4 * tol)


def test_cuda_matches_reference_and_is_deterministic(cuda_kernels):
    q, k, v, bias = cuda_kernels.put(*make_inputs(2, 3, 37, 45, 16, 24, bias_shape=(1, 3, 37, 45)))
    out = OPS.attention(q, k, v, bias, True)
    torch.testing.assert_close(out, reference(q, k, v, bias, True))
    grads = [torch.autograd.grad(OPS.attention(q, k, v, bias, True).square().sum(), [q, k, v, bias])
             for _ in range(2)]
    for first, second in zip(*grads):
        assert torch.equal(first, second)


def test_cuda_bad_inputs_name_op_and_devices(cuda_kernels):
    cuda_kernels.expect_launches = False
    q, k, v, _ = cuda_kernels.put(*make_inputs(bias_shape=None, dtype=torch.float32, grad=False))
    other = "meta" if cuda_kernels.name == "emulated" else "cpu"
    with pytest.raises(RuntimeError, match=r"slideformer::attention: key must have the head count H of query = 3"):
        OPS.attention(q, k[:, :2], v)
    with pytest.raises(RuntimeError, match=rf"slideformer::attention: key must be on the device "
                                           rf"of query \({q.device}\), got {other}"):
        OPS.attention(q, k.to(other), v)
    with pytest.raises(RuntimeError, match=r"slideformer::attention: query must be float32, "
                                           r"float64, float16 or bfloat16, got Int"):
        OPS.attention(q.int(), k, v)
