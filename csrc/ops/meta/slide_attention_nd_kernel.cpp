// slide_attention_nd, Meta kernels: shapes and dtypes only (fake tensors, torch.compile, export).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/attention.h"
#include "ops/slide_attention_nd.h"

namespace slideformer::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> forward_meta(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale) {
  check_slide_attention_nd_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                                  shift_bias, border);
  return {at::empty_symint(query.sym_sizes(), query.options()),
          at::empty_symint(query.sym_sizes().slice(0, query.dim() - 1),
                           query.options().dtype(attention_accumulate_type(query.scalar_type())))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_meta(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale, std::array<bool, 3> compute_param_grads) {
  check_slide_attention_nd_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                           kernel_size, dilation, key_bias, shift_weight,
                                           shift_bias, border);
  // The gradient of a parameter that is given and asked for, else undefined.
  const std::optional<at::Tensor>* params[3] = {&key_bias, &shift_weight, &shift_bias};
  at::Tensor grads[3];
  for (int i = 0; i < 3; ++i) {
    const std::optional<at::Tensor>& param = *params[i];
    if (compute_param_grads[i] && given(param)) {
      grads[i] = at::empty_symint(param->sym_sizes(), param->options());
    }
  }
  return {at::empty_symint(query.sym_sizes(), query.options()),
          at::empty_symint(key.sym_sizes(), key.options()),
          at::empty_symint(value.sym_sizes(), value.options()),
          grads[0],
          grads[1],
          grads[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, Meta, m) {
  m.impl("_slide_attention_nd_forward", &forward_meta);
  m.impl("_slide_attention_nd_backward", &backward_meta);
}

}  // namespace slideformer::ops
