#include "model_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace slideformer::app {

namespace {

using Json = nlohmann::ordered_json;  // keys in the options' own order: readable files

// Calls visit(name, field) for every option, in declaration order: the one list of names the
// writer and the reader share. An option added to SlideTransformerOptions is added here; a
// checkpoint written before it then lacks the key, so the reader needs a fallback that means
// "as before this option existed" (see kAddedLater).
template <typename Options, typename Visit>
void for_each_option(Options& o, Visit&& visit) {
  visit("image_size", o.image_size());
  visit("in_channels", o.in_channels());
  visit("num_classes", o.num_classes());
  visit("patch_size", o.patch_size());
  visit("stem_channels", o.stem_channels());
  visit("overlapping_patches", o.overlapping_patches());
  visit("embed_dim", o.embed_dim());
  visit("absolute_position_embedding", o.absolute_position_embedding());
  visit("depths", o.depths());
  visit("heads", o.heads());
  visit("stage_kinds", o.stage_kinds());
  visit("kernel_size", o.kernel_size());
  visit("dilation", o.dilation());
  visit("border", o.border());
  visit("mlp_ratio", o.mlp_ratio());
  visit("drop_path_rate", o.drop_path_rate());
  visit("input_mean", o.input_mean());
  visit("input_std", o.input_std());
}

// Options added after the model_config format, with the value that reproduces the models
// written before them: {name, JSON value}. Empty so far.
const std::vector<std::pair<const char*, Json>> kAddedLater = {};

Json to_json(nn::AttentionKind kind) { return kind == nn::AttentionKind::kSlide ? "slide" : "global"; }
template <typename T>
Json to_json(const T& value) { return value; }
Json to_json(const std::vector<nn::AttentionKind>& kinds) {
  Json out = Json::array();
  for (auto kind : kinds) out.push_back(to_json(kind));
  return out;
}

// Strict readers: a float is no integer, a number no string.
struct Reader {
  const std::string& source;

  [[noreturn]] void fail(const std::string& name, const std::string& expected, const Json& got) const {
    throw std::runtime_error(fmt::format("{}: model option '{}' must be {}, got {}", source, name,
                                         expected, got.dump()));
  }
  void read(const std::string& name, const Json& j, int64_t& out) const {
    if (!j.is_number_integer()) fail(name, "an integer", j);
    out = j.get<int64_t>();
  }
  void read(const std::string& name, const Json& j, double& out) const {
    if (!j.is_number()) fail(name, "a number", j);
    out = j.get<double>();
  }
  void read(const std::string& name, const Json& j, bool& out) const {
    if (!j.is_boolean()) fail(name, "true or false", j);
    out = j.get<bool>();
  }
  void read(const std::string& name, const Json& j, std::string& out) const {
    if (!j.is_string()) fail(name, "a string", j);
    out = j.get<std::string>();
  }
  void read(const std::string& name, const Json& j, nn::AttentionKind& out) const {
    if (j == "slide") {
      out = nn::AttentionKind::kSlide;
    } else if (j == "global") {
      out = nn::AttentionKind::kGlobal;
    } else {
      fail(name, "a list of \"slide\" or \"global\"", j);
    }
  }
  template <typename T>
  void read(const std::string& name, const Json& j, std::vector<T>& out) const {
    if (!j.is_array()) fail(name, "a list", j);
    out.assign(j.size(), T{});
    for (size_t i = 0; i < j.size(); ++i) read(name, j[i], out[i]);
  }
};

// Values the modules accept, and a size this program can build: a checkpoint is outside input.
void check_options(const nn::SlideTransformerOptions& o, const std::string& source) {
  auto fail = [&](const char* name, const std::string& expected, const auto& got) {
    throw std::runtime_error(
        fmt::format("{}: model option '{}' must be {}, got {}", source, name, expected, got));
  };
  auto check_range = [&](const char* name, int64_t value, int64_t low, int64_t high) {
    if (value < low || value > high) fail(name, fmt::format("in [{}, {}]", low, high), value);
  };
  check_range("image_size", o.image_size(), 1, 4096);
  check_range("in_channels", o.in_channels(), 1, 1024);
  check_range("num_classes", o.num_classes(), 1, 1 << 20);
  check_range("patch_size", o.patch_size(), 1, o.image_size());
  if (o.image_size() % o.patch_size() != 0) {
    fail("patch_size", fmt::format("a divisor of image_size {}", o.image_size()), o.patch_size());
  }
  check_range("stem_channels", o.stem_channels(), 0, 1024);
  check_range("embed_dim", o.embed_dim(), 1, 4096);
  const size_t stages = o.depths().size();
  if (stages < 1 || stages > 8) fail("depths", "a list of 1 to 8 stages", fmt::format("{}", o.depths()));
  for (int64_t depth : o.depths()) check_range("depths", depth, 1, 64);
  if (o.heads().size() != stages) fail("heads", fmt::format("a list of {} (one per stage)", stages), fmt::format("{}", o.heads()));
  if (o.stage_kinds().size() != stages) {
    fail("stage_kinds", fmt::format("a list of {} (one per stage)", stages), o.stage_kinds().size());
  }
  for (size_t s = 0; s < stages; ++s) {
    const int64_t dim = o.embed_dim() << s;
    if (o.heads()[s] < 1 || dim % o.heads()[s] != 0) {
      fail("heads", fmt::format("divisors of each stage's width (stage {}: {})", s + 1, dim), fmt::format("{}", o.heads()));
    }
  }
  if (o.kernel_size() < 1 || o.kernel_size() > 31 || o.kernel_size() % 2 == 0) {
    fail("kernel_size", "odd and in [1, 31]", o.kernel_size());
  }
  check_range("dilation", o.dilation(), 1, o.image_size());
  if (o.border() != "zeros" && o.border() != "clamp") fail("border", "\"zeros\" or \"clamp\"", Json(o.border()).dump());
  if (!(o.mlp_ratio() > 0 && o.mlp_ratio() <= 64)) fail("mlp_ratio", "in (0, 64]", o.mlp_ratio());
  if (!(o.drop_path_rate() >= 0 && o.drop_path_rate() < 1)) fail("drop_path_rate", "in [0, 1)", o.drop_path_rate());
  const auto channels = static_cast<size_t>(o.in_channels());
  if (o.input_mean().size() != channels ||
      !std::all_of(o.input_mean().begin(), o.input_mean().end(), [](double m) { return std::isfinite(m); })) {
    fail("input_mean", fmt::format("one finite number per input channel ({})", channels), fmt::format("{}", o.input_mean()));
  }
  if (o.input_std().size() != channels ||
      !std::all_of(o.input_std().begin(), o.input_std().end(), [](double s) { return std::isfinite(s) && s > 0; })) {
    fail("input_std", fmt::format("one positive number per input channel ({})", channels), fmt::format("{}", o.input_std()));
  }
  // Weights of the blocks and mergings dominate: (4 + 2 * mlp_ratio) d^2 per block, 8 d^2 per
  // merging, plus the embedding tables and the head.
  const double patches = static_cast<double>(o.image_size() / o.patch_size());
  double parameters = 9.0 * o.stem_channels() * (o.in_channels() + o.stem_channels()) +
                      patches * patches * o.embed_dim();
  double dim = static_cast<double>(o.embed_dim());
  for (size_t s = 0; s < stages; ++s, dim *= 2) {
    parameters += o.depths()[s] * (4 + 2 * o.mlp_ratio()) * dim * dim + (s + 1 < stages ? 8 * dim * dim : 0);
  }
  parameters += dim / 2 * o.num_classes();
  constexpr double kMaxParameters = 1e9;
  if (parameters > kMaxParameters) {
    throw std::runtime_error(fmt::format(
        "{}: the model would have about {:.3g} parameters, more than this program builds ({:.0e})",
        source, parameters, kMaxParameters));
  }
}

Json options_to_json(const nn::SlideTransformerOptions& options) {
  Json out = Json::object();
  for_each_option(options, [&](const char* name, const auto& value) { out[name] = to_json(value); });
  return out;
}

}  // namespace

ModelConfig preset_model(const std::string& preset) {
  const auto names = nn::preset_names();
  if (std::find(names.begin(), names.end(), preset) == names.end()) {
    throw std::runtime_error(fmt::format("unknown preset '{}' (expected one of {})", preset,
                                         fmt::join(names, ", ")));
  }
  return {kSlideTransformerFamily, nn::preset(preset)};
}

std::string model_config_to_json(const ModelConfig& config) {
  return Json{{"family", config.family}, {"options", options_to_json(config.options)}}.dump();
}

ModelConfig model_config_from_json(const std::string& text, const std::string& source) {
  Json json;
  try {
    json = Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw std::runtime_error(fmt::format("{}: model description is not valid JSON ({})", source, e.what()));
  }
  if (!json.is_object() || !json.contains("family") || !json["family"].is_string() ||
      !json.contains("options") || !json["options"].is_object()) {
    throw std::runtime_error(fmt::format(
        "{}: model description must be {{\"family\": ..., \"options\": {{...}}}}, got {:.200}", source, json.dump()));
  }
  ModelConfig config;
  config.family = json["family"].get<std::string>();
  if (config.family != kSlideTransformerFamily) {
    throw std::runtime_error(fmt::format("{}: unknown model family '{}' (this program builds '{}')",
                                         source, config.family, kSlideTransformerFamily));
  }
  Json options = json["options"];
  for (const auto& [name, value] : kAddedLater) {
    if (!options.contains(name)) options[name] = value;
  }
  const Json known = options_to_json(config.options);
  for (const auto& item : options.items()) {
    if (!known.contains(item.key())) {
      throw std::runtime_error(fmt::format(
          "{}: unknown model option '{}' (written by a newer slideformer?)", source, item.key()));
    }
  }
  const Reader reader{source};
  for_each_option(config.options, [&](const char* name, auto& field) {
    if (!options.contains(name)) throw std::runtime_error(fmt::format("{}: model option '{}' is missing", source, name));
    reader.read(name, options[name], field);
  });
  check_options(config.options, source);
  return config;
}

void check_model_config(const ModelConfig& config, const std::string& source) {
  check_options(config.options, source);
}

bool operator==(const ModelConfig& a, const ModelConfig& b) {
  return a.family == b.family && options_to_json(a.options) == options_to_json(b.options);
}

std::string model_name(const ModelConfig& config) {
  for (const std::string& name : nn::preset_names()) {
    if (config == preset_model(name)) return name;
  }
  return "custom";
}

nn::SlideTransformer build_model(const ModelConfig& config) {
  TORCH_CHECK(config.family == kSlideTransformerFamily, "slideformer: unknown model family '",
              config.family, "'");
  return nn::SlideTransformer(config.options);
}

}  // namespace slideformer::app
