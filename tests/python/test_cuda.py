"""The CUDA kernels from Python: registration of every op (checked without a GPU), then the
parity, opcheck, gradcheck, reduced-precision and bad-input cases of test_attention.py, CPU-vs-CUDA
agreement and determinism, each on a GPU ([cuda], skipped without one) and on the host execution of
the same kernels ([emulated], tests/cuda_host). slide_attention: test_cuda_slide.py."""
import pytest
import torch

from precision import assert_device_and_cpu_agree, seeded_output_gradient
from test_attention import assert_matches_reference, check_dtype_matches_float64, make_inputs, reference

OPS = torch.ops.slideformer
BUILT_WITH_CUDA = "cuda sm_80;sm_90" in OPS.build_info()
SLIDEFORMER_OPS = ["attention", "_attention_forward", "_attention_backward",
                   "slide_attention", "_slide_attention_forward", "_slide_attention_backward",
                   "slide_attention_nd", "_slide_attention_nd_forward", "_slide_attention_nd_backward"]


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


@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_half_types_close_to_float64(cuda_kernels, dtype, is_causal):
    check_dtype_matches_float64(dtype, is_causal, cuda_kernels.put)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_agrees_with_cpu(cuda_kernels, dtype, causal):
    """Output and gradients of the CUDA and the CPU kernels on the same inputs: equal to 1e-10 in
    float64; in a reduced dtype, each within agreement_factor(dtype) units of roundoff of the float64
    reference on the same rounded inputs, per element."""
    cpu = make_inputs(2, 3, 70, 100, 40, 33, bias_shape=(3, 1, 100), dtype=dtype)
    gpu = cuda_kernels.put(*cpu)
    with cuda_kernels.cpu_kernels():
        out_cpu = OPS.attention(*cpu, causal)
        grad = seeded_output_gradient(out_cpu.shape, dtype)
        results_cpu = [out_cpu, *torch.autograd.grad(out_cpu, cpu, grad)]
    out_gpu = OPS.attention(*gpu, causal)
    assert out_gpu.device == cuda_kernels.device and out_gpu.dtype == dtype
    results_gpu = [out_gpu, *torch.autograd.grad(out_gpu, gpu, grad.to(cuda_kernels.device))]
    def exact_results():
        exact = [t.detach().double().requires_grad_() for t in cpu]
        ref = reference(*exact, causal)
        return [ref, *torch.autograd.grad(ref, exact, grad.double())]

    assert_device_and_cpu_agree(("output", "dq", "dk", "dv", "dbias"), cuda_kernels.name, results_gpu, results_cpu,
                                exact_results, dtype)


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
