#pragma once
// The dynamic loss scale of float16 training (`train --amp fp16`), as torch.amp.GradScaler does
// it: float16 gradients of a small loss underflow, so the loss is multiplied by the scale before
// the backward and the gradients divided by it after. A step whose gradients hold an inf or NaN
// is skipped and halves the scale; kGrowthInterval good steps in a row double it.
#include <ATen/ATen.h>

#include <vector>

namespace slideformer::app {

class GradScaler {
 public:
  static constexpr double kInitialScale = 65536.0;
  static constexpr int64_t kGrowthInterval = 2000;

  // The scale and the count of good steps since it last changed (a checkpoint's, or a fresh run's).
  GradScaler(double scale, int64_t growth_tracker);

  at::Tensor scale(const at::Tensor& loss) const { return loss * scale_.item<double>(); }

  // Divides the gradients of `parameters` by the scale, in place, and updates the scale. Returns
  // whether they are finite: false means "skip this step" (the optimizer must not step).
  bool unscale_and_update(const std::vector<at::Tensor>& parameters);

  double scale_value() const { return scale_.item<double>(); }
  int64_t growth_tracker() const { return growth_tracker_.item<int64_t>(); }

 private:
  at::Tensor scale_;           // float32, one element
  at::Tensor growth_tracker_;  // int32, one element
};

}  // namespace slideformer::app
