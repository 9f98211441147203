// attention, Autograd kernel: forward saves (q, k, v, bias, out, lse); backward calls
// _attention_backward, which recomputes the probabilities block by block.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/attention.h"
#include "ops/common/checks.h"
#include "ops/common/dispatch.h"

namespace slideformer::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class AttentionFunction : public torch::autograd::Function<AttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, const std::optional<at::Tensor>& attn_bias,
                            bool is_causal, std::optional<double> scale) {
    static auto forward_op =
        typed_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const at::Tensor&,
                                                    const std::optional<at::Tensor>&, bool,
                                                    std::optional<double>)>(
            "slideformer::_attention_forward");
    auto [output, logsumexp] = forward_op.call(query, key, value, attn_bias, is_causal, scale);
    ctx->save_for_backward(
        {query, key, value, attn_bias.value_or(at::Tensor()), output, logsumexp});
    ctx->saved_data["is_causal"] = is_causal;
    ctx->saved_data["scale"] = scale;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto backward_op =
        typed_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
            const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&, bool,
            std::optional<double>, bool)>("slideformer::_attention_backward");
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad_output = grad_outputs[0];
    // Grad mode is on inside backward only under create_graph=True.
    TORCH_CHECK(!torch::autograd::GradMode::is_enabled(), kAttentionOp,
                ": double backward is not supported (backward was called with create_graph=True)");
    std::optional<at::Tensor> attn_bias;
    if (saved[3].defined()) attn_bias = saved[3];
    auto [grad_query, grad_key, grad_value, grad_bias] = backward_op.call(
        grad_output, saved[0], saved[1], saved[2], attn_bias, saved[4], saved[5],
        ctx->saved_data["is_causal"].toBool(), ctx->saved_data["scale"].toOptional<double>(),
        // Edges exist only for tensor inputs that were given: index 3 is the bias when present.
        attn_bias.has_value() && ctx->needs_input_grad(3));
    return {grad_query, grad_key, grad_value, grad_bias, at::Tensor(), at::Tensor()};
  }
};

at::Tensor attention_autograd(const at::Tensor& query, const at::Tensor& key,
                              const at::Tensor& value, const std::optional<at::Tensor>& attn_bias,
                              bool is_causal, std::optional<double> scale) {
  // Function::apply records every tensor input's device: an undefined one is refused first.
  for (const auto& [name, tensor] : {std::pair{"query", &query}, {"key", &key}, {"value", &value}}) {
    check_defined(kAttentionOp, name, *tensor);
  }
  return AttentionFunction::apply(query, key, value, attn_bias, is_causal, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, Autograd, m) {
  m.impl("attention", &attention_autograd);
}

}  // namespace slideformer::ops
