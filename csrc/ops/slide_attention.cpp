// slide_attention: C++ wrapper, shared input check and the composite forward (docs/operators.md).
#include "ops/slide_attention.h"

#include <torch/library.h>

#include <array>

#include "ops/attention.h"
#include "ops/common/checks.h"
#include "ops/common/dispatch.h"
#include "slideformer/ops.h"

namespace slideformer {
namespace ops {
namespace {

// key_bias, shift_weight, shift_bias: like query and of exactly `expected` shape.
void check_parameter(const char* name, const std::optional<at::Tensor>& parameter,
                     const at::Tensor& query, c10::SymIntArrayRef expected, const char* layout) {
  if (!parameter.has_value() || !parameter->defined()) return;
  const char* op = kSlideAttentionOp;
  check_like_query(op, name, *parameter, query);
  check_shape(op, name, *parameter, expected, layout);
}

}  // namespace

math::SlideBorder parse_slide_border(c10::string_view border) {
  if (border == "zeros") return math::SlideBorder::kZeros;
  if (border == "clamp") return math::SlideBorder::kClamp;
  TORCH_CHECK(false, kSlideAttentionOp, ": border must be \"zeros\" or \"clamp\", got \"", border,
              "\"");
}

void check_slide_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                                  const at::Tensor& value, int64_t kernel_size, int64_t dilation,
                                  const std::optional<at::Tensor>& key_bias,
                                  const std::optional<at::Tensor>& shift_weight,
                                  const std::optional<at::Tensor>& shift_bias,
                                  c10::string_view border) {
  const char* op = kSlideAttentionOp;
  TORCH_CHECK(kernel_size >= 1 && kernel_size % 2 == 1, op,
              ": kernel_size must be odd and >= 1, got ", kernel_size);
  TORCH_CHECK(kernel_size <= kMaxSlideKernelSize, op, ": kernel_size must be at most ",
              kMaxSlideKernelSize, ", got ", kernel_size);
  TORCH_CHECK(dilation >= 1, op, ": dilation must be >= 1, got ", dilation);
  TORCH_CHECK(dilation <= kMaxSlideDilation, op, ": dilation must be at most ", kMaxSlideDilation,
              ", got ", dilation);
  parse_slide_border(border);
  check_rank(op, "query", query, 5, "(B, H, Y, X, D)");
  check_rank(op, "key", key, 5, "(B, H, Y, X, D)");
  check_rank(op, "value", value, 5, "(B, H, Y, X, D)");
  check_query_dtype(op, query);
  check_like_query(op, "key", key, query);
  check_like_query(op, "value", value, query);
  static const char* const kDims[5] = {"the batch size B of query", "the head count H of query",
                                       "the height Y of query", "the width X of query",
                                       "the head dim D of query"};
  for (int64_t d = 0; d < 5; ++d) {
    check_dim_size(op, "key", key, d, query.sym_size(d), kDims[d]);
    check_dim_size(op, "value", value, d, query.sym_size(d), kDims[d]);
  }
  check_logsumexp_fits(op, query, attention_accumulate_type(query.scalar_type()));
  const c10::SymInt heads = query.sym_size(1), head_dim = query.sym_size(4);
  const c10::SymInt k2(kernel_size * kernel_size);
  check_parameter("key_bias", key_bias, query, {heads, k2}, "(H, k*k)");
  check_parameter("shift_weight", shift_weight, query, {head_dim, k2, k2}, "(D, k*k, k*k)");
  check_parameter("shift_bias", shift_bias, query, {head_dim, k2}, "(D, k*k)");
}

void check_slide_attention_backward_inputs(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    int64_t kernel_size, int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border) {
  const char* op = kSlideAttentionOp;
  check_slide_attention_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                               shift_bias, border);
  check_like_query(op, "output", output, query);
  check_shape(op, "output", output, query.sym_sizes(), "(B, H, Y, X, D)");
  check_like_query(op, "grad_output", grad_output, query);
  check_shape(op, "grad_output", grad_output, query.sym_sizes(), "(B, H, Y, X, D)");
  check_logsumexp(op, logsumexp, query, attention_accumulate_type(query.scalar_type()),
                  query.sym_sizes().slice(0, 4), "(B, H, Y, X)");
}

double slide_attention_scale(const at::Tensor& query, std::optional<double> scale) {
  return softmax_scale(query.size(4), scale);
}

namespace {

using SlideForwardSignature = std::tuple<at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
    const std::optional<at::Tensor>&, c10::string_view, std::optional<double>);

}  // namespace

at::Tensor slide_attention_via_forward(const at::Tensor& query, const at::Tensor& key,
                                       const at::Tensor& value, int64_t kernel_size,
                                       int64_t dilation, const std::optional<at::Tensor>& key_bias,
                                       const std::optional<at::Tensor>& shift_weight,
                                       const std::optional<at::Tensor>& shift_bias,
                                       c10::string_view border, std::optional<double> scale) {
  static auto forward = typed_op<SlideForwardSignature>("slideformer::_slide_attention_forward");
  return std::get<0>(forward.call(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                                  shift_bias, border, scale));
}

namespace {

// The internal ops' kernels for what no backend kernel takes, every tensor undefined included (see
// attention_forward_without_kernel in ops/attention.cpp).
std::tuple<at::Tensor, at::Tensor> slide_attention_forward_without_kernel(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t kernel_size,
    int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale) {
  check_slide_attention_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                               shift_bias, border);
  refuse_device_without_kernel(kSlideAttentionOp, query);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
slide_attention_backward_without_kernel(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    int64_t kernel_size, int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale, std::array<bool, 3> compute_param_grads) {
  check_slide_attention_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                        kernel_size, dilation, key_bias, shift_weight, shift_bias,
                                        border);
  refuse_device_without_kernel(kSlideAttentionOp, query);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, CompositeExplicitAutograd, m) {
  m.impl("slide_attention", &slide_attention_via_forward);
  m.impl("_slide_attention_forward", &slide_attention_forward_without_kernel);
  m.impl("_slide_attention_backward", &slide_attention_backward_without_kernel);
}

}  // namespace ops

at::Tensor slide_attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                           const SlideAttentionFuncOptions& options) {
  static auto op = ops::typed_op<at::Tensor(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, c10::string_view, std::optional<double>)>(
      "slideformer::slide_attention");
  return op.call(query, key, value, options.kernel_size(), options.dilation(), options.key_bias(),
                 options.shift_weight(), options.shift_bias(), options.border(), options.scale());
}

}  // namespace slideformer
