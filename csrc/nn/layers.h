#pragma once
// What the modules share: how they run their torch::nn::Linear layers and their LayerNorm. (What
// the hierarchical classifiers share is HierarchicalClassifier, modules.h.)
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include "slideformer/nn/functional.h"

namespace slideformer::nn {

// Through functional::linear (oneDNN on the CPU in float32, at::linear elsewhere), so the
// parameters stay an ordinary Linear's.
inline at::Tensor apply_linear(const torch::nn::Linear& layer, const at::Tensor& x,
                               functional::Activation activation = functional::Activation::kNone) {
  return functional::linear(x, layer->weight, layer->bias, activation);
}

inline torch::nn::LayerNorm layer_norm(int64_t dim, double eps = 1e-5) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps));
}

}  // namespace slideformer::nn
