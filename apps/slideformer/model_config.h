#pragma once
// What model a checkpoint holds, in full: a model description of the library's registry
// (slideformer/nn/registry.h), a family and its options, stored as the JSON {"family": ...,
// "options": {...}} whose option names are the family's (docs/modules.md). The program asks a
// description what it needs (image size, channels, classes, build()) and never which family it is.
#include <memory>
#include <string>
#include <vector>

#include "slideformer/nn/modules.h"
#include "slideformer/nn/registry.h"

namespace slideformer::app {

using ModelConfig = nn::ModelDescription;

// A built model: the module (parameters, train / eval, save / load) and the classifier it is.
struct Model : nn::BuiltModel {
  nn::Classifier* operator->() const { return classifier; }
  at::Tensor operator()(const at::Tensor& images) const { return classifier->forward(images); }
};

// The presets of every family (slide_transformer first).
inline std::vector<std::string> preset_names() { return ModelConfig::preset_names(); }

// The named preset (throws std::runtime_error for an unknown name).
inline ModelConfig preset_model(const std::string& preset) { return ModelConfig::preset(preset); }

inline std::string model_config_to_json(const ModelConfig& config) { return config.to_json(); }

// Parses and checks a description. Throws std::runtime_error "<source>: <problem>" for malformed
// JSON, an unknown family, a missing, unknown, mistyped or out-of-range option, or a model too
// large to build.
inline ModelConfig model_config_from_json(const std::string& json, const std::string& source) {
  return ModelConfig::from_json(json, source);
}

// Throws std::runtime_error "<source>: <problem>" for options out of range (as the reader does).
inline void check_model_config(const ModelConfig& config, const std::string& source) { config.validate(source); }

// The preset's name when `config` is exactly one, else "custom".
inline std::string model_name(const ModelConfig& config) { return config.name(); }

inline Model build_model(const ModelConfig& config) { return {config.build()}; }

}  // namespace slideformer::app
