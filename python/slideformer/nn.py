"""Python modules mirroring the C++ ones of include/slideformer/nn (docs/modules.md).

Parameter and buffer names, shapes and order equal the C++ modules', so the weights of a C++
checkpoint load into these modules unchanged (slideformer.load_checkpoint) and give the same
outputs. SlideTransformerConfig's fields are the names of the C++ SlideTransformerOptions.
"""
import dataclasses
import math
from typing import Any, ClassVar, Dict, List, Mapping, Optional

import torch
from torch import Tensor, nn

from . import ops

__all__ = [
    "InputNormalization", "MultiHeadAttention", "Mlp", "PatchEmbed", "PatchMerging", "SinusoidalPositionEncoding",
    "SlideAttention",
    "SlideTransformer", "SlideTransformerConfig", "TransformerBlock", "drop_path", "fashion",
    "merge_patches", "preset", "preset_names", "relative_position_index", "slide_swin_base",
    "slide_swin_small", "slide_swin_tiny",
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


def relative_position_index(size: int) -> Tensor:
    """Swin relative-position index of a size x size map: (size^2, size^2) int64 entries in
    [0, (2 size - 1)^2)."""
    if size < 1:
        raise ValueError(f"slideformer.nn.relative_position_index: size must be >= 1, got {size}")
    coords = torch.arange(size)
    rows, cols = coords.repeat_interleave(size), coords.repeat(size)
    dy = rows[:, None] - rows[None, :] + (size - 1)
    dx = cols[:, None] - cols[None, :] + (size - 1)
    return dy * (2 * size - 1) + dx


def merge_patches(x: Tensor) -> Tensor:
    """(B, Y, X, C) -> (B, ceil(Y/2), ceil(X/2), 4C): each 2x2 group in the order (0,0), (1,0),
    (0,1), (1,1) (row, column); odd maps are zero-padded at the bottom / right first."""
    if x.dim() != 4:
        raise ValueError(f"slideformer.nn.merge_patches: input must be (B, Y, X, C), got shape {tuple(x.shape)}")
    x = nn.functional.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
    return torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)


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
    relative_position_size R > 0, N must be R*R and a Swin bias table ((2R-1)^2, heads) is added
    to the logits (trained through the operator's bias gradient)."""

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

    def relative_position_bias(self) -> Optional[Tensor]:
        """(1, heads, N, N) bias gathered from the table, or None without one."""
        if self.relative_position_table is None:
            return None
        tokens = self.relative_position_index.shape[0]
        bias = self.relative_position_table.index_select(0, self.relative_position_index.view(-1))
        return bias.view(tokens, tokens, self.heads).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3 or x.shape[2] != self.dim:
            raise ValueError(f"slideformer.nn.MultiHeadAttention: input must be (B, N, {self.dim}), "
                             f"got shape {tuple(x.shape)}")
        batch, tokens = x.shape[0], x.shape[1]
        bias = self.relative_position_bias()
        if bias is not None and bias.shape[-1] != tokens:
            size = self.relative_position_size
            raise ValueError(f"slideformer.nn.MultiHeadAttention: the relative-position table is for "
                             f"{bias.shape[-1]} tokens (a {size}x{size} map), got {tokens} tokens")
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
            attended = self.attn(normed.flatten(1, 2)).view(x.shape)
        y = x + drop_path(attended, self.drop_path, self.training)
        return y + drop_path(self.mlp(self.norm2(y)), self.drop_path, self.training)


class PatchEmbed(nn.Module):
    """(B, C_in, H, W) -> (B, H/p, W/p, dim): an optional convolutional stem (two 3x3
    convolutions + GELU to stem_channels), a strided convolution (kernel 2p - 1 with overlapping
    patches, else p), then LayerNorm."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, stem_channels: int = 0,
                 overlapping: bool = False):
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
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: Tensor) -> Tensor:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"slideformer.nn.PatchEmbed: input must be (B, {self.in_channels}, H, W), "
                             f"got shape {tuple(images.shape)}")
        x = self.stem(images) if self.stem is not None else images
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


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


@dataclasses.dataclass
class SlideTransformerConfig:
    """The options of a SlideTransformer: the fields and defaults of the C++
    SlideTransformerOptions (docs/modules.md), stage_kinds as "slide" / "global"."""

    image_size: int = 224
    in_channels: int = 3
    num_classes: int = 1000
    patch_size: int = 4
    stem_channels: int = 0
    overlapping_patches: bool = False
    embed_dim: int = 96
    absolute_position_embedding: bool = False
    sinusoidal_position_encoding: bool = False
    depths: List[int] = dataclasses.field(default_factory=lambda: [2, 2, 6, 2])
    heads: List[int] = dataclasses.field(default_factory=lambda: [3, 6, 12, 24])
    stage_kinds: List[str] = dataclasses.field(default_factory=lambda: ["slide", "slide", "global", "global"])
    kernel_size: int = 3
    dilation: int = 1
    border: str = "zeros"
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    input_mean: List[float] = dataclasses.field(default_factory=lambda: [0.485, 0.456, 0.406])
    input_std: List[float] = dataclasses.field(default_factory=lambda: [0.229, 0.224, 0.225])

    # The C++ reader's kAddedLater (apps/slideformer/model_config.cpp).
    ADDED_LATER: ClassVar[Dict[str, Any]] = {"sinusoidal_position_encoding": False}

    @classmethod
    def from_options(cls, options: Mapping[str, Any], source: str = "options") -> "SlideTransformerConfig":
        """The config of a checkpoint's "options" object. Every option must be there, and no other:
        a model this package cannot build exactly is refused rather than approximated. Options added
        after the format (ADDED_LATER) take the value that reproduces the models written before them."""
        options = {**cls.ADDED_LATER, **options}
        names = [field.name for field in dataclasses.fields(cls)]
        unknown = [name for name in options if name not in names]
        missing = [name for name in names if name not in options]
        if unknown or missing:
            raise ValueError(f"{source}: the slide_transformer options do not match this slideformer package "
                             f"(unknown: {unknown or 'none'}, missing: {missing or 'none'})")
        return cls(**{name: options[name] for name in names})

    def to_options(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class SlideTransformer(nn.Module):
    """The hierarchical classifier: (B, C, H, W) normalised images -> (B, classes) logits."""

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
        self.patch_embed = PatchEmbed(config.in_channels, config.embed_dim, config.patch_size,
                                      config.stem_channels, config.overlapping_patches)
        patches = config.image_size // config.patch_size
        if config.absolute_position_embedding:
            table = torch.empty(1, patches, patches, config.embed_dim)
            self.absolute_position = nn.Parameter(_trunc_normal_(table, 0.02))
        else:
            self.absolute_position = None
        self.sinusoidal_position = (SinusoidalPositionEncoding(config.embed_dim)
                                    if config.sinusoidal_position_encoding else None)
        self.stages, self.mergings = nn.ModuleList(), nn.ModuleList()
        total_blocks = sum(config.depths)
        block_index, dim, map_size = 0, config.embed_dim, patches
        for s in range(stages):
            stage = nn.ModuleList()
            for _ in range(config.depths[s]):
                drop = config.drop_path_rate * block_index / (total_blocks - 1) if total_blocks > 1 else 0.0
                stage.append(TransformerBlock(dim, config.heads[s], config.stage_kinds[s], config.mlp_ratio, drop,
                                              config.kernel_size, config.dilation, config.border, map_size))
                block_index += 1
            self.stages.append(stage)
            if s + 1 < stages:
                self.mergings.append(PatchMerging(dim))
                dim *= 2
                map_size = (map_size + 1) // 2
        self.norm = nn.LayerNorm(dim)
        self.head = _linear(dim, config.num_classes)

    def forward_features(self, images: Tensor) -> Tensor:
        """(B, Y, X, C) features before the final norm and pooling."""
        x = self.patch_embed(images)
        if self.absolute_position is not None:
            x = x + self.absolute_position
        if self.sinusoidal_position is not None:
            x = self.sinusoidal_position(x)
        for s, stage in enumerate(self.stages):
            for block in stage:
                x = block(x)
            if s < len(self.mergings):
                x = self.mergings[s](x)
        return x

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.norm(self.forward_features(images)).mean((1, 2)))


class InputNormalization(nn.Module):
    """A classifier that takes (N, C, H, W) images in [0, 1] and normalises them itself with the
    config's input_mean / input_std, as the exported models do (docs/export.md)."""

    def __init__(self, model: SlideTransformer):
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


# --- presets (the C++ presets of csrc/nn/presets.cpp) ---------------------------------------------

def slide_swin_tiny() -> SlideTransformerConfig:
    return SlideTransformerConfig(embed_dim=96, depths=[2, 2, 6, 2], heads=[3, 6, 12, 24], drop_path_rate=0.2)


def slide_swin_small() -> SlideTransformerConfig:
    return SlideTransformerConfig(embed_dim=96, depths=[2, 2, 18, 2], heads=[3, 6, 12, 24], drop_path_rate=0.3)


def slide_swin_base() -> SlideTransformerConfig:
    return SlideTransformerConfig(embed_dim=128, depths=[2, 2, 18, 2], heads=[4, 8, 16, 32], drop_path_rate=0.5)


def fashion() -> SlideTransformerConfig:
    """28x28 grey images, 10 classes: a convolutional stem, overlapping 2x2 patches, an absolute
    position table, two slide blocks at 14x14 and two global blocks at 7x7."""
    return SlideTransformerConfig(
        image_size=28, in_channels=1, num_classes=10, stem_channels=24, overlapping_patches=True, patch_size=2,
        embed_dim=48, absolute_position_embedding=True, depths=[2, 2], heads=[3, 6], stage_kinds=["slide", "global"],
        mlp_ratio=2.0, drop_path_rate=0.05, input_mean=[0.2860], input_std=[0.3530])


_PRESETS = {"slide_swin_tiny": slide_swin_tiny, "slide_swin_small": slide_swin_small,
            "slide_swin_base": slide_swin_base, "fashion": fashion}


def preset_names() -> List[str]:
    return list(_PRESETS)


def preset(name: str) -> SlideTransformerConfig:
    """The options of a preset, by name (the names of slideformer::nn::preset)."""
    if name not in _PRESETS:
        raise ValueError(f"slideformer: unknown preset '{name}', expected one of {', '.join(_PRESETS)}")
    return _PRESETS[name]()
