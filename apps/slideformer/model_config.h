#pragma once
// What model a checkpoint holds, in full: a family and that family's options, stored as the JSON
// {"family": "slide_transformer", "options": {...}} whose option names are those of
// SlideTransformerOptions (image_size, in_channels, ..., stage_kinds as "slide"/"global", ...).
// build_model() is the one place the program makes a model from a description.
#include <string>

#include "slideformer/nn/modules.h"

namespace slideformer::app {

inline constexpr const char* kSlideTransformerFamily = "slide_transformer";

struct ModelConfig {
  std::string family = kSlideTransformerFamily;
  nn::SlideTransformerOptions options;
};

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

nn::SlideTransformer build_model(const ModelConfig& config);

}  // namespace slideformer::app
