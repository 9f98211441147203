// slide_attention_nd: shared input check, geometry and the composite forward (docs/operators.md).
#include "ops/slide_attention_nd.h"

#include <torch/library.h>

#include <string>
#include <tuple>

#include "ops/attention.h"
#include "ops/common/checks.h"
#include "ops/common/dispatch.h"
#include "ops/slide_attention.h"

namespace slideformer::ops {
static_assert(nd::kMaxAxisKernel == kMaxSlideKernelSize, "the per-axis reader tables");

namespace {

constexpr const char* kOp = kSlideAttentionNdOp;

// Map axes of a query of `dim` dimensions (B, H, map..., D).
int64_t map_rank(int64_t dim) { return dim - 3; }

// Per-axis entries of an int list: one for every axis, or one per axis.
void check_axis_list(const char* name, c10::IntArrayRef values, int64_t rank) {
  TORCH_CHECK(values.size() == 1 || static_cast<int64_t>(values.size()) == rank, kOp, ": ", name,
              " must have ", rank == 1 ? "1 entry" : "1 or " + std::to_string(rank) + " entries",
              " (one per map axis), got ", values.size(), " (", values, ")");
}

int64_t axis_value(c10::IntArrayRef values, int64_t axis) {
  return values.size() == 1 ? values[0] : values[axis];
}

// The window slots K of valid kernel sizes.
int64_t window_slots(c10::IntArrayRef kernel_size, int64_t rank) {
  int64_t slots = 1;
  for (int64_t a = 0; a < rank; ++a) slots *= axis_value(kernel_size, a);
  return slots;
}

void check_window(c10::IntArrayRef kernel_size, c10::IntArrayRef dilation, int64_t rank) {
  check_axis_list("kernel_size", kernel_size, rank);
  check_axis_list("dilation", dilation, rank);
  for (int64_t k : kernel_size) {
    TORCH_CHECK(k >= 1 && k % 2 == 1, kOp, ": kernel_size must be odd and >= 1 in every axis, got ",
                kernel_size);
    TORCH_CHECK(k <= kMaxSlideKernelSize, kOp, ": kernel_size must be at most ",
                kMaxSlideKernelSize, " in every axis, got ", kernel_size);
  }
  const int64_t slots = window_slots(kernel_size, rank);
  TORCH_CHECK(slots <= kMaxSlideNdWindow, kOp, ": kernel_size must span at most ",
              kMaxSlideNdWindow, " window slots (the product over the axes), got ", slots, " (",
              kernel_size, ")");
  for (int64_t d : dilation) {
    TORCH_CHECK(d >= 1, kOp, ": dilation must be >= 1 in every axis, got ", dilation);
    TORCH_CHECK(d <= kMaxSlideDilation, kOp, ": dilation must be at most ", kMaxSlideDilation,
                " in every axis, got ", dilation);
  }
}

math::SlideBorder parse_border(c10::string_view border) {
  if (border == "zeros") return math::SlideBorder::kZeros;
  if (border == "clamp") return math::SlideBorder::kClamp;
  TORCH_CHECK(false, kOp, ": border must be \"zeros\" or \"clamp\", got \"", border, "\"");
}

void check_query_rank(const at::Tensor& query) {
  check_dense(kOp, "query", query);
  TORCH_CHECK(query.dim() >= 4 && query.dim() <= 6, kOp,
              ": query must have 4, 5 or 6 dimensions (B, H, 1 to 3 map axes, D), got ",
              query.dim(), " (shape ", query.sym_sizes(), ")");
}

// What dimension d of a query of `dim` dimensions holds, for the messages.
std::string dimension_name(int64_t d, int64_t dim) {
  if (d == 0) return "the batch size B of query";
  if (d == 1) return "the head count H of query";
  if (d == dim - 1) return "the head dim D of query";
  return "the length of map axis " + std::to_string(d - 2) + " of query";
}

void check_parameter(const char* name, const std::optional<at::Tensor>& parameter,
                     const at::Tensor& query, c10::SymIntArrayRef expected, const char* layout) {
  if (!parameter.has_value() || !parameter->defined()) return;
  check_like_query(kOp, name, *parameter, query);
  check_shape(kOp, name, *parameter, expected, layout);
}

}  // namespace

void check_slide_attention_nd_inputs(const at::Tensor& query, const at::Tensor& key,
                                     const at::Tensor& value, c10::IntArrayRef kernel_size,
                                     c10::IntArrayRef dilation,
                                     const std::optional<at::Tensor>& key_bias,
                                     const std::optional<at::Tensor>& shift_weight,
                                     const std::optional<at::Tensor>& shift_bias,
                                     c10::string_view border) {
  check_query_rank(query);
  const int64_t dim = query.dim(), rank = map_rank(dim);
  check_window(kernel_size, dilation, rank);
  parse_border(border);
  check_query_dtype(kOp, query);
  for (const auto& [name, t] : {std::pair{"key", &key}, {"value", &value}}) {
    check_like_query(kOp, name, *t, query);
    TORCH_CHECK(t->dim() == dim, kOp, ": ", name, " must have the ", dim,
                " dimensions of query, got ", t->dim(), " (shape ", t->sym_sizes(), ")");
    for (int64_t d = 0; d < dim; ++d) {
      check_dim_size(kOp, name, *t, d, query.sym_size(d), dimension_name(d, dim).c_str());
    }
  }
  check_logsumexp_fits(kOp, query, attention_accumulate_type(query.scalar_type()));
  const c10::SymInt heads = query.sym_size(1), head_dim = query.sym_size(dim - 1);
  const c10::SymInt slots(window_slots(kernel_size, rank));
  check_parameter("key_bias", key_bias, query, {heads, slots}, "(H, K)");
  check_parameter("shift_weight", shift_weight, query, {head_dim, slots, slots}, "(D, K, K)");
  check_parameter("shift_bias", shift_bias, query, {head_dim, slots}, "(D, K)");
}

void check_slide_attention_nd_backward_inputs(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border) {
  check_slide_attention_nd_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                                  shift_bias, border);
  for (const auto& [name, t] : {std::pair{"output", &output}, {"grad_output", &grad_output}}) {
    check_like_query(kOp, name, *t, query);
    check_shape(kOp, name, *t, query.sym_sizes(), "of query");
  }
  check_logsumexp(kOp, logsumexp, query, attention_accumulate_type(query.scalar_type()),
                  query.sym_sizes().slice(0, query.dim() - 1), "of query without D");
}

namespace {

// The geometry of checked inputs: per-axis kernel sizes and dilations (one entry = every axis).
nd::NdGeometry geometry(const at::Tensor& query, c10::IntArrayRef kernel_size,
                        c10::IntArrayRef dilation, c10::string_view border, bool causal) {
  nd::NdGeometry g{};
  g.rank = static_cast<int>(map_rank(query.dim()));
  g.heads = query.size(1);
  g.head_dim = query.size(-1);
  g.causal = causal;
  g.border = parse_border(border);
  g.window = 1;
  g.positions = 1;
  for (int a = 0; a < g.rank; ++a) {
    g.length[a] = query.size(2 + a);
    g.kernel[a] = axis_value(kernel_size, a);
    g.dilation[a] = axis_value(dilation, a);
    g.window *= g.kernel[a];
    g.positions *= g.length[a];
  }
  return g;
}

}  // namespace

SlideNdCall slide_nd_call(const at::Tensor& query, c10::IntArrayRef kernel_size,
                          c10::IntArrayRef dilation, c10::string_view border, bool causal,
                          std::optional<double> scale, const std::optional<at::Tensor>& key_bias,
                          const std::optional<at::Tensor>& shift_weight,
                          const std::optional<at::Tensor>& shift_bias,
                          const at::TensorOptions& table_options, std::array<bool, 3> want) {
  SlideNdCall call;
  call.g = geometry(query, kernel_size, dilation, border, causal);
  const nd::NdGeometry& g = call.g;
  // A gradient only for a parameter that was given.
  call.layout = SlideParameterLayout::channels_innermost(g.heads, g.head_dim, g.window, g.head_dim)
                    .with_gradients({want[0] && given(key_bias), want[1] && given(shift_weight),
                                     want[2] && given(shift_bias)});
  call.tables =
      slide_parameter_tables(call.layout, table_options, key_bias, shift_weight, shift_bias);
  call.scale = softmax_scale(g.head_dim, scale);
  return call;
}

at::Tensor slide_attention_nd_via_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale) {
  static auto forward = typed_op<SlideNdForward>("slideformer::_slide_attention_nd_forward");
  return std::get<0>(forward.call(query, key, value, kernel_size, dilation, key_bias,
                                  shift_weight, shift_bias, border, causal, scale));
}

namespace {

// The internal ops for what no backend kernel takes (see attention_forward_without_kernel).
std::tuple<at::Tensor, at::Tensor> forward_without_kernel(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale) {
  check_slide_attention_nd_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                                  shift_bias, border);
  refuse_device_without_kernel(kOp, query);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
backward_without_kernel(const at::Tensor& grad_output, const at::Tensor& query,
                        const at::Tensor& key, const at::Tensor& value, const at::Tensor& output,
                        const at::Tensor& logsumexp, c10::IntArrayRef kernel_size,
                        c10::IntArrayRef dilation, const std::optional<at::Tensor>& key_bias,
                        const std::optional<at::Tensor>& shift_weight,
                        const std::optional<at::Tensor>& shift_bias, c10::string_view border,
                        bool causal, std::optional<double> scale,
                        std::array<bool, 3> compute_param_grads) {
  check_slide_attention_nd_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                           kernel_size, dilation, key_bias, shift_weight,
                                           shift_bias, border);
  refuse_device_without_kernel(kOp, query);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, CompositeExplicitAutograd, m) {
  m.impl("slide_attention_nd", &slide_attention_nd_via_forward);
  m.impl("_slide_attention_nd_forward", &forward_without_kernel);
  m.impl("_slide_attention_nd_backward", &backward_without_kernel);
}

}  // namespace slideformer::ops
