#pragma once
// A trained model at work: loading it from a checkpoint, its input, and its predictions.
#include <ATen/Tensor.h>

#include <functional>
#include <string>

#include "idx.h"
#include "model_config.h"
#include "recipe.h"

namespace slideformer::app {

// The model a checkpoint holds (weights loaded, eval mode), its description and recipe.
struct LoadedModel {
  Model model;
  ModelConfig model_config;
  TrainConfig config;
  std::string data_config;  // JSON of slideformer::data::DataConfig ("" for Fashion-MNIST's IDX files)
};
LoadedModel load_model(const std::string& checkpoint_path);

// Throws std::runtime_error unless the images have the model's channels and size.
void check_data_fits(const ModelConfig& model, const Dataset& data);

// The images `index` of `data` as floats in [0, 1].
at::Tensor unit_images(const Dataset& data, const at::Tensor& index);

// [0, 1] float images normalised as the model expects.
at::Tensor normalise(const slideformer::nn::Classifier& model, const at::Tensor& unit_images);

// Predicted classes of [0, 1] images run through `logits` in batches.
at::Tensor predict_classes(const std::function<at::Tensor(const at::Tensor&)>& logits,
                           const Dataset& data, int64_t batch_size = 500);

}  // namespace slideformer::app
