#pragma once
// Internal declarations of the slide_attention operator shared by its kernels.
#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <optional>

#include "ops/common/slide_math.h"

namespace slideformer::ops {

inline constexpr const char* kSlideAttentionOp = "slideformer::slide_attention";

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

// 1/sqrt(D) unless the caller gave a scale.
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
