#pragma once
// Internal declarations of the slide_attention_nd operator (1-, 2- or 3-axis maps) shared by its
// kernels (docs/operators.md).
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

#include "ops/common/slide_nd_math.h"
#include "ops/common/slide_parameters.h"

namespace slideformer::ops {

inline constexpr const char* kSlideAttentionNdOp = "slideformer::slide_attention_nd";

// Signatures of the public op and of the internal ops, for typed dispatcher handles.
using SlideNd = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           c10::IntArrayRef, c10::IntArrayRef, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                           c10::string_view, bool, std::optional<double>);
using SlideNdForward = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, c10::string_view, bool, std::optional<double>);
using SlideNdBackward =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
        const at::Tensor&, const at::Tensor&, c10::IntArrayRef, c10::IntArrayRef,
        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
        const std::optional<at::Tensor>&, c10::string_view, bool, std::optional<double>,
        std::array<bool, 3>);

// The most window slots (the product of the per-axis kernel sizes): the 2-D operator's 127 x 127.
inline constexpr int64_t kMaxSlideNdWindow = 127 * 127;

// The one input check of `slide_attention_nd`, run by the CPU, CUDA and Meta kernels.
// Uses symbolic sizes, so Meta kernels under dynamic shapes check without specialising.
void check_slide_attention_nd_inputs(const at::Tensor& query, const at::Tensor& key,
                                     const at::Tensor& value, c10::IntArrayRef kernel_size,
                                     c10::IntArrayRef dilation,
                                     const std::optional<at::Tensor>& key_bias,
                                     const std::optional<at::Tensor>& shift_weight,
                                     const std::optional<at::Tensor>& shift_bias,
                                     c10::string_view border);

// The input check of `_slide_attention_nd_backward`: the forward's, then grad_output and output
// like query, logsumexp of query's shape without D in the accumulate type.
void check_slide_attention_nd_backward_inputs(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border);

// What every kernel of one call reads besides the maps: the geometry, the parameter tables
// (channels innermost, channel stride D, in `table_options`) with gradient sections for `want`,
// and the scale.
struct SlideNdCall {
  nd::NdGeometry g;
  SlideParameterLayout layout;
  SlideParameterTables tables;
  double scale;
};
SlideNdCall slide_nd_call(const at::Tensor& query, c10::IntArrayRef kernel_size,
                          c10::IntArrayRef dilation, c10::string_view border, bool causal,
                          std::optional<double> scale, const std::optional<at::Tensor>& key_bias,
                          const std::optional<at::Tensor>& shift_weight,
                          const std::optional<at::Tensor>& shift_bias,
                          const at::TensorOptions& table_options, std::array<bool, 3> want = {});

// The pointers the per-pixel functions read, for contiguous q, k, v of element type T and tables
// of the accumulate type A.
template <typename T, typename A>
nd::NdTensors<T, A> nd_tensors(const SlideNdCall& call, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& v) {
  nd::NdTensors<T, A> p{};
  p.query = q.const_data_ptr<T>();
  p.key = k.const_data_ptr<T>();
  p.value = v.const_data_ptr<T>();
  const SlideParameterTables& t = call.tables;
  p.weight = t.weight.defined() ? t.weight.const_data_ptr<A>() : nullptr;
  p.key_bias = t.key_bias.const_data_ptr<A>();
  p.value_bias = t.value_bias.const_data_ptr<A>();
  p.params = call.layout;
  p.g = call.g;
  p.scale = static_cast<A>(call.scale);
  return p;
}

// The public op's forward through _slide_attention_nd_forward (autograd has its own kernel);
// registered for CompositeExplicitAutograd and, in CUDA builds, for CUDA.
at::Tensor slide_attention_nd_via_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale);

}  // namespace slideformer::ops
