// The one TORCH_LIBRARY of the slideformer namespace: every schema lives here.
// Kernels register per dispatch key with TORCH_LIBRARY_IMPL in csrc/ops/<key>/.
#include <torch/library.h>

#include "slideformer/cpu.h"
#include "slideformer/version.h"

TORCH_LIBRARY(slideformer, m) {
  // Multi-head attention (docs/operators.md).
  m.def("attention(Tensor query, Tensor key, Tensor value, Tensor? attn_bias=None, "
        "bool is_causal=False, float? scale=None) -> Tensor");
  // Saves only the output and the per-row log-sum-exp (+inf for a fully masked row).
  m.def("_attention_forward(Tensor query, Tensor key, Tensor value, Tensor? attn_bias, "
        "bool is_causal, float? scale) -> (Tensor output, Tensor logsumexp)");
  // grad_attn_bias is undefined (None) unless compute_bias_grad; it has attn_bias's shape.
  m.def("_attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
        "Tensor? attn_bias, Tensor output, Tensor logsumexp, bool is_causal, float? scale, "
        "bool compute_bias_grad) -> (Tensor grad_query, Tensor grad_key, Tensor grad_value, "
        "Tensor grad_attn_bias)");

  // Slide attention (docs/operators.md).
  m.def("slide_attention(Tensor query, Tensor key, Tensor value, int kernel_size, "
        "int dilation=1, Tensor? key_bias=None, Tensor? shift_weight=None, "
        "Tensor? shift_bias=None, str border=\"zeros\", float? scale=None) -> Tensor");
  m.def("_slide_attention_forward(Tensor query, Tensor key, Tensor value, int kernel_size, "
        "int dilation, Tensor? key_bias, Tensor? shift_weight, Tensor? shift_bias, str border, "
        "float? scale) -> (Tensor output, Tensor logsumexp)");
  // compute_param_grads = which of (key_bias, shift_weight, shift_bias) get a gradient; the
  // others come back undefined (None).
  m.def("_slide_attention_backward(Tensor grad_output, Tensor query, Tensor key, Tensor value, "
        "Tensor output, Tensor logsumexp, int kernel_size, int dilation, Tensor? key_bias, "
        "Tensor? shift_weight, Tensor? shift_bias, str border, float? scale, "
        "bool[3] compute_param_grads) -> (Tensor grad_query, Tensor grad_key, "
        "Tensor grad_value, Tensor grad_key_bias, Tensor grad_shift_weight, "
        "Tensor grad_shift_bias)");

  // Slide attention over maps of 1, 2 or 3 axes (B, H, map..., D), per-axis kernel_size and
  // dilation (one entry = every axis), causal along the first axis (docs/operators.md).
  m.def("slide_attention_nd(Tensor query, Tensor key, Tensor value, int[] kernel_size, "
        "int[] dilation=[1], Tensor? key_bias=None, Tensor? shift_weight=None, "
        "Tensor? shift_bias=None, str border=\"zeros\", bool causal=False, "
        "float? scale=None) -> Tensor");
  m.def("_slide_attention_nd_forward(Tensor query, Tensor key, Tensor value, int[] kernel_size, "
        "int[] dilation, Tensor? key_bias, Tensor? shift_weight, Tensor? shift_bias, str border, "
        "bool causal, float? scale) -> (Tensor output, Tensor logsumexp)");
  m.def("_slide_attention_nd_backward(Tensor grad_output, Tensor query, Tensor key, "
        "Tensor value, Tensor output, Tensor logsumexp, int[] kernel_size, int[] dilation, "
        "Tensor? key_bias, Tensor? shift_weight, Tensor? shift_bias, str border, bool causal, "
        "float? scale, bool[3] compute_param_grads) -> (Tensor grad_query, Tensor grad_key, "
        "Tensor grad_value, Tensor grad_key_bias, Tensor grad_shift_weight, "
        "Tensor grad_shift_bias)");

  // "slideformer 0.1.0 (torch 2.11.0, cuda on, ...)": what this library was built with.
  m.def("build_info() -> str", [] { return slideformer::build_info(); });
  // "<CPU model> (<vendor>), slideformer kernels avx512, ATen AVX512, 2 threads": what runs them.
  m.def("cpu_info() -> str", [] { return slideformer::describe_cpu(); });
}
