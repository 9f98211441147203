#pragma once
// What model a checkpoint holds, in full: a family and that family's options, stored as the JSON
// {"family": "slide_transformer" | "mvit" | "video_mvit", "options": {...}} whose option names are
// those of SlideTransformerOptions (image_size, ..., stage_kinds as "slide"/"global", ...),
// MViTOptions (..., pool_mode as "conv"/"max"/"avg", position_encoding as
// "none"/"learned"/"sinusoidal") or VideoMViTOptions (frames, ..., v2). build_model() and
// build_video_model() are the one place the program makes a model from a description.
#include <memory>
#include <string>
#include <vector>

#include "slideformer/nn/description.h"
#include "slideformer/nn/modules.h"

namespace slideformer::app {

using nn::kMViTFamily;
using nn::kSlideTransformerFamily;
using nn::kVideoMViTFamily;

struct ModelConfig {
  std::string family = kSlideTransformerFamily;
  nn::SlideTransformerOptions options;  // family slide_transformer
  nn::MViTOptions mvit;                 // family mvit
  nn::VideoMViTOptions video;           // family video_mvit (clips of `frames` images)

  // The options every family has, of this config's family.
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

// The presets of every family (slide_transformer, mvit, video_mvit).
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

// Throws std::runtime_error for the video family: only `summary` takes it so far; the other
// commands (and build_model) take image models.
void require_image_model(const ModelConfig& config);

// An image classifier (require_image_model first).
Model build_model(const ModelConfig& config);

// The model of a video_mvit config.
nn::VideoMViT build_video_model(const ModelConfig& config);

}  // namespace slideformer::app
