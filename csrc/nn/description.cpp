// Model descriptions and the catalog of presets (include/slideformer/nn/description.h).
#include "slideformer/nn/description.h"

#include <torch/library.h>

#include <nlohmann/json.hpp>

namespace slideformer::nn {

namespace {

using Json = nlohmann::ordered_json;  // keys in the options' own order: readable files

Json to_json(AttentionKind kind) { return kAttentionKindNames[static_cast<size_t>(kind)]; }
Json to_json(PoolMode mode) { return kPoolModeNames[static_cast<size_t>(mode)]; }
Json to_json(PositionEncoding encoding) { return kPositionEncodingNames[static_cast<size_t>(encoding)]; }
template <typename T>
Json to_json(const T& value) {
  return value;
}
Json to_json(const std::vector<AttentionKind>& kinds) {
  Json out = Json::array();
  for (auto kind : kinds) out.push_back(to_json(kind));
  return out;
}

template <typename Options>
Json description(const char* family, const Options& options) {
  Json out = Json::object();
  for_each_option(options, [&](const char* name, const auto& value) { out[name] = to_json(value); });
  return Json{{"family", family}, {"options", out}};
}

Json description(const SlideTransformerOptions& options) { return description(kSlideTransformerFamily, options); }
Json description(const MViTOptions& options) { return description(kMViTFamily, options); }
Json description(const VideoMViTOptions& options) { return description(kVideoMViTFamily, options); }

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

std::string describe(const SlideTransformerOptions& options) { return description(options).dump(); }
std::string describe(const MViTOptions& options) { return description(options).dump(); }
std::string describe(const VideoMViTOptions& options) { return description(options).dump(); }

std::string added_later_options() {
  return Json{{kSlideTransformerFamily, {{"sinusoidal_position_encoding", false}}},
              {kMViTFamily, Json::object()},
              {kVideoMViTFamily, Json::object()}}
      .dump();
}

std::string v1_presets() { return v1_presets_json().dump(); }

std::string model_catalog() {
  Json presets = Json::object();
  for (const std::string& name : preset_names()) presets[name] = description(preset(name));
  for (const std::string& name : mvit_preset_names()) presets[name] = description(mvit_preset(name));
  return Json{{"presets", presets},
              {"defaults",
               {{kSlideTransformerFamily, description(SlideTransformerOptions())["options"]},
                {kMViTFamily, description(MViTOptions())["options"]}}},
              {"added_later", Json::parse(added_later_options())},
              {"v1_presets", v1_presets_json()}}
      .dump();
}

}  // namespace slideformer::nn

// The modules' operator: the catalog as JSON text (a fragment of the slideformer namespace, so
// that only programs loading the modules have it).
TORCH_LIBRARY_FRAGMENT(slideformer, m) {
  m.def("model_catalog() -> str", [] { return slideformer::nn::model_catalog(); });
}
