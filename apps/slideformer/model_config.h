#pragma once
// What model a checkpoint holds, in full: a family and that family's options, stored as the JSON
// {"family": "slide_transformer" | "mvit", "options": {...}} whose option names are those of
// SlideTransformerOptions (image_size, ..., stage_kinds as "slide"/"global", ...) or MViTOptions
// (..., pool_mode as "conv"/"max"/"avg", position_encoding as "none"/"learned"/"sinusoidal").
// build_model() is the one place the program makes a model from a description.
#include <memory>
#include <string>
#include <vector>

#include "slideformer/nn/description.h"
#include "slideformer/nn/modules.h"

namespace slideformer::app {

using nn::kMViTFamily;
using nn::kSlideTransformerFamily;

struct ModelConfig {
  std::string family = kSlideTransformerFamily;
  nn::SlideTransformerOptions options;  // family slide_transformer
  nn::MViTOptions mvit;                 // family mvit

  // The options both families have, of this config's family.
  int64_t in_channels() const;
  int64_t image_size() const;
  int64_t num_classes() const;
  void set_image_size(int64_t size);
};

// A built model: the module (parameters, train / eval, save / load) and the classifier it is.
struct Model {
  std::shared_ptr<torch::nn::Module> module;
  nn::Classifier* classifier = nullptr;  // the same object as module

  nn::Classifier* operator->() const { return classifier; }
  at::Tensor operator()(const at::Tensor& images) const { return classifier->forward(images); }
};

// The presets of both families (slide_transformer first).
std::vector<std::string> preset_names();

// The named preset (throws std::runtime_error for an unknown name).
ModelConfig preset_model(const std::string& preset);

std::string model_config_to_json(const ModelConfig& config);

// Parses and checks a description. Throws std::runtime_error "<source>: <problem>" for malformed
// JSON, an unknown family, a missing, unknown, mistyped or out-of-range option, or a model too
// large to build.
ModelConfig model_config_from_json(const std::string& json, const std::string& source);

// Throws std::runtime_error "<source>: <problem>" for options out of range (as the reader does).
void check_model_config(const ModelConfig& config, const std::string& source);

bool operator==(const ModelConfig& a, const ModelConfig& b);

// The preset's name when `config` is exactly one, else "custom".
std::string model_name(const ModelConfig& config);

Model build_model(const ModelConfig& config);

}  // namespace slideformer::app
