"""slideformer::slide_attention from Python: parity with two independent references, opcheck,
gradcheck, bad inputs, TorchScript, export, compile (DESIGN 2.2)."""
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

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
    weight = torch.eye(k2, dtype=learned_weight.dtype) + learned_weight.reshape(d, k2, k2)
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
