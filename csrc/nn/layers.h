#pragma once
// What the modules share: how they run their torch::nn::Linear layers, their LayerNorm, and the
// parts the hierarchical classifiers (SlideTransformer, MViT) have in common.
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <memory>
#include <vector>

#include "slideformer/nn/functional.h"
#include "slideformer/nn/script_form.h"

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

// The module a holder holds, or null for an empty holder (an option that is off).
template <typename Holder>
std::shared_ptr<torch::nn::Module> module_or_null(const Holder& holder) {
  return holder ? holder.ptr() : nullptr;
}

// The stochastic-depth rate of each block, stage by stage: rising linearly over all the blocks of
// `depths` from 0 to `rate`.
std::vector<std::vector<double>> drop_path_schedule(const std::vector<int64_t>& depths, double rate);

// A hierarchical classifier's walk (Classifier::layers): "patch_embed", "absolute_position",
// "sinusoidal_position" (null ones left out: module_or_null), then each stage's blocks ("block_<stage>_<i>",
// `stages` a ModuleList of ModuleLists) and the module after it in `between_stages`, if any
// ("merge_<stage>").
NamedLayers hierarchical_layers(std::shared_ptr<torch::nn::Module> patch_embed,
                                std::shared_ptr<torch::nn::Module> absolute_position,
                                std::shared_ptr<torch::nn::Module> sinusoidal_position,
                                const torch::nn::ModuleList& stages, const torch::nn::ModuleList& between_stages = nullptr);

}  // namespace slideformer::nn
