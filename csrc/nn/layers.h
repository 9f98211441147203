#pragma once
// How the modules run their torch::nn::Linear layers: through functional::linear (oneDNN on the
// CPU in float32, at::linear elsewhere), so the parameters stay an ordinary Linear's.
#include <torch/nn/modules/linear.h>

#include "slideformer/nn/functional.h"

namespace slideformer::nn {

inline at::Tensor apply_linear(const torch::nn::Linear& layer, const at::Tensor& x,
                               functional::Activation activation = functional::Activation::kNone) {
  return functional::linear(x, layer->weight, layer->bias, activation);
}

}  // namespace slideformer::nn
