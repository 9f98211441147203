// The model registry and the JSON form of model descriptions (include/slideformer/nn/registry.h).
#include "slideformer/nn/registry.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>

#include "nn/families.h"

namespace slideformer::nn {

namespace {

using Json = nlohmann::ordered_json;  // keys in the options' own order: readable files

// "'a' and 'b'", "'a', 'b' and 'c'".
std::string quoted_list(const std::vector<std::string>& names, const char* quote, const char* last) {
  std::string out;
  for (size_t i = 0; i < names.size(); ++i) {
    out += (i == 0 ? "" : i + 1 == names.size() ? last : ", ") + (quote + names[i] + quote);
  }
  return out;
}

// Writes every option into a JSON object.
class JsonWriter : public OptionVisitor {
 public:
  Json out = Json::object();
  void field(const char* name, int64_t& value) override { out[name] = value; }
  void field(const char* name, double& value) override { out[name] = value; }
  void field(const char* name, bool& value) override { out[name] = value; }
  void field(const char* name, std::string& value) override { out[name] = value; }
  void field(const char* name, std::vector<int64_t>& value) override { out[name] = value; }
  void field(const char* name, std::vector<double>& value) override { out[name] = value; }
  void enumeration(const char* name, size_t& index, const std::vector<std::string>& names) override {
    out[name] = names.at(index);
  }
  void enumerations(const char* name, std::vector<size_t>& indices, const std::vector<std::string>& names) override {
    Json list = Json::array();
    for (size_t index : indices) list.push_back(names.at(index));
    out[name] = list;
  }
};

// Reads every option from a JSON object, strictly: a float is no integer, a number no string.
class JsonReader : public OptionVisitor {
 public:
  JsonReader(const Json& options, const std::string& source) : options_(options), source_(source) {}

  void field(const char* name, int64_t& value) override { read(name, at(name), value); }
  void field(const char* name, double& value) override { read(name, at(name), value); }
  void field(const char* name, bool& value) override {
    const Json& j = at(name);
    if (!j.is_boolean()) fail(name, "true or false", j);
    value = j.get<bool>();
  }
  void field(const char* name, std::string& value) override {
    const Json& j = at(name);
    if (!j.is_string()) fail(name, "a string", j);
    value = j.get<std::string>();
  }
  void field(const char* name, std::vector<int64_t>& value) override { read_list(name, value); }
  void field(const char* name, std::vector<double>& value) override { read_list(name, value); }
  void enumeration(const char* name, size_t& index, const std::vector<std::string>& names) override {
    index = find(name, at(name), names, "one of " + quoted_list(names, "\"", ", "));
  }
  void enumerations(const char* name, std::vector<size_t>& indices, const std::vector<std::string>& names) override {
    const Json& j = at(name);
    if (!j.is_array()) fail(name, "a list", j);
    indices.clear();
    for (const Json& item : j) indices.push_back(find(name, item, names, "a list of " + quoted_list(names, "\"", " or ")));
  }

 private:
  [[noreturn]] void fail(const std::string& name, const std::string& expected, const Json& got) const {
    throw std::runtime_error(source_ + ": model option '" + name + "' must be " + expected + ", got " + got.dump());
  }
  const Json& at(const char* name) const {
    if (!options_.contains(name)) throw std::runtime_error(source_ + ": model option '" + name + "' is missing");
    return options_.at(name);
  }
  void read(const char* name, const Json& j, int64_t& out) const {
    if (!j.is_number_integer()) fail(name, "an integer", j);
    out = j.get<int64_t>();
  }
  void read(const char* name, const Json& j, double& out) const {
    if (!j.is_number()) fail(name, "a number", j);
    out = j.get<double>();
  }
  template <typename T>
  void read_list(const char* name, std::vector<T>& out) const {
    const Json& j = at(name);
    if (!j.is_array()) fail(name, "a list", j);
    out.assign(j.size(), T{});
    for (size_t i = 0; i < j.size(); ++i) read(name, j[i], out[i]);
  }
  size_t find(const char* name, const Json& j, const std::vector<std::string>& names, const std::string& expected) const {
    const auto found = j.is_string() ? std::find(names.begin(), names.end(), j.get<std::string>()) : names.end();
    if (found == names.end()) fail(name, expected, j);
    return static_cast<size_t>(found - names.begin());
  }

  const Json& options_;
  const std::string& source_;
};

// The option `name` of type T, found by a pass over the options.
template <typename T>
class FieldFinder : public OptionVisitor {
 public:
  explicit FieldFinder(const char* name) : name_(name) {}
  T* found = nullptr;
  void field(const char* name, int64_t& value) override { take(name, value); }
  void field(const char* name, double& value) override { take(name, value); }
  void field(const char* name, bool& value) override { take(name, value); }
  void field(const char* name, std::string& value) override { take(name, value); }
  void field(const char* name, std::vector<int64_t>& value) override { take(name, value); }
  void field(const char* name, std::vector<double>& value) override { take(name, value); }
  void enumeration(const char*, size_t&, const std::vector<std::string>&) override {}
  void enumerations(const char*, std::vector<size_t>&, const std::vector<std::string>&) override {}

 private:
  template <typename U>
  void take(const char* name, U& value) {
    if constexpr (std::is_same_v<T, U>) {
      if (name_ == name) found = &value;
    }
  }
  std::string name_;
};

template <typename T>
T* find_field(const ModelFamily& family, std::any& options, const char* name) {
  FieldFinder<T> finder(name);
  family.for_each_option(options, finder);
  return finder.found;
}

// The options every family has (ModelDescription's queries).
void check_common_options(const ModelFamily& family) {
  std::any defaults = family.defaults();
  const bool complete = find_field<int64_t>(family, defaults, "image_size") &&
                        find_field<int64_t>(family, defaults, "in_channels") &&
                        find_field<int64_t>(family, defaults, "num_classes") &&
                        find_field<std::vector<double>>(family, defaults, "input_mean") &&
                        find_field<std::vector<double>>(family, defaults, "input_std");
  if (!complete) {
    throw std::runtime_error("slideformer: model family '" + family.name + "' lacks an option every family has "
                             "(image_size, in_channels, num_classes: integers; input_mean, input_std: lists)");
  }
}

// The one table of families, the library's own first.
struct Registry {
  std::mutex mutex;
  std::vector<std::unique_ptr<ModelFamily>> families;
};

Registry& registry() {
  static Registry* table = [] {
    auto* out = new Registry;  // never destroyed: descriptions may outlive static destruction
    for (ModelFamily& family : builtin_families()) out->families.push_back(std::make_unique<ModelFamily>(std::move(family)));
    return out;
  }();
  return *table;
}

}  // namespace

void OptionCheck::fail(const char* name, const std::string& expected, const std::string& got) const {
  throw std::runtime_error(source_ + ": model option '" + name + "' must be " + expected + ", got " + got);
}

void OptionCheck::range(const char* name, int64_t value, int64_t low, int64_t high) const {
  if (value < low || value > high) fail(name, "in [" + show(low) + ", " + show(high) + "]", show(value));
}

void OptionCheck::stages(int64_t embed_dim, const std::vector<int64_t>& depths, const std::vector<int64_t>& heads) const {
  const size_t count = depths.size();
  if (count < 1 || count > 8) fail("depths", "a list of 1 to 8 stages", show(depths));
  for (int64_t depth : depths) range("depths", depth, 1, 64);
  if (heads.size() != count) fail("heads", "a list of " + std::to_string(count) + " (one per stage)", show(heads));
  for (size_t s = 0; s < count; ++s) {
    const int64_t dim = embed_dim << s;
    if (heads[s] < 1 || dim % heads[s] != 0) {
      fail("heads", "divisors of each stage's width (stage " + std::to_string(s + 1) + ": " + show(dim) + ")",
           show(heads));
    }
  }
}

void OptionCheck::normalization(int64_t channels, const std::vector<double>& mean, const std::vector<double>& std) const {
  const auto per_channel = static_cast<size_t>(channels);
  const std::string count = " per input channel (" + std::to_string(channels) + ")";
  if (mean.size() != per_channel || !std::all_of(mean.begin(), mean.end(), [](double m) { return std::isfinite(m); })) {
    fail("input_mean", "one finite number" + count, show(mean));
  }
  if (std.size() != per_channel ||
      !std::all_of(std.begin(), std.end(), [](double s) { return std::isfinite(s) && s > 0; })) {
    fail("input_std", "one positive number" + count, show(std));
  }
}

std::string OptionCheck::show(int64_t value) { return std::to_string(value); }

std::string OptionCheck::show(double value) {
  std::ostringstream out;
  out << value;
  return out.str();
}

template <typename T>
std::string show_list(const std::vector<T>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + OptionCheck::show(values[i]);
  return out + "]";
}

std::string OptionCheck::show(const std::vector<int64_t>& values) { return show_list(values); }
std::string OptionCheck::show(const std::vector<double>& values) { return show_list(values); }
std::string OptionCheck::quoted(const std::string& text) { return Json(text).dump(); }

void register_family(ModelFamily family) {
  check_common_options(family);
  Registry& table = registry();
  std::lock_guard<std::mutex> lock(table.mutex);
  for (const auto& known : table.families) {
    if (known->name == family.name || known->options_type == family.options_type) {
      throw std::runtime_error("slideformer: model family '" + family.name + "' is registered already (or its "
                               "options type, as '" + known->name + "')");
    }
  }
  table.families.push_back(std::make_unique<ModelFamily>(std::move(family)));
}

void unregister_family(const std::string& name) {
  Registry& table = registry();
  std::lock_guard<std::mutex> lock(table.mutex);
  auto& families = table.families;
  families.erase(std::remove_if(families.begin(), families.end(), [&](const auto& f) { return f->name == name; }),
                 families.end());
}

std::vector<const ModelFamily*> model_families() {
  Registry& table = registry();
  std::lock_guard<std::mutex> lock(table.mutex);
  std::vector<const ModelFamily*> out;
  for (const auto& family : table.families) out.push_back(family.get());
  return out;
}

// The one place a family's name is compared.
const ModelFamily& model_family(const std::string& name, const std::string& source) {
  std::vector<std::string> names;
  for (const ModelFamily* family : model_families()) {
    if (family->name == name) return *family;
    names.push_back(family->name);
  }
  throw std::runtime_error(source + ": unknown model family '" + name + "' (this program builds " +
                           quoted_list(names, "'", " and ") + ")");
}

const ModelFamily& ModelDescription::family_of(std::type_index options_type) {
  for (const ModelFamily* family : model_families()) {
    if (family->options_type == options_type) return *family;
  }
  throw std::runtime_error(std::string("slideformer: no model family has the options type ") + options_type.name());
}

ModelDescription::ModelDescription(const ModelFamily& family, std::any options)
    : family_(&family), options_(std::move(options)) {}

const ModelFamily& ModelDescription::family() const {
  if (!family_) throw std::runtime_error("slideformer: an empty model description (no family) was used");
  return *family_;
}

std::vector<std::string> ModelDescription::preset_names() {
  std::vector<std::string> names;
  for (const ModelFamily* family : model_families()) {
    for (const auto& preset : family->presets) names.push_back(preset.first);
  }
  return names;
}

ModelDescription ModelDescription::preset(const std::string& name) {
  for (const ModelFamily* family : model_families()) {
    for (const auto& preset : family->presets) {
      if (preset.first == name) return ModelDescription(*family, preset.second());
    }
  }
  throw std::runtime_error("unknown preset '" + name + "' (expected one of " +
                           quoted_list(preset_names(), "", ", ") + ")");
}

std::string ModelDescription::to_json() const {
  JsonWriter writer;
  std::any copy = options_;  // the pass takes the options by reference
  family().for_each_option(copy, writer);
  return Json{{"family", family().name}, {"options", writer.out}}.dump();
}

ModelDescription ModelDescription::from_json(const std::string& text, const std::string& source) {
  Json json;
  try {
    json = Json::parse(text);
  } catch (const Json::exception& e) {  // a syntax error, or a number out of double's range
    throw std::runtime_error(source + ": model description is not valid JSON (" + e.what() + ")");
  }
  if (!json.is_object() || !json.contains("family") || !json["family"].is_string() || !json.contains("options") ||
      !json["options"].is_object()) {
    throw std::runtime_error(source + ": model description must be {\"family\": ..., \"options\": {...}}, got " +
                             json.dump().substr(0, 200));
  }
  const ModelFamily& family = model_family(json["family"].get<std::string>(), source);
  Json options = json["options"];
  const Json added_later = Json::parse(family.added_later);
  for (const auto& item : added_later.items()) {
    if (!options.contains(item.key())) options[item.key()] = item.value();
  }
  ModelDescription description(family, family.defaults());
  JsonWriter known;
  family.for_each_option(description.options_, known);
  for (const auto& item : options.items()) {
    if (!known.out.contains(item.key())) {
      throw std::runtime_error(source + ": unknown model option '" + item.key() + "' (written by a newer slideformer?)");
    }
  }
  JsonReader reader(options, source);
  family.for_each_option(description.options_, reader);
  description.validate(source);
  return description;
}

void ModelDescription::validate(const std::string& source) const {
  family().validate(options_, OptionCheck(source));
  const double parameters = family().parameter_estimate(options_);
  constexpr double kMaxParameters = 1e9;
  if (parameters > kMaxParameters) {
    std::ostringstream message;
    message << source << ": the model would have about " << std::setprecision(3) << parameters
            << " parameters, more than this program builds (" << std::scientific << std::setprecision(0)
            << kMaxParameters << ")";
    throw std::runtime_error(message.str());
  }
}

BuiltModel ModelDescription::build() const { return family().build(options_); }

std::string ModelDescription::name() const {
  for (const std::string& preset_name : preset_names()) {
    if (*this == preset(preset_name)) return preset_name;
  }
  return "custom";
}

template <typename T>
T& ModelDescription::option(const char* name) {
  T* found = find_field<T>(family(), options_, name);
  if (!found) throw std::runtime_error("slideformer: the " + family().name + " options lack '" + name + "'");
  return *found;
}

// The queries pass over the options, which takes them by reference; they change nothing.
int64_t ModelDescription::image_size() const { return const_cast<ModelDescription*>(this)->option<int64_t>("image_size"); }
int64_t ModelDescription::in_channels() const { return const_cast<ModelDescription*>(this)->option<int64_t>("in_channels"); }
int64_t ModelDescription::num_classes() const { return const_cast<ModelDescription*>(this)->option<int64_t>("num_classes"); }
std::vector<double> ModelDescription::input_mean() const {
  return const_cast<ModelDescription*>(this)->option<std::vector<double>>("input_mean");
}
std::vector<double> ModelDescription::input_std() const {
  return const_cast<ModelDescription*>(this)->option<std::vector<double>>("input_std");
}
void ModelDescription::set_image_size(int64_t size) { option<int64_t>("image_size") = size; }
void ModelDescription::set_in_channels(int64_t channels) { option<int64_t>("in_channels") = channels; }
void ModelDescription::set_num_classes(int64_t classes) { option<int64_t>("num_classes") = classes; }
void ModelDescription::set_input_normalization(std::vector<double> mean, std::vector<double> std) {
  option<std::vector<double>>("input_mean") = std::move(mean);
  option<std::vector<double>>("input_std") = std::move(std);
}

bool ModelDescription::operator==(const ModelDescription& other) const {
  if (!family_ || !other.family_) return family_ == other.family_;
  return to_json() == other.to_json();
}

}  // namespace slideformer::nn
