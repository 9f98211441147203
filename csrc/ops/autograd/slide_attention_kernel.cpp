// slide_attention, Autograd kernel: forward saves (q, k, v, the three optional parameters, out,
// lse); backward calls _slide_attention_backward, which recomputes the window probabilities.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>

#include "ops/common/checks.h"
#include "ops/common/dispatch.h"
#include "ops/slide_attention.h"

namespace slideformer::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saved-tensor slots.
enum Saved { kQuery, kKey, kValue, kKeyBias, kShiftWeight, kShiftBias, kOutput, kLogsumexp };

std::optional<at::Tensor> optional_if_defined(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class SlideAttentionFunction : public torch::autograd::Function<SlideAttentionFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, int64_t kernel_size, int64_t dilation,
                            const std::optional<at::Tensor>& key_bias,
                            const std::optional<at::Tensor>& shift_weight,
                            const std::optional<at::Tensor>& shift_bias, c10::string_view border,
                            std::optional<double> scale) {
    static auto forward_op = typed_op<std::tuple<at::Tensor, at::Tensor>(
        const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
        const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
        const std::optional<at::Tensor>&, c10::string_view, std::optional<double>)>(
        "slideformer::_slide_attention_forward");
    auto [output, logsumexp] = forward_op.call(query, key, value, kernel_size, dilation, key_bias,
                                               shift_weight, shift_bias, border, scale);
    ctx->save_for_backward({query, key, value, key_bias.value_or(at::Tensor()),
                            shift_weight.value_or(at::Tensor()), shift_bias.value_or(at::Tensor()),
                            output, logsumexp});
    ctx->saved_data["kernel_size"] = kernel_size;
    ctx->saved_data["dilation"] = dilation;
    ctx->saved_data["border"] = std::string(border);
    ctx->saved_data["scale"] = scale;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto backward_op =
        typed_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
            const at::Tensor&, const at::Tensor&, int64_t, int64_t,
            const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
            const std::optional<at::Tensor>&, c10::string_view, std::optional<double>,
            std::array<bool, 3>)>("slideformer::_slide_attention_backward");
    // Grad mode is on inside backward only under create_graph=True.
    TORCH_CHECK(!torch::autograd::GradMode::is_enabled(), kSlideAttentionOp,
                ": double backward is not supported (backward was called with create_graph=True)");
    const auto saved = ctx->get_saved_variables();
    // Edges exist only for the tensor inputs that were given: the optional parameters that are
    // present follow q, k, v in order.
    std::array<bool, 3> compute_param_grads{};
    size_t edge = 3;
    for (int i = 0; i < 3; ++i) {
      if (saved[kKeyBias + i].defined()) compute_param_grads[i] = ctx->needs_input_grad(edge++);
    }
    const std::string border = ctx->saved_data["border"].toStringRef();
    auto [grad_query, grad_key, grad_value, grad_key_bias, grad_shift_weight, grad_shift_bias] =
        backward_op.call(grad_outputs[0], saved[kQuery], saved[kKey], saved[kValue], saved[kOutput],
                         saved[kLogsumexp], ctx->saved_data["kernel_size"].toInt(),
                         ctx->saved_data["dilation"].toInt(), optional_if_defined(saved[kKeyBias]),
                         optional_if_defined(saved[kShiftWeight]),
                         optional_if_defined(saved[kShiftBias]), border,
                         ctx->saved_data["scale"].toOptional<double>(), compute_param_grads);
    // One entry per forward argument, in order; none for the non-tensor ones.
    return {grad_query,    grad_key,          grad_value,      at::Tensor(), at::Tensor(),
            grad_key_bias, grad_shift_weight, grad_shift_bias, at::Tensor(), at::Tensor()};
  }
};

at::Tensor slide_attention_autograd(const at::Tensor& query, const at::Tensor& key,
                                    const at::Tensor& value, int64_t kernel_size, int64_t dilation,
                                    const std::optional<at::Tensor>& key_bias,
                                    const std::optional<at::Tensor>& shift_weight,
                                    const std::optional<at::Tensor>& shift_bias,
                                    c10::string_view border, std::optional<double> scale) {
  // Function::apply records every tensor input's device: an undefined one is refused first.
  for (const auto& [name, tensor] : {std::pair{"query", &query}, {"key", &key}, {"value", &value}}) {
    check_defined(kSlideAttentionOp, name, *tensor);
  }
  return SlideAttentionFunction::apply(query, key, value, kernel_size, dilation, key_bias,
                                       shift_weight, shift_bias, border, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, Autograd, m) {
  m.impl("slide_attention", &slide_attention_autograd);
}

}  // namespace slideformer::ops
