// Model descriptions: the JSON names every option of SlideTransformerOptions, reads back to the
// same model, names presets, and refuses malformed or out-of-range descriptions with one message.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "model_config.h"
#include "scratch_dir.h"
#include "slideformer/nn/options.h"

namespace slideformer::app {
namespace {

// The TORCH_ARG names of SlideTransformerOptions, the contract other readers code against.
const std::vector<std::string> kOptionNames = {
    "image_size", "in_channels", "num_classes", "patch_size", "stem_channels",
    "overlapping_patches", "embed_dim", "absolute_position_embedding", "sinusoidal_position_encoding", "depths", "heads",
    "stage_kinds", "kernel_size", "dilation", "border", "mlp_ratio", "drop_path_rate",
    "input_mean", "input_std"};

TEST(ModelConfig, JsonNamesEveryOptionOfTheFamily) {
  const auto json = nlohmann::json::parse(model_config_to_json(preset_model("fashion")));
  EXPECT_EQ(json["family"], "slide_transformer");
  std::vector<std::string> names;
  for (const auto& item : json["options"].items()) names.push_back(item.key());
  std::sort(names.begin(), names.end());
  std::vector<std::string> expected = kOptionNames;
  std::sort(expected.begin(), expected.end());
  EXPECT_EQ(names, expected);
  const auto& options = json["options"];
  EXPECT_EQ(options["stage_kinds"], nlohmann::json({"slide", "global"}));
  EXPECT_EQ(options["image_size"], 28);
  EXPECT_EQ(options["stem_channels"], 24);
  EXPECT_EQ(options["absolute_position_embedding"], true);
  EXPECT_EQ(options["mlp_ratio"], 2.0);
  EXPECT_EQ(options["input_mean"], nlohmann::json({0.2860}));
  EXPECT_EQ(options["border"], "zeros");
}

TEST(ModelConfig, RoundTripIsExactForEveryPresetAndCustomModels) {
  std::vector<ModelConfig> configs;
  for (const std::string& name : preset_names()) configs.push_back(preset_model(name));
  ModelConfig custom = preset_model("fashion");
  // Doubles that do not print short: the JSON must keep every bit.
  custom.options<nn::SlideTransformerOptions>().mlp_ratio(1.0 / 3.0).drop_path_rate(0.1 + 0.2).input_mean({1.0 / 7.0}).border("clamp");
  configs.push_back(custom);
  for (const ModelConfig& config : configs) {
    const ModelConfig back = model_config_from_json(model_config_to_json(config), "test");
    EXPECT_TRUE(back == config) << model_config_to_json(config);
    EXPECT_EQ(back.to_json(), config.to_json());
    if (const auto* options = config.options_if<nn::SlideTransformerOptions>()) {
      EXPECT_EQ(back.options<nn::SlideTransformerOptions>().mlp_ratio(), options->mlp_ratio());
      EXPECT_EQ(back.options<nn::SlideTransformerOptions>().input_mean(), options->input_mean());
      EXPECT_EQ(back.options<nn::SlideTransformerOptions>().stage_kinds(), options->stage_kinds());
    }
  }
}

TEST(ModelConfig, NamesPresetsAndCallsEverythingElseCustom) {
  for (const std::string& name : preset_names()) EXPECT_EQ(model_name(preset_model(name)), name);
  ModelConfig config = preset_model("fashion");
  config.options<nn::SlideTransformerOptions>().input_std({0.35});  // no shape changes, still another model
  EXPECT_EQ(model_name(config), "custom");
  EXPECT_FALSE(config == preset_model("fashion"));
  EXPECT_RUNTIME_ERROR(preset_model("swin_huge"),
                       "unknown preset 'swin_huge' (expected one of slide_swin_tiny, slide_swin_small, "
                       "slide_swin_base, fashion, mvitv2_tiny, mvitv2_small, mvitv2_base, fashion_mvit)");
}

TEST(ModelConfig, BuildsTheDescribedModel) {
  ModelConfig config = preset_model("fashion");
  config.options<nn::SlideTransformerOptions>().embed_dim(24).heads({2, 4});
  const Model model = build_model(config);
  const auto& built = dynamic_cast<const nn::SlideTransformerImpl&>(*model.module);
  EXPECT_EQ(built.head->options.in_features(), 48);
  EXPECT_EQ(model_config_to_json(ModelConfig(built.options)), model_config_to_json(config));
}

// The fashion description with one edit applied to its JSON.
std::string edited(const std::function<void(nlohmann::json&)>& edit) {
  auto json = nlohmann::json::parse(model_config_to_json(preset_model("fashion")));
  edit(json);
  return json.dump();
}

struct BadDescription {
  std::string json;
  std::string message;  // after "src: "
};

TEST(ModelConfig, RefusesBadDescriptionsWithOneMessage) {
  using J = nlohmann::json;
  const std::vector<BadDescription> cases = {
      {"{\"family\": ", "model description is not valid JSON ([json.exception.parse_error.101] parse error at line 1, column 12: syntax error while parsing value - unexpected end of input; expected '[', '{', or a literal)"},
      {"{\"family\": 1E999}", "model description is not valid JSON ([json.exception.out_of_range.406] number overflow parsing '1E999')"},
      {"[1, 2]", "model description must be {\"family\": ..., \"options\": {...}}, got [1,2]"},
      {"{\"options\": {}}", "model description must be {\"family\": ..., \"options\": {...}}, got {\"options\":{}}"},
      {edited([](J& j) { j["family"] = "mvit2"; }), "unknown model family 'mvit2' (this program builds 'slide_transformer' and 'mvit')"},
      {edited([](J& j) { j["options"].erase("depths"); }), "model option 'depths' is missing"},
      {edited([](J& j) { j["options"]["window"] = 7; }), "unknown model option 'window' (written by a newer slideformer?)"},
      {edited([](J& j) { j["options"]["embed_dim"] = 48.5; }), "model option 'embed_dim' must be an integer, got 48.5"},
      {edited([](J& j) { j["options"]["embed_dim"] = "48"; }), "model option 'embed_dim' must be an integer, got \"48\""},
      {edited([](J& j) { j["options"]["mlp_ratio"] = "2"; }), "model option 'mlp_ratio' must be a number, got \"2\""},
      {edited([](J& j) { j["options"]["overlapping_patches"] = 1; }), "model option 'overlapping_patches' must be true or false, got 1"},
      {edited([](J& j) { j["options"]["depths"] = 2; }), "model option 'depths' must be a list, got 2"},
      {edited([](J& j) { j["options"]["stage_kinds"] = {"slide", "local"}; }), "model option 'stage_kinds' must be a list of \"slide\" or \"global\", got \"local\""},
      {edited([](J& j) { j["options"]["image_size"] = -28; }), "model option 'image_size' must be in [1, 4096], got -28"},
      {edited([](J& j) { j["options"]["patch_size"] = 3; }), "model option 'patch_size' must be a divisor of image_size 28, got 3"},
      {edited([](J& j) { j["options"]["heads"] = {3}; }), "model option 'heads' must be a list of 2 (one per stage), got [3]"},
      {edited([](J& j) { j["options"]["heads"] = {3, 5}; }), "model option 'heads' must be divisors of each stage's width (stage 2: 96), got [3, 5]"},
      {edited([](J& j) { j["options"]["depths"] = {2, 0}; }), "model option 'depths' must be in [1, 64], got 0"},
      {edited([](J& j) { j["options"]["kernel_size"] = 4; }), "model option 'kernel_size' must be odd and in [1, 31], got 4"},
      {edited([](J& j) { j["options"]["border"] = "reflect"; }), "model option 'border' must be \"zeros\" or \"clamp\", got \"reflect\""},
      {edited([](J& j) { j["options"]["drop_path_rate"] = 1.0; }), "model option 'drop_path_rate' must be in [0, 1), got 1"},
      {edited([](J& j) { j["options"]["input_std"] = {0.0}; }), "model option 'input_std' must be one positive number per input channel (1), got [0]"},
      {edited([](J& j) { j["options"]["input_mean"] = {0.5, 0.5}; }), "model option 'input_mean' must be one finite number per input channel (1), got [0.5, 0.5]"},
      {edited([](J& j) { j["options"]["embed_dim"] = 4096; j["options"]["heads"] = {4, 8}; }), "the model would have about 1.48e+09 parameters, more than this program builds (1e+09)"},
  };
  for (const BadDescription& c : cases) EXPECT_RUNTIME_ERROR(model_config_from_json(c.json, "src"), "src: " + c.message);
}

}  // namespace
}  // namespace slideformer::app
