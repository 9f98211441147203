#pragma once
// The subcommands of the slideformer program other than train (see training.h).
#include <string>

#include "model_config.h"

namespace slideformer::app {

// Layers, output shapes and parameter counts of a model (at another input size when image_size > 0).
int summary(ModelConfig model, int64_t image_size);
// Optional files of eval and predict, for comparing the two: one predicted class per line, and
// the raw float32 logits (N x classes).
struct TestSetOutputs {
  std::string predictions;
  std::string logits;
};

int evaluate(const std::string& checkpoint, const std::string& data_dir, int64_t limit,
             const TestSetOutputs& outputs);
int export_model(const std::string& checkpoint, const std::string& out);
int predict(const std::string& model_path, const std::string& data_dir, int64_t limit,
            const TestSetOutputs& outputs);

}  // namespace slideformer::app
