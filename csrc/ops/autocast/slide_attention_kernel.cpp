// slide_attention, Autocast kernels (CPU and CUDA): cast to the autocast dtype, then the op
// (autocast_policy.h).
#include <torch/library.h>

#include "ops/autocast/autocast_policy.h"
#include "ops/common/dispatch.h"
#include "ops/slide_attention.h"
#include "slideformer/ops.h"

namespace slideformer::ops::autocast {
namespace {

template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice>
at::Tensor slide_attention_autocast(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, int64_t kernel_size,
                                    int64_t dilation, const std::optional<at::Tensor>& key_bias,
                                    const std::optional<at::Tensor>& shift_weight,
                                    const std::optional<at::Tensor>& shift_bias,
                                    c10::string_view border, std::optional<double> scale) {
  const Caster<kAutocastKey, kDevice> cast(kSlideAttentionOp, query);
  return slideformer::slide_attention(cast(query), cast(key), cast(value),
                                      SlideAttentionFuncOptions(kernel_size)
                                          .dilation(dilation)
                                          .key_bias(cast(key_bias))
                                          .shift_weight(cast(shift_weight))
                                          .shift_bias(cast(shift_bias))
                                          .border(std::string(border))
                                          .scale(scale));
}

// The internal forward casts the same way (see the attention twin).
template <c10::DispatchKey kAutocastKey, c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> slide_attention_forward_autocast(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t kernel_size,
    int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale) {
  static auto forward = typed_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, c10::string_view, std::optional<double>)>(
      "slideformer::_slide_attention_forward");
  const Caster<kAutocastKey, kDevice> cast(kSlideAttentionOp, query);
  return forward.call(cast(query), cast(key), cast(value), kernel_size, dilation, cast(key_bias),
                      cast(shift_weight), cast(shift_bias), border, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, AutocastCPU, m) {
  m.impl("slide_attention",
         &slide_attention_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
  m.impl("_slide_attention_forward",
         &slide_attention_forward_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>);
}

TORCH_LIBRARY_IMPL(slideformer, AutocastCUDA, m) {
  m.impl("slide_attention",
         &slide_attention_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
  m.impl("_slide_attention_forward",
         &slide_attention_forward_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>);
}

}  // namespace slideformer::ops::autocast
