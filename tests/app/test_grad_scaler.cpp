// The float16 loss scale of `train --amp fp16` (apps/slideformer/grad_scaler.h) against the rules
// of torch.amp.GradScaler, written out: unscale, skip and back off on inf / NaN, grow after
// kGrowthInterval good steps.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "grad_scaler.h"

namespace {

using slideformer::app::GradScaler;

at::Tensor parameter_with_grad(const at::Tensor& grad) {
  at::Tensor p = torch::zeros(grad.sizes()).requires_grad_();
  p.mutable_grad() = grad.clone();
  return p;
}

TEST(GradScaler, FiniteGradientsAreUnscaledAndTheStepTaken) {
  GradScaler scaler(1024.0, 0);
  const at::Tensor grad = torch::randn({3, 4});
  const at::Tensor p = parameter_with_grad(grad * 1024.0);
  const at::Tensor frozen = torch::zeros({2});  // no gradient: left alone
  EXPECT_TRUE(scaler.unscale_and_update({p, frozen}));
  EXPECT_TRUE(torch::allclose(p.grad(), grad, 1e-6, 0));
  EXPECT_EQ(scaler.scale_value(), 1024.0);
  EXPECT_EQ(scaler.growth_tracker(), 1);
  EXPECT_TRUE(torch::equal(scaler.scale(torch::ones({1})), torch::full({1}, 1024.0)));
}

TEST(GradScaler, AnInfOrNaNSkipsTheStepAndHalvesTheScale) {
  for (const double bad : {std::numeric_limits<double>::infinity(), std::nan("")}) {
    GradScaler scaler(1024.0, 7);
    at::Tensor grad = torch::ones({5});
    grad[3] = bad;
    EXPECT_FALSE(scaler.unscale_and_update({parameter_with_grad(torch::ones({2})), parameter_with_grad(grad)}));
    EXPECT_EQ(scaler.scale_value(), 512.0);
    EXPECT_EQ(scaler.growth_tracker(), 0);
  }
}

TEST(GradScaler, TheScaleDoublesAfterTheGrowthIntervalOfGoodSteps) {
  GradScaler scaler(256.0, GradScaler::kGrowthInterval - 2);
  const at::Tensor p = parameter_with_grad(torch::ones({2}));
  EXPECT_TRUE(scaler.unscale_and_update({p}));
  EXPECT_EQ(scaler.scale_value(), 256.0);
  EXPECT_TRUE(scaler.unscale_and_update({p}));
  EXPECT_EQ(scaler.scale_value(), 512.0);
  EXPECT_EQ(scaler.growth_tracker(), 0);
}

}  // namespace
