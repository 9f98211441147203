// slide_attention_nd, Autograd kernel: forward saves (q, k, v, the three optional parameters,
// out, lse); backward calls _slide_attention_nd_backward, which recomputes the probabilities.
#include <torch/autograd.h>
#include <torch/library.h>

#include <array>
#include <string>

#include "ops/common/checks.h"
#include "ops/common/dispatch.h"
#include "ops/slide_attention_nd.h"

namespace slideformer::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Saved-tensor slots: q, k, v, then the three parameters (undefined when absent), out, lse.
enum Saved { kQuery, kKey, kValue, kFirstParameter, kOutput = kFirstParameter + 3, kLogsumexp };

std::optional<at::Tensor> if_defined(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class SlideAttentionNdFunction : public torch::autograd::Function<SlideAttentionNdFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& query, const at::Tensor& key,
                            const at::Tensor& value, c10::IntArrayRef kernel_size,
                            c10::IntArrayRef dilation, const std::optional<at::Tensor>& key_bias,
                            const std::optional<at::Tensor>& shift_weight,
                            const std::optional<at::Tensor>& shift_bias, c10::string_view border,
                            bool causal, std::optional<double> scale) {
    static auto forward_op = typed_op<SlideNdForward>("slideformer::_slide_attention_nd_forward");
    auto [output, logsumexp] = forward_op.call(query, key, value, kernel_size, dilation, key_bias,
                                               shift_weight, shift_bias, border, causal, scale);
    ctx->save_for_backward({query, key, value, key_bias.value_or(at::Tensor()),
                            shift_weight.value_or(at::Tensor()), shift_bias.value_or(at::Tensor()),
                            output, logsumexp});
    ctx->saved_data["kernel_size"] = kernel_size.vec();
    ctx->saved_data["dilation"] = dilation.vec();
    ctx->saved_data["border"] = std::string(border);
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["scale"] = scale;
    return output;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    static auto backward_op =
        typed_op<SlideNdBackward>("slideformer::_slide_attention_nd_backward");
    // Grad mode is on inside backward only under create_graph=True.
    TORCH_CHECK(!torch::autograd::GradMode::is_enabled(), kSlideAttentionNdOp,
                ": double backward is not supported (backward was called with create_graph=True)");
    const auto saved = ctx->get_saved_variables();
    // Edges exist only for the given tensor inputs: the present parameters follow q, k, v.
    std::array<bool, 3> compute_param_grads{};
    size_t edge = 3;
    for (int i = 0; i < 3; ++i) {
      if (saved[kFirstParameter + i].defined()) {
        compute_param_grads[i] = ctx->needs_input_grad(edge++);
      }
    }
    const std::vector<int64_t> kernel_size = ctx->saved_data["kernel_size"].toIntVector();
    const std::vector<int64_t> dilation = ctx->saved_data["dilation"].toIntVector();
    const std::string border = ctx->saved_data["border"].toStringRef();
    auto [dq, dk, dv, dkey_bias, dshift_weight, dshift_bias] = backward_op.call(
        grad_outputs[0], saved[kQuery], saved[kKey], saved[kValue], saved[kOutput],
        saved[kLogsumexp], kernel_size, dilation, if_defined(saved[kFirstParameter]),
        if_defined(saved[kFirstParameter + 1]), if_defined(saved[kFirstParameter + 2]), border,
        ctx->saved_data["causal"].toBool(), ctx->saved_data["scale"].toOptional<double>(),
        compute_param_grads);
    // One entry per forward argument, in order; none for the non-tensor ones.
    return {dq,        dk,           dv,           at::Tensor(), at::Tensor(), dkey_bias,
            dshift_weight, dshift_bias, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor slide_attention_nd_autograd(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale) {
  // Function::apply records every tensor input's device: an undefined one is refused first.
  for (const auto& [name, tensor] : {std::pair{"query", &query}, {"key", &key}, {"value", &value}}) {
    check_defined(kSlideAttentionNdOp, name, *tensor);
  }
  return SlideAttentionNdFunction::apply(query, key, value, kernel_size, dilation, key_bias,
                                         shift_weight, shift_bias, border, causal, scale);
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, Autograd, m) {
  m.impl("slide_attention_nd", &slide_attention_nd_autograd);
}

}  // namespace slideformer::ops
