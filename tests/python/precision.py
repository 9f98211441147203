"""Per-element error bounds for results computed in a reduced dtype, the Python twin of
expect_close_in_dtype in tests/cpp/test_helpers.h.

A result in float32, float16 or bfloat16 is compared with the float64 result on the same rounded
inputs, element by element:  |actual - expected| <= factor * u(dtype) * (|expected| + rms(expected)).
Rounding errors of a sum scale with its terms, so an entry that cancels to near 0 is allowed the
error of a typical entry (the rms), never one relative to the largest entry of the tensor."""
import torch

# Units of roundoff a result in a reduced dtype may be off by (the C++ suites use the same).
HALF_TYPE_FACTOR = 64


def unit_roundoff(dtype):
    """2^-24 float32, 2^-11 float16, 2^-8 bfloat16, 2^-53 float64."""
    return torch.finfo(dtype).eps / 2


def assert_close_in_dtype(actual, expected, dtype, factor=HALF_TYPE_FACTOR, what="result"):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    if expected.numel() == 0:
        return
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    assert not a.isnan().any(), f"{what}: NaN in result"
    bound = factor * unit_roundoff(dtype) * (e.abs() + e.square().mean().sqrt())
    worst = ((a - e).abs() / bound).max().item()
    assert worst <= 1, f"{what}: worst |actual - expected| / bound = {worst:.3g} ({dtype}, factor {factor})"
