// attention: C++ wrapper, shared input check and the composite forward (docs/operators.md).
#include "ops/attention.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cmath>

#include "ops/common/checks.h"
#include "slideformer/ops.h"

namespace slideformer {
namespace ops {

void check_attention_inputs(const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const std::optional<at::Tensor>& attn_bias) {
  const char* op = kAttentionOp;
  check_rank(op, "query", query, 4, "(B, H, Nq, D)");
  check_rank(op, "key", key, 4, "(B, H, Nk, D)");
  check_rank(op, "value", value, 4, "(B, H, Nk, Dv)");
  check_query_dtype(op, query);
  check_like_query(op, "key", key, query);
  check_like_query(op, "value", value, query);
  check_dim_size(op, "key", key, 0, query.sym_size(0), "the batch size B of query");
  check_dim_size(op, "key", key, 1, query.sym_size(1), "the head count H of query");
  check_dim_size(op, "key", key, 3, query.sym_size(3), "the head dim D of query");
  check_dim_size(op, "value", value, 0, query.sym_size(0), "the batch size B of query");
  check_dim_size(op, "value", value, 1, query.sym_size(1), "the head count H of query");
  check_dim_size(op, "value", value, 2, key.sym_size(2), "the key count Nk of key");
  const c10::SymInt output[4] = {query.sym_size(0), query.sym_size(1), query.sym_size(2), value.sym_size(3)};
  TORCH_CHECK(fits_in_memory(output, query.element_size()), op,
              ": query and value must have shapes whose output (B, H, Nq, Dv) fits in memory, got ",
              c10::SymIntArrayRef(output, 4));
  check_logsumexp_fits(op, query, attention_accumulate_type(query.scalar_type()));
  if (attn_bias.has_value() && attn_bias->defined()) {
    const at::Tensor& bias = *attn_bias;
    check_like_query(op, "attn_bias", bias, query);
    const c10::SymInt target[4] = {query.sym_size(0), query.sym_size(1), query.sym_size(2),
                                   key.sym_size(2)};
    TORCH_CHECK(bias.dim() <= 4, op,
                ": attn_bias must have at most 4 dimensions (broadcastable to (B, H, Nq, Nk) = ",
                c10::SymIntArrayRef(target, 4), "), got shape ", bias.sym_sizes());
    for (int64_t d = 0; d < bias.dim(); ++d) {
      const c10::SymInt& size = bias.sym_size(d);
      const c10::SymInt& want = target[4 - bias.dim() + d];
      TORCH_CHECK(size == 1 || size == want, op,
                  ": attn_bias must be broadcastable to (B, H, Nq, Nk) = ",
                  c10::SymIntArrayRef(target, 4), ", got shape ", bias.sym_sizes());
    }
  }
}

void check_attention_backward_inputs(const at::Tensor& grad_output, const at::Tensor& query,
                                     const at::Tensor& key, const at::Tensor& value,
                                     const std::optional<at::Tensor>& attn_bias,
                                     const at::Tensor& output, const at::Tensor& logsumexp) {
  const char* op = kAttentionOp;
  check_attention_inputs(query, key, value, attn_bias);
  const c10::SymInt rows[4] = {query.sym_size(0), query.sym_size(1), query.sym_size(2),
                               value.sym_size(3)};
  const c10::SymIntArrayRef output_shape(rows, 4);
  check_like_query(op, "output", output, query);
  check_shape(op, "output", output, output_shape, "(B, H, Nq, Dv)");
  check_like_query(op, "grad_output", grad_output, query);
  check_shape(op, "grad_output", grad_output, output_shape, "(B, H, Nq, Dv)");
  check_logsumexp(op, logsumexp, query, attention_accumulate_type(query.scalar_type()),
                  output_shape.slice(0, 3), "(B, H, Nq)");
}

double softmax_scale(int64_t head_dim, std::optional<double> scale) {
  if (scale.has_value()) return *scale;
  return head_dim > 0 ? 1.0 / std::sqrt(static_cast<double>(head_dim)) : 1.0;
}

double attention_scale(const at::Tensor& query, std::optional<double> scale) {
  return softmax_scale(query.size(3), scale);
}

at::ScalarType attention_accumulate_type(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

at::Tensor attention_via_forward(const at::Tensor& query, const at::Tensor& key,
                                 const at::Tensor& value,
                                 const std::optional<at::Tensor>& attn_bias, bool is_causal,
                                 std::optional<double> scale) {
  static auto forward = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("slideformer::_attention_forward", "")
                            .typed<std::tuple<at::Tensor, at::Tensor>(
                                const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const std::optional<at::Tensor>&, bool, std::optional<double>)>();
  return std::get<0>(forward.call(query, key, value, attn_bias, is_causal, scale));
}

namespace {

// The internal ops' kernels for what no backend kernel takes. Besides devices and layouts without
// kernels, that is a call whose tensors are all undefined: its dispatch key set is empty, and the
// dispatcher's slot for it holds a CompositeExplicitAutograd kernel when there is one (a
// CompositeImplicitAutograd one would also replace the autograd fallback of these ops). The input
// check names the first undefined tensor, as the backend kernels' check would.
std::tuple<at::Tensor, at::Tensor> attention_forward_without_kernel(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_bias, bool is_causal, std::optional<double> scale) {
  check_attention_inputs(query, key, value, attn_bias);
  refuse_device_without_kernel(kAttentionOp, query);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_without_kernel(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_bias, const at::Tensor& output,
    const at::Tensor& logsumexp, bool is_causal, std::optional<double> scale,
    bool compute_bias_grad) {
  check_attention_backward_inputs(grad_output, query, key, value, attn_bias, output, logsumexp);
  refuse_device_without_kernel(kAttentionOp, query);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, CompositeExplicitAutograd, m) {
  m.impl("attention", &attention_via_forward);
  m.impl("_attention_forward", &attention_forward_without_kernel);
  m.impl("_attention_backward", &attention_backward_without_kernel);
}

}  // namespace ops

at::Tensor attention(const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
                     const std::optional<at::Tensor>& attn_bias, bool is_causal,
                     std::optional<double> scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("slideformer::attention", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const std::optional<at::Tensor>&, bool,
                                         std::optional<double>)>();
  return op.call(query, key, value, attn_bias, is_causal, scale);
}

}  // namespace slideformer
