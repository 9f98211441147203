#pragma once
// The subcommands of the slideformer program other than train (see training.h).
#include <string>
#include <vector>

#include "model_config.h"

namespace slideformer::app {

// Layers, output shapes and parameter counts of a model (at another input size when image_size > 0).
int summary(ModelConfig model, int64_t image_size);
// The same for a video preset (nn::video_mvit_preset_names()), on one clip of zeros at its size.
int video_summary(const std::string& preset, int64_t image_size);
// Optional files of eval and predict, for comparing the two: one predicted class per line, and
// the raw float32 logits (N x classes).
struct TestSetOutputs {
  std::string predictions;
  std::string logits;
};

// Test accuracy and confusion matrix: on Fashion-MNIST's IDX test set, or, for a model trained on
// image folders (or when data_dir/val exists), on a folder of images (data_dir/val, else
// data_dir; by default the training run's validation folder) with top-5 accuracy and class names.
int evaluate(const std::string& checkpoint, const std::string& data_dir, int64_t limit,
             const TestSetOutputs& outputs, bool skip_bad_images = false);
// A TorchScript model of the checkpoint, its data config (class names, eval transform) inside as
// the extra file data_config.json; with `features`, the backbone that returns the stage outputs.
int export_model(const std::string& checkpoint, const std::string& out, bool features = false);
// The test accuracy of an exported model on Fashion-MNIST's IDX test set.
int predict(const std::string& model_path, const std::string& data_dir, int64_t limit,
            const TestSetOutputs& outputs);
// The `top` most probable classes of each image file (directories: every image below them), from
// an exported TorchScript model and the data config inside it; one JSON object per image with
// `json`. A file that cannot be read is reported and the others still predicted (exit status 1).
int predict_images(const std::string& model_path, const std::vector<std::string>& inputs, int64_t top, bool json);

}  // namespace slideformer::app
