"""Python modules mirroring the C++ ones of include/slideformer/nn (docs/modules.md).

Parameter and buffer names, shapes and order equal the C++ modules', so the weights of a C++
checkpoint load into these modules unchanged (slideformer.load_checkpoint) and give the same
outputs. SlideTransformerConfig's and MViTConfig's fields are the names of the C++
SlideTransformerOptions and MViTOptions.
"""
import copy
import dataclasses
import functools
import json
import math
from typing import Any, ClassVar, Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

from . import _library, ops

# The modules' library (libslideformer_nn.so, beside the operator library): the model catalog.
NN_LIBRARY = "libslideformer_nn.so"
_library.load_beside(NN_LIBRARY, lambda: torch.ops.slideformer.model_catalog.default, "modules'")

__all__ = [
    "AbsolutePositionEmbedding", "Classifier", "ClassifierConfig", "DecomposedRelativePosition", "FAMILIES",
    "HierarchicalClassifier", "InputNormalization", "MViT", "MViTBlock", "MViTConfig", "Mlp", "MultiHeadAttention", "PatchEmbed",
    "PatchMerging", "PoolingAttention", "SinusoidalPositionEncoding", "SlideAttention", "SlideTransformer",
    "SlideTransformerConfig", "TransformerBlock", "build", "config_from_description", "drop_path", "fashion", "fashion_mvit", "merge_patches",
    "mvitv2_base", "mvitv2_small", "mvitv2_tiny", "preset", "preset_names", "relative_position_index",
    "slide_swin_base", "slide_swin_small", "slide_swin_tiny", "v1_preset_versions",
]

STAGE_KINDS = ("slide", "global")
BORDERS = ("zeros", "clamp")


# --- functional twins -------------------------------------------------------------------------

def drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Stochastic depth: zeroes whole samples with probability p in training, scaling the kept
    ones by 1 / (1 - p); the identity in eval mode or for p = 0."""
    if not training or p == 0.0:
        return x
    if not 0.0 < p < 1.0:
        raise ValueError(f"slideformer.nn.drop_path: p must be in [0, 1), got {p}")
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p).div_(1.0 - p)
    return x * keep


def relative_position_index(rows: int, cols: Optional[int] = None) -> Tensor:
    """Swin relative-position index of a rows x cols map (cols = rows when not given):
    (rows*cols, rows*cols) int64 entries in [0, (2 rows - 1)(2 cols - 1))."""
    cols = rows if cols is None else cols
    if rows < 1 or cols < 1:
        raise ValueError(f"slideformer.nn.relative_position_index: rows and cols must be >= 1, got {rows} and {cols}")
    y, x = torch.arange(rows).repeat_interleave(cols), torch.arange(cols).repeat(rows)
    dy = y[:, None] - y[None, :] + (rows - 1)
    dx = x[:, None] - x[None, :] + (cols - 1)
    return dy * (2 * cols - 1) + dx


def merge_patches(x: Tensor) -> Tensor:
    """(B, Y, X, C) -> (B, ceil(Y/2), ceil(X/2), 4C): each 2x2 group in the order (0,0), (1,0),
    (0,1), (1,1) (row, column); odd maps are zero-padded at the bottom / right first."""
    if x.dim() != 4:
        raise ValueError(f"slideformer.nn.merge_patches: input must be (B, Y, X, C), got shape {tuple(x.shape)}")
    x = nn.functional.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)


class _SizeCache:
    """What a position table needs at a map size other than its own, computed once per size (the
    library's SizeCache): constant(key, compute) once per key; derived(key, table, compute) kept
    while the table holds the same values (same storage, same version) and no gradient flows
    through it. Traced and compiled code computes every time (the trace records the computation)."""

    def __init__(self):
        self._constants: Dict[Any, Tensor] = {}
        self._derived: Dict[Any, Any] = {}

    @staticmethod
    def _tracing() -> bool:
        return torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.compiler.is_exporting()

    def constant(self, key: Any, compute) -> Tensor:
        if self._tracing():
            return compute()
        if key not in self._constants:
            self._constants[key] = compute()
        return self._constants[key]

    def derived(self, key: Any, table: Tensor, compute) -> Tensor:
        if (torch.is_grad_enabled() and table.requires_grad) or self._tracing():
            return compute()
        stamp = (table.data_ptr(), table._version)
        entry = self._derived.get(key)
        if entry is None or entry[0] != stamp:
            with torch.no_grad():
                entry = self._derived[key] = (stamp, compute())
        return entry[1]


# --- initialisation (as the C++ modules do it) ----------------------------------------------------

def _trunc_normal_(t: Tensor, std: float) -> Tensor:
    return nn.init.trunc_normal_(t, std=std, a=-2.0, b=2.0)


def _linear(in_features: int, out_features: int, bias: bool = True) -> nn.Linear:
    layer = nn.Linear(in_features, out_features, bias=bias)
    _trunc_normal_(layer.weight, 0.02)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _depthwise_conv_parameter(*shape: int, kernel_size: int) -> nn.Parameter:
    """PyTorch's default init of a depthwise k x k convolution (fan-in k*k): U(-1/k, 1/k)."""
    bound = 1.0 / kernel_size
    return nn.Parameter(torch.empty(shape).uniform_(-bound, bound))


def _check_heads(module: str, dim: int, heads: int) -> None:
    if heads <= 0 or dim % heads != 0:
        raise ValueError(f"slideformer.nn.{module}: dim must be a positive multiple of heads, "
                         f"got dim {dim} and heads {heads}")


# --- modules ------------------------------------------------------------------------------------

class MultiHeadAttention(nn.Module):
    """Global multi-head attention on the attention operator; input and output (B, N, C). With
    relative_position_size R > 0 a Swin bias table ((2R-1)^2, heads) is added to the logits
    (trained through the operator's bias gradient): as it is for an R x R map, resized bicubically
    for any other rows x cols map (N = rows * cols; rows = cols = sqrt(N) when not given), once
    per size."""

    def __init__(self, dim: int, heads: int, relative_position_size: int = 0, qkv_bias: bool = True):
        super().__init__()
        _check_heads("MultiHeadAttention", dim, heads)
        self.dim, self.heads, self.relative_position_size = dim, heads, relative_position_size
        if relative_position_size > 0:
            table = torch.empty((2 * relative_position_size - 1) ** 2, heads)
            self.relative_position_table = nn.Parameter(_trunc_normal_(table, 0.02))
            self.register_buffer("relative_position_index", relative_position_index(relative_position_size))
        else:
            self.relative_position_table = None
            self.relative_position_index = None
        self.qkv = _linear(dim, 3 * dim, qkv_bias)
        self.proj = _linear(dim, dim)
        self._size_cache = _SizeCache()

    def relative_position_bias(self, rows: Optional[int] = None, cols: Optional[int] = None) -> Optional[Tensor]:
        """(1, heads, N, N) bias gathered from the table, or None without one: for the table's own
        map, or for a rows x cols map with the table resized to (2 rows - 1) x (2 cols - 1) as timm's
        resize_rel_pos_bias_table_simple does (bicubic, align_corners False)."""
        table, size, heads = self.relative_position_table, self.relative_position_size, self.heads
        if table is None:
            return None
        if rows is None or (rows == size and cols == size):
            tokens = self.relative_position_index.shape[0]
            bias = table.index_select(0, self.relative_position_index.view(-1))
            return bias.view(tokens, tokens, heads).permute(2, 0, 1).unsqueeze(0)
        index = self._size_cache.constant((rows, cols, table.device),
                                          lambda: relative_position_index(rows, cols).view(-1).to(table.device))

        def resized() -> Tensor:
            grid = table.t().reshape(1, heads, 2 * size - 1, 2 * size - 1)
            grid = nn.functional.interpolate(grid, size=(2 * rows - 1, 2 * cols - 1), mode="bicubic",
                                             align_corners=False)
            return grid.reshape(heads, -1).index_select(1, index).view(1, heads, rows * cols, rows * cols)
        return self._size_cache.derived((rows, cols), table, resized)

    def forward(self, x: Tensor, rows: Optional[int] = None, cols: Optional[int] = None) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise ValueError(f"slideformer.nn.MultiHeadAttention: input must be (B, N, {self.dim}), "
                             f"got shape {tuple(x.shape)}")
        batch, tokens = x.shape[0], x.shape[1]
        if rows is None and cols is None:  # a square map
            rows = cols = round(math.sqrt(tokens))
        if self.relative_position_table is not None and not (rows > 0 and cols > 0 and rows * cols == tokens):
            size = self.relative_position_size
            raise ValueError(f"slideformer.nn.MultiHeadAttention: the relative-position table is for {size * size} "
                             f"tokens (a {size}x{size} map, resized for other maps), got {tokens} tokens, not a "
                             f"{rows}x{cols} map: give the map's rows and cols")
        bias = self.relative_position_bias(rows, cols)
        q, k, v = self.qkv(x).view(batch, tokens, 3, self.heads, self.dim // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        out = ops.attention(q, k, v, bias)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, self.dim))


class SlideAttention(nn.Module):
    """Slide attention on the slide_attention operator; input and output (B, Y, X, C).

    qkv's output channels are head-major (head, {q, k, v}, d). The deformed shift has the
    reference's two paths: a frozen one-hot path (identity_weight) with a trainable bias, and a
    learned (d, k*k, k*k) mixing with its own bias; the operator receives their sums.
    """

    def __init__(self, dim: int, heads: int, kernel_size: int = 3, dilation: int = 1,
                 border: str = "zeros", qkv_bias: bool = True):
        super().__init__()
        _check_heads("SlideAttention", dim, heads)
        self.dim, self.heads, self.kernel_size, self.dilation, self.border = dim, heads, kernel_size, dilation, border
        head_dim, window = dim // heads, kernel_size * kernel_size
        self.qkv = _linear(dim, 3 * dim, qkv_bias)
        self.proj = _linear(dim, dim)
        self.key_bias = nn.Parameter(_trunc_normal_(torch.empty(heads, window), 0.02))
        self.identity_weight = nn.Parameter(torch.eye(window).expand(head_dim, window, window).clone(),
                                            requires_grad=False)
        self.identity_bias = _depthwise_conv_parameter(head_dim, window, kernel_size=kernel_size)
        self.shift_weight = _depthwise_conv_parameter(head_dim, window, window, kernel_size=kernel_size)
        self.shift_bias = _depthwise_conv_parameter(head_dim, window, kernel_size=kernel_size)

    def effective_shift_weight(self) -> Tensor:
        """The mixing weight the operator receives (both paths summed)."""
        return self.identity_weight + self.shift_weight

    def effective_shift_bias(self) -> Tensor:
        return self.identity_bias + self.shift_bias

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[3] != self.dim:
            raise ValueError(f"slideformer.nn.SlideAttention: input must be (B, Y, X, {self.dim}), "
                             f"got shape {tuple(x.shape)}")
        batch, rows, cols = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).view(batch, rows, cols, self.heads, 3, self.dim // self.heads) \
            .permute(4, 0, 3, 1, 2, 5).unbind(0)
        out = ops.slide_attention(q, k, v, self.kernel_size, self.dilation, self.key_bias,
                                  self.effective_shift_weight(), self.effective_shift_bias(), self.border)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(batch, rows, cols, self.dim))


class Mlp(nn.Module):
    """Linear(dim, hidden) -> GELU -> Linear(hidden, dim)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = _linear(dim, hidden_dim)
        self.fc2 = _linear(hidden_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x)))


class TransformerBlock(nn.Module):
    """Pre-norm block on a (B, Y, X, C) map: x + drop_path(attn(norm1(x))), then
    x + drop_path(mlp(norm2(x))); kind "slide" or "global" (attention over the flattened map)."""

    def __init__(self, dim: int, heads: int, kind: str, mlp_ratio: float = 4.0, drop_path: float = 0.0,
                 kernel_size: int = 3, dilation: int = 1, border: str = "zeros",
                 relative_position_size: int = 0):
        super().__init__()
        if kind not in STAGE_KINDS:
            raise ValueError(f"slideformer.nn.TransformerBlock: kind must be 'slide' or 'global', got {kind!r}")
        self.kind, self.drop_path = kind, drop_path
        self.norm1 = nn.LayerNorm(dim)
        if kind == "slide":
            self.attn = SlideAttention(dim, heads, kernel_size, dilation, border)
        else:
            self.attn = MultiHeadAttention(dim, heads, relative_position_size)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        normed = self.norm1(x)
        if self.kind == "slide":
            attended = self.attn(normed)
        else:
            attended = self.attn(normed.flatten(1, 2), x.shape[1], x.shape[2]).view(x.shape)
        y = x + drop_path(attended, self.drop_path, self.training)
        return y + drop_path(self.mlp(self.norm2(y)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) -> (B, H/p, W/p, dim): an optional convolutional stem (two 3x3
    convolutions + GELU to stem_channels), a strided convolution (kernel 2p - 1 with overlapping
    patches, else p), then LayerNorm (unless norm=False, as in MViTv2)."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stem_channels: int = 0,
                 overlapping: bool = False, norm: bool = True, norm_eps: float = 1e-5):
        super().__init__()
        self.in_channels = in_channels
        channels = in_channels
        if stem_channels > 0:
            self.stem = nn.Sequential(nn.Conv2d(channels, stem_channels, 3, padding=1), nn.GELU(),
                                      nn.Conv2d(stem_channels, stem_channels, 3, padding=1), nn.GELU())
            channels = stem_channels
        else:
            self.stem = None
        kernel = 2 * patch_size - 1 if overlapping else patch_size
        self.proj = nn.Conv2d(channels, dim, kernel, stride=patch_size,
                              padding=patch_size - 1 if overlapping else 0)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if norm else None

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"slideformer.nn.PatchEmbed: input must be (B, {self.in_channels}, H, W), "
                             f"got shape {tuple(images.shape)}")
        x = self.stem(images) if self.stem is not None else images
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x) if self.norm is not None else x


class SinusoidalPositionEncoding(nn.Module):
    """The fixed 2-D sinusoidal encoding of "Attention Is All You Need" added to a (B, Y, X, dim)
    map: channels [0, dim/4) are sin(row w_i), [dim/4, dim/2) cos(row w_i), then the same for the
    column, w_i = temperature^(-i / (dim/4)). No parameters."""

    def __init__(self, dim: int, temperature: float = 10000.0):
        super().__init__()
        if dim <= 0 or dim % 4 != 0:
            raise ValueError(f"slideformer.nn.SinusoidalPositionEncoding: dim must be a positive multiple of 4, got {dim}")
        self.dim, self.temperature = dim, temperature

    def forward(self, x: Tensor) -> Tensor:
        rows, cols, quarter = x.shape[1], x.shape[2], self.dim // 4
        omega = torch.pow(self.temperature, torch.arange(quarter, dtype=x.dtype, device=x.device) / -quarter)
        r = torch.arange(rows, dtype=x.dtype, device=x.device).unsqueeze(1) * omega
        c = torch.arange(cols, dtype=x.dtype, device=x.device).unsqueeze(1) * omega
        row_part = torch.cat([r.sin(), r.cos()], 1).unsqueeze(1).expand(-1, cols, -1)
        col_part = torch.cat([c.sin(), c.cos()], 1).unsqueeze(0).expand(rows, -1, -1)
        return x + torch.cat([row_part, col_part], -1)


class PatchMerging(nn.Module):
    """(B, Y, X, C) -> (B, ceil(Y/2), ceil(X/2), 2C): merge_patches, LayerNorm(4C),
    Linear(4C, 2C, no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = _linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(self.norm(merge_patches(x)))


class AbsolutePositionEmbedding(nn.Module):
    """A learned (1, rows, cols, dim) table added to a (B, rows, cols, dim) map; resized to any
    other map (table)."""

    def __init__(self, rows: int, cols: int, dim: int):
        super().__init__()
        if rows <= 0 or cols <= 0 or dim <= 0:
            raise ValueError("slideformer.nn.AbsolutePositionEmbedding: rows, cols and dim must be positive, "
                             f"got {rows}, {cols} and {dim}")
        self.weight = nn.Parameter(_trunc_normal_(torch.empty(1, rows, cols, dim), 0.02))
        self._size_cache = _SizeCache()

    def table(self, rows: int, cols: int) -> Tensor:
        """The table itself at its own size, else resized as timm's resample_abs_pos_embed does by
        default (bicubic, antialiased), once per size."""
        if rows == self.weight.shape[1] and cols == self.weight.shape[2]:
            return self.weight
        return self._size_cache.derived((rows, cols), self.weight, lambda: nn.functional.interpolate(
            self.weight.permute(0, 3, 1, 2), size=(rows, cols), mode="bicubic", align_corners=False,
            antialias=True).permute(0, 2, 3, 1))

    def forward(self, x: Tensor) -> Tensor:
        _, rows, cols, dim = self.weight.shape
        if x.dim() != 4 or x.shape[1] <= 0 or x.shape[2] <= 0 or x.shape[3] != dim:
            raise ValueError(f"slideformer.nn.AbsolutePositionEmbedding: input must be (B, Y, X, {dim}) (the table "
                             f"is for {rows}x{cols} and resized for other maps), got shape {tuple(x.shape)}")
        return x + self.table(x.shape[1], x.shape[2])


def _decomposed_index(queries: int, keys: int) -> Tensor:
    """Rows of a table of 2 max(queries, keys) - 1 offsets along one axis: offsets scaled to the
    larger map in float32 (as MViTv2 computes them), then truncated. (queries, keys) int64."""
    q_ratio, k_ratio = max(keys / queries, 1.0), max(queries / keys, 1.0)
    offsets = (torch.arange(queries).unsqueeze(-1) * q_ratio - torch.arange(keys).unsqueeze(0) * k_ratio
               + (keys - 1) * k_ratio)
    return offsets.long()


def _resized_table(table: Tensor, length: int) -> Tensor:
    """A (L, d) table resized linearly to `length` rows (align_corners False), as timm's
    checkpoint_filter_fn resizes MViTv2's tables."""
    if table.shape[0] == length:
        return table
    return nn.functional.interpolate(table.t().unsqueeze(0), size=length, mode="linear",
                                     align_corners=False).squeeze(0).t()


def _decomposed_bias(q: Tensor, height_rows: Tensor, width_rows: Tensor, qy: int, qx: int, ky: int, kx: int) -> Tensor:
    """(B, heads, qy*qx, ky*kx): the query map's relative terms along each axis, summed."""
    batch, heads, d = q.shape[0], q.shape[1], q.shape[3]
    r = q.reshape(batch, heads, qy, qx, d)
    rel_h = torch.einsum("bnyxc,ykc->bnyxk", r, height_rows.view(qy, ky, d))
    rel_w = torch.einsum("bnyxc,xkc->bnyxk", r, width_rows.view(qx, kx, d))
    return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(batch, heads, qy * qx, ky * kx)


class DecomposedRelativePosition(nn.Module):
    """MViTv2's decomposed relative position between a query_size^2 map of queries and a
    key_size^2 map of keys: forward(q) with q (B, heads, query_size^2, head_dim) gives the
    (B, heads, query_size^2, key_size^2) attention bias q . R_h[d(i, k)] + q . R_w[d(j, l)],
    offsets d scaled to the larger map (docs/modules.md). forward(q, query rows, query cols, key
    rows, key cols) takes any other maps: each table resized linearly to 2 max(queries, keys) - 1
    rows along its axis (as timm's checkpoint_filter_fn resizes MViTv2's), once per size."""

    def __init__(self, query_size: int, key_size: int, head_dim: int):
        super().__init__()
        if query_size <= 0 or key_size <= 0 or head_dim <= 0:
            raise ValueError("slideformer.nn.DecomposedRelativePosition: query_size, key_size and head_dim must "
                             f"be positive, got {query_size}, {key_size} and {head_dim}")
        self.query_size, self.key_size, self.head_dim = query_size, key_size, head_dim
        length = 2 * max(query_size, key_size) - 1
        self.height = nn.Parameter(_trunc_normal_(torch.empty(length, head_dim), 0.02))
        self.width = nn.Parameter(_trunc_normal_(torch.empty(length, head_dim), 0.02))
        self.register_buffer("index", _decomposed_index(query_size, key_size))
        self._size_cache = _SizeCache()

    def forward(self, q: Tensor, query_rows: Optional[int] = None, query_cols: Optional[int] = None,
                key_rows: Optional[int] = None, key_cols: Optional[int] = None) -> Tensor:
        qs, ks, d = self.query_size, self.key_size, self.head_dim
        if query_rows is None or (query_rows, query_cols, key_rows, key_cols) == (qs, qs, ks, ks):
            if q.dim() != 4 or q.shape[2] != qs * qs or q.shape[3] != d:
                raise ValueError(f"slideformer.nn.DecomposedRelativePosition: queries must be (B, heads, {qs * qs}, "
                                 f"{d}), got shape {tuple(q.shape)}")
            rows = self.index.view(-1)
            return _decomposed_bias(q, self.height.index_select(0, rows), self.width.index_select(0, rows),
                                    qs, qs, ks, ks)
        if q.dim() != 4 or q.shape[2] != query_rows * query_cols or q.shape[3] != d:
            raise ValueError(f"slideformer.nn.DecomposedRelativePosition: queries must be (B, heads, "
                             f"{query_rows * query_cols}, {d}) for a {query_rows}x{query_cols} query map, "
                             f"got shape {tuple(q.shape)}")

        def rows_of(table: Tensor, axis: int, queries: int, keys: int) -> Tensor:
            """The table resized to this map's offsets, and its rows for the (query, key) pairs."""
            length = 2 * max(queries, keys) - 1
            resized = self._size_cache.derived((axis, length), table, lambda: _resized_table(table, length))
            index = self._size_cache.constant((queries, keys, table.device),
                                              lambda: _decomposed_index(queries, keys).view(-1).to(table.device))
            return resized.index_select(0, index)
        return _decomposed_bias(q, rows_of(self.height, 0, query_rows, key_rows),
                                rows_of(self.width, 1, query_cols, key_cols), query_rows, query_cols, key_rows, key_cols)


POOL_MODES = ("conv", "max", "avg")
POSITION_ENCODINGS = ("none", "learned", "sinusoidal")


def pooled_size(size: int, stride: int) -> int:
    """Side of a square map pooled with an odd kernel, padding kernel // 2 and `stride`."""
    return (size + stride - 1) // stride


class PoolingAttention(nn.Module):
    """Multi-head pooling attention (MViTv2) over a (B, Y, X, dim) map (Y = X = input_size for the
    map it is built for; any other map works too, the relative-position tables resized): queries,
    keys and values are pooled per head (a strided depthwise convolution + LayerNorm in "conv"
    mode, else max / average pooling; kernel kernel_size, padding kernel_size // 2) before the
    attention operator. Output (B, Y', X', dim_out), Y' = ceil(Y / stride_q)."""

    def __init__(self, dim: int, dim_out: int, heads: int, input_size: int, kernel_size: int = 3,
                 stride_q: int = 1, stride_kv: int = 1, mode: str = "conv", relative_position: bool = True,
                 residual_pooling: bool = True, qkv_bias: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        _check_heads("PoolingAttention", dim_out, heads)
        if dim <= 0 or input_size <= 0:
            raise ValueError(f"slideformer.nn.PoolingAttention: dim and input_size must be positive, "
                             f"got {dim} and {input_size}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"slideformer.nn.PoolingAttention: kernel_size must be odd and positive, got {kernel_size}")
        if stride_q < 1 or stride_kv < 1:
            raise ValueError(f"slideformer.nn.PoolingAttention: stride_q and stride_kv must be >= 1, "
                             f"got {stride_q} and {stride_kv}")
        if mode not in POOL_MODES:
            raise ValueError(f"slideformer.nn.PoolingAttention: mode must be one of {POOL_MODES}, got {mode!r}")
        self.dim, self.dim_out, self.heads, self.input_size = dim, dim_out, heads, input_size
        self.kernel_size, self.stride_q, self.stride_kv, self.mode = kernel_size, stride_q, stride_kv, mode
        self.residual_pooling, self.norm_eps = residual_pooling, norm_eps
        head_dim = dim_out // heads
        self.qkv = _linear(dim, 3 * dim_out, qkv_bias)
        self.proj = _linear(dim_out, dim_out)
        for name, stride in (("q", stride_q), ("k", stride_kv), ("v", stride_kv)):
            convolved = mode == "conv" and (kernel_size > 1 or stride > 1)
            setattr(self, "pool_" + name, nn.Conv2d(head_dim, head_dim, kernel_size, stride, kernel_size // 2,
                                                    groups=head_dim, bias=False) if convolved else None)
            setattr(self, "norm_" + name, nn.LayerNorm(head_dim, eps=norm_eps) if convolved else None)
        self.relative_position = (DecomposedRelativePosition(self.query_size, self.key_size, head_dim)
                                  if relative_position else None)

    @property
    def query_size(self) -> int:
        return pooled_size(self.input_size, self.stride_q)

    @property
    def key_size(self) -> int:
        return pooled_size(self.input_size, self.stride_kv)

    def _pool(self, t: Tensor, stride: int, conv: Optional[nn.Conv2d], norm: Optional[nn.LayerNorm],
              rows: int, cols: int) -> Tensor:
        """(B, heads, Y*X, d) -> (B, heads, Y'*X', d), pooled per head over the Y x X map."""
        k = self.kernel_size
        if k == 1 and stride == 1:
            return t
        batch, heads, d = t.shape[0], t.shape[1], t.shape[3]
        x = t.reshape(batch * heads, rows, cols, d).permute(0, 3, 1, 2)
        if self.mode == "conv":
            x = conv(x)
        elif self.mode == "max":
            x = nn.functional.max_pool2d(x, k, stride, k // 2)
        else:
            x = nn.functional.avg_pool2d(x, k, stride, k // 2)
        out = x.reshape(batch, heads, d, -1).transpose(2, 3)
        return norm(out) if norm is not None else out

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] <= 0 or x.shape[2] <= 0 or x.shape[3] != self.dim:
            raise ValueError(f"slideformer.nn.PoolingAttention: input must be (B, Y, X, {self.dim}), "
                             f"got shape {tuple(x.shape)}")
        batch, rows, cols = x.shape[0], x.shape[1], x.shape[2]
        q, k, v = self.qkv(x).view(batch, rows * cols, 3, self.heads, self.dim_out // self.heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        q = self._pool(q, self.stride_q, self.pool_q, self.norm_q, rows, cols)
        k = self._pool(k, self.stride_kv, self.pool_k, self.norm_k, rows, cols)
        v = self._pool(v, self.stride_kv, self.pool_v, self.norm_v, rows, cols)
        q_rows, q_cols = pooled_size(rows, self.stride_q), pooled_size(cols, self.stride_q)
        bias = None
        if self.relative_position is not None:
            bias = self.relative_position(q, q_rows, q_cols, pooled_size(rows, self.stride_kv),
                                          pooled_size(cols, self.stride_kv))
        out = ops.attention(q, k, v, bias)
        if self.residual_pooling:
            out = out + q
        return self.proj(out.transpose(1, 2).reshape(batch, q_rows, q_cols, self.dim_out))


class MViTBlock(nn.Module):
    """MViTv2 block on a (B, S, S, dim) map: x' = pool(shortcut) + drop_path(attn(norm1(x))), then
    x' + drop_path(mlp(norm2(x'))). The shortcut is x, or Linear(dim, dim_out)(norm1(x)) when the
    width changes; with stride_q > 1 it is max-pooled (kernel stride_q + 1) to the queries' map."""

    def __init__(self, attention: PoolingAttention, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        dim, dim_out = attention.dim, attention.dim_out
        self.drop_path = drop_path
        self.norm1 = nn.LayerNorm(dim, eps=attention.norm_eps)
        self.shortcut_proj = _linear(dim, dim_out) if dim != dim_out else None
        self.attn = attention
        self.norm2 = nn.LayerNorm(dim_out, eps=attention.norm_eps)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        stride = self.attn.stride_q
        normed = self.norm1(x)
        shortcut = self.shortcut_proj(normed) if self.shortcut_proj is not None else x
        if stride > 1:  # to the pooled queries' map
            shortcut = nn.functional.max_pool2d(shortcut.permute(0, 3, 1, 2), stride + 1, stride,
                                                (stride + 1) // 2).permute(0, 2, 3, 1)
        y = shortcut + drop_path(self.attn(normed), self.drop_path, self.training)
        return y + drop_path(self.mlp(self.norm2(y)), self.drop_path, self.training)


# --- classifiers ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _catalog() -> Dict[str, Any]:
    """The library's model catalog: presets, defaults, options added later, v1 presets
    (slideformer::nn::model_catalog, include/slideformer/nn/description.h)."""
    return json.loads(torch.ops.slideformer.model_catalog())


class ClassifierConfig:
    """What the configs of every family share: the reading and writing of a model description's
    "options" object, whose names are the fields. The fields, their defaults (FAMILY's options in
    the library) and ADDED_LATER (the options added after the description format, with the value
    that reproduces the models written before them) come from the library's catalog."""

    FAMILY: ClassVar[str]
    ADDED_LATER: ClassVar[Dict[str, Any]]

    @classmethod
    def from_options(cls, options: Mapping[str, Any], source: str = "options") -> "ClassifierConfig":
        """The config of a description's "options" object. Every option must be there, and no other:
        a model this package cannot build exactly is refused rather than approximated."""
        options = {**cls.ADDED_LATER, **options}
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = [name for name in options if name not in names]
        missing = [name for name in names if name not in options]
        if unknown or missing:
            raise ValueError(f"{source}: the {cls.FAMILY} options do not match this slideformer package "
                             f"(unknown: {unknown or 'none'}, missing: {missing or 'none'})")
        return cls(**{name: options[name] for name in names})

    def to_options(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _config_class(name: str, family: str, doc: str) -> type:
    """The dataclass of a family's options: one field per option of the library's description,
    with the library's default."""
    defaults = _catalog()["defaults"][family]
    fields = [(option, type(value), dataclasses.field(default_factory=functools.partial(copy.deepcopy, value)))
              for option, value in defaults.items()]
    namespace = {"__doc__": doc, "__module__": __name__, "FAMILY": family,
                 "ADDED_LATER": _catalog()["added_later"][family]}
    return dataclasses.make_dataclass(name, fields, bases=(ClassifierConfig,), namespace=namespace)


def drop_path_schedule(depths: List[int], rate: float) -> List[List[float]]:
    """Per stage, the stochastic-depth rate of each block: rising linearly over all blocks from 0
    to `rate`."""
    total = sum(depths)
    rates = [rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
    starts = [sum(depths[:s]) for s in range(len(depths))]
    return [rates[start:start + depth] for start, depth in zip(starts, depths)]


class Classifier(nn.Module):
    """What the classifiers share: (B, C, H, W) normalised images of any size the patch embedding
    takes -> forward_tokens (B, Y, X, C) -> LayerNorm, mean over the map, Linear -> (B, classes)
    logits."""

    def stage_maps(self, images: Tensor) -> List[Tensor]:
        """The output of each stage (its last block) as (B, Y_i, X_i, C_i), first stage first."""
        raise NotImplementedError

    def forward_tokens(self, images: Tensor) -> Tensor:
        """(B, Y, X, C) map of the last stage, before the final norm and pooling."""
        return self.stage_maps(images)[-1]

    def forward_features(self, images: Tensor) -> List[Tensor]:
        """The stage outputs (B, C_i, H_i, W_i), first stage first, no norm: the inputs of a
        detection or segmentation neck (the library's Classifier::forward_features)."""
        return [x.permute(0, 3, 1, 2) for x in self.stage_maps(images)]

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.norm(self.forward_tokens(images)).mean((1, 2)))


class HierarchicalClassifier(Classifier):
    """What SlideTransformer and MViT share (the library's HierarchicalClassifier): patch_embed, the
    position encodings that are on, then each stage's blocks and the module after it in
    between_stages(), if any."""

    def between_stages(self) -> Optional[nn.ModuleList]:
        """The module after each stage (but the last), if the family has one."""
        return None

    def _position_encodings(self, learned: bool, sinusoidal: bool, size: int, dim: int) -> None:
        self.absolute_position = AbsolutePositionEmbedding(size, size, dim) if learned else None
        self.sinusoidal_position = SinusoidalPositionEncoding(dim) if sinusoidal else None

    def stage_maps(self, images: Tensor) -> List[Tensor]:
        x = self.patch_embed(images)
        if self.absolute_position is not None:
            x = self.absolute_position(x)
        if self.sinusoidal_position is not None:
            x = self.sinusoidal_position(x)
        maps, after = [], self.between_stages()
        for s, stage in enumerate(self.stages):
            for block in stage:
                x = block(x)
            maps.append(x)
            if after is not None and s < len(after):
                x = after[s](x)
        return maps


SlideTransformerConfig = _config_class("SlideTransformerConfig", "slide_transformer", """The options of a
    SlideTransformer: the fields and defaults of the C++ SlideTransformerOptions (docs/modules.md),
    stage_kinds as "slide" / "global".""")


class SlideTransformer(HierarchicalClassifier):
    """The Slide-Transformer classifier: (B, C, H, W) normalised images -> (B, classes) logits."""

    def __init__(self, config: Optional[SlideTransformerConfig] = None):
        super().__init__()
        config = config if config is not None else SlideTransformerConfig()
        self.config = config
        stages = len(config.depths)
        if stages == 0 or len(config.heads) != stages or len(config.stage_kinds) != stages:
            raise ValueError("slideformer.nn.SlideTransformer: depths, heads and stage_kinds must have one "
                             f"entry per stage, got {len(config.depths)}, {len(config.heads)} and "
                             f"{len(config.stage_kinds)}")
        if config.image_size % config.patch_size != 0:
            raise ValueError(f"slideformer.nn.SlideTransformer: image_size {config.image_size} must be a "
                             f"multiple of patch_size {config.patch_size}")
        # Initialised before the position table, registered after it, as in the library.
        patch_embed = PatchEmbed(config.in_channels, config.embed_dim, config.patch_size,
                                 config.stem_channels, config.overlapping_patches)
        patches = config.image_size // config.patch_size
        self._position_encodings(config.absolute_position_embedding, config.sinusoidal_position_encoding,
                                 patches, config.embed_dim)
        self.patch_embed = patch_embed
        self.stages, self.mergings = nn.ModuleList(), nn.ModuleList()
        dim, map_size = config.embed_dim, patches
        for s, drops in enumerate(drop_path_schedule(config.depths, config.drop_path_rate)):
            self.stages.append(nn.ModuleList(
                TransformerBlock(dim, config.heads[s], config.stage_kinds[s], config.mlp_ratio, drop,
                                 config.kernel_size, config.dilation, config.border, map_size) for drop in drops))
            if s + 1 < stages:
                self.mergings.append(PatchMerging(dim))
                dim *= 2
                map_size = (map_size + 1) // 2
        self.norm = nn.LayerNorm(dim)
        self.head = _linear(dim, config.num_classes)

    def between_stages(self) -> Optional[nn.ModuleList]:
        return self.mergings


MViTConfig = _config_class("MViTConfig", "mvit", """The options of an MViT: the fields and defaults of the
    C++ MViTOptions (docs/modules.md), pool_mode as "conv" / "max" / "avg", position_encoding as
    "none" / "learned" / "sinusoidal".""")


class MViT(HierarchicalClassifier):
    """Multiscale vision Transformer v2: overlapping patch embedding without norm, stages of
    pooling-attention blocks (the first block of every stage but the first halves the map and
    doubles the width), LayerNorm, mean pool, linear head."""

    def __init__(self, config: Optional[MViTConfig] = None):
        super().__init__()
        config = config if config is not None else MViTConfig()
        self.config = config
        stages = len(config.depths)
        if stages == 0 or len(config.heads) != stages:
            raise ValueError("slideformer.nn.MViT: depths and heads must have one entry per stage, "
                             f"got {len(config.depths)} and {len(config.heads)}")
        if not 1 <= config.patch_size <= config.image_size:
            raise ValueError(f"slideformer.nn.MViT: patch_size must be in [1, image_size {config.image_size}], "
                             f"got {config.patch_size}")
        if config.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"slideformer.nn.MViT: position_encoding must be one of {POSITION_ENCODINGS}, "
                             f"got {config.position_encoding!r}")
        self.patch_embed = PatchEmbed(config.in_channels, config.embed_dim, config.patch_size,
                                      overlapping=True, norm=False)
        size = pooled_size(config.image_size, config.patch_size)
        self._position_encodings(config.position_encoding == "learned", config.position_encoding == "sinusoidal",
                                 size, config.embed_dim)
        self.stages = nn.ModuleList()
        dim, stride_kv = config.embed_dim, config.stride_kv
        for s, drops in enumerate(drop_path_schedule(config.depths, config.drop_path_rate)):
            dim_out, stride_q = config.embed_dim << s, 2 if s > 0 else 1
            if s > 0:
                stride_kv = max(stride_kv // 2, 1)
            stage = nn.ModuleList()
            for i, drop in enumerate(drops):
                attention = PoolingAttention(dim, dim_out, config.heads[s], size, config.kernel_size,
                                             stride_q if i == 0 else 1, stride_kv, config.pool_mode,
                                             config.relative_position, config.residual_pooling,
                                             norm_eps=config.norm_eps)
                stage.append(MViTBlock(attention, config.mlp_ratio, drop))
                dim = dim_out
                if i == 0:
                    size = pooled_size(size, stride_q)
            self.stages.append(stage)
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps)
        self.head = _linear(dim, config.num_classes)


# The model families: a description's "family" (the library's name, each config's FAMILY) ->
# (config class, module class).
FAMILIES: Dict[str, Any] = {config.FAMILY: (config, module)
                            for config, module in ((SlideTransformerConfig, SlideTransformer), (MViTConfig, MViT))}


def build(config: ClassifierConfig) -> Classifier:
    """A freshly initialised classifier of `config`'s family."""
    for config_class, module_class in FAMILIES.values():
        if isinstance(config, config_class):
            return module_class(config)
    raise TypeError(f"slideformer.nn.build: expected the config of a model family, got {type(config).__name__}")


class InputNormalization(nn.Module):
    """A classifier that takes (N, C, H, W) images in [0, 1] and normalises them itself with the
    config's input_mean / input_std, as the exported models do (docs/export.md)."""

    def __init__(self, model: Classifier):
        super().__init__()
        channels = model.config.in_channels
        if len(model.config.input_mean) != channels or len(model.config.input_std) != channels:
            raise ValueError(f"slideformer.nn.InputNormalization: input_mean and input_std need one entry per "
                             f"input channel ({channels}), got {len(model.config.input_mean)} and "
                             f"{len(model.config.input_std)}")
        self.model = model
        self.register_buffer("input_mean", torch.tensor(model.config.input_mean).view(1, channels, 1, 1))
        self.register_buffer("input_std", torch.tensor(model.config.input_std).view(1, channels, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.input_mean) / self.input_std)


# --- presets (the library's: slideformer::nn::preset, slideformer::nn::mvit_preset) ---------------

def config_from_description(description: Mapping[str, Any], source: str = "model description") -> ClassifierConfig:
    """The config of a model description {"family": ..., "options": {...}}."""
    if not isinstance(description, Mapping) or not isinstance(description.get("options"), Mapping):
        raise ValueError(f'{source}: a model description must be {{"family": ..., "options": {{...}}}}, '
                         f"got {str(description)[:200]}")
    family = description.get("family")
    if family not in FAMILIES:
        raise ValueError(f"{source}: unknown model family {family!r} (this package builds: {', '.join(FAMILIES)})")
    config = FAMILIES[family][0].from_options(description["options"], source)
    try:  # the library's validate() of the family: the same rules and messages as the C++ reader's
        torch.ops.slideformer.validate_model_description(json.dumps(description), source)
    except RuntimeError as error:
        raise ValueError(str(error).splitlines()[0]) from None
    return config


def preset_names() -> List[str]:
    return list(_catalog()["presets"])


def preset(name: str) -> ClassifierConfig:
    """The config of a preset of either family, by name (the names of slideformer::nn::preset and
    slideformer::nn::mvit_preset)."""
    presets = _catalog()["presets"]
    if name not in presets:
        raise ValueError(f"slideformer: unknown preset '{name}', expected one of {', '.join(presets)}")
    return config_from_description(presets[name], f"preset {name}")


def v1_preset_versions(name: str) -> List[ClassifierConfig]:
    """The architectures the preset name of a v1 checkpoint (which stored no description) may
    denote, newest first (the library's list)."""
    versions = _catalog()["v1_presets"]
    if name not in versions:
        raise ValueError(f"slideformer: v1 checkpoint of an unknown preset '{name}'")
    return [config_from_description(d, f"v1 preset {name}") for d in versions[name]]


def slide_swin_tiny() -> ClassifierConfig:
    return preset("slide_swin_tiny")


def slide_swin_small() -> ClassifierConfig:
    return preset("slide_swin_small")


def slide_swin_base() -> ClassifierConfig:
    return preset("slide_swin_base")


def fashion() -> ClassifierConfig:
    """28x28 grey images, 10 classes: a convolutional stem, overlapping 2x2 patches, an absolute
    position table, two slide blocks at 14x14 and two global blocks at 7x7."""
    return preset("fashion")


def mvitv2_tiny() -> ClassifierConfig:
    return preset("mvitv2_tiny")


def mvitv2_small() -> ClassifierConfig:
    return preset("mvitv2_small")


def mvitv2_base() -> ClassifierConfig:
    return preset("mvitv2_base")


def fashion_mvit() -> ClassifierConfig:
    """28x28 grey images, 10 classes: overlapping 2x2 patches (14x14), keys and values pooled to
    7x7 in the first stage, then 7x7 and 4x4 maps, a learned absolute position table."""
    return preset("fashion_mvit")
