"""slideformer::slide_attention_nd (maps of 1, 2 or 3 axes) from Python: parity with an unfold
composite ("zeros" border) and a gather composite ("clamp" border) written here, agreement with the
2-D operator, causality, gradcheck, opcheck, bad inputs, TorchScript, export, autocast (contract:
docs/operators.md)."""
import itertools
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

slide_attention_nd = torch.ops.slideformer.slide_attention_nd


def axis_list(values, rank):
    return list(values) * rank if len(values) == 1 else list(values)


def unfold_windows(t, kernel, dilation, causal):
    """Zero-padded windows of t (B, H, *map, D) by pad + Tensor.unfold per axis:
    (B, H, *map, K, D), slots row-major over the axes."""
    rank = t.dim() - 3
    pad = []
    for a in reversed(range(rank)):  # F.pad lists the last dimension first
        before = (kernel[a] - 1) * dilation[a] if causal and a == 0 else kernel[a] // 2 * dilation[a]
        after = 0 if causal and a == 0 else before
        pad += [before, after]
    x = F.pad(t.movedim(-1, 2), pad)  # (B, H, D, *map padded)
    for a in range(rank):
        span = (kernel[a] - 1) * dilation[a] + 1
        x = x.unfold(3 + a, span, 1)[..., ::dilation[a]]  # adds a slot dimension at the end
    # (B, H, D, *map, k_0, ..., k_{rank-1}) -> (B, H, *map, K, D)
    return x.flatten(-rank).movedim(2, -1)


def clamp_axis_slots(length, kernel, dilation, causal_axis):
    """Per axis, brute force: the position slot j of coordinate i reads, -1 for none."""
    table = []
    for i in range(length):
        if causal_axis:
            table.append([i - (kernel - 1 - j) * dilation if i - (kernel - 1 - j) * dilation >= 0 else -1
                          for j in range(kernel)])
            continue
        group, sub = i % dilation, i // dilation
        sub_length = len(range(group, length, dilation))
        start = min(max(sub - kernel // 2, 0), max(sub_length - kernel, 0))
        table.append([group + dilation * (start + j) if start + j < sub_length else -1 for j in range(kernel)])
    return table


def gather_windows(t, kernel, dilation, causal):
    """Windows of t (B, H, *map, D) with the clamped axes, gathered through index tables:
    (B, H, N, K, D) with zero rows where a slot reads nothing, and the (N, K) mask of those."""
    b, h, *lengths, d = t.shape
    tables = [clamp_axis_slots(lengths[a], kernel[a], dilation[a], causal and a == 0) for a in range(len(lengths))]
    index, masked = [], []
    for position in itertools.product(*[range(n) for n in lengths]):
        row, row_mask = [], []
        for slot in itertools.product(*[range(k) for k in kernel]):
            at = [tables[a][position[a]][slot[a]] for a in range(len(lengths))]
            row_mask.append(min(at) < 0)
            row.append(0 if min(at) < 0 else sum(p * math.prod(lengths[a + 1:]) for a, p in enumerate(at)))
        index.append(row)
        masked.append(row_mask)
    index, masked = torch.tensor(index), torch.tensor(masked)
    flat = t.reshape(b, h, math.prod(lengths), d)
    windows = flat[:, :, index.reshape(-1)].reshape(b, h, *index.shape, d)
    return windows.masked_fill(masked[..., None], 0), masked


def reference(q, k, v, kernel_size, dilation=(1,), key_bias=None, shift_weight=None, shift_bias=None,
              border="zeros", causal=False, scale=None):
    """The operator as a composite of aten ops, materialising every window (B, H, N, K, D)."""
    b, h, *lengths, d = q.shape
    rank = len(lengths)
    kernel, dil = axis_list(kernel_size, rank), axis_list(dilation, rank)
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    if border == "zeros":
        keys, values = (unfold_windows(t, kernel, dil, causal).reshape(b, h, math.prod(lengths), math.prod(kernel), d)
                        for t in (k, v))
        masked = None
    else:
        (keys, masked), (values, _) = gather_windows(k, kernel, dil, causal), gather_windows(v, kernel, dil, causal)

    def mix(w):
        if shift_weight is not None:
            w = torch.einsum("cnm,bhpmc->bhpnc", shift_weight, w)
        return w if shift_bias is None else w + shift_bias.t()

    keys, values = mix(keys), mix(values)
    if key_bias is not None:
        keys = keys + key_bias[None, :, None, :, None]
    logits = torch.einsum("bhpc,bhpnc->bhpn", q.reshape(b, h, math.prod(lengths), d), keys) * scale
    if masked is not None:
        logits = logits.masked_fill(masked, float("-inf"))
    return torch.einsum("bhpn,bhpnc->bhpc", logits.softmax(-1), values).reshape(q.shape)


def make_inputs(shape, kernel_size, dtype=torch.float64, params=True, seed=0):
    """q, k, v of `shape` (B, H, *map, D) and key_bias, shift_weight = I + noise, shift_bias for
    `kernel_size`, all leaves requiring grad (None for the parameters without params)."""
    g = torch.Generator().manual_seed(seed)
    h, d = shape[1], shape[-1]
    window = math.prod(axis_list(kernel_size, len(shape) - 3))

    def randn(*size, std=1.0):
        return (torch.randn(*size, generator=g, dtype=torch.float64) * std).to(dtype).requires_grad_()

    q, k, v = (randn(*shape) for _ in range(3))
    if not params:
        return [q, k, v, None, None, None]
    weight = (torch.eye(window, dtype=torch.float64) + 0.3 * torch.randn(d, window, window, generator=g,
                                                                      dtype=torch.float64)).to(dtype)
    return [q, k, v, randn(h, window, std=0.5), weight.requires_grad_(), randn(d, window, std=0.3)]


PARITY_CASES = [
    # (shape (B, H, *map, D), kernel_size, dilation)
    ((2, 2, 9, 4), [3], [1]),
    ((1, 3, 11, 5), [5], [2]),  # dilation 2
    ((1, 2, 4, 3), [7], [1]),  # map shorter than the kernel
    ((2, 1, 13, 17), [3], [3]),  # dilation 3: short sub-axes in clamp mode; D past a vector
    ((1, 1, 1, 2), [3], [1]),  # one position
    ((0, 2, 5, 3), [3], [1]),  # B = 0
    ((1, 2, 6, 2), [1], [1]),  # kernel_size 1
    ((2, 2, 3, 4, 5, 3), [3], [1]),
    ((1, 2, 4, 5, 3, 2), [3, 1, 5], [1, 2, 1]),  # per-axis kernel sizes and dilations
    ((1, 1, 5, 3, 6, 4), [3, 3, 3], [2, 1, 2]),
    ((1, 2, 2, 2, 2, 3), [5], [1]),  # every axis shorter than the kernel
    ((1, 1, 3, 1, 4, 9), [1, 3, 3], [1]),
]


def case_id(case):
    shape, kernel, dilation = case
    return f"{'x'.join(map(str, shape))}-k{'_'.join(map(str, kernel))}-d{'_'.join(map(str, dilation))}"


def assert_forward_and_gradients_match(inputs, kernel, dilation, border, causal, scale=None):
    q, k, v, *params = inputs
    out = slide_attention_nd(q, k, v, kernel, dilation, *params, border, causal, scale)
    ref = reference(q, k, v, kernel, dilation, *params, border, causal, scale)
    torch.testing.assert_close(out, ref)
    if out.numel() == 0:
        return
    leaves = [t for t in inputs if t is not None]
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    names = ["q", "k", "v", "key_bias", "shift_weight", "shift_bias"]
    for name, a, e in zip([n for n, t in zip(names, inputs) if t is not None],
                          torch.autograd.grad(out, leaves, grad), torch.autograd.grad(ref, leaves, grad)):
        torch.testing.assert_close(a, e, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("case", PARITY_CASES, ids=case_id)
@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("with_params", [True, False])
def test_matches_composite_forward_and_backward(case, border, causal, with_params):
    shape, kernel, dilation = case
    assert_forward_and_gradients_match(make_inputs(shape, kernel, params=with_params), kernel, dilation, border,
                                       causal)


@pytest.mark.parametrize("mask", range(1, 8))
def test_each_optional_input_alone_and_explicit_scale(mask):
    inputs = make_inputs((2, 2, 3, 4, 5, 3), [3])
    for i in range(3):
        if not mask & (1 << i):
            inputs[3 + i] = None
    assert_forward_and_gradients_match(inputs, [3], [1], "clamp", True, scale=0.3)


@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("with_params", [True, False])
def test_two_axes_equal_the_2d_operator(border, with_params):
    q, k, v, *params = make_inputs((2, 3, 6, 7, 4), [3], params=with_params)
    ours = slide_attention_nd(q, k, v, [3], [2], *params, border)
    theirs = torch.ops.slideformer.slide_attention(q, k, v, 3, 2, *params, border)
    torch.testing.assert_close(ours, theirs)
    leaves = [t for t in (q, k, v, *params) if t is not None]
    for a, e in zip(torch.autograd.grad(ours.sum(), leaves), torch.autograd.grad(theirs.sum(), leaves)):
        torch.testing.assert_close(a, e)


def test_one_entry_means_every_axis():
    q, k, v, *params = make_inputs((1, 2, 3, 4, 5, 2), [3])
    torch.testing.assert_close(slide_attention_nd(q, k, v, [3], [2], *params, "clamp"),
                               slide_attention_nd(q, k, v, [3, 3, 3], [2, 2, 2], *params, "clamp"))


@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_causal_output_ignores_later_frames(border):
    """With causal, frames after t change nothing at frames <= t (streaming: a clip extended by new
    frames keeps the outputs it had)."""
    q, k, v, *params = (t if t is None else t.detach() for t in make_inputs((1, 2, 6, 3, 4, 3), [3]))
    out = slide_attention_nd(q, k, v, [3], [1], *params, border, True)
    later = [t.clone() for t in (q, k, v)]
    for t in later:
        t[:, :, 4:] = torch.randn_like(t[:, :, 4:])
    changed = slide_attention_nd(*later, [3], [1], *params, border, True)
    torch.testing.assert_close(changed[:, :, :4], out[:, :, :4], rtol=0, atol=0)
    assert not torch.allclose(changed[:, :, 4:], out[:, :, 4:])


def test_permuted_inputs_as_a_module_passes_them():
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(2, 4, 5, 3, 3, 2, 6, generator=g, dtype=torch.float64)  # (B, T, Y, X, 3, H, D)
    q, k, v = (qkv[..., i, :, :].permute(0, 4, 1, 2, 3, 5) for i in range(3))
    assert not q.is_contiguous()
    for border in ("zeros", "clamp"):
        torch.testing.assert_close(slide_attention_nd(q, k, v, [3], [1], None, None, None, border, True),
                                   reference(q, k, v, [3], [1], border=border, causal=True))


@pytest.mark.parametrize("shape,kernel", [((1, 2, 7, 3), [3]), ((1, 2, 3, 4, 3, 2), [3, 1, 3])])
@pytest.mark.parametrize("border,causal", [("zeros", False), ("clamp", False), ("zeros", True), ("clamp", True)])
def test_gradcheck_all_six_inputs(shape, kernel, border, causal):
    inputs = make_inputs(shape, kernel)
    assert torch.autograd.gradcheck(
        lambda q, k, v, kb, w, b: slide_attention_nd(q, k, v, kernel, [2], kb, w, b, border, causal), inputs)


@pytest.mark.parametrize("shape,kernel", [((2, 2, 7, 3), [3]), ((1, 2, 3, 4, 3, 2), [3])])
@pytest.mark.parametrize("with_params", [True, False])
def test_opcheck_public_op(shape, kernel, with_params):
    q, k, v, *params = make_inputs(shape, kernel, params=with_params)
    torch.library.opcheck(slide_attention_nd, (q, k, v, kernel, [1], *params, "clamp", True, None))
    torch.library.opcheck(slide_attention_nd, (q, k, v, kernel, [2], *params, "zeros", False, 0.5))


@pytest.mark.parametrize("shape", [(2, 2, 7, 3), (1, 2, 3, 4, 3, 2)])
def test_opcheck_internal_ops(shape):
    q, k, v, *params = (t.detach() for t in make_inputs(shape, [3]))
    args = (q, k, v, [3], [1], *params, "clamp", True, 0.5)
    torch.library.opcheck(torch.ops.slideformer._slide_attention_nd_forward, args)
    out, lse = torch.ops.slideformer._slide_attention_nd_forward(*args)
    assert lse.shape == q.shape[:-1] and lse.dtype == torch.float64
    torch.library.opcheck(torch.ops.slideformer._slide_attention_nd_backward,
                          (torch.randn_like(out), q, k, v, out, lse, [3], [1], *params, "clamp", True, 0.5,
                           [True, False, True]))


def test_parameter_gradients_only_where_asked():
    q, k, v, *params = (t.detach() for t in make_inputs((1, 2, 5, 3), [3]))
    out, lse = torch.ops.slideformer._slide_attention_nd_forward(q, k, v, [3], [1], *params, "zeros", False, None)
    grads = torch.ops.slideformer._slide_attention_nd_backward(torch.ones_like(out), q, k, v, out, lse, [3], [1],
                                                               *params, "zeros", False, None, [False, True, False])
    assert [g is None for g in grads[3:]] == [True, False, True]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_reduced_dtypes_close_to_float64(dtype):
    exact = make_inputs((2, 2, 4, 5, 6, 8), [3])
    low = [t.detach().to(dtype).requires_grad_() for t in exact]
    out = slide_attention_nd(*low[:3], [3], [1], *low[3:], "zeros", True)
    assert out.dtype == dtype
    rounded = [t.detach().double().requires_grad_() for t in low]
    ref = reference(*rounded[:3], [3], [1], *rounded[3:], "zeros", True)
    tolerance = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tolerance, atol=tolerance)
    grads = torch.autograd.grad(out.sum(), low)
    for a, e in zip(grads, torch.autograd.grad(ref.sum(), rounded)):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), e, rtol=tolerance, atol=tolerance * e.abs().max().item())


def test_autocast_runs_in_the_autocast_dtype():
    q, k, v, *params = (t.detach().float() for t in make_inputs((1, 2, 3, 4, 5, 8), [3]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = slide_attention_nd(q, k, v, [3], [1], *params)
    assert out.dtype == torch.bfloat16
    low = [t.bfloat16() for t in (q, k, v, *params)]
    expected = slide_attention_nd(*low[:3], [3], [1], *low[3:])
    torch.testing.assert_close(out, expected)


def test_backward_is_deterministic():
    inputs = [t.detach().float().requires_grad_() for t in make_inputs((2, 2, 4, 9, 10, 16), [3])]

    def grads():
        out = slide_attention_nd(*inputs[:3], [3], [1], *inputs[3:], "zeros", True)
        return torch.autograd.grad(out.square().sum(), inputs)

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_double_backward_says_unsupported():
    q, k, v = make_inputs((1, 2, 5, 3), [3])[:3]
    with pytest.raises(RuntimeError, match="slideformer::slide_attention_nd: double backward is not supported"):
        torch.autograd.grad(slide_attention_nd(q, k, v, [3]).sum(), q, create_graph=True)


OP = "slideformer::slide_attention_nd: "
QUERIES = {1: torch.randn(2, 3, 5, 4), 3: torch.randn(2, 3, 4, 5, 6, 4)}


def bad_inputs(rank):
    """(changes to valid arguments, the message they must raise) for a map of `rank` axes."""
    q = QUERIES[rank]
    k = 3 ** rank  # window slots K of kernel_size [3]
    other = 1 if rank == 3 else 3
    too_wide = [127, 127, 3] if rank == 3 else [255]
    entries = "1 entry" if rank == 1 else f"1 or {rank} entries"
    return [
        ({"kernel_size": [4]}, r"kernel_size must be odd and >= 1 in every axis, got \[4\]"),
        ({"kernel_size": [0]}, r"kernel_size must be odd and >= 1 in every axis, got \[0\]"),
        ({"kernel_size": [3] * (other + 1)},
         rf"kernel_size must have {entries} \(one per map axis\), got {other + 1}"),
        ({"kernel_size": []}, rf"kernel_size must have {entries} \(one per map axis\), got 0"),
        ({"kernel_size": too_wide},
         r"kernel_size must be at most 127 in every axis" if rank == 1 else
         r"kernel_size must span at most 16129 window slots \(the product over the axes\), got 48387"),
        ({"dilation": [0]}, r"dilation must be >= 1 in every axis, got \[0\]"),
        ({"dilation": [1] * (other + 1)}, rf"dilation must have {entries} \(one per map axis\), got {other + 1}"),
        ({"dilation": [2 ** 31]}, r"dilation must be at most 2147483647 in every axis, got \[2147483648\]"),
        ({"border": "reflect"}, 'border must be "zeros" or "clamp", got "reflect"'),
        ({"query": q[..., 0, :] if rank == 1 else q[None]},
         rf"query must have 4, 5 or 6 dimensions \(B, H, 1 to 3 map axes, D\), got {3 if rank == 1 else 7}"),
        ({"query": q.long()}, "query must be float32, float64, float16 or bfloat16, got Long"),
        ({"key": q.double()}, r"key must have the dtype of query \(Float\), got Double"),
        ({"value": q.to("meta")}, r"value must be on the device of query \(cpu\), got meta"),
        ({"key": q[None] if rank == 3 else q[..., None, :]}, f"key must have the {q.dim()} dimensions of query, got"),
        ({"key": q[:1]}, "key must have the batch size B of query = 2 in dimension 0, got 1"),
        ({"value": q[:, :2]}, "value must have the head count H of query = 3 in dimension 1, got 2"),
        ({"value": q[:, :, :2]}, "value must have the length of map axis 0 of query = .* in dimension 2, got 2"),
        ({"key": q[..., :3]}, rf"key must have the head dim D of query = 4 in dimension {q.dim() - 1}, got 3"),
        ({"key_bias": torch.randn(3, k + 1)}, rf"key_bias must have shape \(H, K\) = \[3, {k}\], got \[3, {k + 1}\]"),
        ({"key_bias": torch.randn(2, k)}, rf"key_bias must have shape \(H, K\) = \[3, {k}\], got \[2, {k}\]"),
        ({"key_bias": torch.randn(3, k).half()}, r"key_bias must have the dtype of query \(Float\), got Half"),
        ({"shift_weight": torch.randn(4, k)},
         rf"shift_weight must have shape \(D, K, K\) = \[4, {k}, {k}\], got \[4, {k}\]"),
        ({"shift_weight": torch.randn(4, k, k).to("meta")},
         r"shift_weight must be on the device of query \(cpu\), got meta"),
        ({"shift_bias": torch.randn(k, 4)}, rf"shift_bias must have shape \(D, K\) = \[4, {k}\], got \[{k}, 4\]"),
    ]


@pytest.mark.parametrize("rank", [1, 3])
@pytest.mark.parametrize("index", range(24))
def test_bad_input_message(rank, index):
    change, message = bad_inputs(rank)[index]
    q = QUERIES[rank]
    kwargs = {"query": q, "key": q, "value": q, "kernel_size": [3], "dilation": [1], "key_bias": None,
              "shift_weight": None, "shift_bias": None, "border": "zeros", "causal": True}
    kwargs.update(change)
    with pytest.raises(RuntimeError, match=re.escape(OP) + message):
        slide_attention_nd(**kwargs)


def test_at_least_twenty_bad_inputs_per_rank():
    assert all(len(bad_inputs(rank)) >= 20 for rank in (1, 3))


@pytest.mark.parametrize("rank", [1, 3])
def test_backward_checks_output_and_logsumexp(rank):
    q = QUERIES[rank]
    out, lse = torch.ops.slideformer._slide_attention_nd_forward(q, q, q, [3], [1], None, None, None, "zeros",
                                                                 False, None)
    backward = torch.ops.slideformer._slide_attention_nd_backward
    args = [out, q, q, q, out, lse, [3], [1], None, None, None, "zeros", False, None, [True, True, True]]
    for index, bad, message in [(4, out[..., :2], r"output must have shape of query = "),
                                (0, out.double(), r"grad_output must have the dtype of query \(Float\)"),
                                (5, lse[..., :1], r"logsumexp must have shape of query without D = "),
                                (5, lse.double(), r"logsumexp must have dtype Float")]:
        changed = list(args)
        changed[index] = bad
        with pytest.raises(RuntimeError, match=re.escape(OP) + message):
            backward(*changed)


@pytest.mark.parametrize("op,query", [
    (lambda q: slide_attention_nd(q, q, q, [3]), torch.empty(2, 1, 2 ** 62 + 1, 0, device="meta")),
    (lambda q: torch.ops.slideformer.slide_attention(q, q, q, 3), torch.empty(2, 1, 2 ** 62 + 1, 1, 0, device="meta"))],
    ids=["slide_attention_nd", "slide_attention"])
def test_log_sum_exp_too_large_for_memory_is_refused(op, query):
    """D = 0 leaves query empty, but its log-sum-exp (the shape without D) would not fit in memory."""
    name = "slideformer::slide_attention_nd" if query.dim() == 4 else "slideformer::slide_attention"
    with pytest.raises(RuntimeError, match=re.escape(f"{name}: query must have a shape whose log-sum-exp (the shape "
                                                      f"without D) fits in memory, got {list(query.shape)}")):
        op(query)


class VideoSlideBlock(torch.nn.Module):
    """A module holding the op's parameters for 3-axis maps (time, height, width)."""

    def __init__(self, heads: int, head_dim: int, border: str = "zeros"):
        super().__init__()
        self.border = border
        self.key_bias = torch.nn.Parameter(torch.randn(heads, 27) * 0.02)
        self.shift_weight = torch.nn.Parameter(torch.eye(27) + 0.1 * torch.randn(head_dim, 27, 27))
        self.shift_bias = torch.nn.Parameter(0.1 * torch.randn(head_dim, 27))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.slideformer.slide_attention_nd(q, k, v, [3], [1], self.key_bias, self.shift_weight,
                                                        self.shift_bias, self.border, True, None)


def scripted_function(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.ops.slideformer.slide_attention_nd(q, k, v, [5], [2], None, None, None, "clamp", False, 0.5)


def test_torchscript_function_and_module_roundtrip_in_fresh_process(tmp_path, library_path):
    q1, k1, v1 = (t.detach() for t in make_inputs((2, 3, 9, 4), [5])[:3])
    fn = torch.jit.script(scripted_function)
    torch.testing.assert_close(fn(q1, k1, v1), reference(q1, k1, v1, [5], [2], border="clamp", scale=0.5))
    q3, k3, v3 = (t.detach() for t in make_inputs((1, 3, 3, 4, 5, 4), [3])[:3])
    module = torch.jit.script(VideoSlideBlock(3, 4).double())
    expected = module(q3, k3, v3)
    torch.testing.assert_close(expected, reference(q3, k3, v3, [3], [1], module.key_bias, module.shift_weight,
                                                   module.shift_bias, causal=True))
    fn.save(str(tmp_path / "fn.pt"))
    module.save(str(tmp_path / "module.pt"))
    torch.save({"fn": (q1, k1, v1, fn(q1, k1, v1)), "module": (q3, k3, v3, expected)}, tmp_path / "io.pt")
    code = (
        "import torch\n"
        f"torch.ops.load_library({library_path!r})\n"
        f"io = torch.load({str(tmp_path / 'io.pt')!r})\n"
        "for name in ('fn', 'module'):\n"
        f"    m = torch.jit.load({str(tmp_path)!r} + '/' + name + '.pt')\n"
        "    q, k, v, expected = io[name]\n"
        "    torch.testing.assert_close(m(q, k, v), expected, rtol=0, atol=0)\n"
        "print('roundtrip ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "roundtrip ok" in result.stdout


@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_torch_export_roundtrip(tmp_path, border):
    module = VideoSlideBlock(3, 4, border=border).double()
    q, k, v = (t.detach() for t in make_inputs((2, 3, 3, 4, 5, 4), [3])[:3])
    program = torch.export.export(module, (q, k, v))
    assert "slideformer.slide_attention_nd" in str(program.graph)
    torch.testing.assert_close(program.module()(q, k, v), module(q, k, v))
    path = tmp_path / "slide_nd.pt2"
    torch.export.save(program, str(path))
    torch.testing.assert_close(torch.export.load(str(path)).module()(q, k, v), module(q, k, v))


def test_torch_compile_through_meta_kernel():
    inputs = make_inputs((2, 2, 3, 4, 5, 3), [3])

    def fn(*x):
        return slide_attention_nd(*x[:3], [3], [1], *x[3:], "zeros", True)

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True, dynamic=True)
    out = compiled(*inputs)
    torch.testing.assert_close(out, fn(*inputs))
    for a, e in zip(torch.autograd.grad(out.sum(), inputs), torch.autograd.grad(fn(*inputs).sum(), inputs)):
        torch.testing.assert_close(a, e)
