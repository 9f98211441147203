// slide_attention_nd, Autocast kernels (CPU and CUDA): cast to the autocast dtype, then the op
// (autocast_policy.h).
#include <torch/library.h>

#include "ops/autocast/autocast_policy.h"
#include "ops/common/dispatch.h"
#include "ops/slide_attention_nd.h"

namespace slideformer::ops::autocast {
namespace {

// `op` (the public or the internal forward) on the arguments cast for autocast.
template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice, typename Signature,
          const char* kName>
typename c10::guts::function_traits<Signature>::return_type cast_and_call(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale) {
  static auto op = typed_op<Signature>(kName);
  const Caster<kAutocastKey, kDevice> cast(kSlideAttentionNdOp, query);
  return op.call(cast(query), cast(key), cast(value), kernel_size, dilation, cast(key_bias),
                 cast(shift_weight), cast(shift_bias), border, causal, scale);
}

constexpr char kPublic[] = "slideformer::slide_attention_nd";
constexpr char kForward[] = "slideformer::_slide_attention_nd_forward";

template <c10::DispatchKey kKey, c10::DeviceType kDevice>
void register_casts(torch::Library& m) {
  m.impl("slide_attention_nd", &cast_and_call<kKey, kDevice, SlideNd, kPublic>);
  m.impl("_slide_attention_nd_forward", &cast_and_call<kKey, kDevice, SlideNdForward, kForward>);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, AutocastCPU, m) {
  register_casts<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(slideformer, AutocastCUDA, m) {
  register_casts<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>(m);
}

}  // namespace slideformer::ops::autocast
