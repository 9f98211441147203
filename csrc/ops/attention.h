#pragma once
// Internal declarations of the attention operator shared by its kernels.
#include <ATen/core/Tensor.h>

#include <optional>

namespace slideformer::ops {

inline constexpr const char* kAttentionOp = "slideformer::attention";

// The one input check of `attention`, run by the CPU, CUDA and Meta kernels (docs/operators.md).
void check_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const std::optional<at::Tensor>& attn_bias);

// The input check of `_attention_backward`: check_attention_inputs, then grad_output and output
// of shape (B, H, Nq, Dv) like query, logsumexp of shape (B, H, Nq) in the accumulate type.
void check_attention_backward_inputs(const at::Tensor& grad_output, const at::Tensor& query,
                                     const at::Tensor& key, const at::Tensor& value,
                                     const std::optional<at::Tensor>& attn_bias,
                                     const at::Tensor& output, const at::Tensor& logsumexp);

// The softmax scale of every op: 1/sqrt(head_dim) (1 when head_dim is 0) unless the caller gave one.
double softmax_scale(int64_t head_dim, std::optional<double> scale);
// softmax_scale for query (B, H, N, D).
double attention_scale(const at::Tensor& query, std::optional<double> scale);

// The public op's forward through _attention_forward (autograd has its own kernel);
// registered for CompositeExplicitAutograd and, in CUDA builds, for CUDA.
at::Tensor attention_via_forward(const at::Tensor& query, const at::Tensor& key,
                                 const at::Tensor& value,
                                 const std::optional<at::Tensor>& attn_bias, bool is_causal,
                                 std::optional<double> scale);

// dtype of the saved log-sum-exp: float64 for float64 inputs, float32 otherwise.
at::ScalarType attention_accumulate_type(at::ScalarType input);

}  // namespace slideformer::ops
