#include "schedule.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>

namespace slideformer::app {

double learning_rate(const TrainConfig& config, int64_t step, int64_t total_steps) {
  const int64_t warmup = std::max<int64_t>(1, total_steps / 20);
  if (step < warmup) return config.lr * static_cast<double>(step + 1) / warmup;
  const double progress = static_cast<double>(step - warmup) / std::max<int64_t>(1, total_steps - warmup);
  return config.lr * 0.5 * (1.0 + std::cos(M_PI * progress));
}

// Done for the whole batch as one gather: a flip only reverses an image's column indices.
at::Tensor augment(const at::Tensor& images, int64_t offset, int64_t global_size) {
  constexpr int64_t pad = 2;
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const at::Tensor padded = at::constant_pad_nd(images, {pad, pad, pad, pad}).view({n, c, -1});
  const at::Tensor offsets = at::randint(0, 2 * pad + 1, {global_size, 2}, at::kLong).narrow(0, offset, n);
  const at::Tensor flips = (at::rand({global_size}) < 0.5).narrow(0, offset, n).unsqueeze(1);
  const at::Tensor xs = at::arange(w, at::kLong);
  const at::Tensor rows = offsets.select(1, 0).unsqueeze(1) + at::arange(h, at::kLong);  // (n, h)
  const at::Tensor cols = offsets.select(1, 1).unsqueeze(1) + at::where(flips, xs.flip(0), xs);
  const at::Tensor index = (rows.unsqueeze(2) * (w + 2 * pad) + cols.unsqueeze(1))
                               .view({n, 1, h * w})
                               .expand({n, c, h * w});
  return padded.gather(2, index).view({n, c, h, w});
}

std::optional<at::ScalarType> amp_dtype(const std::string& amp) {
  if (amp == "bf16") return at::kBFloat16;
  if (amp == "fp16") return at::kHalf;
  return std::nullopt;
}

}  // namespace slideformer::app
