"""slideformer::slide_attention from Python: parity with two independent references, opcheck,
gradcheck, bad inputs, TorchScript, export, compile (contract: docs/operators.md)."""
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from precision import assert_matches_float64

slide_attention = torch.ops.slideformer.slide_attention


def reference_slide_transformer(q, k, v, kernel_size, dilation=1, key_bias=None, learned_weight=None,
                                learned_bias=None, scale=None):
    """The Slide-Transformer formulation ("zeros" border): per channel, a frozen zero-padded
    depthwise conv2d with one-hot kernels makes the k*k shifted copies of K and V, a learnable
    depthwise conv2d of the same shape (weight (D*k*k, 1, k, k), bias (D*k*k)) adds the deformed
    part; output channel c*k*k + n is copy n of channel c. Then einsum and softmax."""
    b, h, y, x, d = q.shape
    k2 = kernel_size * kernel_size
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    one_hot = torch.eye(k2, dtype=q.dtype).reshape(k2, 1, kernel_size, kernel_size).repeat(d, 1, 1, 1)
    pad = dilation * (kernel_size // 2)

    def shifted_copies(t):  # (B, H, Y, X, D) -> (B, H, D, k2, Y, X)
        planes = t.permute(0, 1, 4, 2, 3).reshape(b * h, d, y, x)
        out = F.conv2d(planes, one_hot, padding=pad, dilation=dilation, groups=d)
        if learned_weight is not None:
            out = out + F.conv2d(planes, learned_weight, learned_bias, padding=pad, dilation=dilation, groups=d)
        elif learned_bias is not None:
            out = out + learned_bias.reshape(1, -1, 1, 1)
        return out.reshape(b, h, d, k2, y, x)

    keys, values = shifted_copies(k), shifted_copies(v)
    if key_bias is not None:
        keys = keys + key_bias.reshape(1, h, 1, k2, 1, 1)
    logits = torch.einsum("bhyxc,bhcnyx->bhyxn", q, keys) * scale
    return torch.einsum("bhyxn,bhcnyx->bhyxc", logits.softmax(-1), values)


def clamp_window_slots(length, kernel_size, dilation):
    """Brute force, per axis: the position each slot of each pixel reads, -1 past a short axis."""
    table = []
    for i in range(length):
        group, sub = i % dilation, i // dilation
        sub_length = len(range(group, length, dilation))
        start = min(max(sub - kernel_size // 2, 0), max(sub_length - kernel_size, 0))
        table.append([group + dilation * (start + j) if start + j < sub_length else -1 for j in range(kernel_size)])
    return torch.tensor(table, dtype=torch.long).reshape(length, kernel_size)


def reference_clamp_gather(q, k, v, kernel_size, dilation=1, key_bias=None, shift_weight=None, shift_bias=None,
                           scale=None):
    """The "clamp" border by brute-force gathering: windows pushed inside the map, slots past a
    short axis masked out of the softmax and read as 0 by the mixing."""
    b, h, y, x, d = q.shape
    k2 = kernel_size * kernel_size
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    rows, cols = clamp_window_slots(y, kernel_size, dilation), clamp_window_slots(x, kernel_size, dilation)
    row_pos = rows[:, None, :, None].expand(y, x, kernel_size, kernel_size).reshape(y * x, k2)
    col_pos = cols[None, :, None, :].expand(y, x, kernel_size, kernel_size).reshape(y * x, k2)
    masked = (row_pos < 0) | (col_pos < 0)
    flat_index = torch.where(masked, torch.full_like(row_pos, y * x), row_pos * x + col_pos)

    def gather(t):  # (B, H, Y, X, D) -> (B, H, Y*X, k2, D), zero rows for masked slots
        padded = torch.cat([t.reshape(b, h, y * x, d), t.new_zeros(b, h, 1, d)], dim=2)
        return padded[:, :, flat_index.reshape(-1)].reshape(b, h, y * x, k2, d)

    def mix(g):
        if shift_weight is not None:
            g = torch.einsum("cnm,bhpmc->bhpnc", shift_weight, g)
        return g if shift_bias is None else g + shift_bias.t()

    keys, values = mix(gather(k)), mix(gather(v))
    if key_bias is not None:
        keys = keys + key_bias[None, :, None, :, None]
    logits = torch.einsum("bhpc,bhpnc->bhpn", q.reshape(b, h, y * x, d), keys) * scale
    probs = logits.masked_fill(masked, float("-inf")).softmax(-1)
    return torch.einsum("bhpn,bhpnc->bhpc", probs, values).reshape(b, h, y, x, d)


def make_inputs(b=2, h=2, y=5, x=7, d=4, kernel_size=3, dtype=torch.float64, params=True, grad=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    k2 = kernel_size * kernel_size

    def randn(*shape, std=1.0):
        t = torch.randn(*shape, generator=g, dtype=dtype) * std
        return t.requires_grad_(grad)

    q, k, v = (randn(b, h, y, x, d) for _ in range(3))
    if not params:
        return q, k, v, None, None, None
    # The learnable depthwise conv of Slide-Transformer: W = I + its weight, bshift = its bias.
    learned_weight = randn(d * k2, 1, kernel_size, kernel_size, std=0.3)
    learned_bias = randn(d * k2, std=0.3)
    key_bias = randn(h, k2, std=0.5)
    return q, k, v, key_bias, learned_weight, learned_bias


def merged_shift(learned_weight, learned_bias, d, k2):
    """(shift_weight, shift_bias) of the op equal to one-hot conv + learnable conv."""
    weight = torch.eye(k2, dtype=learned_weight.dtype, device=learned_weight.device) + learned_weight.reshape(d, k2, k2)
    return weight, learned_bias.reshape(d, k2)


PARITY_SHAPES = [
    # (B, H, Y, X, D, kernel_size, dilation)
    (2, 2, 5, 7, 4, 3, 1),  # odd, non-square
    (1, 3, 1, 1, 5, 3, 1),  # 1x1 map
    (1, 2, 2, 3, 3, 5, 1),  # map smaller than the kernel
    (2, 1, 6, 7, 9, 3, 2),  # dilation 2, D not a multiple of the vector width
    (1, 2, 7, 9, 4, 3, 3),  # dilation 3: short sub-axes in clamp mode
    (1, 1, 9, 4, 2, 5, 2),
    (1, 2, 4, 6, 3, 1, 1),  # kernel_size 1
    (1, 1, 14, 15, 2, 13, 1),  # the largest kernel
    # channel chunks of 1, 2, 4 vectors (AVX-512 float): interior windows read in place
    (1, 2, 9, 8, 16, 3, 2),
    (1, 2, 6, 7, 32, 3, 1),
    (1, 1, 5, 6, 40, 3, 1),
    (0, 2, 4, 4, 4, 3, 1),  # B = 0
]


@pytest.mark.parametrize("shape", PARITY_SHAPES)
@pytest.mark.parametrize("with_params", [True, False])
def test_zeros_border_matches_slide_transformer_formulation(shape, with_params):
    b, h, y, x, d, ks, dil = shape
    q, k, v, key_bias, learned_weight, learned_bias = make_inputs(b, h, y, x, d, ks, params=with_params)
    if with_params:
        weight, bias = merged_shift(learned_weight, learned_bias, d, ks * ks)
    else:
        weight = bias = None
    out = slide_attention(q, k, v, ks, dil, key_bias, weight, bias, "zeros")
    ref = reference_slide_transformer(q, k, v, ks, dil, key_bias, learned_weight, learned_bias)
    torch.testing.assert_close(out, ref)
    if out.numel():
        leaves = [t for t in (q, k, v, key_bias, learned_weight, learned_bias) if t is not None]
        grad = torch.randn_like(out)
        ours = torch.autograd.grad(out, leaves, grad)
        theirs = torch.autograd.grad(ref, leaves, grad)
        for name, a, e in zip(["q", "k", "v", "key_bias", "learned_weight", "learned_bias"], ours, theirs):
            torch.testing.assert_close(a, e, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("shape", PARITY_SHAPES)
@pytest.mark.parametrize("with_params", [True, False])
def test_clamp_border_matches_brute_force_gather(shape, with_params):
    b, h, y, x, d, ks, dil = shape
    q, k, v, key_bias, learned_weight, learned_bias = make_inputs(b, h, y, x, d, ks, params=with_params)
    weight, bias = merged_shift(learned_weight, learned_bias, d, ks * ks) if with_params else (None, None)
    out = slide_attention(q, k, v, ks, dil, key_bias, weight, bias, "clamp")
    ref = reference_clamp_gather(q, k, v, ks, dil, key_bias, weight, bias)
    torch.testing.assert_close(out, ref)
    if out.numel():
        leaves = [t for t in (q, k, v, key_bias, learned_weight, learned_bias) if t is not None]
        grad = torch.randn_like(out)
        ours = torch.autograd.grad(out, leaves, grad)
        theirs = torch.autograd.grad(ref, leaves, grad)
        for a, e in zip(ours, theirs):
            torch.testing.assert_close(a, e)


def test_every_optional_input_alone_and_keyword_arguments():
    q, k, v, key_bias, learned_weight, learned_bias = make_inputs(2, 2, 5, 6, 3, grad=False)
    weight, bias = merged_shift(learned_weight, learned_bias, 3, 9)
    for mask in range(8):
        kb = key_bias if mask & 1 else None
        lw, w = (learned_weight, weight) if mask & 2 else (None, None)
        lb, b = (learned_bias, bias) if mask & 4 else (None, None)
        out = slide_attention(q, k, v, kernel_size=3, dilation=2, key_bias=kb, shift_weight=w, shift_bias=b,
                              scale=0.3)
        torch.testing.assert_close(out, reference_slide_transformer(q, k, v, 3, 2, kb, lw, lb, scale=0.3))
        out = slide_attention(q, k, v, 3, 2, kb, w, b, border="clamp")
        torch.testing.assert_close(out, reference_clamp_gather(q, k, v, 3, 2, kb, w, b))


def test_permuted_inputs_as_a_module_passes_them():
    g = torch.Generator().manual_seed(1)
    b, y, x, h, d = 2, 5, 7, 3, 4
    qkv = torch.randn(b, y, x, 3, h, d, generator=g, dtype=torch.float64)
    q, k, v = (qkv[:, :, :, i].permute(0, 3, 1, 2, 4) for i in range(3))
    assert not q.is_contiguous()
    key_bias = torch.randn(h, 9, generator=g, dtype=torch.float64)
    for border, ref in (("zeros", reference_slide_transformer), ("clamp", reference_clamp_gather)):
        out = slide_attention(q, k, v, 3, 1, key_bias, None, None, border)
        torch.testing.assert_close(out, ref(q, k, v, 3, 1, key_bias))


def reference_merged(border, q, k, v, kernel_size, dilation, key_bias, shift_weight, shift_bias):
    """The reference of `border` taking the op's own (merged) shift_weight (D, k*k, k*k) and
    shift_bias (D, k*k)."""
    if border == "clamp":
        return reference_clamp_gather(q, k, v, kernel_size, dilation, key_bias, shift_weight, shift_bias)
    d, k2 = q.shape[-1], kernel_size * kernel_size
    eye = torch.eye(k2, dtype=q.dtype)
    learned_weight = None if shift_weight is None else (shift_weight - eye).reshape(d * k2, 1, kernel_size, kernel_size)
    learned_bias = None if shift_bias is None else shift_bias.reshape(d * k2)
    return reference_slide_transformer(q, k, v, kernel_size, dilation, key_bias, learned_weight, learned_bias)


SLIDE_RESULT_NAMES = ("output", "dq", "dk", "dv", "dkey_bias", "dshift_weight", "dshift_bias")


def check_dtype_matches_float64(dtype, border, shape, dilation=1, put=lambda *tensors: list(tensors)):
    """Output and the six gradients in `dtype` (on the device `put` copies to) against float64 on
    the same rounded inputs and output gradient, per element."""
    low = [t.detach().to(dtype).requires_grad_() for t in put(*all_inputs(shape))]
    assert_matches_float64(lambda q, k, v, *params: slide_attention(q, k, v, 3, dilation, *params, border),
                           lambda q, k, v, *params: reference_merged(border, q, k, v, 3, dilation, *params),
                           low, dtype, SLIDE_RESULT_NAMES, what=f"{border} ")


@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_half_types_close_to_float64(dtype, border):
    check_dtype_matches_float64(dtype, border, (2, 2, 9, 11, 16))


@pytest.mark.parametrize("dilation", [1, 2])
def test_cpu_fast_path_in_float32_matches_float64(dilation):
    """The CPU fast path (zeros border, k = 3, shift weight) in float32 over rows of several full
    vector tiles and a ragged one (X = 35), B and H > 1."""
    check_dtype_matches_float64(torch.float32, "zeros", (2, 2, 6, 35, 8), dilation)


def all_inputs(shape=(1, 2, 4, 5, 3)):
    """q, k, v (B, H, Y, X, D = shape) and key_bias, shift_weight, shift_bias for k = 3, all leaves."""
    q, k, v, key_bias, learned_weight, learned_bias = make_inputs(*shape, grad=False)
    weight, bias = merged_shift(learned_weight, learned_bias, shape[-1], 9)
    return [t.detach().requires_grad_() for t in (q, k, v, key_bias, weight, bias)]


@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_gradcheck_all_six_inputs(border):
    inputs = all_inputs()
    assert torch.autograd.gradcheck(
        lambda q, k, v, kb, w, b: slide_attention(q, k, v, 3, 2, kb, w, b, border), inputs)


@pytest.mark.parametrize("border", ["zeros", "clamp"])
@pytest.mark.parametrize("with_params", [True, False])
def test_opcheck_public_op(border, with_params):
    q, k, v, key_bias, weight, bias = all_inputs((2, 2, 4, 5, 3))
    params = (key_bias, weight, bias) if with_params else (None, None, None)
    torch.library.opcheck(slide_attention, (q, k, v, 3, 2, *params, border, None))


def test_opcheck_internal_ops():
    q, k, v, key_bias, weight, bias = (t.detach() for t in all_inputs((2, 2, 4, 5, 3)))
    args = (q, k, v, 3, 1, key_bias, weight, bias, "clamp", 0.5)
    torch.library.opcheck(torch.ops.slideformer._slide_attention_forward, args)
    out, lse = torch.ops.slideformer._slide_attention_forward(*args)
    assert lse.shape == q.shape[:4] and lse.dtype == torch.float64
    torch.library.opcheck(torch.ops.slideformer._slide_attention_backward,
                          (torch.randn_like(out), q, k, v, out, lse, 3, 1, key_bias, weight, bias, "clamp", 0.5,
                           [True, False, True]))


def test_backward_is_deterministic():
    q, k, v, key_bias, weight, bias = (t.detach().float().requires_grad_()
                                        for t in all_inputs((2, 3, 17, 19, 32)))

    def grads():
        out = slide_attention(q, k, v, 3, 1, key_bias, weight, bias)
        return torch.autograd.grad(out.square().sum(), (q, k, v, key_bias, weight, bias))

    for a, b in zip(grads(), grads()):
        assert torch.equal(a, b)


def test_double_backward_says_unsupported():
    q, k, v = all_inputs()[:3]
    with pytest.raises(RuntimeError, match="slideformer::slide_attention: double backward is not supported"):
        torch.autograd.grad(slide_attention(q, k, v, 3).sum(), q, create_graph=True)


OP = "slideformer::slide_attention: "
Q = torch.randn(2, 3, 5, 6, 4)


@pytest.mark.parametrize("change,message", [
    ({"kernel_size": 4}, "kernel_size must be odd and >= 1, got 4"),
    ({"kernel_size": 0}, "kernel_size must be odd and >= 1, got 0"),
    ({"dilation": 0}, "dilation must be >= 1, got 0"),
    ({"border": "reflect"}, 'border must be "zeros" or "clamp", got "reflect"'),
    ({"query": Q[0]}, r"query must have 5 dimensions \(B, H, Y, X, D\), got 4"),
    ({"query": Q.long()}, "query must be float32, float64, float16 or bfloat16, got Long"),
    ({"key": Q.double()}, r"key must have the dtype of query \(Float\), got Double"),
    ({"value": Q.to("meta")}, r"value must be on the device of query \(cpu\), got meta"),
    ({"key": Q[:, :2]}, "key must have the head count H of query = 3 in dimension 1, got 2"),
    ({"value": Q[:, :, :4]}, "value must have the height Y of query = 5 in dimension 2, got 4"),
    ({"key": Q[..., :3]}, "key must have the head dim D of query = 4 in dimension 4, got 3"),
    ({"key_bias": torch.randn(3, 8)}, r"key_bias must have shape \(H, k\*k\) = \[3, 9\], got \[3, 8\]"),
    ({"key_bias": torch.randn(2, 9)}, r"key_bias must have shape \(H, k\*k\) = \[3, 9\], got \[2, 9\]"),
    ({"key_bias": torch.randn(3, 9).half()}, r"key_bias must have the dtype of query \(Float\), got Half"),
    ({"shift_weight": torch.randn(4, 9)}, r"shift_weight must have shape \(D, k\*k, k\*k\) = \[4, 9, 9\], got \[4, 9\]"),
    ({"shift_weight": torch.randn(4, 9, 9).to("meta")}, r"shift_weight must be on the device of query \(cpu\), got meta"),
    ({"shift_bias": torch.randn(9, 4)}, r"shift_bias must have shape \(D, k\*k\) = \[4, 9\], got \[9, 4\]"),
])
def test_bad_input_message(change, message):
    kwargs = {"query": Q, "key": Q, "value": Q, "kernel_size": 3, "dilation": 1, "key_bias": None,
              "shift_weight": None, "shift_bias": None, "border": "zeros"}
    kwargs.update(change)
    with pytest.raises(RuntimeError, match=re.escape(OP) + message):
        slide_attention(**kwargs)


class SlideBlock(torch.nn.Module):
    """A module holding the op's parameters, as a Slide-Transformer block does (W = I + learned)."""

    def __init__(self, heads: int, head_dim: int, kernel_size: int = 3, border: str = "zeros"):
        super().__init__()
        k2 = kernel_size * kernel_size
        self.kernel_size = kernel_size
        self.border = border
        self.key_bias = torch.nn.Parameter(torch.randn(heads, k2) * 0.02)
        self.shift_weight = torch.nn.Parameter(torch.eye(k2) + 0.1 * torch.randn(head_dim, k2, k2))
        self.shift_bias = torch.nn.Parameter(0.1 * torch.randn(head_dim, k2))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.ops.slideformer.slide_attention(q, k, v, self.kernel_size, 1, self.key_bias, self.shift_weight,
                                                     self.shift_bias, self.border, None)


def scripted_function(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.ops.slideformer.slide_attention(q, k, v, 3, 2, None, None, None, "clamp", 0.5)


def test_torchscript_function_and_module_roundtrip_in_fresh_process(tmp_path, library_path):
    q, k, v, *_ = (t.detach() for t in all_inputs((2, 3, 5, 6, 4)))
    fn = torch.jit.script(scripted_function)
    torch.testing.assert_close(fn(q, k, v), reference_clamp_gather(q, k, v, 3, 2, scale=0.5))

    module = torch.jit.script(SlideBlock(3, 4).double())
    expected = module(q, k, v)
    learned_weight = (module.shift_weight - torch.eye(9, dtype=torch.float64)).reshape(4 * 9, 1, 3, 3)
    torch.testing.assert_close(expected, reference_slide_transformer(q, k, v, 3, 1, module.key_bias, learned_weight,
                                                                     module.shift_bias.reshape(-1)))
    paths = {"fn": tmp_path / "fn.pt", "module": tmp_path / "module.pt", "io": tmp_path / "io.pt"}
    fn.save(str(paths["fn"]))
    module.save(str(paths["module"]))
    torch.save({"q": q, "k": k, "v": v, "module": expected, "fn": fn(q, k, v)}, paths["io"])
    code = (
        "import torch\n"
        f"torch.ops.load_library({library_path!r})\n"
        f"io = torch.load({str(paths['io'])!r})\n"
        "for name in ('fn', 'module'):\n"
        f"    m = torch.jit.load({str(tmp_path)!r} + '/' + name + '.pt')\n"
        "    torch.testing.assert_close(m(io['q'], io['k'], io['v']), io[name], rtol=0, atol=0)\n"
        "print('roundtrip ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "roundtrip ok" in result.stdout


@pytest.mark.parametrize("border", ["zeros", "clamp"])
def test_torch_export_roundtrip(tmp_path, border):
    module = SlideBlock(3, 4, border=border).double()
    q, k, v, *_ = (t.detach() for t in all_inputs((2, 3, 5, 6, 4)))
    program = torch.export.export(module, (q, k, v))
    assert "slideformer.slide_attention" in str(program.graph)
    torch.testing.assert_close(program.module()(q, k, v), module(q, k, v))
    path = tmp_path / "slide.pt2"
    torch.export.save(program, str(path))
    torch.testing.assert_close(torch.export.load(str(path)).module()(q, k, v), module(q, k, v))


def test_torch_compile_through_meta_kernel():
    q, k, v, key_bias, weight, bias = all_inputs((2, 2, 5, 6, 3))
    compiled = torch.compile(lambda *x: slide_attention(*x[:3], 3, 1, *x[3:], "zeros"),
                             backend="aot_eager", fullgraph=True, dynamic=True)
    inputs = (q, k, v, key_bias, weight, bias)
    out = compiled(*inputs)
    torch.testing.assert_close(out, slide_attention(q, k, v, 3, 1, key_bias, weight, bias))
    grads = torch.autograd.grad(out.sum(), inputs)
    expected = torch.autograd.grad(slide_attention(q, k, v, 3, 1, key_bias, weight, bias).sum(), inputs)
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e)
