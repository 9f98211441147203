#pragma once
// Weight initialisation shared by the modules (docs/modules.md).
#include <ATen/ATen.h>
#include <torch/nn/modules/linear.h>

#include <cmath>

namespace slideformer::nn::init {

// Truncated normal N(0, std^2) restricted to [-2, 2] (timm's trunc_normal_ defaults), by inverse
// transform sampling.
inline void trunc_normal_(at::Tensor t, double std) {
  at::NoGradGuard no_grad;
  auto cdf = [](double x) { return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))); };
  const double lo = cdf(-2.0 / std), hi = cdf(2.0 / std);
  t.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_().mul_(std * std::sqrt(2.0)).clamp_(-2.0, 2.0);
}

// PyTorch's default Conv2d init for a depthwise k x k kernel (fan-in k*k): U(-1/k, 1/k) for the
// weight (kaiming_uniform with a = sqrt(5)) and for the bias.
inline void default_depthwise_conv_(at::Tensor t, int64_t kernel_size) {
  at::NoGradGuard no_grad;
  const double bound = 1.0 / static_cast<double>(kernel_size);
  t.uniform_(-bound, bound);
}

// Linear layers: truncated-normal weight (std 0.02) and zero bias.
inline torch::nn::Linear linear(int64_t in, int64_t out, bool bias = true) {
  torch::nn::Linear layer(torch::nn::LinearOptions(in, out).bias(bias));
  trunc_normal_(layer->weight, 0.02);
  if (bias) {
    at::NoGradGuard no_grad;
    layer->bias.zero_();
  }
  return layer;
}

}  // namespace slideformer::nn::init
