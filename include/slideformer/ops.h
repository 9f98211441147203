#pragma once
// C++ API of the slideformer operators. Each call goes through the dispatcher, so it works
// on every backend the library was built for and records autograd like any aten op.
#include <ATen/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <optional>
#include <string>

namespace slideformer {

// Multi-head scaled dot-product attention (contract: docs/operators.md).
// query (B, H, Nq, D), key (B, H, Nk, D), value (B, H, Nk, Dv) -> (B, H, Nq, Dv).
// attn_bias broadcasts to (B, H, Nq, Nk) and is differentiable; -inf entries mask.
// is_causal masks key j for query i when j > i + (Nk - Nq). scale defaults to 1/sqrt(D).
at::Tensor attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     const std::optional<at::Tensor>& attn_bias = std::nullopt,
                     bool is_causal = false, std::optional<double> scale = std::nullopt);

// Options of slide_attention, in the style of torch::nn::functional::*FuncOptions.
struct SlideAttentionFuncOptions {
  /* implicit */ SlideAttentionFuncOptions(int64_t kernel_size) : kernel_size_(kernel_size) {}
  // Odd window size k >= 1; each pixel attends to k*k neighbours.
  TORCH_ARG(int64_t, kernel_size);
  // Spacing between neighbours.
  TORCH_ARG(int64_t, dilation) = 1;
  // (H, k*k): added to every channel of shifted key n of head h (not to values).
  TORCH_ARG(std::optional<at::Tensor>, key_bias) = std::nullopt;
  // (D, k*k, k*k): deformed-shift mixing of the k*k shifted copies; absent = pure shift.
  TORCH_ARG(std::optional<at::Tensor>, shift_weight) = std::nullopt;
  // (D, k*k): bias of the deformed shift, added to shifted keys and values.
  TORCH_ARG(std::optional<at::Tensor>, shift_bias) = std::nullopt;
  // "zeros" (Slide-Transformer: zero padding) or "clamp" (neighbourhood attention).
  TORCH_ARG(std::string, border) = "zeros";
  // Logit scale; absent = 1/sqrt(D).
  TORCH_ARG(std::optional<double>, scale) = std::nullopt;
};

// Local "slide" attention of Slide-Transformer (contract: docs/operators.md).
// query, key, value (B, H, Y, X, D) with any strides -> (B, H, Y, X, D).
at::Tensor slide_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           const SlideAttentionFuncOptions& options);

}  // namespace slideformer
