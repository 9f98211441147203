// attention, Autocast kernels (CPU and CUDA): cast to the autocast dtype, then the op
// (autocast_policy.h).
#include <torch/library.h>

#include "ops/attention.h"
#include "ops/autocast/autocast_policy.h"
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

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, AutocastCPU, m) {
  m.impl("attention", &attention_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(slideformer, AutocastCUDA, m) {
  m.impl("attention", &attention_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace slideformer::ops::autocast
