"""slide_attention_nd's CUDA kernels from Python, on a GPU ([cuda], skipped without one) and on the
host execution of the same kernels ([emulated], tests/cuda_host): parity with the composites of
test_slide_attention_nd.py computed on the CPU, gradcheck, opcheck, determinism."""
import pytest
import torch

from test_slide_attention_nd import PARITY_CASES, case_id, make_inputs, reference

slide_attention_nd = torch.ops.slideformer.slide_attention_nd


@pytest.mark.parametrize("case", PARITY_CASES, ids=case_id)
@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("causal", [False, True])
def test_cuda_matches_composite_forward_and_backward(cuda_kernels, case, border, causal):
    shape, kernel, dilation = case
    cuda_kernels.expect_launches = shape[0] > 0
    cpu = make_inputs(shape, kernel)
    gpu = cuda_kernels.put(*cpu)
    out = slide_attention_nd(*gpu[:3], kernel, dilation, *gpu[3:], border, causal)
    assert out.device == cuda_kernels.device
    ref = reference(*cpu[:3], kernel, dilation, *cpu[3:], border, causal)
    torch.testing.assert_close(out.cpu(), ref)
    if out.numel():
        grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=ref.dtype)
        ours = torch.autograd.grad(out, gpu, grad.to(cuda_kernels.device))
        theirs = torch.autograd.grad(ref, cpu, grad)
        for name, a, e in zip(["q", "k", "v", "key_bias", "shift_weight", "shift_bias"], ours, theirs):
            torch.testing.assert_close(a.cpu(), e, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("border,causal", [("zeros", True), ("clamp", False)])
def test_cuda_gradcheck_all_six_inputs(cuda_kernels, border, causal):
    inputs = cuda_kernels.put(*make_inputs((1, 2, 3, 2, 4, 2), [3, 1, 3]))
    assert torch.autograd.gradcheck(
        lambda q, k, v, kb, w, b: slide_attention_nd(q, k, v, [3, 1, 3], [2], kb, w, b, border, causal), inputs)


def test_cuda_opcheck(cuda_kernels):
    q, k, v, *params = cuda_kernels.put(*make_inputs((2, 2, 7, 3), [3]))
    torch.library.opcheck(slide_attention_nd, (q, k, v, [3], [2], *params, "clamp", True, None))
    q, k, v, *params = (t.detach() for t in cuda_kernels.put(*make_inputs((1, 2, 3, 2, 4, 2), [3])))
    args = (q, k, v, [3], [1], *params, "zeros", True, 0.5)
    torch.library.opcheck(torch.ops.slideformer._slide_attention_nd_forward, args)
    out, lse = torch.ops.slideformer._slide_attention_nd_forward(*args)
    torch.library.opcheck(torch.ops.slideformer._slide_attention_nd_backward,
                          (torch.randn_like(out), q, k, v, out, lse, [3], [1], *params, "zeros", True, 0.5,
                           [True, True, False]))


def test_cuda_backward_is_deterministic(cuda_kernels):
    inputs = [t.detach().float().requires_grad_() for t in cuda_kernels.put(*make_inputs((2, 2, 3, 5, 6, 16), [3]))]

    def grads():
        out = slide_attention_nd(*inputs[:3], [3], [1], *inputs[3:], "clamp", True)
        return torch.autograd.grad(out.square().sum(), inputs)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)
