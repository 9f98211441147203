// The catalog of families and presets (include/slideformer/nn/description.h).
#include "slideformer/nn/description.h"

#include <torch/library.h>

#include <nlohmann/json.hpp>

namespace slideformer::nn {

namespace {

using Json = nlohmann::ordered_json;  // keys in the options' own order: readable files

template <size_t N>
std::vector<std::string> names_of(const std::array<const char*, N>& names) {
  return {names.begin(), names.end()};
}

Json parsed(const std::string& text) { return Json::parse(text); }

// The v1-era architectures as they were written then (literal: today's presets may change).
Json v1_presets_json() {
  const Json swin = Json::parse(R"({"family": "slide_transformer", "options": {"image_size": 224,
      "in_channels": 3, "num_classes": 1000, "patch_size": 4, "stem_channels": 0, "overlapping_patches": false,
      "embed_dim": 96, "absolute_position_embedding": false, "depths": [2, 2, 6, 2], "heads": [3, 6, 12, 24],
      "stage_kinds": ["slide", "slide", "global", "global"], "kernel_size": 3, "dilation": 1,
      "border": "zeros", "mlp_ratio": 4.0, "drop_path_rate": 0.2, "input_mean": [0.485, 0.456, 0.406],
      "input_std": [0.229, 0.224, 0.225]}})");
  const Json fashion = Json::parse(R"({"family": "slide_transformer", "options": {"image_size": 28,
      "in_channels": 1, "num_classes": 10, "patch_size": 2, "stem_channels": 24, "overlapping_patches": true,
      "embed_dim": 48, "absolute_position_embedding": true, "depths": [2, 2], "heads": [3, 6],
      "stage_kinds": ["slide", "global"], "kernel_size": 3, "dilation": 1, "border": "zeros",
      "mlp_ratio": 2.0, "drop_path_rate": 0.05, "input_mean": [0.2860], "input_std": [0.3530]}})");
  // `base` with some options replaced.
  const auto with = [](Json base, const Json& options) {
    base["options"].update(options);
    return base;
  };
  return Json{
      {"slide_swin_tiny", Json::array({swin})},
      {"slide_swin_small", Json::array({with(swin, {{"depths", {2, 2, 18, 2}}, {"drop_path_rate", 0.3}})})},
      {"slide_swin_base", Json::array({with(swin, {{"embed_dim", 128}, {"depths", {2, 2, 18, 2}},
                                                   {"heads", {4, 8, 16, 32}}, {"drop_path_rate", 0.5}})})},
      // A stem and overlapping patches were added, then an absolute position table: newest first.
      {"fashion", Json::array({fashion, with(fashion, {{"absolute_position_embedding", false}}),
                               with(fashion, {{"stem_channels", 0}, {"overlapping_patches", false},
                                              {"absolute_position_embedding", false}})})}};
}

}  // namespace

std::vector<std::string> enum_names(AttentionKind) { return names_of(kAttentionKindNames); }
std::vector<std::string> enum_names(PoolMode) { return names_of(kPoolModeNames); }
std::vector<std::string> enum_names(PositionEncoding) { return names_of(kPositionEncodingNames); }

std::string v1_presets() { return v1_presets_json().dump(); }

std::string model_catalog() {
  Json families = Json::array(), presets = Json::object(), defaults = Json::object(), added_later = Json::object();
  for (const ModelFamily* family : model_families()) {
    families.push_back(family->name);
    for (const auto& preset : family->presets) {
      presets[preset.first] = parsed(ModelDescription(*family, preset.second()).to_json());
    }
    defaults[family->name] = parsed(ModelDescription(*family, family->defaults()).to_json())["options"];
    added_later[family->name] = parsed(family->added_later);
  }
  return Json{{"families", families}, {"presets", presets}, {"defaults", defaults}, {"added_later", added_later},
              {"v1_presets", v1_presets_json()}}
      .dump();
}

}  // namespace slideformer::nn

// The modules' operators: the catalog as JSON text, and the registry's reading and validation of
// a description (std::runtime_error "<source>: <problem>"), for Python (a fragment of the
// slideformer namespace, so that only programs loading the modules have them).
TORCH_LIBRARY_FRAGMENT(slideformer, m) {
  m.def("model_catalog() -> str", [] { return slideformer::nn::model_catalog(); });
  m.def("validate_model_description(str description, str source) -> ()",
        [](const std::string& description, const std::string& source) {
          slideformer::nn::ModelDescription::from_json(description, source);
        });
}
