// The model registry takes a family it has never seen: a toy family defined and registered here
// (its options, visitor, validate, preset and module) is described, read back, validated, listed,
// built, fitted to data and saved and loaded in a checkpoint by the library and the program with
// no line of theirs naming it.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include "checkpoint.h"
#include "image_data.h"
#include "scratch_dir.h"
#include "slideformer/nn/description.h"
#include "slideformer/nn/registry.h"

namespace slideformer::app {
namespace {

enum class ToyNorm { kNone, kLayer };
std::vector<std::string> enum_names(ToyNorm) { return {"none", "layer"}; }

struct ToyOptions {
  TORCH_ARG(int64_t, image_size) = 8;
  TORCH_ARG(int64_t, in_channels) = 1;
  TORCH_ARG(int64_t, num_classes) = 3;
  TORCH_ARG(int64_t, patch_size) = 2;
  TORCH_ARG(int64_t, embed_dim) = 8;
  TORCH_ARG(ToyNorm, norm) = ToyNorm::kLayer;  // LayerNorm after the patch projection
  TORCH_ARG(std::vector<double>, input_mean) = std::vector<double>{0.5};
  TORCH_ARG(std::vector<double>, input_std) = std::vector<double>{0.25};
};

template <typename Options, typename Visit>
std::enable_if_t<std::is_same_v<std::decay_t<Options>, ToyOptions>> for_each_option(Options& o, Visit&& visit) {
  visit("image_size", o.image_size());
  visit("in_channels", o.in_channels());
  visit("num_classes", o.num_classes());
  visit("patch_size", o.patch_size());
  visit("embed_dim", o.embed_dim());
  visit("norm", o.norm());
  visit("input_mean", o.input_mean());
  visit("input_std", o.input_std());
}

void validate(const ToyOptions& o, const nn::OptionCheck& check) {
  check.range("image_size", o.image_size(), 1, 64);
  check.range("in_channels", o.in_channels(), 1, 4);
  check.range("num_classes", o.num_classes(), 1, 100);
  check.range("patch_size", o.patch_size(), 1, o.image_size());
  check.range("embed_dim", o.embed_dim(), 1, 64);
  check.normalization(o.in_channels(), o.input_mean(), o.input_std());
}

double toy_parameters(const ToyOptions& o) {
  return static_cast<double>(o.embed_dim()) * (o.in_channels() * o.patch_size() * o.patch_size() + o.num_classes());
}

ToyOptions toy_small() { return ToyOptions(); }
ToyOptions toy_rgb() { return ToyOptions().in_channels(3).input_mean({0.5, 0.5, 0.5}).input_std({0.2, 0.2, 0.2}); }

// Patches (a strided convolution, LayerNorm or not), then the classifier's norm, mean and head.
class ToyClassifierImpl : public torch::nn::Cloneable<ToyClassifierImpl>, public nn::Classifier {
 public:
  explicit ToyClassifierImpl(ToyOptions options_) : options(std::move(options_)) { reset(); }
  void reset() override {
    validate(options, nn::OptionCheck("ToyClassifier"));
    patch_embed = register_module(
        "patch_embed", nn::PatchEmbed(nn::PatchEmbedOptions(options.in_channels(), options.embed_dim(), options.patch_size())
                                          .norm(options.norm() == ToyNorm::kLayer)));
    norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({options.embed_dim()})));
    head = register_module("head", torch::nn::Linear(options.embed_dim(), options.num_classes()));
  }
  nn::NamedLayers layers() const override { return {{"patch_embed", patch_embed.ptr()}}; }
  int64_t in_channels() const override { return options.in_channels(); }
  int64_t image_size() const override { return options.image_size(); }
  int64_t num_classes() const override { return options.num_classes(); }
  const std::vector<double>& input_mean() const override { return options.input_mean(); }
  const std::vector<double>& input_std() const override { return options.input_std(); }

  ToyOptions options;
  nn::PatchEmbed patch_embed{nullptr};
};
TORCH_MODULE(ToyClassifier);

class ModelRegistryTest : public slideformer::testing::ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    nn::register_family(nn::classifier_family<ToyOptions, ToyClassifier>(
        "toy", {{"toy_small", toy_small}, {"toy_rgb", toy_rgb}}, validate, toy_parameters));
  }
  void TearDown() override {
    nn::unregister_family("toy");
    ScratchDirTest::TearDown();
  }
};

// The toy's logits computed from the module's parameters with aten alone.
at::Tensor toy_reference(const ToyClassifierImpl& model, const at::Tensor& images) {
  const auto& embed = *model.patch_embed;
  const int64_t dim = model.options.embed_dim();
  const int64_t patch = model.options.patch_size();
  at::Tensor x = at::conv2d(images, embed.projection->weight, embed.projection->bias, {patch, patch}).permute({0, 2, 3, 1});
  if (model.options.norm() == ToyNorm::kLayer) x = at::layer_norm(x, {dim}, embed.norm->weight, embed.norm->bias, 1e-5);
  x = at::layer_norm(x, {dim}, model.norm->weight, model.norm->bias, 1e-5).mean({1, 2});
  return at::linear(x, model.head->weight, model.head->bias);
}

TEST_F(ModelRegistryTest, DescribesAndReadsBackAFamilyRegisteredByATest) {
  ModelConfig config = preset_model("toy_rgb");
  EXPECT_EQ(config.family().name, "toy");
  EXPECT_EQ(model_name(config), "toy_rgb");
  const auto json = nlohmann::json::parse(model_config_to_json(config));
  EXPECT_EQ(json["family"], "toy");
  EXPECT_EQ(json["options"]["norm"], "layer");
  EXPECT_EQ(json["options"]["input_std"], nlohmann::json({0.2, 0.2, 0.2}));
  config.options<ToyOptions>().norm(ToyNorm::kNone).embed_dim(12);
  const ModelConfig back = model_config_from_json(model_config_to_json(config), "toy.json");
  EXPECT_TRUE(back == config);
  EXPECT_EQ(back.options<ToyOptions>().norm(), ToyNorm::kNone);
  EXPECT_EQ(model_name(back), "custom");
  // The catalog Python reads lists the family, its defaults and its presets.
  const auto catalog = nlohmann::json::parse(nn::model_catalog());
  EXPECT_EQ(catalog["families"].back(), "toy");
  EXPECT_EQ(catalog["defaults"]["toy"]["embed_dim"], 8);
  EXPECT_EQ(catalog["presets"]["toy_small"]["options"]["norm"], "layer");
  const auto names = preset_names();
  EXPECT_EQ(std::vector<std::string>(names.end() - 2, names.end()), (std::vector<std::string>{"toy_small", "toy_rgb"}));
}

TEST_F(ModelRegistryTest, ValidatesWithTheFamilysOwnRules) {
  const std::string valid = model_config_to_json(preset_model("toy_small"));
  const auto edited = [&](const char* option, const nlohmann::json& value) {
    auto json = nlohmann::json::parse(valid);
    json["options"][option] = value;
    return json.dump();
  };
  EXPECT_RUNTIME_ERROR(model_config_from_json(edited("embed_dim", 65), "toy.json"),
                       "toy.json: model option 'embed_dim' must be in [1, 64], got 65");
  EXPECT_RUNTIME_ERROR(model_config_from_json(edited("norm", "batch"), "toy.json"),
                       "toy.json: model option 'norm' must be one of \"none\", \"layer\", got \"batch\"");
  EXPECT_RUNTIME_ERROR(model_config_from_json(edited("input_mean", {0.5, 0.5}), "toy.json"),
                       "toy.json: model option 'input_mean' must be one finite number per input channel (1), got [0.5, 0.5]");
  EXPECT_RUNTIME_ERROR(model_config_from_json(edited("depths", {2}), "toy.json"),
                       "toy.json: unknown model option 'depths' (written by a newer slideformer?)");
  EXPECT_RUNTIME_ERROR(model_config_from_json(R"({"family": "toy2", "options": {}})", "toy.json"),
                       "toy.json: unknown model family 'toy2' (this program builds 'slide_transformer', 'mvit' and 'toy')");
  EXPECT_RUNTIME_ERROR(ToyClassifier(ToyOptions().patch_size(9)),
                       "ToyClassifier: model option 'patch_size' must be in [1, 8], got 9");
  // Names and options types are the table's keys.
  EXPECT_THROW(nn::register_family(nn::classifier_family<ToyOptions, ToyClassifier>("toy", {}, validate, toy_parameters)),
               std::runtime_error);
}

TEST_F(ModelRegistryTest, BuildsFitsAndCheckpointsAToyModel) {
  ModelConfig config = preset_model("toy_small");
  fit_model_to_data(config, 3, 5, 12);
  EXPECT_EQ(config.in_channels(), 3);
  EXPECT_EQ(config.num_classes(), 5);
  EXPECT_EQ(config.image_size(), 12);
  EXPECT_EQ(config.input_std(), (std::vector<double>{0.25, 0.25, 0.25}));
  const data::DataConfig data = data_config_for(config, {"a", "b", "c", "d", "e"}, 1.0);
  EXPECT_EQ(data.channels, 3);

  torch::manual_seed(3);
  const Model model = build_model(config);
  const auto& toy = dynamic_cast<ToyClassifierImpl&>(*model.module);
  const at::Tensor images = torch::rand({2, 3, 12, 12});
  const at::Tensor logits = model(images);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 5}));
  EXPECT_TRUE(at::allclose(logits, toy_reference(toy, images), 1e-5, 1e-6));

  CheckpointState state;
  state.model = config;
  state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  torch::optim::AdamW optimizer(model.module->parameters());
  const std::string file = path("toy.pt");
  save_checkpoint(file, state, *model.module, optimizer);
  const CheckpointState loaded = read_checkpoint_state(file);
  EXPECT_TRUE(loaded.model == config) << model_config_to_json(loaded.model);
  torch::manual_seed(4);  // other initial weights: the loaded ones must replace them
  const Model restored = build_model(loaded.model);
  load_checkpoint_weights(file, *restored.module, nullptr);
  EXPECT_TRUE(at::equal(restored(images), logits));
}

}  // namespace
}  // namespace slideformer::app
