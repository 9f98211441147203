// functional::linear: float32 linear layers on the CPU, each product on the backend the CPU runs
// fastest (choose_linear_backends).
//
// torch's at::linear reaches MKL's sgemm, which on AMD CPUs runs its AVX2 code even where the
// CPU has AVX-512; oneDNN (which torch bundles and registers as mkldnn::_linear_pointwise) picks
// its kernels by instruction set and ran the model's GEMMs about 1.5-2x faster on an AMD CPU. On
// an Intel Xeon with AVX-512, oneDNN's forward was 1.0-1.6x MKL's but MKL's backward products
// (which read transposed operands without a copy) were 1.0-1.7x oneDNN's.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>

#include <cstdlib>
#include <optional>

#include "slideformer/cpu.h"
#include "slideformer/nn/functional.h"

namespace slideformer::nn::functional {

namespace {

// mkldnn::_linear_pointwise(X, W, B, attr, scalars, algorithm): X W^T + B, then `attr`
// ("none" or "gelu", algorithm "none" for the erf form); nullopt where torch has no oneDNN.
const std::optional<c10::OperatorHandle>& onednn_linear_op() {
  static const std::optional<c10::OperatorHandle> op =
      at::hasMKLDNN() ? c10::Dispatcher::singleton().findSchema({"mkldnn::_linear_pointwise", ""})
                      : std::nullopt;
  return op;
}

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                         Activation activation) {
  torch::jit::Stack stack{x, weight,
                          bias.defined() ? c10::IValue(bias) : c10::IValue(),
                          std::string(activation == Activation::kGelu ? "gelu" : "none"),
                          c10::List<std::optional<at::Scalar>>(), std::string("none")};
  onednn_linear_op()->callBoxed(&stack);
  return stack[0].toTensor();
}

// An autograd Function takes no undefined tensors: a 0-element bias stands for none.
class OnednnLinear : public torch::autograd::Function<OnednnLinear> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& bias_or_empty, bool aten_backward) {
    ctx->save_for_backward({x, weight});
    const bool has_bias = bias_or_empty.numel() > 0;
    ctx->saved_data["has_bias"] = has_bias;
    ctx->saved_data["aten_backward"] = aten_backward;
    return onednn_linear(x, weight, has_bias ? bias_or_empty : at::Tensor(), Activation::kNone);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    const int64_t in = weight.size(1), out = weight.size(0);
    const at::Tensor dy = grads[0].reshape({-1, out});
    const bool aten = ctx->saved_data["aten_backward"].toBool();
    at::Tensor dx, dweight, dbias;
    if (ctx->needs_input_grad(0)) {
      dx = aten ? dy.mm(weight) : onednn_linear(dy, weight.t().contiguous(), {}, Activation::kNone);
      dx = dx.view(x.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      const at::Tensor x2 = x.reshape({-1, in});
      if (aten) {
        dweight = dy.t().mm(x2);
      } else {  // oneDNN copies its input operand to rows-contiguous: let it copy the narrower matrix
        dweight = in <= out ? onednn_linear(x2.t(), dy.t(), {}, Activation::kNone).t()
                            : onednn_linear(dy.t(), x2.t(), {}, Activation::kNone);
      }
    }
    if (ctx->saved_data["has_bias"].toBool() && ctx->needs_input_grad(2)) dbias = dy.sum(0);
    return {dx, dweight, dbias, at::Tensor()};
  }
};

}  // namespace

LinearBackends choose_linear_backends(const std::string& setting, const std::string& cpu_vendor, bool has_mkl,
                                      bool has_onednn) {
  TORCH_CHECK(setting.empty() || setting == "auto" || setting == "onednn" || setting == "aten",
              "SLIDEFORMER_GEMM: expected auto, onednn or aten, got '", setting, "'");
  if (!has_onednn) return {GemmBackend::kAten, GemmBackend::kAten, "torch has no oneDNN"};
  if (setting == "onednn" || setting == "aten") {
    const GemmBackend backend = setting == "aten" ? GemmBackend::kAten : GemmBackend::kOnednn;
    return {backend, backend, "SLIDEFORMER_GEMM=" + setting};
  }
  if (has_mkl && cpu_vendor == "GenuineIntel") {
    return {GemmBackend::kOnednn, GemmBackend::kAten, "Intel CPU and torch with MKL"};
  }
  return {GemmBackend::kOnednn, GemmBackend::kOnednn, has_mkl ? "not an Intel CPU" : "torch has no MKL"};
}

const LinearBackends& linear_backends() {
  static const LinearBackends backends = [] {
    const char* setting = std::getenv("SLIDEFORMER_GEMM");
    return choose_linear_backends(setting ? setting : "", cpu_info().vendor, at::hasMKL(),
                                  onednn_linear_op().has_value());
  }();
  return backends;
}

std::string describe_linear_backends() {
  const LinearBackends& backends = linear_backends();
  const auto name = [](GemmBackend backend) { return backend == GemmBackend::kAten ? "ATen" : "oneDNN"; };
  return std::string("linear layers: forward ") + name(backends.forward) + ", backward " + name(backends.backward) +
         " (" + backends.reason + ")";
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Activation activation) {
  return linear(x, weight, bias, activation, linear_backends());
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Activation activation,
                  const LinearBackends& backends) {
  // Under autocast, at::linear runs in the autocast dtype (the oneDNN op has no autocast rule).
  const bool onednn = backends.forward == GemmBackend::kOnednn && onednn_linear_op().has_value() &&
                      x.device().is_cpu() && !at::autocast::is_autocast_enabled(at::kCPU) &&
                      x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat &&
                      x.dim() >= 2 && x.numel() > 0;
  if (!onednn) {
    const at::Tensor y = at::linear(x, weight, bias);
    return activation == Activation::kGelu ? at::gelu(y) : y;
  }
  const bool needs_grad = torch::autograd::GradMode::is_enabled() &&
                          (x.requires_grad() || weight.requires_grad() ||
                           (bias.defined() && bias.requires_grad()));
  if (!needs_grad) return onednn_linear(x, weight, bias, activation);
  const at::Tensor y = OnednnLinear::apply(x, weight, bias.defined() ? bias : at::empty({0}, weight.options()),
                                           backends.backward == GemmBackend::kAten);
  return activation == Activation::kGelu ? at::gelu(y) : y;
}

}  // namespace slideformer::nn::functional
