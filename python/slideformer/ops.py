"""Typed Python entry points of the slideformer operators (torch.ops.slideformer.*).

They call the registered operators directly, so they work in eager mode, under torch.compile and
torch.export, and with autograd. The contracts (shapes, masking, borders, gradients, errors) are
in docs/operators.md.
"""
from typing import List, Optional

import torch
from torch import Tensor


def attention(query: Tensor, key: Tensor, value: Tensor, attn_bias: Optional[Tensor] = None,
              is_causal: bool = False, scale: Optional[float] = None) -> Tensor:
    """Multi-head scaled dot-product attention, fused (flash-style online softmax).

    Args:
        query: (B, H, Nq, D).
        key: (B, H, Nk, D).
        value: (B, H, Nk, Dv).
        attn_bias: added to the logits; broadcastable to (B, H, Nq, Nk); differentiable (its
            gradient comes back in its own shape); -inf entries mask.
        is_causal: masks key j for query i when j > i + (Nk - Nq) (bottom-right aligned).
        scale: logit scale; None means 1 / sqrt(D).

    Returns:
        (B, H, Nq, Dv), the dtype of query. A query whose keys are all masked gets zeros.
    """
    return torch.ops.slideformer.attention(query, key, value, attn_bias, is_causal, scale)


def slide_attention(query: Tensor, key: Tensor, value: Tensor, kernel_size: int,
                    dilation: int = 1, key_bias: Optional[Tensor] = None,
                    shift_weight: Optional[Tensor] = None, shift_bias: Optional[Tensor] = None,
                    border: str = "zeros", scale: Optional[float] = None) -> Tensor:
    """Local attention of Slide-Transformer: each pixel attends to its k x k neighbours.

    Args:
        query, key, value: (B, H, Y, X, D), any strides.
        kernel_size: odd window size k >= 1 (k*k = K2 slots, numbered row-major).
        dilation: spacing between neighbours, >= 1.
        key_bias: (H, K2), added to every channel of key slot n of head h (not to values).
        shift_weight: (D, K2, K2), the deformed-shift mixing W of the K2 shifted copies of keys
            and values, shared by all heads; None means the identity (a pure shift).
        shift_bias: (D, K2), added to the mixed keys and values; None means 0.
        border: "zeros" (positions outside the map read zeros and stay in the softmax) or
            "clamp" (neighbourhood attention: windows move inside the map).
        scale: logit scale; None means 1 / sqrt(D).

    Returns:
        (B, H, Y, X, D), the dtype of query.
    """
    return torch.ops.slideformer.slide_attention(query, key, value, kernel_size, dilation, key_bias,
                                                 shift_weight, shift_bias, border, scale)


def slide_attention_nd(query: Tensor, key: Tensor, value: Tensor, kernel_size: List[int],
                       dilation: List[int] = [1], key_bias: Optional[Tensor] = None,
                       shift_weight: Optional[Tensor] = None, shift_bias: Optional[Tensor] = None,
                       border: str = "zeros", causal: bool = False, scale: Optional[float] = None) -> Tensor:
    """slide_attention over maps of 1, 2 or 3 axes (docs/operators.md).

    Args:
        query, key, value: (B, H, map..., D) with 1 to 3 map axes, e.g. (B, H, T, Y, X, D).
        kernel_size, dilation: one entry for every axis, or one per axis; the window has
            K = prod(kernel_size) slots, numbered row-major over the axes.
        key_bias: (H, K); shift_weight: (D, K, K); shift_bias: (D, K), as for slide_attention.
        border: "zeros" or "clamp", per axis.
        causal: the first axis (time) looks back only: no output depends on a later frame.
        scale: logit scale; None means 1 / sqrt(D).

    Returns:
        The shape and dtype of query.
    """
    return torch.ops.slideformer.slide_attention_nd(query, key, value, kernel_size, dilation, key_bias,
                                                    shift_weight, shift_bias, border, causal, scale)


def build_info() -> str:
    """What the loaded library was built with: version, torch, CUDA, CPU ISA, compiler."""
    return torch.ops.slideformer.build_info()


def cpu_info() -> str:
    """The CPU the kernels run on: model, vendor, the ISA of slideformer's kernels and ATen's, threads."""
    return torch.ops.slideformer.cpu_info()
