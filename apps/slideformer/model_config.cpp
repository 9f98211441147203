#include "model_config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace slideformer::app {

namespace {

using Json = nlohmann::ordered_json;  // keys in the options' own order: readable files

using nn::for_each_option;

// Options added after the model_config format, with the value that reproduces the models
// written before them (the library's list): family -> {name: JSON value}.
const Json& added_later() {
  static const Json options = Json::parse(nn::added_later_options());
  return options;
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
  template <typename Enum, size_t N>
  void read_enum(const std::string& name, const Json& j, const std::array<const char*, N>& names, Enum& out) const {
    const auto found = j.is_string() ? std::find(names.begin(), names.end(), j.get<std::string>()) : names.end();
    if (found == names.end()) fail(name, fmt::format("one of \"{}\"", fmt::join(names, "\", \"")), j);
    out = static_cast<Enum>(found - names.begin());
  }
  void read(const std::string& name, const Json& j, nn::PoolMode& out) const {
    read_enum(name, j, nn::kPoolModeNames, out);
  }
  void read(const std::string& name, const Json& j, nn::PositionEncoding& out) const {
    read_enum(name, j, nn::kPositionEncodingNames, out);
  }
  template <typename T>
  void read(const std::string& name, const Json& j, std::vector<T>& out) const {
    if (!j.is_array()) fail(name, "a list", j);
    out.assign(j.size(), T{});
    for (size_t i = 0; i < j.size(); ++i) read(name, j[i], out[i]);
  }
};

// Throws "<source>: model option '<name>' must be <expected>, got <value>".
struct Checker {
  const std::string& source;

  template <typename T>
  [[noreturn]] void fail(const char* name, const std::string& expected, const T& got) const {
    throw std::runtime_error(fmt::format("{}: model option '{}' must be {}, got {}", source, name, expected, got));
  }
  void range(const char* name, int64_t value, int64_t low, int64_t high) const {
    if (value < low || value > high) fail(name, fmt::format("in [{}, {}]", low, high), value);
  }
  // The options every family has: sizes, stages (heads divide each stage's width embed_dim *
  // 2^s), the MLP, stochastic depth and the input normalisation.
  template <typename Options>
  void common(const Options& o) const {
    range("image_size", o.image_size(), 1, 4096);
    range("in_channels", o.in_channels(), 1, 1024);
    range("num_classes", o.num_classes(), 1, 1 << 20);
    range("embed_dim", o.embed_dim(), 1, 4096);
    const size_t stages = o.depths().size();
    if (stages < 1 || stages > 8) fail("depths", "a list of 1 to 8 stages", fmt::format("{}", o.depths()));
    for (int64_t depth : o.depths()) range("depths", depth, 1, 64);
    if (o.heads().size() != stages) {
      fail("heads", fmt::format("a list of {} (one per stage)", stages), fmt::format("{}", o.heads()));
    }
    for (size_t s = 0; s < stages; ++s) {
      const int64_t dim = o.embed_dim() << s;
      if (o.heads()[s] < 1 || dim % o.heads()[s] != 0) {
        fail("heads", fmt::format("divisors of each stage's width (stage {}: {})", s + 1, dim),
             fmt::format("{}", o.heads()));
      }
    }
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
  }
  // The image families' square patches and kernels.
  template <typename Options>
  void patches(const Options& o) const {
    range("patch_size", o.patch_size(), 1, o.image_size());
    if (o.kernel_size() < 1 || o.kernel_size() > 31 || o.kernel_size() % 2 == 0) {
      fail("kernel_size", "odd and in [1, 31]", o.kernel_size());
    }
  }
  // A (T, Y, X) kernel or stride of the video family: three sizes in [1, high], odd if `odd`.
  void triple(const char* name, const std::vector<int64_t>& sizes, int64_t high, bool odd) const {
    const bool fits = sizes.size() == 3 && std::all_of(sizes.begin(), sizes.end(), [&](int64_t s) {
      return s >= 1 && s <= high && (!odd || s % 2 == 1);
    });
    if (!fits) fail(name, fmt::format("three {}sizes (T, Y, X) in [1, {}]", odd ? "odd " : "", high), fmt::format("{}", sizes));
  }
  // Weights of the blocks dominate: (4 + 2 * mlp_ratio) d^2 per block, plus `extra` (the
  // embedding tables, mergings) and the head.
  template <typename Options>
  void size(const Options& o, double extra) const {
    double parameters = extra, dim = static_cast<double>(o.embed_dim());
    for (size_t s = 0; s < o.depths().size(); ++s, dim *= 2) {
      parameters += o.depths()[s] * (4 + 2 * o.mlp_ratio()) * dim * dim;
    }
    parameters += dim / 2 * o.num_classes();
    constexpr double kMaxParameters = 1e9;
    if (parameters > kMaxParameters) {
      throw std::runtime_error(fmt::format(
          "{}: the model would have about {:.3g} parameters, more than this program builds ({:.0e})",
          source, parameters, kMaxParameters));
    }
  }
};

// Values the modules accept, and a size this program can build: a checkpoint is outside input.
void check_options(const nn::SlideTransformerOptions& o, const std::string& source) {
  const Checker check{source};
  check.common(o);
  check.patches(o);
  if (o.image_size() % o.patch_size() != 0) {
    check.fail("patch_size", fmt::format("a divisor of image_size {}", o.image_size()), o.patch_size());
  }
  check.range("stem_channels", o.stem_channels(), 0, 1024);
  if (o.sinusoidal_position_encoding() && o.embed_dim() % 4 != 0) {
    check.fail("embed_dim", "a multiple of 4 with sinusoidal_position_encoding", o.embed_dim());
  }
  if (o.stage_kinds().size() != o.depths().size()) {
    check.fail("stage_kinds", fmt::format("a list of {} (one per stage)", o.depths().size()), o.stage_kinds().size());
  }
  check.range("dilation", o.dilation(), 1, o.image_size());
  if (o.border() != "zeros" && o.border() != "clamp") check.fail("border", "\"zeros\" or \"clamp\"", Json(o.border()).dump());
  const double patches = static_cast<double>(o.image_size() / o.patch_size());
  double mergings = 0, dim = static_cast<double>(o.embed_dim());
  for (size_t s = 0; s + 1 < o.depths().size(); ++s, dim *= 2) mergings += 8 * dim * dim;
  check.size(o, 9.0 * o.stem_channels() * (o.in_channels() + o.stem_channels()) +
                    patches * patches * o.embed_dim() + mergings);
}

void check_options(const nn::MViTOptions& o, const std::string& source) {
  const Checker check{source};
  check.common(o);
  check.patches(o);
  check.range("stride_kv", o.stride_kv(), 1, o.image_size());
  if (o.position_encoding() == nn::PositionEncoding::kSinusoidal && o.embed_dim() % 4 != 0) {
    check.fail("embed_dim", "a multiple of 4 with the sinusoidal position encoding", o.embed_dim());
  }
  if (!(o.norm_eps() > 0 && o.norm_eps() <= 1)) check.fail("norm_eps", "in (0, 1]", o.norm_eps());
  const double patches = static_cast<double>((o.image_size() + o.patch_size() - 1) / o.patch_size());
  check.size(o, patches * patches * o.embed_dim());
}

void check_options(const nn::VideoMViTOptions& o, const std::string& source) {
  const Checker check{source};
  check.range("frames", o.frames(), 1, 1024);
  check.common(o);
  check.triple("patch_kernel", o.patch_kernel(), 31, false);
  check.triple("patch_stride", o.patch_stride(), 31, false);
  check.triple("kernel", o.kernel(), 31, true);
  check.triple("stride_kv", o.stride_kv(), o.image_size(), false);
  if (!(o.head_dropout() >= 0 && o.head_dropout() < 1)) check.fail("head_dropout", "in [0, 1)", o.head_dropout());
  if (!(o.norm_eps() > 0 && o.norm_eps() <= 1)) check.fail("norm_eps", "in (0, 1]", o.norm_eps());
  const auto& k = o.patch_kernel();
  const double tokens = static_cast<double>(o.frames()) * o.image_size() * o.image_size() /
                        static_cast<double>(o.patch_stride()[0] * o.patch_stride()[1] * o.patch_stride()[2]);
  check.size(o, static_cast<double>(k[0] * k[1] * k[2] * o.in_channels() + tokens) * o.embed_dim());
}

// f(the options of the config's family).
template <typename Config, typename F>
decltype(auto) with_options(Config& config, F&& f) {
  if (config.family == kMViTFamily) return f(config.mvit);
  if (config.family == kVideoMViTFamily) return f(config.video);
  return f(config.options);
}

// The library's description of the options (family and options), as JSON.
template <typename Options>
Json description_of(const Options& options) {
  return Json::parse(nn::describe(options));
}

Json description_of(const ModelConfig& config) {
  return with_options(config, [](const auto& options) { return description_of(options); });
}

// Reads every option of `out` from `options` (a JSON object), strictly, then checks them.
template <typename Options>
void read_options(Json options, Options& out, const std::string& source) {
  const Json description = description_of(out);
  for (const auto& item : added_later().at(description["family"].get<std::string>()).items()) {
    if (!options.contains(item.key())) options[item.key()] = item.value();
  }
  const Json& known = description["options"];
  for (const auto& item : options.items()) {
    if (!known.contains(item.key())) {
      throw std::runtime_error(fmt::format(
          "{}: unknown model option '{}' (written by a newer slideformer?)", source, item.key()));
    }
  }
  const Reader reader{source};
  for_each_option(out, [&](const char* name, auto& field) {
    if (!options.contains(name)) throw std::runtime_error(fmt::format("{}: model option '{}' is missing", source, name));
    reader.read(name, options[name], field);
  });
  check_options(out, source);
}

}  // namespace

int64_t ModelConfig::in_channels() const {
  return with_options(*this, [](const auto& o) { return o.in_channels(); });
}
int64_t ModelConfig::image_size() const {
  return with_options(*this, [](const auto& o) { return o.image_size(); });
}
int64_t ModelConfig::num_classes() const {
  return with_options(*this, [](const auto& o) { return o.num_classes(); });
}
void ModelConfig::set_image_size(int64_t size) {
  with_options(*this, [&](auto& o) { o.image_size(size); });
}

std::vector<std::string> preset_names() {
  std::vector<std::string> names = nn::preset_names();
  for (const std::string& name : nn::mvit_preset_names()) names.push_back(name);
  for (const std::string& name : nn::video_mvit_preset_names()) names.push_back(name);
  return names;
}

ModelConfig preset_model(const std::string& preset) {
  const auto names = preset_names();
  if (std::find(names.begin(), names.end(), preset) == names.end()) {
    throw std::runtime_error(fmt::format("unknown preset '{}' (expected one of {})", preset,
                                         fmt::join(names, ", ")));
  }
  ModelConfig config;
  const auto mvit_names = nn::mvit_preset_names(), video_names = nn::video_mvit_preset_names();
  if (std::find(mvit_names.begin(), mvit_names.end(), preset) != mvit_names.end()) {
    config.family = kMViTFamily;
    config.mvit = nn::mvit_preset(preset);
  } else if (std::find(video_names.begin(), video_names.end(), preset) != video_names.end()) {
    config.family = kVideoMViTFamily;
    config.video = nn::video_mvit_preset(preset);
  } else {
    config.options = nn::preset(preset);
  }
  return config;
}

std::string model_config_to_json(const ModelConfig& config) {
  return description_of(config).dump();
}

ModelConfig model_config_from_json(const std::string& text, const std::string& source) {
  Json json;
  try {
    json = Json::parse(text);
  } catch (const Json::exception& e) {  // a syntax error, or a number out of double's range
    throw std::runtime_error(fmt::format("{}: model description is not valid JSON ({})", source, e.what()));
  }
  if (!json.is_object() || !json.contains("family") || !json["family"].is_string() ||
      !json.contains("options") || !json["options"].is_object()) {
    throw std::runtime_error(fmt::format(
        "{}: model description must be {{\"family\": ..., \"options\": {{...}}}}, got {:.200}", source, json.dump()));
  }
  ModelConfig config;
  config.family = json["family"].get<std::string>();
  if (config.family != kSlideTransformerFamily && config.family != kMViTFamily && config.family != kVideoMViTFamily) {
    throw std::runtime_error(fmt::format("{}: unknown model family '{}' (this program builds '{}', '{}' and '{}')",
                                         source, config.family, kSlideTransformerFamily, kMViTFamily,
                                         kVideoMViTFamily));
  }
  with_options(config, [&](auto& options) { read_options(json["options"], options, source); });
  return config;
}

void check_model_config(const ModelConfig& config, const std::string& source) {
  with_options(config, [&](const auto& options) { check_options(options, source); });
}

bool operator==(const ModelConfig& a, const ModelConfig& b) {
  return description_of(a) == description_of(b);
}

std::string model_name(const ModelConfig& config) {
  for (const std::string& name : preset_names()) {
    if (config == preset_model(name)) return name;
  }
  return "custom";
}

void require_image_model(const ModelConfig& config) {
  if (config.family == kVideoMViTFamily) {
    throw std::runtime_error(fmt::format("{} is a video model (family '{}', clips): this command takes image models; "
                                         "`summary` describes video ones", model_name(config), kVideoMViTFamily));
  }
}

Model build_model(const ModelConfig& config) {
  require_image_model(config);
  if (config.family == kMViTFamily) {
    nn::MViT model(config.mvit);
    return {model.ptr(), model.get()};
  }
  TORCH_CHECK(config.family == kSlideTransformerFamily, "slideformer: unknown model family '", config.family, "'");
  nn::SlideTransformer model(config.options);
  return {model.ptr(), model.get()};
}

nn::VideoMViT build_video_model(const ModelConfig& config) {
  TORCH_CHECK(config.family == kVideoMViTFamily, "slideformer: not a video model: family '", config.family, "'");
  return nn::VideoMViT(config.video);
}

}  // namespace slideformer::app
