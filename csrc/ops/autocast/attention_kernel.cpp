// attention, Autocast kernels (CPU and CUDA): cast to the autocast dtype, then the op
// (autocast_policy.h).
#include <torch/library.h>

#include "ops/attention.h"
#include "ops/autocast/autocast_policy.h"
#include "ops/common/dispatch.h"
#include "slideformer/ops.h"

namespace slideformer::ops::autocast {
namespace {

template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice>
at::Tensor attention_autocast(const at::Tensor& query, const at::Tensor& key,
                              const at::Tensor& value, const std::optional<at::Tensor>& attn_bias,
                              bool is_causal, std::optional<double> scale) {
  const Caster<kAutocastKey, kDevice> cast(kAttentionOp, query);
  return slideformer::attention(cast(query), cast(key), cast(value), cast(attn_bias), is_causal,
                                scale);
}

// The internal forward casts the same way, so that a program traced through the autograd
// kernel (torch.export of a training step) runs under autocast as the public op does.
template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> attention_forward_autocast(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_bias, bool is_causal, std::optional<double> scale) {
  static auto forward = typed_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      bool, std::optional<double>)>("slideformer::_attention_forward");
  const Caster<kAutocastKey, kDevice> cast(kAttentionOp, query);
  return forward.call(cast(query), cast(key), cast(value), cast(attn_bias), is_causal, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, AutocastCPU, m) {
  m.impl("attention", &attention_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
  m.impl("_attention_forward",
         &attention_forward_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(slideformer, AutocastCUDA, m) {
  m.impl("attention", &attention_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
  m.impl("_attention_forward",
         &attention_forward_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace slideformer::ops::autocast
