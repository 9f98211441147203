"""Per-element error bounds for results computed in a reduced dtype, the Python twin of
expect_close_in_dtype in tests/cpp/test_helpers.h.

A result in float32, float16 or bfloat16 is compared with the float64 result on the same rounded
inputs, element by element:  |actual - expected| <= factor * u(dtype) * (|expected| + rms(expected)).
Rounding errors of a sum scale with its terms, so an entry that cancels to near 0 is allowed the
error of a typical entry (the rms), never one relative to the largest entry of the tensor."""
import torch

# Units of roundoff a half-type result (float16, bfloat16) may be off by (the C++ suites use the
# same): the kernels accumulate in float32 and round once to the half type (observed: about one
# unit), so a half-type rounding inside the computation (of a softmax sum, a logit) exceeds it.
HALF_TYPE_FACTOR = 8
# float32 results carry the kernels' own rounding, which grows with the length of the sums: within
# 64 units of the float64 result on the tests' inputs; on the agreement tests' inputs attention's
# dk reaches 75 units (Nq = 70, Nk = 100; worst of 40 draws of the output gradient) and slide
# attention's CPU fast path 77 (D * k*k = 288 products per entry).
FLOAT32_FACTOR = 64
FLOAT32_AGREEMENT_FACTOR = 128


def reference_factor(dtype):
    return FLOAT32_FACTOR if dtype == torch.float32 else HALF_TYPE_FACTOR


def agreement_factor(dtype):
    return FLOAT32_AGREEMENT_FACTOR if dtype == torch.float32 else HALF_TYPE_FACTOR


def unit_roundoff(dtype):
    """2^-24 float32, 2^-11 float16, 2^-8 bfloat16, 2^-53 float64."""
    return torch.finfo(dtype).eps / 2


def seeded_output_gradient(shape, dtype):
    """An output gradient on the CPU that does not come from the global generator, so a test's
    result does not depend on the tests that ran before it."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)


def assert_close_in_dtype(actual, expected, dtype, factor=None, what="result"):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    if expected.numel() == 0:
        return
    factor = reference_factor(dtype) if factor is None else factor
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert not a.isnan().any(), f"{what}: NaN in result"
    bound = factor * unit_roundoff(dtype) * (e.abs() + e.square().mean().sqrt())
    worst = ((a - e).abs() / bound).max().item()
    assert worst <= 1, f"{what}: worst |actual - expected| / bound = {worst:.3g} ({dtype}, factor {factor})"


def assert_matches_float64(op, reference, low, dtype, names, what=""):
    """op(*low) in `dtype` (on low's device) against reference(*float64 copies of low) on the CPU:
    the output and the gradients of every input in `low`, for one output gradient rounded to dtype,
    each per element (assert_close_in_dtype); `names` names the output and then each gradient."""
    exact = [t.detach().cpu().double().requires_grad_() for t in low]
    out = op(*low)
    ref = reference(*exact)
    grad = seeded_output_gradient(out.shape, dtype)
    ours = [out, *torch.autograd.grad(out, low, grad.to(out.device))]
    theirs = [ref, *torch.autograd.grad(ref, exact, grad.double())]
    for name, a, e in zip(names, ours, theirs):
        assert_close_in_dtype(a, e, dtype, what=f"{what}{name}")


def assert_device_and_cpu_agree(names, device_name, on_device, on_cpu, exact, dtype):
    """The results (output, then gradients) of a device's kernels and of the CPU kernels on the same
    inputs: equal to 1e-10 in float64; in a reduced dtype, each within agreement_factor(dtype) units
    of roundoff of the float64 results exact() computes on the same rounded inputs, per element."""
    if dtype == torch.float64:
        for name, d, c in zip(names, on_device, on_cpu):
            torch.testing.assert_close(d.cpu(), c, rtol=1e-10, atol=1e-10, msg=name)
        return
    factor = agreement_factor(dtype)
    for name, d, c, e in zip(names, on_device, on_cpu, exact()):
        assert_close_in_dtype(d, e, dtype, factor, what=f"{device_name} {name}")
        assert_close_in_dtype(c, e, dtype, factor, what=f"cpu {name}")
