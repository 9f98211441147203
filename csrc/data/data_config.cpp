// DataConfig: checks and its JSON form (nlohmann-json, private to the library).
#include <nlohmann/json.hpp>

#include <cmath>
#include <stdexcept>

#include "slideformer/data/transforms.h"

namespace slideformer::data {

namespace {

[[noreturn]] void invalid(const std::string& where, const std::string& what) {
  throw std::invalid_argument(where + ": " + what);
}

}  // namespace

int64_t DataConfig::resize_size() const {
  // floor(S / crop_pct) as timm computes it; the epsilon keeps 224 / 0.875 at 256.
  return static_cast<int64_t>(std::floor(static_cast<double>(image_size) / crop_pct + 1e-9));
}

void DataConfig::check() const {
  const std::string where = "slideformer::data::DataConfig";
  if (channels != 1 && channels != 3) invalid(where, "channels must be 1 or 3, got " + std::to_string(channels));
  if (image_size < 1 || image_size > 16384) {
    invalid(where, "image_size must be in [1, 16384], got " + std::to_string(image_size));
  }
  if (static_cast<int64_t>(mean.size()) != channels || static_cast<int64_t>(std.size()) != channels) {
    invalid(where, "mean and std need one value per channel (" + std::to_string(channels) + "), got " +
                       std::to_string(mean.size()) + " and " + std::to_string(std.size()));
  }
  for (int64_t c = 0; c < channels; ++c) {
    if (!std::isfinite(mean[c]) || !(std[c] > 0) || !std::isfinite(std[c])) {
      invalid(where, "mean must be finite and std finite and > 0, got mean " + std::to_string(mean[c]) + ", std " +
                         std::to_string(std[c]) + " for channel " + std::to_string(c));
    }
  }
  if (!(crop_pct > 0 && crop_pct <= 1)) invalid(where, "crop_pct must be in (0, 1], got " + std::to_string(crop_pct));
  if (interpolation != "bilinear") {
    invalid(where, "interpolation must be \"bilinear\" (the one supported), got \"" + interpolation + "\"");
  }
}

std::string DataConfig::to_json() const {
  const nlohmann::ordered_json json = {{"class_names", class_names}, {"channels", channels},
                                       {"image_size", image_size},   {"mean", mean},
                                       {"std", std},                 {"crop_pct", crop_pct},
                                       {"interpolation", interpolation}};
  return json.dump();
}

DataConfig DataConfig::from_json(const std::string& text, const std::string& where) {
  const nlohmann::json json = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!json.is_object()) invalid(where, "not a JSON object of a data config");
  DataConfig config;
  auto field = [&](const char* name, auto& value) {
    if (!json.contains(name)) invalid(where, std::string("the data config has no \"") + name + "\"");
    try {
      json.at(name).get_to(value);
    } catch (const nlohmann::json::exception&) {
      invalid(where, std::string("the data config's \"") + name + "\" has the wrong type: " + json.at(name).dump());
    }
  };
  field("class_names", config.class_names);
  field("channels", config.channels);
  field("image_size", config.image_size);
  field("mean", config.mean);
  field("std", config.std);
  field("crop_pct", config.crop_pct);
  field("interpolation", config.interpolation);
  try {
    config.check();
  } catch (const std::invalid_argument& error) {
    invalid(where, error.what());
  }
  return config;
}

bool DataConfig::operator==(const DataConfig& other) const {
  return class_names == other.class_names && channels == other.channels && image_size == other.image_size &&
         mean == other.mean && std == other.std && crop_pct == other.crop_pct && interpolation == other.interpolation;
}

}  // namespace slideformer::data
