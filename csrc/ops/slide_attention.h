#pragma once
// Internal declarations of the slide_attention operator shared by its kernels.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "ops/common/slide_math.h"

namespace slideformer::ops {

inline constexpr const char* kSlideAttentionOp = "slideformer::slide_attention";

// The largest kernel_size and dilation the operator takes: window tables stay small and window
// positions (up to (kernel_size - 1) * dilation from a pixel) stay far from int64 overflow.
inline constexpr int64_t kMaxSlideKernelSize = 127;
inline constexpr int64_t kMaxSlideDilation = (int64_t(1) << 31) - 1;

// "zeros" or "clamp"; anything else is an error naming the op.
math::SlideBorder parse_slide_border(c10::string_view border);

// The one input check of `slide_attention`, run by the CPU, CUDA and Meta kernels (docs/operators.md).
// Uses symbolic sizes, so Meta kernels under dynamic shapes check without specialising.
void check_slide_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, int64_t kernel_size, int64_t dilation,
                                  const std::optional<at::Tensor>& key_bias,
                                  const std::optional<at::Tensor>& shift_weight,
                                  const std::optional<at::Tensor>& shift_bias,
                                  c10::string_view border);

// The input check of `_slide_attention_backward`: check_slide_attention_inputs, then
// grad_output and output of query's shape, dtype and device, logsumexp of shape (B, H, Y, X) in
// the accumulate type.
void check_slide_attention_backward_inputs(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    int64_t kernel_size, int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border);

// softmax_scale (ops/attention.h) for query (B, H, Y, X, D).
double slide_attention_scale(const at::Tensor& query, std::optional<double> scale);

// The public op's forward through _slide_attention_forward (autograd has its own kernel);
// registered for CompositeExplicitAutograd and, in CUDA builds, for CUDA.
at::Tensor slide_attention_via_forward(const at::Tensor& query, const at::Tensor& key,
                                       const at::Tensor& value, int64_t kernel_size,
                                       int64_t dilation, const std::optional<at::Tensor>& key_bias,
                                       const std::optional<at::Tensor>& shift_weight,
                                       const std::optional<at::Tensor>& shift_bias,
                                       c10::string_view border, std::optional<double> scale);

}  // namespace slideformer::ops
