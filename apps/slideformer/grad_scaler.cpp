#include "grad_scaler.h"

namespace slideformer::app {

GradScaler::GradScaler(double scale, int64_t growth_tracker)
    : scale_(at::full({1}, scale, at::kFloat)),
      growth_tracker_(at::full({1}, growth_tracker, at::kInt)) {}

bool GradScaler::unscale_and_update(const std::vector<at::Tensor>& parameters) {
  std::vector<at::Tensor> grads;
  for (const auto& p : parameters) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  at::Tensor found_inf = at::zeros({1}, at::kFloat);
  at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, scale_.reciprocal());
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf, /*scale_growth_factor=*/2.0,
                         /*scale_backoff_factor=*/0.5, kGrowthInterval);
  return found_inf.item<float>() == 0.0f;
}

}  // namespace slideformer::app
