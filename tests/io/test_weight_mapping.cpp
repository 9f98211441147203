// The mapping tables (include/slideformer/io/weight_mapping.h) on small synthetic state dicts:
// every layout change checked element by element against the documented formula, written out
// here with loops; the fit check and its messages on a small module.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/nn/modules/linear.h>

#include <map>

#include "slideformer/io/module_state.h"
#include "slideformer/io/weight_mapping.h"

namespace {

using namespace slideformer::io;

std::map<std::string, at::Tensor> as_map(const NamedTensors& tensors) { return {tensors.begin(), tensors.end()}; }

std::string problem(const std::function<void()>& statement) {
  try {
    statement();
  } catch (const WeightFileError& e) {
    EXPECT_EQ(e.file(), "w.pth");
    return e.problem();
  }
  ADD_FAILURE() << "no WeightFileError";
  return "";
}

TEST(SlideTransformerTable, ShiftsAndKeyBiasesTakeTheModelsLayout) {
  at::manual_seed(0);
  const int64_t k = 3, taps = 9, d = 4, heads = 2;
  const at::Tensor dep_conv1 = at::randn({taps * d, 1, k, k}), bias = at::randn({taps * d});
  const at::Tensor table = at::randn({1, heads, 1, taps, 1, 1});
  const NamedTensors official = {
      {"layers.0.blocks.1.attn.dep_conv1.weight", dep_conv1}, {"layers.0.blocks.1.attn.dep_conv1.bias", bias},
      {"layers.0.blocks.1.attn.relative_position_bias_table", table},
      {"layers.2.blocks.0.attn.relative_position_bias_table", at::randn({27 * 27, 3})},
      {"layers.2.blocks.0.attn.relative_position_index", at::zeros({196, 196}, at::kLong)},
      {"layers.0.downsample.reduction.weight", at::randn({8, 16})}, {"head.weight", at::randn({5, 8})}};
  const TensorShapes model = {{"stages.0.1.attn.shift_weight", {d, taps, taps}}, {"stages.0.1.attn.shift_bias", {d, taps}},
                              {"stages.0.1.attn.key_bias", {heads, taps}}, {"stages.2.0.attn.relative_position_table", {729, 3}},
                              {"mergings.0.reduction.weight", {8, 16}}, {"head.weight", {5, 8}}};
  const auto mapped = as_map(map_weights(WeightSource::kSlideTransformer, official, model, "w.pth"));
  ASSERT_EQ(mapped.size(), 6u);  // the index is dropped
  const at::Tensor& weight = mapped.at("stages.0.1.attn.shift_weight");
  for (int64_t c = 0; c < d; ++c) {
    for (int64_t n = 0; n < taps; ++n) {
      EXPECT_EQ(mapped.at("stages.0.1.attn.shift_bias")[c][n].item<float>(), bias[c * taps + n].item<float>());
      for (int64_t a = 0; a < k; ++a) {
        for (int64_t b = 0; b < k; ++b) {
          EXPECT_EQ(weight[c][n][a * k + b].item<float>(), dep_conv1[c * taps + n][0][a][b].item<float>());
        }
      }
    }
  }
  for (int64_t h = 0; h < heads; ++h) {
    for (int64_t n = 0; n < taps; ++n) EXPECT_EQ(mapped.at("stages.0.1.attn.key_bias")[h][n].item<float>(), table[0][h][0][n][0][0].item<float>());
  }
  EXPECT_TRUE(mapped.at("mergings.0.reduction.weight").equal(official[5].second));
  EXPECT_TRUE(mapped.at("stages.2.0.attn.relative_position_table").equal(official[3].second));
}

TEST(SlideTransformerTable, ForeignAndMisshapenTensorsAreNamed) {
  const TensorShapes model = {{"stages.0.0.attn.shift_weight", {4, 9, 9}}};
  EXPECT_EQ(problem([&] {
              map_weights(WeightSource::kSlideTransformer, {{"layers.0.blocks.0.attn.dep_conv1.weight", at::zeros({32, 1, 3, 3})}}, model, "w.pth");
            }),
            "'layers.0.blocks.0.attn.dep_conv1.weight' has shape [32, 1, 3, 3], which does not fit the model's "
            "'stages.0.0.attn.shift_weight' of shape [4, 9, 9] (that needs [36, 1, 3, 3])");
  const NamedTensors timm = {{"stages.0.blocks.0.norm1.weight", at::zeros({2})}, {"stages.0.blocks.0.attn.rel_pos_h", at::zeros({3, 2})},
                             {"head.fc.weight", at::zeros({2, 2})}, {"norm.weight", at::zeros({2})}};
  EXPECT_EQ(problem([&] { map_weights(WeightSource::kSlideTransformer, timm, model, "w.pth"); }),
            "not slide-transformer weights: 3 of its 4 tensors are not in the slide-transformer table "
            "('stages.0.blocks.0.norm1.weight', 'stages.0.blocks.0.attn.rel_pos_h', 'head.fc.weight')");
  EXPECT_EQ(problem([&] {
              map_weights(WeightSource::kSlideTransformer, {{"norm.weight", at::zeros({2})}, {"norm.bias", at::zeros({2})},
                                                            {"cls_token", at::zeros({1, 1, 2})}}, model, "w.pth");
            }),
            "tensors that the slide-transformer table does not map: 'cls_token'");
}

TEST(TimmTable, RenamesResizesAndConvertsOriginalNames) {
  at::manual_seed(0);
  const at::Tensor rel_pos = at::randn({5, 2});
  const NamedTensors timm = {{"module.stages.1.blocks.0.shortcut_proj_attn.weight", at::randn({4, 2})},
                             {"module.stages.1.blocks.0.attn.rel_pos_h", rel_pos},
                             {"module.head.fc.bias", at::randn({3})}};
  const TensorShapes model = {{"stages.0.0.norm1.weight", {2}}, {"stages.1.0.shortcut_proj.weight", {4, 2}},
                              {"stages.1.0.attn.relative_position.height", {9, 2}}, {"head.bias", {3}}};
  const auto mapped = as_map(map_weights(WeightSource::kTimm, timm, model, "w.pth"));
  ASSERT_EQ(mapped.size(), 3u);
  EXPECT_TRUE(mapped.at("stages.1.0.shortcut_proj.weight").equal(timm[0].second));
  // Linear interpolation without corner alignment: output i samples x = (i + 0.5) * 5 / 9 - 0.5.
  const at::Tensor resized = mapped.at("stages.1.0.attn.relative_position.height");
  ASSERT_EQ(resized.sizes(), at::IntArrayRef({9, 2}));
  for (int64_t i = 0; i < 9; ++i) {
    const double x = std::max(0.0, (i + 0.5) * 5.0 / 9.0 - 0.5);
    const int64_t low = std::min<int64_t>(static_cast<int64_t>(x), 4), high = std::min<int64_t>(low + 1, 4);
    for (int64_t c = 0; c < 2; ++c) {
      const double expected = (1 - (x - low)) * rel_pos[low][c].item<double>() + (x - low) * rel_pos[high][c].item<double>();
      EXPECT_NEAR(resized[i][c].item<double>(), expected, 1e-5 * (1 + std::abs(expected))) << i;  // float32
    }
  }
  // The original MViTv2 names: blocks numbered across stages, the stage depths from the model.
  const NamedTensors original = {{"blocks.1.proj.weight", at::randn({4, 2})}, {"blocks.0.norm1.weight", at::randn({2})},
                                 {"head.projection.bias", at::randn({3})}};
  const auto converted = as_map(map_weights(WeightSource::kTimm, original, model, "w.pth"));
  EXPECT_TRUE(converted.at("stages.1.0.shortcut_proj.weight").equal(original[0].second));
  EXPECT_TRUE(converted.at("stages.0.0.norm1.weight").equal(original[1].second));
  EXPECT_TRUE(converted.at("head.bias").equal(original[2].second));
}

TEST(ModuleState, LoadsWhatFitsAndNamesEveryMismatch) {
  torch::nn::Linear linear(3, 2), other(3, 2);
  const NamedTensors state = module_state(*other);
  load_module_state(*linear, state, "w.pth");
  EXPECT_TRUE(linear->weight.equal(other->weight));
  EXPECT_TRUE(linear->bias.equal(other->bias));
  const at::Tensor before = linear->weight.clone();
  EXPECT_EQ(problem([&] {
              load_module_state(*linear, {{"weight", at::zeros({2, 4})}, {"scale", at::zeros({1})}}, "w.pth");
            }),
            "weights do not fit the model: missing 'bias'; unexpected 'scale'; 'weight' has shape [2, 4], the model's is [2, 3]");
  EXPECT_TRUE(linear->weight.equal(before));  // unchanged
  load_module_state(*linear, {{"weight", at::ones({2, 3}, at::kHalf)}, {"bias", at::zeros({2}, at::kDouble)}}, "w.pth");
  EXPECT_TRUE(linear->weight.equal(at::ones({2, 3})));  // converted to the model's dtype
}

}  // namespace
