#pragma once
// The subcommands of the slideformer program other than train (see training.h).
#include <string>

namespace slideformer::app {

int summary(const std::string& preset, int64_t image_size);
// predictions_out / logits_out (optional): one predicted class per line / raw float32 logits.
int evaluate(const std::string& checkpoint, const std::string& data_dir, int64_t limit,
             const std::string& predictions_out, const std::string& logits_out);
int export_model(const std::string& checkpoint, const std::string& out);
int predict(const std::string& model_path, const std::string& data_dir, int64_t limit,
            const std::string& predictions_out);

}  // namespace slideformer::app
