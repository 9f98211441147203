// The validation pass over an image folder (score(), apps/slideformer/image_data.h).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include "image_data.h"
#include "image_files.h"
#include "scratch_dir.h"

namespace slideformer::app {
namespace {

using ImageScoring = slideformer::testing::ScratchDirTest;

// With autograd on, each batch's logits would keep the batch's whole graph until the pass ends:
// a training run grew by gigabytes per validation pass.
TEST_F(ImageScoring, LogitsCarryNoAutogradGraph) {
  const int64_t files = slideformer::testing::write_fashion_folder(dir(), 6, 2);
  const data::ImageFolder folder(dir());
  data::DataConfig config;
  config.class_names = folder.classes();
  config.channels = 1, config.image_size = 28, config.mean = {0.5}, config.std = {0.25};
  const auto loader = eval_loader(folder, config, 1, false);
  torch::nn::Linear head(28 * 28, 2);
  const Scored scored = score(*loader, at::arange(folder.size(), at::kLong),
                              [&](const at::Tensor& images) { return head(images.flatten(1)); }, 4);
  EXPECT_EQ(scored.logits.sizes(), (at::IntArrayRef{files, 2}));
  EXPECT_FALSE(scored.logits.requires_grad());
  EXPECT_TRUE(at::GradMode::is_enabled());  // only the pass itself runs without it
}

}  // namespace
}  // namespace slideformer::app
