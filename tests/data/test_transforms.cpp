// Transform pieces with closed-form expectations: the data config's checks and JSON, normalising a
// uniform image, mixup and cutmix against their definitions.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "image_files.h"
#include "scratch_dir.h"
#include "slideformer/data/transforms.h"

namespace slideformer::data {
namespace {

TEST(DataConfig, RoundTripsThroughJsonAndNamesWhatIsWrong) {
  DataConfig config;
  config.class_names = {"cat", "dog \"quoted\""};
  config.channels = 1;
  config.mean = {0.5};
  config.std = {0.25};
  config.image_size = 28;
  config.crop_pct = 1.0;
  EXPECT_EQ(DataConfig::from_json(config.to_json(), "here"), config);
  EXPECT_EQ(DataConfig{}.resize_size(), 256);
  auto message = [](const std::string& text) {
    try {
      DataConfig::from_json(text, "model.pt");
    } catch (const std::invalid_argument& error) {
      return std::string(error.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("[1, 2]"), "model.pt: not a JSON object of a data config");
  std::string text = config.to_json();
  EXPECT_EQ(message(text.replace(text.find("\"mean\""), 6, "\"mea\"")), "model.pt: the data config has no \"mean\"");
  text = config.to_json();
  EXPECT_EQ(message(text.replace(text.find("[0.25]"), 6, "[0.0]")).rfind("model.pt: slideformer::data::DataConfig: mean "
                                                                          "must be finite and std finite and > 0", 0), 0u);
  text = config.to_json();
  EXPECT_EQ(message(text.replace(text.find("\"channels\":1"), 12, "\"channels\":\"1\"")),
            "model.pt: the data config's \"channels\" has the wrong type: \"1\"");
}

class Transforms : public slideformer::testing::ScratchDirTest {};

TEST_F(Transforms, AUniformImageBecomesItsNormalisedValueEverywhere) {
  const at::Tensor pixels = at::tensor({30, 140, 250}, at::kByte).view({1, 1, 3}).expand({37, 53, 3}).contiguous();
  slideformer::testing::write_file(path("uniform.png"), slideformer::testing::encode_png(pixels));
  DataConfig config;
  config.image_size = 32;
  const at::Tensor expected =
      ((at::tensor({30.0, 140.0, 250.0}) / 255 - at::tensor(config.mean)) / at::tensor(config.std)).to(at::kFloat).view({3, 1, 1});
  for (const ImageTransform& t : {ImageTransform::eval(config), ImageTransform::train(config)}) {
    EXPECT_TRUE(at::allclose(t(path("uniform.png"), 3), expected.expand({3, 32, 32}), 1e-5, 1e-5));
  }
  ImageTransform unnormalised = ImageTransform::eval(config);
  unnormalised.normalize(false);
  EXPECT_TRUE(at::allclose(unnormalised(path("uniform.png")),
                           (at::tensor({30.0f, 140.0f, 250.0f}) / 255).view({3, 1, 1}).expand({3, 32, 32}), 1e-6, 1e-6));
}

TEST(Mixup, MixupIsTheConvexCombinationItsTargetsState) {
  const at::Tensor images = at::rand({6, 3, 8, 8});
  const at::Tensor labels = at::tensor({0, 1, 2, 3, 4, 0}, at::kLong);
  for (uint64_t key = 0; key < 5; ++key) {
    at::Tensor mixed = images.clone();
    const at::Tensor targets = mix_batch(mixed, labels, MixupOptions(5).cutmix_alpha(0).label_smoothing(0), key);
    // Row 1 (label 1, mixed with row 4 of label 4): lam at class 1, 1 - lam at class 4.
    const double lam = targets[1][1].item<double>();
    EXPECT_NEAR(targets[1][4].item<double>(), 1 - lam, 1e-6);
    EXPECT_TRUE(at::allclose(targets.sum(1), at::ones({6}), 1e-6, 1e-6));
    EXPECT_TRUE(at::allclose(mixed, images * lam + images.flip(0) * (1 - lam), 1e-5, 1e-6));
  }
}

TEST(Mixup, CutmixPastesABoxWhoseAreaIsTheTargetWeight) {
  const at::Tensor images = at::rand({4, 3, 16, 16});
  const at::Tensor labels = at::tensor({0, 1, 2, 3}, at::kLong);
  for (uint64_t key = 0; key < 5; ++key) {
    at::Tensor mixed = images.clone();
    const at::Tensor targets = mix_batch(mixed, labels, MixupOptions(4).mixup_alpha(0).label_smoothing(0.1), key);
    const at::Tensor pasted = (mixed != images).any(1);  // (B, H, W)
    EXPECT_TRUE(at::equal(at::where(pasted.unsqueeze(1), images.flip(0), images), mixed));
    const double pasted_fraction = pasted[0].to(at::kDouble).mean().item<double>();
    // Smoothed targets: 0.1 / 4 off, 0.925 on; row 0 is lam * on(0) + (1 - lam) * on(3).
    const double lam = (targets[0][0].item<double>() - 0.025) / 0.9;
    EXPECT_NEAR(1 - lam, pasted_fraction, 1e-6) << "key " << key;
  }
}

}  // namespace
}  // namespace slideformer::data
