"""Bad input to every schema of the library (docs/operators.md, "One input check per operator").

Each case asserts the whole message "<op>: <argument> must <expectation>, got <actual>". The public
operators get tables of distinct mistakes; the internal `_forward` / `_backward` schemas, which
TorchScript and Python can call with anything, get one case per tensor argument, run by the CPU,
Meta, host-executed CUDA and (on a GPU) CUDA kernels. Zero-size and huge (expanded) inputs run or
fail clearly, NaN and Inf propagate as documented.
"""
import math
import re

import pytest
import torch

from conftest import cuda_host_execution

ops = torch.ops.slideformer
ATTENTION = "slideformer::attention: "
SLIDE = "slideformer::slide_attention: "
HUGE = 2**40  # sizes of expanded views: nothing of that size may ever be allocated


def assert_raises(message, fn, **kwargs):
    with pytest.raises(RuntimeError, match=re.escape(message)):
        fn(**kwargs)


def randn(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype, generator=torch.Generator().manual_seed(len(shape)))


def huge(t, dim, size=HUGE):
    """A view of t with dimension `dim` (of size 1) expanded to `size`, stride 0, no allocation."""
    shape = list(t.shape)
    shape[dim] = size
    return t.expand(shape)


# ------------------------------------------------------------------------------------------------
# attention: q (2, 3, 5, 4), k (2, 3, 7, 4), v (2, 3, 7, 6).
Q, K, V = randn(2, 3, 5, 4), randn(2, 3, 7, 4), randn(2, 3, 7, 6)
SHAPE = "[2, 3, 5, 7]"  # (B, H, Nq, Nk)


def bias_error(shape):
    return f"attn_bias must be broadcastable to (B, H, Nq, Nk) = {SHAPE}, got shape {shape}"


ATTENTION_CASES = {
    # ranks
    "query_rank_3": ({"query": Q[0]}, "query must have 4 dimensions (B, H, Nq, D), got 3 (shape [3, 5, 4])"),
    "query_rank_5": ({"query": Q[None]}, "query must have 4 dimensions (B, H, Nq, D), got 5"),
    "query_rank_0": ({"query": torch.tensor(1.0)}, "query must have 4 dimensions (B, H, Nq, D), got 0 (shape [])"),
    "key_rank_3": ({"key": K[0]}, "key must have 4 dimensions (B, H, Nk, D), got 3"),
    "key_rank_1": ({"key": K.flatten()}, "key must have 4 dimensions (B, H, Nk, D), got 1"),
    "value_rank_5": ({"value": V[None]}, "value must have 4 dimensions (B, H, Nk, Dv), got 5"),
    "bias_rank_5": ({"attn_bias": randn(1, 2, 3, 5, 7)},
                    f"attn_bias must have at most 4 dimensions (broadcastable to (B, H, Nq, Nk) = {SHAPE}), "
                    "got shape [1, 2, 3, 5, 7]"),
    # sizes
    "key_batch": ({"key": K[:1]}, "key must have the batch size B of query = 2 in dimension 0, got 1"),
    "key_heads": ({"key": K[:, :2]}, "key must have the head count H of query = 3 in dimension 1, got 2"),
    "key_head_dim": ({"key": randn(2, 3, 7, 5)}, "key must have the head dim D of query = 4 in dimension 3, got 5"),
    "value_batch": ({"value": V[:1]}, "value must have the batch size B of query = 2 in dimension 0, got 1"),
    "value_heads": ({"value": V[:, :1]}, "value must have the head count H of query = 3 in dimension 1, got 1"),
    "value_key_count": ({"value": V[:, :, :6]}, "value must have the key count Nk of key = 7 in dimension 2, got 6"),
    "key_count_zero_value_not": ({"key": K[:, :, :0]}, "value must have the key count Nk of key = 0 in dimension 2, got 7"),
    "query_head_dim_zero": ({"query": Q[..., :0]}, "key must have the head dim D of query = 0 in dimension 3, got 4"),
    "query_batch_zero": ({"query": Q[:0]}, "key must have the batch size B of query = 0 in dimension 0, got 2"),
    "bias_query_count": ({"attn_bias": randn(3, 4, 7)}, bias_error("[3, 4, 7]")),
    "bias_key_count": ({"attn_bias": randn(5, 8)}, bias_error("[5, 8]")),
    "bias_heads": ({"attn_bias": randn(2, 5, 7)}, bias_error("[2, 5, 7]")),
    "bias_batch": ({"attn_bias": randn(3, 3, 5, 7)}, bias_error("[3, 3, 5, 7]")),
    "bias_vector": ({"attn_bias": randn(6)}, bias_error("[6]")),
    "bias_transposed": ({"attn_bias": randn(5, 7).t()}, bias_error("[7, 5]")),
    # dtypes
    "query_int64": ({"query": Q.long()}, "query must be float32, float64, float16 or bfloat16, got Long"),
    "query_int32": ({"query": Q.int()}, "query must be float32, float64, float16 or bfloat16, got Int"),
    "query_uint8": ({"query": Q.byte()}, "query must be float32, float64, float16 or bfloat16, got Byte"),
    "query_bool": ({"query": Q > 0}, "query must be float32, float64, float16 or bfloat16, got Bool"),
    "query_complex64": ({"query": Q.to(torch.complex64)},
                        "query must be float32, float64, float16 or bfloat16, got ComplexFloat"),
    "all_complex128": ({"query": Q.to(torch.complex128), "key": K.to(torch.complex128),
                        "value": V.to(torch.complex128)},
                       "query must be float32, float64, float16 or bfloat16, got ComplexDouble"),
    "key_float64": ({"key": K.double()}, "key must have the dtype of query (Float), got Double"),
    "key_bool": ({"key": K > 0}, "key must have the dtype of query (Float), got Bool"),
    "value_float16": ({"value": V.half()}, "value must have the dtype of query (Float), got Half"),
    "value_int64": ({"value": V.long()}, "value must have the dtype of query (Float), got Long"),
    "mixed_half_types": ({"query": Q.half(), "key": K.bfloat16(), "value": V.half()},
                         "key must have the dtype of query (Half), got BFloat16"),
    "bias_float64": ({"attn_bias": randn(5, 7).double()}, "attn_bias must have the dtype of query (Float), got Double"),
    "bias_bool_mask": ({"attn_bias": randn(5, 7) > 0}, "attn_bias must have the dtype of query (Float), got Bool"),
    "bias_complex": ({"attn_bias": randn(5, 7).to(torch.complex64)},
                     "attn_bias must have the dtype of query (Float), got ComplexFloat"),
    # devices (a meta tensor among CPU ones runs the Meta kernel, which checks like the others)
    "key_on_meta": ({"key": K.to("meta")}, "key must be on the device of query (cpu), got meta"),
    "value_on_meta": ({"value": V.to("meta")}, "value must be on the device of query (cpu), got meta"),
    "bias_on_meta": ({"attn_bias": randn(5, 7).to("meta")}, "attn_bias must be on the device of query (cpu), got meta"),
    "query_on_meta": ({"query": Q.to("meta")}, "key must be on the device of query (meta), got cpu"),
    # huge expanded views: the check fails before anything of that size is allocated
    "huge_key_count": ({"key": huge(K[:, :, :1], 2)},
                       f"value must have the key count Nk of key = {HUGE} in dimension 2, got 7"),
    "huge_query_batch": ({"query": huge(Q[:1], 0)},
                         f"key must have the batch size B of query = {HUGE} in dimension 0, got 2"),
    "huge_bias": ({"attn_bias": huge(randn(1, 3, 5, 7), 0)}, bias_error(f"[{HUGE}, 3, 5, 7]")),
}


# ------------------------------------------------------------------------------------------------
# slide_attention: q = k = v (2, 3, 5, 6, 4), kernel_size 3.
S = randn(2, 3, 5, 6, 4)


def odd_kernel(value):
    return {"kernel_size": value}, f"kernel_size must be odd and >= 1, got {value}"


SLIDE_CASES = {
    # kernel_size, dilation, border
    "kernel_even": odd_kernel(4),
    "kernel_two": odd_kernel(2),
    "kernel_zero": odd_kernel(0),
    "kernel_negative": odd_kernel(-3),
    "kernel_minus_one": odd_kernel(-1),
    "kernel_too_large": ({"kernel_size": 129}, "kernel_size must be at most 127, got 129"),
    "kernel_overflowing_square": ({"kernel_size": 2**32 + 1}, f"kernel_size must be at most 127, got {2**32 + 1}"),
    "dilation_zero": ({"dilation": 0}, "dilation must be >= 1, got 0"),
    "dilation_negative": ({"dilation": -2}, "dilation must be >= 1, got -2"),
    "dilation_too_large": ({"dilation": 2**31}, f"dilation must be at most {2**31 - 1}, got {2**31}"),
    "dilation_int64_max": ({"dilation": 2**63 - 1}, f"dilation must be at most {2**31 - 1}, got {2**63 - 1}"),
    "border_reflect": ({"border": "reflect"}, 'border must be "zeros" or "clamp", got "reflect"'),
    "border_empty": ({"border": ""}, 'border must be "zeros" or "clamp", got ""'),
    "border_upper_case": ({"border": "Zeros"}, 'border must be "zeros" or "clamp", got "Zeros"'),
    "border_trailing_space": ({"border": "clamp "}, 'border must be "zeros" or "clamp", got "clamp "'),
    # ranks
    "query_rank_4": ({"query": S[0]}, "query must have 5 dimensions (B, H, Y, X, D), got 4 (shape [3, 5, 6, 4])"),
    "query_rank_6": ({"query": S[None]}, "query must have 5 dimensions (B, H, Y, X, D), got 6"),
    "key_rank_4": ({"key": S[0]}, "key must have 5 dimensions (B, H, Y, X, D), got 4"),
    "value_rank_0": ({"value": torch.tensor(1.0)}, "value must have 5 dimensions (B, H, Y, X, D), got 0"),
    # sizes
    "key_batch": ({"key": S[:1]}, "key must have the batch size B of query = 2 in dimension 0, got 1"),
    "key_heads": ({"key": S[:, :2]}, "key must have the head count H of query = 3 in dimension 1, got 2"),
    "value_height": ({"value": S[:, :, :4]}, "value must have the height Y of query = 5 in dimension 2, got 4"),
    "key_width": ({"key": S[:, :, :, :5]}, "key must have the width X of query = 6 in dimension 3, got 5"),
    "key_head_dim": ({"key": S[..., :3]}, "key must have the head dim D of query = 4 in dimension 4, got 3"),
    "value_head_dim": ({"value": randn(2, 3, 5, 6, 8)}, "value must have the head dim D of query = 4 in dimension 4, got 8"),
    "key_width_zero": ({"key": S[:, :, :, :0]}, "key must have the width X of query = 6 in dimension 3, got 0"),
    "query_height_zero": ({"query": S[:, :, :0]}, "key must have the height Y of query = 0 in dimension 2, got 5"),
    # dtypes
    "query_int64": ({"query": S.long()}, "query must be float32, float64, float16 or bfloat16, got Long"),
    "query_int32": ({"query": S.int()}, "query must be float32, float64, float16 or bfloat16, got Int"),
    "query_bool": ({"query": S > 0}, "query must be float32, float64, float16 or bfloat16, got Bool"),
    "query_complex64": ({"query": S.to(torch.complex64)},
                        "query must be float32, float64, float16 or bfloat16, got ComplexFloat"),
    "all_uint8": ({"query": S.byte(), "key": S.byte(), "value": S.byte()},
                  "query must be float32, float64, float16 or bfloat16, got Byte"),
    "key_float64": ({"key": S.double()}, "key must have the dtype of query (Float), got Double"),
    "value_float16": ({"value": S.half()}, "value must have the dtype of query (Float), got Half"),
    "mixed_half_types": ({"query": S.bfloat16(), "key": S.bfloat16(), "value": S.half()},
                         "value must have the dtype of query (BFloat16), got Half"),
    "key_bias_float16": ({"key_bias": randn(3, 9).half()}, "key_bias must have the dtype of query (Float), got Half"),
    "shift_weight_float64": ({"shift_weight": randn(4, 9, 9).double()},
                             "shift_weight must have the dtype of query (Float), got Double"),
    "shift_bias_int64": ({"shift_bias": randn(4, 9).long()}, "shift_bias must have the dtype of query (Float), got Long"),
    "shift_bias_complex": ({"shift_bias": randn(4, 9).to(torch.complex64)},
                           "shift_bias must have the dtype of query (Float), got ComplexFloat"),
    # devices
    "value_on_meta": ({"value": S.to("meta")}, "value must be on the device of query (cpu), got meta"),
    "key_on_meta": ({"key": S.to("meta")}, "key must be on the device of query (cpu), got meta"),
    "key_bias_on_meta": ({"key_bias": randn(3, 9).to("meta")}, "key_bias must be on the device of query (cpu), got meta"),
    "shift_weight_on_meta": ({"shift_weight": randn(4, 9, 9).to("meta")},
                             "shift_weight must be on the device of query (cpu), got meta"),
    "shift_bias_on_meta": ({"shift_bias": randn(4, 9).to("meta")},
                           "shift_bias must be on the device of query (cpu), got meta"),
    "query_on_meta": ({"query": S.to("meta")}, "key must be on the device of query (meta), got cpu"),
    # parameter shapes
    "key_bias_slots": ({"key_bias": randn(3, 8)}, "key_bias must have shape (H, k*k) = [3, 9], got [3, 8]"),
    "key_bias_heads": ({"key_bias": randn(2, 9)}, "key_bias must have shape (H, k*k) = [3, 9], got [2, 9]"),
    "key_bias_flat": ({"key_bias": randn(27)}, "key_bias must have shape (H, k*k) = [3, 9], got [27]"),
    "key_bias_for_other_kernel": ({"key_bias": randn(3, 25)}, "key_bias must have shape (H, k*k) = [3, 9], got [3, 25]"),
    "shift_weight_rank_2": ({"shift_weight": randn(4, 9)},
                            "shift_weight must have shape (D, k*k, k*k) = [4, 9, 9], got [4, 9]"),
    "shift_weight_channels": ({"shift_weight": randn(3, 9, 9)},
                              "shift_weight must have shape (D, k*k, k*k) = [4, 9, 9], got [3, 9, 9]"),
    "shift_weight_slots": ({"shift_weight": randn(4, 9, 8)},
                           "shift_weight must have shape (D, k*k, k*k) = [4, 9, 9], got [4, 9, 8]"),
    "shift_bias_transposed": ({"shift_bias": randn(9, 4)}, "shift_bias must have shape (D, k*k) = [4, 9], got [9, 4]"),
    "shift_bias_rank_3": ({"shift_bias": randn(4, 9, 1)}, "shift_bias must have shape (D, k*k) = [4, 9], got [4, 9, 1]"),
    # huge expanded views
    "huge_query_batch": ({"query": huge(S[:1], 0)},
                         f"key must have the batch size B of query = {HUGE} in dimension 0, got 2"),
    "huge_key_bias": ({"key_bias": huge(randn(1, 9), 0)}, f"key_bias must have shape (H, k*k) = [3, 9], got [{HUGE}, 9]"),
    "huge_shift_weight": ({"shift_weight": huge(randn(4, 9, 1), 2)},
                          f"shift_weight must have shape (D, k*k, k*k) = [4, 9, 9], got [4, 9, {HUGE}]"),
}


# Every public case: the op, its valid arguments, the change that makes them wrong, the message.
ATTENTION_ARGUMENTS = {"query": Q, "key": K, "value": V, "attn_bias": None, "is_causal": False, "scale": None}
SLIDE_ARGUMENTS = {"query": S, "key": S, "value": S, "kernel_size": 3, "dilation": 1, "key_bias": None,
                   "shift_weight": None, "shift_bias": None, "border": "zeros", "scale": None}
PUBLIC_CASES = [pytest.param(op, prefix + message, {**arguments, **change}, id=f"{name}-{case}")
                for name, op, prefix, arguments, cases in [
                    ("attention", ops.attention, ATTENTION, ATTENTION_ARGUMENTS, ATTENTION_CASES),
                    ("slide_attention", ops.slide_attention, SLIDE, SLIDE_ARGUMENTS, SLIDE_CASES)]
                for case, (change, message) in cases.items()]


@pytest.mark.parametrize("op,message,arguments", PUBLIC_CASES)
def test_public_operator_bad_input(op, message, arguments):
    assert_raises(message, op, **arguments)


# No CPU kernel takes a sparse tensor; the internal ops' CompositeExplicitAutograd kernel (the one
# for dispatch keys without a kernel) refuses it with the op's own message.
@pytest.mark.parametrize("op,message,arguments", [
    (ops.attention, ATTENTION + "query must be a strided (dense) tensor, got Sparse",
     {**ATTENTION_ARGUMENTS, "query": Q.to_sparse()}),
    (ops.slide_attention, SLIDE + "key must be a strided (dense) tensor, got Sparse",
     {**SLIDE_ARGUMENTS, "key": S.to_sparse()})],
    ids=["attention", "slide_attention"])
def test_sparse_input_is_refused_by_the_op(op, message, arguments):
    assert_raises(message, op, **arguments)


def test_each_public_operator_has_at_least_40_bad_input_cases():
    assert len(ATTENTION_CASES) + 1 >= 40 and len(SLIDE_CASES) + 1 >= 40


# ------------------------------------------------------------------------------------------------
# The internal schemas, on every kernel: "cpu", "meta", "emulated" (the CUDA kernels executed on the
# host) and "cuda". A tensor on the `other` device among the others names both devices.
KERNELS = {"cpu": ("cpu", "meta"), "meta": ("meta", "cpu"), "emulated": ("cpu", "meta"), "cuda": ("cuda:0", "cpu")}


@pytest.fixture(params=list(KERNELS))
def kernels(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if request.param == "emulated":
        with cuda_host_execution():
            yield KERNELS[request.param]
    else:
        yield KERNELS[request.param]


def internal_case(name, argument, make, message):
    """make(tensors, other device) -> the wrong argument; message: after "<op>: "."""
    return pytest.param(argument, make, message, id=name)


def on_other_device(argument):
    return internal_case(f"{argument}_device", argument, lambda t, other: torch.zeros_like(t[argument], device=other),
                         f"{argument} must be on the device of query ({{device}}), got {{other}}")


# Both backward schemas check the device of what the forward made.
SAVED_ON_OTHER_DEVICE = [on_other_device(argument) for argument in ("grad_output", "output", "logsumexp")]


# q, k, v of (2, 3, 8, 16) as in issue 11; output (2, 3, 8, 16), logsumexp (2, 3, 8).
ATTENTION_BACKWARD_CASES = SAVED_ON_OTHER_DEVICE + [
    internal_case("grad_output_shape", "grad_output", lambda t, other: t["grad_output"][:1, :1, :2, :4],
                  "grad_output must have shape (B, H, Nq, Dv) = [2, 3, 8, 16], got [1, 1, 2, 4]"),
    internal_case("grad_output_rank", "grad_output", lambda t, other: t["grad_output"][0],
                  "grad_output must have shape (B, H, Nq, Dv) = [2, 3, 8, 16], got [3, 8, 16]"),
    internal_case("grad_output_dtype", "grad_output", lambda t, other: t["grad_output"].double(),
                  "grad_output must have the dtype of query (Float), got Double"),
    internal_case("output_shape", "output", lambda t, other: t["output"][..., :15],
                  "output must have shape (B, H, Nq, Dv) = [2, 3, 8, 16], got [2, 3, 8, 15]"),
    internal_case("output_dtype", "output", lambda t, other: t["output"].half(),
                  "output must have the dtype of query (Float), got Half"),
    internal_case("logsumexp_shape", "logsumexp", lambda t, other: t["logsumexp"].flatten()[:1],
                  "logsumexp must have shape (B, H, Nq) = [2, 3, 8], got [1]"),
    internal_case("logsumexp_rank", "logsumexp", lambda t, other: t["logsumexp"][..., None],
                  "logsumexp must have shape (B, H, Nq) = [2, 3, 8], got [2, 3, 8, 1]"),
    internal_case("logsumexp_dtype", "logsumexp", lambda t, other: t["logsumexp"].double(),
                  "logsumexp must have dtype Float (the accumulate type of query, as the forward returns "
                  "it), got Double"),
    internal_case("key_heads", "key", lambda t, other: t["key"][:, :2],
                  "key must have the head count H of query = 3 in dimension 1, got 2"),
    internal_case("value_dtype", "value", lambda t, other: t["value"].double(),
                  "value must have the dtype of query (Float), got Double"),
    internal_case("attn_bias_shape", "attn_bias", lambda t, other: t["attn_bias"][:, :7],
                  "attn_bias must be broadcastable to (B, H, Nq, Nk) = [2, 3, 8, 8], got shape [8, 7]"),
]


def attention_internal_tensors(device):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 8, 16, generator=g) for _ in range(3))
    bias = torch.randn(8, 8, generator=g)
    out, lse = ops._attention_forward(q, k, v, bias, False, None)
    tensors = {"query": q, "key": k, "value": v, "attn_bias": bias, "output": out, "logsumexp": lse,
               "grad_output": torch.randn_like(out)}
    return {name: t.to(device) for name, t in tensors.items()}


def call_attention_backward(t):
    return ops._attention_backward(t["grad_output"], t["query"], t["key"], t["value"], t["attn_bias"], t["output"],
                                   t["logsumexp"], False, None, True)


# slide: q = k = v (2, 3, 4, 5, 6), kernel 3, output (2, 3, 4, 5, 6), logsumexp (2, 3, 4, 5).
SLIDE_BACKWARD_CASES = SAVED_ON_OTHER_DEVICE + [
    internal_case("grad_output_shape", "grad_output", lambda t, other: t["grad_output"][:1, :1, :2, :2, :4],
                  "grad_output must have shape (B, H, Y, X, D) = [2, 3, 4, 5, 6], got [1, 1, 2, 2, 4]"),
    internal_case("grad_output_dtype", "grad_output", lambda t, other: t["grad_output"].half(),
                  "grad_output must have the dtype of query (Float), got Half"),
    internal_case("output_shape", "output", lambda t, other: t["output"][:, :, :3],
                  "output must have shape (B, H, Y, X, D) = [2, 3, 4, 5, 6], got [2, 3, 3, 5, 6]"),
    internal_case("output_dtype", "output", lambda t, other: t["output"].double(),
                  "output must have the dtype of query (Float), got Double"),
    internal_case("logsumexp_shape", "logsumexp", lambda t, other: t["logsumexp"].flatten()[:1],
                  "logsumexp must have shape (B, H, Y, X) = [2, 3, 4, 5], got [1]"),
    internal_case("logsumexp_full_shape", "logsumexp", lambda t, other: t["output"],
                  "logsumexp must have shape (B, H, Y, X) = [2, 3, 4, 5], got [2, 3, 4, 5, 6]"),
    internal_case("logsumexp_dtype", "logsumexp", lambda t, other: t["logsumexp"].half(),
                  "logsumexp must have dtype Float (the accumulate type of query, as the forward returns "
                  "it), got Half"),
    internal_case("value_width", "value", lambda t, other: t["value"][:, :, :, :4],
                  "value must have the width X of query = 5 in dimension 3, got 4"),
    internal_case("key_bias_shape", "key_bias", lambda t, other: t["key_bias"][:2],
                  "key_bias must have shape (H, k*k) = [3, 9], got [2, 9]"),
    internal_case("shift_weight_dtype", "shift_weight", lambda t, other: t["shift_weight"].double(),
                  "shift_weight must have the dtype of query (Float), got Double"),
    on_other_device("shift_bias"),
]


def slide_internal_tensors(device):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 4, 5, 6, generator=g) for _ in range(3))
    params = {"key_bias": torch.randn(3, 9, generator=g), "shift_weight": torch.randn(6, 9, 9, generator=g),
              "shift_bias": torch.randn(6, 9, generator=g)}
    out, lse = ops._slide_attention_forward(q, k, v, 3, 1, *params.values(), "zeros", None)
    tensors = {"query": q, "key": k, "value": v, "output": out, "logsumexp": lse,
               "grad_output": torch.randn_like(out), **params}
    return {name: t.to(device) for name, t in tensors.items()}


def call_slide_backward(t):
    return ops._slide_attention_backward(t["grad_output"], t["query"], t["key"], t["value"], t["output"],
                                         t["logsumexp"], 3, 1, t["key_bias"], t["shift_weight"], t["shift_bias"],
                                         "zeros", None, [True, True, True])


def call_attention_forward(t):
    return ops._attention_forward(t["query"], t["key"], t["value"], t["attn_bias"], False, None)


def call_slide_forward(t):
    return ops._slide_attention_forward(t["query"], t["key"], t["value"], 3, 1, t["key_bias"], t["shift_weight"],
                                        t["shift_bias"], "zeros", None)


# Per op: the message prefix, valid tensors on a device, the forward and backward calls, the cases.
INTERNAL = {
    "attention": (ATTENTION, attention_internal_tensors, call_attention_forward, call_attention_backward,
                  ATTENTION_BACKWARD_CASES),
    "slide_attention": (SLIDE, slide_internal_tensors, call_slide_forward, call_slide_backward, SLIDE_BACKWARD_CASES),
}
FORWARD_ARGUMENTS = {"query", "key", "value", "attn_bias", "key_bias", "shift_weight", "shift_bias"}


def internal_cases(forward):
    """(op, argument, make, message) of every case, only the forward's arguments if `forward`."""
    return [pytest.param(name, *case.values, id=f"{name}-{case.id}")
            for name, (_, _, _, _, cases) in INTERNAL.items() for case in cases
            if not forward or case.values[0] in FORWARD_ARGUMENTS]


def check_internal_bad_argument(kernels, forward, name, argument, make, message):
    prefix, tensors, call_forward, call_backward, _ = INTERNAL[name]
    device, other = kernels
    call = call_forward if forward else call_backward
    t = tensors(device)
    call(t)  # the valid arguments pass
    t[argument] = make(t, other)
    assert_raises(prefix + message.format(device=device, other=other), call, t=t)


@pytest.mark.parametrize("name,argument,make,message", internal_cases(forward=False))
def test_internal_backward_bad_argument(kernels, name, argument, make, message):
    check_internal_bad_argument(kernels, False, name, argument, make, message)


@pytest.mark.parametrize("name,argument,make,message", internal_cases(forward=True))
def test_internal_forward_bad_argument(kernels, name, argument, make, message):
    check_internal_bad_argument(kernels, True, name, argument, make, message)


@pytest.mark.parametrize("name", list(INTERNAL))
def test_backward_issue_11_reproduction(name):
    """Issue 11: a grad_output of (1, 1, 2, 4) (slide: (1, 1, 2, 2, 4)) or a logsumexp of shape (1)
    used to return full-size gradients."""
    prefix, tensors, _, call_backward, _ = INTERNAL[name]
    for argument, wrong in (("grad_output", (1, 1, 2, 4) if name == "attention" else (1, 1, 2, 2, 4)),
                            ("logsumexp", (1,))):
        t = tensors("cpu")
        t[argument] = torch.randn(*wrong)
        with pytest.raises(RuntimeError, match=re.escape(f"{prefix}{argument} must have shape")):
            call_backward(t)


# ------------------------------------------------------------------------------------------------
# Inputs that are unusual but valid: they run, and give what the documentation says.
def bytes_allocated(fn):
    """Bytes the CPU allocator handed out while fn ran (the profiler's memory events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True,
                                acc_events=True) as prof:
        fn()
    return sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)


@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("value_dim,message", [
    (4, "query and value must have shapes whose output (B, H, Nq, Dv) fits in memory, got [2, 1, {n}, 4]"),
    (0, "query must have a shape whose log-sum-exp (the shape without D) fits in memory, got [2, 1, {n}, 0]")],
    ids=["output", "logsumexp"])
def test_attention_results_too_large_for_memory_are_refused(device, value_dim, message):
    """D = 0 (and Nk = 0) leave the inputs empty; the output and log-sum-exp need not be."""
    rows = 2**62 + 1
    query = torch.empty(2, 1, rows, 0, device=device)
    key, value = torch.empty(2, 1, 3, 0, device=device), torch.empty(2, 1, 3, value_dim, device=device)
    with pytest.raises(RuntimeError, match=re.escape(ATTENTION + message.format(n=rows))):
        torch.ops.slideformer.attention(query, key, value)


@pytest.mark.parametrize("shape", [(0, 2, 3, 4, 4, 4), (2, 0, 3, 4, 4, 4), (2, 2, 0, 4, 4, 4), (2, 2, 3, 0, 4, 4),
                                   (2, 2, 3, 4, 0, 4), (2, 2, 3, 4, 4, 0)],
                         ids=["B0", "H0", "Nq0", "Nk0", "D0", "Dv0"])
def test_attention_zero_size_dimension_runs_like_the_reference(shape):
    """Empty results, or with Nk = 0 a zero output (docs/operators.md); with D = 0 every logit is 0."""
    from test_attention import assert_matches_reference, make_inputs
    b, h, nq, nk, d, dv = shape
    q, k, v, bias = make_inputs(b, h, nq, nk, d, dv, bias_shape=(nq, nk))
    if nk:
        assert_matches_reference(q, k, v, bias, is_causal=False)
        return
    out = ops.attention(q, k, v, bias)
    assert out.shape == (b, h, nq, dv) and not out.any()
    grads = torch.autograd.grad(out.sum(), (q, k, v, bias))
    assert [g.shape for g in grads] == [t.shape for t in (q, k, v, bias)] and not grads[0].any()


@pytest.mark.parametrize("shape", [(0, 2, 3, 4, 4), (2, 0, 3, 4, 4), (2, 2, 0, 4, 4), (2, 2, 3, 0, 4), (2, 2, 3, 4, 0)],
                         ids=["B0", "H0", "Y0", "X0", "D0"])
@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_slide_attention_zero_size_dimension_gives_empty_output_and_zero_gradients(shape, border):
    leaves = [torch.randn(*shape, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    params = [torch.randn(*p, dtype=torch.float64, requires_grad=True) for p in ((shape[1], 9), (shape[4], 9, 9),
                                                                                  (shape[4], 9))]
    out = ops.slide_attention(*leaves, 3, 1, *params, border, None)
    assert out.shape == shape
    for grad, leaf in zip(torch.autograd.grad(out.sum(), leaves + params, allow_unused=False), leaves + params):
        assert grad.shape == leaf.shape and not grad.any()


def test_expanded_keys_of_four_million_rows_are_read_in_place():
    q = randn(1, 1, 1, 4)
    k, v = randn(1, 1, 1, 4).expand(1, 1, 2**22, 4), randn(1, 1, 1, 4).expand(1, 1, 2**22, 4)
    out = None

    def run():
        nonlocal out
        out = ops.attention(q, k, v)

    # A copy of k or v would be 64 MiB.
    assert bytes_allocated(run) < 2**20
    # Every key is the same: the output is that value row (up to float32 accumulation over 2^22 keys).
    torch.testing.assert_close(out[0, 0, 0], v[0, 0, 0], rtol=1e-3, atol=1e-3)


def test_expanded_slide_inputs_are_read_in_place():
    s = randn(1, 1, 1, 1, 4).expand(2**16, 1, 1, 1, 4)
    out = None

    def run():
        nonlocal out
        out = ops.slide_attention(s, s, s, 3)

    # The output and logsumexp take 1.25 MiB; copies of q, k and v would add 3 MiB.
    assert bytes_allocated(run) < 4 * 2**20
    # One pixel, zeros border: the pixel itself and 8 zero slots, all with logit 0 except itself.
    x = s[0, 0, 0, 0]
    w = torch.exp(x.dot(x) / 2)
    torch.testing.assert_close(out[0, 0, 0, 0], w * x / (w + 8))
    assert torch.equal(out, out[:1].expand_as(out))


def test_nan_and_inf_in_attention_reach_only_the_rows_that_read_them():
    """docs/operators.md, "NaN and Inf": a NaN or Inf reaches the outputs of the rows that read it."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 3, generator=g) for _ in range(3))

    def nan_rows(**change):
        kwargs = {"query": q, "key": k, "value": v, "attn_bias": None, "is_causal": False, "scale": None}
        kwargs.update(change)
        return ops.attention(**kwargs).isnan().any(-1)[0, 0].tolist()

    def poisoned(t, index, value=float("nan")):
        t = t.clone()
        t[index] = value
        return t

    assert nan_rows(query=poisoned(q, (0, 0, 1, 0))) == [False, True, False, False]
    assert nan_rows(query=poisoned(q, (0, 0, 1, 0), float("inf"))) == [False, True, False, False]
    assert nan_rows(key=poisoned(k, (0, 0, 2, 0))) == [True] * 4
    # The causal mask skips the key: the rows before it never read it.
    assert nan_rows(key=poisoned(k, (0, 0, 2, 0)), is_causal=True) == [False, False, True, True]
    # A -inf bias entry does not: NaN + -inf is NaN.
    assert nan_rows(key=poisoned(k, (0, 0, 2, 0)), attn_bias=poisoned(torch.zeros(4, 4), (slice(None), 2),
                                                                      float("-inf"))) == [True] * 4
    assert nan_rows(attn_bias=poisoned(torch.zeros(4, 4), (1, 2))) == [False, True, False, False]
    assert nan_rows(attn_bias=poisoned(torch.zeros(4, 4), (1, 2), float("inf"))) == [False, True, False, False]
    # An infinite value gives an infinite output column, not NaN.
    out = ops.attention(q, k, poisoned(v, (0, 0, 2, 0), float("inf")))
    assert torch.isinf(out[..., 0]).all() and torch.isfinite(out[..., 1:]).all()
    # Backward: the row's dQ is NaN, and every dK it reaches; the other rows' dQ stay finite.
    leaves = [poisoned(q, (0, 0, 1, 0)).requires_grad_(), k.clone().requires_grad_(), v.clone().requires_grad_()]
    dq, dk, dv = torch.autograd.grad(ops.attention(*leaves).sum(), leaves)
    assert dq.isnan().any(-1)[0, 0].tolist() == [False, True, False, False]
    assert dk.isnan().all()


@pytest.mark.parametrize("border,rows,cols", [("zeros", slice(1, 4), slice(1, 4)), ("clamp", slice(0, 5), slice(0, 4))])
def test_nan_in_slide_attention_reaches_the_windows_that_read_it(border, rows, cols):
    s = randn(1, 1, 5, 6, 2)
    poisoned = s.clone()
    poisoned[0, 0, 2, 2, 0] = float("nan")
    expected = torch.zeros(5, 6, dtype=torch.bool)
    expected[rows, cols] = True  # the pixels whose 3x3 window reads (2, 2)
    weight = torch.eye(9).expand(2, 9, 9).contiguous()
    for kwargs in ({}, {"shift_weight": weight}):
        out = ops.slide_attention(s, poisoned, s, 3, border=border, **kwargs)
        assert torch.equal(out.isnan().any(-1)[0, 0], expected)
        out = ops.slide_attention(poisoned, s, s, 3, border=border, **kwargs)
        assert out.isnan().any(-1)[0, 0].nonzero().tolist() == [[2, 2]]
