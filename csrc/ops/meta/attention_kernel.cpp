// attention, Meta kernels: shapes and dtypes only (fake tensors, torch.compile, export).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/attention.h"

namespace slideformer::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> attention_forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_bias, bool is_causal, std::optional<double> scale) {
  check_attention_inputs(query, key, value, attn_bias);
  auto output = at::empty_symint(
      {query.sym_size(0), query.sym_size(1), query.sym_size(2), value.sym_size(3)},
      query.options());
  auto logsumexp =
      at::empty_symint({query.sym_size(0), query.sym_size(1), query.sym_size(2)},
                       query.options().dtype(attention_accumulate_type(query.scalar_type())));
  return {output, logsumexp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_bias, const at::Tensor& output,
    const at::Tensor& logsumexp, bool is_causal, std::optional<double> scale,
    bool compute_bias_grad) {
  check_attention_backward_inputs(grad_output, query, key, value, attn_bias, output, logsumexp);
  at::Tensor grad_bias;
  if (compute_bias_grad && attn_bias.has_value() && attn_bias->defined()) {
    grad_bias = at::empty_symint(attn_bias->sym_sizes(), attn_bias->options());
  }
  return {at::empty_symint(query.sym_sizes(), query.options()),
          at::empty_symint(key.sym_sizes(), key.options()),
          at::empty_symint(value.sym_sizes(), value.options()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, Meta, m) {
  m.impl("_attention_forward", &attention_forward_meta);
  m.impl("_attention_backward", &attention_backward_meta);
}

}  // namespace slideformer::ops
