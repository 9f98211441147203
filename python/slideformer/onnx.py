"""ONNX export of models that call the slideformer operators (docs/export.md).

torch.onnx.export(..., dynamo=True) traces the model with torch.export; the operators (their
forward halves, _attention_forward and _slide_attention_forward, which is what the trace holds)
are translated to standard ONNX operators by the functions below, so any ONNX runtime runs the
file without a custom-op library. Shapes other than the batch size are fixed at export time:
the window index maps of slide_attention become constants.
"""
import os
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import onnx_ir as ir
import torch
from onnxscript import opset18 as op

from ._export import batch_dynamic_shapes, eval_mode, example_images, replaced_on_success

__all__ = ["export", "translation_table"]


# --- slide_attention ------------------------------------------------------------------------------

def _axis_slots(length: int, kernel_size: int, dilation: int, border: str) -> np.ndarray:
    """(length, kernel_size): the position each window slot of each pixel reads along one axis, or
    -1 where it reads nothing (outside the map for "zeros", past a short axis for "clamp")."""
    radius = kernel_size // 2
    slots = np.full((length, kernel_size), -1, dtype=np.int64)
    for i in range(length):
        if border == "zeros":
            for j in range(kernel_size):
                position = i + (j - radius) * dilation
                if 0 <= position < length:
                    slots[i, j] = position
        else:  # clamp: the window moves inside the pixel's dilation group
            group, sub = i % dilation, i // dilation
            group_length = (length - group + dilation - 1) // dilation
            start = min(max(sub - radius, 0), max(group_length - kernel_size, 0))
            for j in range(min(kernel_size, group_length - start)):
                slots[i, j] = group + dilation * (start + j)
    return slots


def window_index(rows: int, cols: int, kernel_size: int, dilation: int, border: str) -> Tuple[np.ndarray, np.ndarray]:
    """For the Y*X pixels and K2 = k*k slots of a map: the flat position each slot reads, or Y*X
    (one past the map: a row of zeros appended to it) where it reads nothing; and which slots take
    part in the softmax (in "zeros" mode all do, outside positions included)."""
    if border not in ("zeros", "clamp"):
        raise ValueError(f'slideformer.onnx: border must be "zeros" or "clamp", got "{border}"')
    along_y = _axis_slots(rows, kernel_size, dilation, border)
    along_x = _axis_slots(cols, kernel_size, dilation, border)
    y = along_y[:, None, :, None]  # (Y, 1, k, 1)
    x = along_x[None, :, None, :]  # (1, X, 1, k)
    inside = (y >= 0) & (x >= 0)
    index = np.where(inside, y * cols + x, rows * cols).reshape(rows * cols, kernel_size * kernel_size)
    valid = inside.reshape(rows * cols, kernel_size * kernel_size) if border == "clamp" else \
        np.ones((rows * cols, kernel_size * kernel_size), dtype=bool)
    return index, valid


def _static_dims(name: str, tensor, dims: Sequence[int]) -> Tuple[int, ...]:
    shape = tensor.shape
    values = tuple(shape[d] for d in dims)
    if not all(isinstance(v, int) for v in values):
        raise ValueError(f"slideformer.onnx: {name} needs static sizes in dimensions {list(dims)} "
                         f"(only the batch size may vary), got shape {shape}")
    return values


def _constant(array: np.ndarray):
    return op.Constant(value=ir.tensor(np.ascontiguousarray(array)))


def _as_logsumexp_type(logsumexp, query):
    """The dtype the kernels give the log-sum-exp: float64 for float64 inputs, else float32."""
    return op.Cast(logsumexp, to=ir.DataType.DOUBLE if query.dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT)


def _shifted(tensor, index, heads: int, pixels: int, window: int, dim: int, shift_weight, shift_bias):
    """(B, H, Y, X, D) -> the mixed window copies (B, H, Y*X, D, K2); never-read slots are 0."""
    flat = op.Reshape(tensor, _constant(np.array([0, heads, pixels, dim])))
    flat = op.Pad(flat, _constant(np.array([0, 0, 0, 0, 0, 0, 1, 0])))  # the row of zeros, Y*X
    gathered = op.Gather(flat, _constant(index.reshape(-1)), axis=2)  # (B, H, Y*X*K2, D)
    copies = op.Transpose(op.Reshape(gathered, _constant(np.array([0, heads, pixels, window, dim]))),
                          perm=[0, 1, 2, 4, 3])  # (B, H, P, D, K2)
    if shift_weight is not None:  # Kn[c] = W[c] @ K[c], per channel c
        column = op.Unsqueeze(copies, _constant(np.array([-1])))
        copies = op.Squeeze(op.MatMul(shift_weight, column), _constant(np.array([-1])))
    if shift_bias is not None:
        copies = op.Add(copies, shift_bias)
    return copies


def _slide_attention(query, key, value, kernel_size: int, dilation: int, key_bias, shift_weight,
                     shift_bias, border: str, scale: Optional[float]):
    heads, rows, cols, dim = _static_dims("slide_attention", query, (1, 2, 3, 4))
    pixels, window = rows * cols, kernel_size * kernel_size
    index, valid = window_index(rows, cols, kernel_size, dilation, border)
    keys = _shifted(key, index, heads, pixels, window, dim, shift_weight, shift_bias)
    values = _shifted(value, index, heads, pixels, window, dim, shift_weight, shift_bias)
    if key_bias is not None:
        keys = op.Add(keys, op.Reshape(key_bias, _constant(np.array([1, heads, 1, 1, window]))))
    scale = 1.0 / dim ** 0.5 if scale is None else scale
    queries = op.Reshape(query, _constant(np.array([0, heads, pixels, 1, dim])))
    logits = op.Mul(op.MatMul(queries, keys), op.CastLike(_constant(np.array(scale, dtype=np.float64)), query))
    if not valid.all():  # clamp border, axes shorter than the window: those slots are masked
        minus_inf = op.CastLike(_constant(np.array(-np.inf, dtype=np.float64)), query)
        logits = op.Where(_constant(valid.reshape(1, 1, pixels, 1, window)), logits, minus_inf)
    weights = op.Softmax(logits, axis=-1)  # (B, H, P, 1, K2)
    out = op.MatMul(values, op.Reshape(weights, _constant(np.array([0, heads, pixels, window, 1]))))
    out = op.Reshape(out, _constant(np.array([0, heads, rows, cols, dim])))
    logsumexp = op.Reshape(op.ReduceLogSumExp(logits, _constant(np.array([-1])), keepdims=0),
                           _constant(np.array([0, heads, rows, cols])))
    return out, _as_logsumexp_type(logsumexp, query)


def slide_attention_forward(query, key, value, kernel_size: int, dilation: int = 1, key_bias=None,
                            shift_weight=None, shift_bias=None, border: str = "zeros",
                            scale: Optional[float] = None):
    """_slide_attention_forward -> (output, logsumexp) in standard ONNX operators: one Gather of the
    k*k window copies of K and V (constant index maps), the per-channel mixing as a batched
    MatMul, then the softmax over the window."""
    return _slide_attention(query, key, value, kernel_size, dilation, key_bias, shift_weight, shift_bias,
                            border, scale)


def slide_attention(query, key, value, kernel_size: int, dilation: int = 1, key_bias=None,
                    shift_weight=None, shift_bias=None, border: str = "zeros", scale: Optional[float] = None):
    return _slide_attention(query, key, value, kernel_size, dilation, key_bias, shift_weight, shift_bias,
                            border, scale)[0]


# --- attention --------------------------------------------------------------------------------------

def _attention(query, key, value, attn_bias, is_causal: bool, scale: Optional[float]):
    (dim,) = _static_dims("attention", query, (3,))
    scale = 1.0 / dim ** 0.5 if scale is None else scale
    logits = op.Mul(op.MatMul(query, op.Transpose(key, perm=[0, 1, 3, 2])),
                    op.CastLike(_constant(np.array(scale, dtype=np.float64)), query))
    if attn_bias is not None:
        logits = op.Add(logits, attn_bias)
    minus_inf = op.CastLike(_constant(np.array(-np.inf, dtype=np.float64)), query)
    if is_causal:  # key j hidden from query i when j > i + (Nk - Nq)
        (queries,) = _static_dims("attention with is_causal", query, (2,))
        (keys,) = _static_dims("attention with is_causal", key, (2,))
        hidden = np.triu(np.ones((queries, keys), dtype=bool), k=keys - queries + 1)
        logits = op.Where(_constant(hidden), minus_inf, logits)
    # A row whose keys are all masked gives 0, not NaN: its maximum is -inf and its sum 0.
    axes = _constant(np.array([-1]))
    row_max = op.ReduceMax(logits, axes, keepdims=1)
    zero = op.CastLike(_constant(np.array(0.0)), query)
    row_max = op.Where(op.Equal(row_max, minus_inf), zero, row_max)
    exp = op.Exp(op.Sub(logits, row_max))
    row_sum = op.ReduceSum(exp, axes, keepdims=1)
    empty = op.Equal(row_sum, zero)
    weights = op.Div(exp, op.Where(empty, op.CastLike(_constant(np.array(1.0)), query), row_sum))
    out = op.MatMul(weights, value)
    plus_inf = op.CastLike(_constant(np.array(np.inf)), query)
    logsumexp = op.Where(empty, plus_inf, op.Add(row_max, op.Log(row_sum)))
    return out, _as_logsumexp_type(op.Squeeze(logsumexp, axes), query)


def attention_forward(query, key, value, attn_bias=None, is_causal: bool = False, scale: Optional[float] = None):
    """_attention_forward -> (output, logsumexp) in standard ONNX operators: MatMul, the masks, a
    softmax that gives 0 for a row whose keys are all masked, MatMul."""
    return _attention(query, key, value, attn_bias, is_causal, scale)


def attention(query, key, value, attn_bias=None, is_causal: bool = False, scale: Optional[float] = None):
    return _attention(query, key, value, attn_bias, is_causal, scale)[0]


def translation_table() -> dict:
    """The custom_translation_table for torch.onnx.export of a model using the operators."""
    ops = torch.ops.slideformer
    return {ops._slide_attention_forward.default: slide_attention_forward,
            ops.slide_attention.default: slide_attention,
            ops._attention_forward.default: attention_forward,
            ops.attention.default: attention}


# --- export -----------------------------------------------------------------------------------------

def export(model: torch.nn.Module, path: Union[str, os.PathLike], example_input: Optional[torch.Tensor] = None,
           dynamic_batch: bool = True, opset_version: Optional[int] = None,
           metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes `model` (in eval mode) as an ONNX file with standard operators only.

    Args:
        model: a module taking one image batch, e.g. slideformer.nn.SlideTransformer or
            slideformer.nn.InputNormalization(model).
        path: the .onnx file to write (written to a temporary file, then renamed).
        example_input: an input of the shape to export (batch size aside); by default a
            (2, C, S, S) batch from the model's config.
        dynamic_batch: the batch dimension stays free in the ONNX graph.
        opset_version: ONNX opset (default: the exporter's).
        metadata: strings stored as the model's metadata_props (onnxruntime: InferenceSession(...)
            .get_modelmeta().custom_metadata_map).
    """
    example_input = example_images(model, example_input, "slideformer.onnx.export")
    with eval_mode(model):
        program = torch.onnx.export(model, (example_input,), dynamo=True, custom_translation_table=translation_table(),
                                    dynamic_shapes=batch_dynamic_shapes(dynamic_batch), input_names=["images"],
                                    output_names=["logits"], opset_version=opset_version, verbose=False)
    program.model.metadata_props.update(metadata or {})
    with replaced_on_success(path, ".onnx") as temporary:
        program.save(temporary)
