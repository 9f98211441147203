// functional::linear against at::linear and at::gelu in float64: values and the gradients of x, W
// and b, on each backend choice (oneDNN, ATen's backward, ATen), for both ways oneDNN's weight
// gradient is formed (in <= out, in > out); and the rule that chooses the backends.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include "slideformer/nn/functional.h"
#include "test_helpers.h"

namespace {

namespace F = slideformer::nn::functional;
using slideformer::testing::expect_close;

struct LinearCase {
  int64_t in, out;
  bool bias;
  F::Activation activation;
};

at::Tensor reference(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                     F::Activation activation) {
  const at::Tensor y = at::linear(x.to(at::kDouble), w.to(at::kDouble),
                                  b.defined() ? b.to(at::kDouble) : at::Tensor());
  return activation == F::Activation::kGelu ? at::gelu(y) : y;
}

void expect_matches_reference(const F::LinearBackends& backends) {
  at::manual_seed(4);
  for (const LinearCase& c : {LinearCase{24, 40, true, F::Activation::kNone},
                              LinearCase{40, 24, false, F::Activation::kNone},
                              LinearCase{16, 48, true, F::Activation::kGelu}}) {
    const std::string what = std::to_string(c.in) + "->" + std::to_string(c.out) + " (" + backends.reason + ")";
    // (B, Y, X, C) input seen through a permute, as the modules pass it.
    const at::Tensor x = at::randn({2, c.in, 5, 3}).permute({0, 2, 3, 1}).requires_grad_();
    const at::Tensor w = (0.2 * at::randn({c.out, c.in})).requires_grad_();
    const at::Tensor b = c.bias ? at::randn({c.out}).requires_grad_() : at::Tensor();
    {
      at::NoGradGuard no_grad;  // the fused path
      expect_close(F::linear(x, w, b, c.activation, backends), reference(x, w, b, c.activation), 1e-5,
                   1e-5, "no-grad forward " + what);
    }
    const at::Tensor y = F::linear(x, w, b, c.activation, backends);
    const at::Tensor xd = x.detach().to(at::kDouble).requires_grad_();
    const at::Tensor wd = w.detach().to(at::kDouble).requires_grad_();
    const at::Tensor bd = c.bias ? b.detach().to(at::kDouble).requires_grad_() : at::Tensor();
    const at::Tensor yd = reference(xd, wd, bd, c.activation);
    expect_close(y, yd, 1e-5, 1e-5, "forward " + what);
    const at::Tensor grad = at::randn_like(yd);
    std::vector<at::Tensor> inputs = {x, w}, inputs_d = {xd, wd};
    if (c.bias) inputs.push_back(b), inputs_d.push_back(bd);
    const auto ours = torch::autograd::grad({y}, inputs, {grad.to(at::kFloat)});
    const auto theirs = torch::autograd::grad({yd}, inputs_d, {grad});
    for (size_t i = 0; i < ours.size(); ++i) {
      expect_close(ours[i], theirs[i], 1e-4, 1e-4, "gradient " + std::to_string(i) + " " + what);
    }
  }
}

const F::LinearBackends kOnednn{F::GemmBackend::kOnednn, F::GemmBackend::kOnednn, "oneDNN"};
const F::LinearBackends kAtenBackward{F::GemmBackend::kOnednn, F::GemmBackend::kAten, "ATen backward"};
const F::LinearBackends kAten{F::GemmBackend::kAten, F::GemmBackend::kAten, "ATen"};

TEST(FunctionalLinear, MatchesAtLinearForwardAndGradientsOnEveryBackend) {
  for (const F::LinearBackends& backends : {kOnednn, kAtenBackward, kAten}) expect_matches_reference(backends);
}

TEST(FunctionalLinear, TheRuleFollowsTheCpuAndTheSetting) {
  const auto expect_choice = [](const F::LinearBackends& got, F::GemmBackend forward, F::GemmBackend backward) {
    EXPECT_EQ(got.forward, forward) << got.reason;
    EXPECT_EQ(got.backward, backward) << got.reason;
  };
  using B = F::GemmBackend;
  expect_choice(F::choose_linear_backends("", "GenuineIntel", true, true), B::kOnednn, B::kAten);
  expect_choice(F::choose_linear_backends("auto", "AuthenticAMD", true, true), B::kOnednn, B::kOnednn);
  expect_choice(F::choose_linear_backends("", "GenuineIntel", false, true), B::kOnednn, B::kOnednn);
  expect_choice(F::choose_linear_backends("onednn", "GenuineIntel", true, true), B::kOnednn, B::kOnednn);
  expect_choice(F::choose_linear_backends("aten", "AuthenticAMD", true, true), B::kAten, B::kAten);
  expect_choice(F::choose_linear_backends("onednn", "AuthenticAMD", true, false), B::kAten, B::kAten);
  EXPECT_THROW_MSG(F::choose_linear_backends("mkl", "GenuineIntel", true, true),
                   "SLIDEFORMER_GEMM: expected auto, onednn or aten, got 'mkl'");
}

TEST(FunctionalLinear, OtherDtypesRunAtLinear) {
  const at::Tensor x = at::randn({3, 4}, at::kDouble), w = at::randn({5, 4}, at::kDouble);
  EXPECT_TRUE(at::equal(F::linear(x, w, {}, F::Activation::kGelu), at::gelu(at::linear(x, w))));
}

}  // namespace
