// slide_attention, Meta kernels: shapes and dtypes only (fake tensors, torch.compile, export).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <array>

#include "ops/attention.h"
#include "ops/slide_attention.h"

namespace slideformer::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> slide_attention_forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t kernel_size,
    int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale) {
  check_slide_attention_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                               shift_bias, border);
  auto output = at::empty_symint(query.sym_sizes(), query.options());
  auto logsumexp =
      at::empty_symint(query.sym_sizes().slice(0, 4),
                       query.options().dtype(attention_accumulate_type(query.scalar_type())));
  return {output, logsumexp};
}

// The gradient of an optional parameter when it is given and asked for, else undefined.
at::Tensor parameter_grad_meta(const std::optional<at::Tensor>& parameter, bool wanted) {
  if (!wanted || !parameter.has_value() || !parameter->defined()) return {};
  return at::empty_symint(parameter->sym_sizes(), parameter->options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
slide_attention_backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    int64_t kernel_size, int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale, std::array<bool, 3> compute_param_grads) {
  check_slide_attention_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                        kernel_size, dilation, key_bias, shift_weight, shift_bias,
                                        border);
  return {at::empty_symint(query.sym_sizes(), query.options()),
          at::empty_symint(key.sym_sizes(), key.options()),
          at::empty_symint(value.sym_sizes(), value.options()),
          parameter_grad_meta(key_bias, compute_param_grads[0]),
          parameter_grad_meta(shift_weight, compute_param_grads[1]),
          parameter_grad_meta(shift_bias, compute_param_grads[2])};
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, Meta, m) {
  m.impl("_slide_attention_forward", &slide_attention_forward_meta);
  m.impl("_slide_attention_backward", &slide_attention_backward_meta);
}

}  // namespace slideformer::ops
