"""slide_attention's CUDA kernels from Python, on a GPU ([cuda], skipped without one) and on the
host execution of the same kernels ([emulated], tests/cuda_host): parity with the references of
test_slide_attention.py computed on the CPU, gradcheck, opcheck, CPU-vs-CUDA agreement in every
dtype, determinism and bad inputs. Registration is checked in test_cuda.py."""
import pytest
import torch

from precision import assert_device_and_cpu_agree, seeded_output_gradient
from test_slide_attention import (PARITY_SHAPES, SLIDE_RESULT_NAMES, all_inputs, check_dtype_matches_float64, make_inputs,
                                  merged_shift, reference_clamp_gather, reference_merged, reference_slide_transformer)

slide_attention = torch.ops.slideformer.slide_attention


def reference(border, q, k, v, kernel_size, dilation, key_bias, learned_weight, learned_bias):
    if border == "zeros":
        return reference_slide_transformer(q, k, v, kernel_size, dilation, key_bias, learned_weight, learned_bias)
    d = q.shape[-1]
    weight, bias = (merged_shift(learned_weight, learned_bias, d, kernel_size ** 2) if learned_weight is not None
                    else (None, None))
    return reference_clamp_gather(q, k, v, kernel_size, dilation, key_bias, weight, bias)


@pytest.mark.parametrize("shape", PARITY_SHAPES)
@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("with_params", [True, False])
def test_cuda_matches_reference_forward_and_backward(cuda_kernels, shape, border, with_params):
    b, h, y, x, d, ks, dil = shape
    cuda_kernels.expect_launches = b * h * y * x > 0
    cpu = make_inputs(b, h, y, x, d, ks, params=with_params)
    gpu = cuda_kernels.put(*cpu)
    q, k, v, key_bias, learned_weight, learned_bias = gpu
    weight, bias = merged_shift(learned_weight, learned_bias, d, ks * ks) if with_params else (None, None)
    out = slide_attention(q, k, v, ks, dil, key_bias, weight, bias, border)
    assert out.device == cuda_kernels.device
    ref = reference(border, *cpu[:3], ks, dil, *cpu[3:])
    torch.testing.assert_close(out.cpu(), ref)
    if out.numel():
        grad = torch.randn_like(ref)
        ours = torch.autograd.grad(out, [t for t in gpu if t is not None], grad.to(cuda_kernels.device))
        theirs = torch.autograd.grad(ref, [t for t in cpu if t is not None], grad)
        for a, e in zip(ours, theirs):
            torch.testing.assert_close(a.cpu(), e)


@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_cuda_gradcheck_all_six_inputs(cuda_kernels, border):
    inputs = cuda_kernels.put(*all_inputs())
    assert torch.autograd.gradcheck(
        lambda q, k, v, kb, w, b: slide_attention(q, k, v, 3, 2, kb, w, b, border), inputs)


@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("with_params", [True, False])
def test_cuda_opcheck(cuda_kernels, border, with_params):
    q, k, v, key_bias, weight, bias = cuda_kernels.put(*all_inputs((2, 2, 4, 5, 3)))
    params = (key_bias, weight, bias) if with_params else (None, None, None)
    torch.library.opcheck(slide_attention, (q, k, v, 3, 2, *params, border, None))


def test_cuda_opcheck_internal_ops(cuda_kernels):
    q, k, v, key_bias, weight, bias = (t.detach() for t in cuda_kernels.put(*all_inputs((2, 2, 4, 5, 3))))
    args = (q, k, v, 3, 1, key_bias, weight, bias, "clamp", 0.5)
    torch.library.opcheck(torch.ops.slideformer._slide_attention_forward, args)
    out, lse = torch.ops.slideformer._slide_attention_forward(*args)
    assert lse.shape == q.shape[:4] and lse.dtype == torch.float64 and lse.device == cuda_kernels.device
    torch.library.opcheck(torch.ops.slideformer._slide_attention_backward,
                          (torch.randn_like(out), q, k, v, out, lse, 3, 1, key_bias, weight, bias, "clamp", 0.5,
                           [True, False, True]))


@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_half_types_close_to_float64(cuda_kernels, dtype, border):
    check_dtype_matches_float64(dtype, border, (2, 2, 9, 11, 16), put=cuda_kernels.put)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_cuda_agrees_with_cpu(cuda_kernels, dtype, border):
    """Output and the six gradients of the CUDA and the CPU kernels on the same inputs: equal to
    1e-10 in float64; in a reduced dtype, each within agreement_factor(dtype) units of roundoff of the
    float64 reference on the same rounded inputs, per element (the parameter gradients, sums over
    every pixel, included)."""
    # Several tiles per map and two channel chunks (Slide-Swin-T's head dim); the GPU takes stage 1's
    # 56 x 56 map, the host a smaller one.
    size = 56 if cuda_kernels.name == "cuda" else 20
    cpu = [t.detach().to(dtype).requires_grad_() for t in all_inputs((2, 3, size, size, 32))]
    gpu = cuda_kernels.put(*cpu)
    with cuda_kernels.cpu_kernels():
        out_cpu = slide_attention(*cpu[:3], 3, 1, *cpu[3:], border)
        grad = seeded_output_gradient(out_cpu.shape, dtype)
        results_cpu = [out_cpu, *torch.autograd.grad(out_cpu, cpu, grad)]
    out_gpu = slide_attention(*gpu[:3], 3, 1, *gpu[3:], border)
    assert out_gpu.device == cuda_kernels.device and out_gpu.dtype == dtype
    results_gpu = [out_gpu, *torch.autograd.grad(out_gpu, gpu, grad.to(cuda_kernels.device))]
    def exact_results():
        exact = [t.detach().double().requires_grad_() for t in cpu]
        ref = reference_merged(border, *exact[:3], 3, 1, *exact[3:])
        return [ref, *torch.autograd.grad(ref, exact, grad.double())]

    assert_device_and_cpu_agree([f"{border} {name}" for name in SLIDE_RESULT_NAMES], cuda_kernels.name, results_gpu,
                                results_cpu, exact_results, dtype)


def test_cuda_backward_is_deterministic(cuda_kernels):
    inputs = [t.detach().float().requires_grad_() for t in cuda_kernels.put(*all_inputs((2, 3, 17, 19, 32)))]

    def grads():
        out = slide_attention(*inputs[:3], 3, 1, *inputs[3:])
        return torch.autograd.grad(out.square().sum(), inputs)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_cuda_bad_inputs_name_op_and_devices(cuda_kernels):
    cuda_kernels.expect_launches = False
    q = torch.randn(2, 3, 5, 6, 4, device=cuda_kernels.device)
    other = "meta" if cuda_kernels.name == "emulated" else "cpu"
    with pytest.raises(RuntimeError, match=rf"slideformer::slide_attention: key must be on the device "
                                           rf"of query \({q.device}\), got {other}"):
        slide_attention(q, q.to(other), q, 3)
    with pytest.raises(RuntimeError, match=rf"slideformer::slide_attention: shift_weight must be on the device "
                                           rf"of query \({q.device}\), got {other}"):
        slide_attention(q, q, q, 3, shift_weight=torch.randn(4, 9, 9, device=other))
    with pytest.raises(RuntimeError, match="slideformer::slide_attention: kernel_size must be odd and >= 1, got 4"):
        slide_attention(q, q, q, 4)
