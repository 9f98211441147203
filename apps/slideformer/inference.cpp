#include "inference.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "checkpoint.h"

namespace slideformer::app {

LoadedModel load_model(const std::string& checkpoint_path) {
  LoadedModel loaded;
  CheckpointState state = read_checkpoint_state(checkpoint_path);
  loaded.model_config = state.model;
  loaded.config = state.config;
  loaded.data_config = state.data_config;
  loaded.model = build_model(state.model);
  load_checkpoint_weights(checkpoint_path, *loaded.model.module, nullptr);
  loaded.model.module->eval();
  return loaded;
}

void check_data_fits(const ModelConfig& model, const Dataset& data) {
  if (data.images.size(1) != model.in_channels() || data.images.size(2) != model.image_size() ||
      data.images.size(3) != model.image_size()) {
    throw std::runtime_error(fmt::format(
        "model '{}' expects {}x{}x{} images, the data has {}x{}x{}", model_name(model),
        model.in_channels(), model.image_size(), model.image_size(), data.images.size(1),
        data.images.size(2), data.images.size(3)));
  }
}

at::Tensor unit_images(const Dataset& data, const at::Tensor& index) {
  return data.images.index_select(0, index).to(at::kFloat).div_(255.0);
}

at::Tensor normalise(const nn::Classifier& model, const at::Tensor& unit) {
  const int64_t c = model.in_channels();
  const at::Tensor mean = torch::tensor(model.input_mean(), at::kFloat).view({1, c, 1, 1});
  const at::Tensor std = torch::tensor(model.input_std(), at::kFloat).view({1, c, 1, 1});
  return (unit - mean) / std;
}

at::Tensor predict_classes(const std::function<at::Tensor(const at::Tensor&)>& logits,
                           const Dataset& data, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> predictions;
  const int64_t n = data.images.size(0);
  for (int64_t start = 0; start < n; start += batch_size) {
    const at::Tensor index = at::arange(start, std::min(n, start + batch_size), at::kLong);
    predictions.push_back(logits(unit_images(data, index)).argmax(1));
  }
  return predictions.empty() ? at::empty({0}, at::kLong) : at::cat(predictions);
}

}  // namespace slideformer::app
