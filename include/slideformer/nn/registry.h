#pragma once
// The model registry: every classifier family by name, in one table. A family is an options type
// (SlideTransformerOptions, MViTOptions, ...) with the visitor over its fields (whose names make
// its JSON description), one validate(), its presets and the builder of its module. A
// ModelDescription is a model of any family (the family and its options): what a checkpoint
// stores, what a program builds. Programs ask a description what they need (image size, channels,
// build()) instead of asking which family it is. docs/modules.md says how to add a family.
#include <any>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <typeindex>
#include <utility>
#include <vector>

namespace torch::nn {
class Module;
}

namespace slideformer::nn {

class Classifier;

// One pass over a family's options: the field types an option may have. Enumerations come as the
// index of their value in `names`, their JSON spellings.
class OptionVisitor {
 public:
  virtual ~OptionVisitor() = default;
  virtual void field(const char* name, int64_t& value) = 0;
  virtual void field(const char* name, double& value) = 0;
  virtual void field(const char* name, bool& value) = 0;
  virtual void field(const char* name, std::string& value) = 0;
  virtual void field(const char* name, std::vector<int64_t>& value) = 0;
  virtual void field(const char* name, std::vector<double>& value) = 0;
  virtual void enumeration(const char* name, size_t& index, const std::vector<std::string>& names) = 0;
  virtual void enumerations(const char* name, std::vector<size_t>& indices, const std::vector<std::string>& names) = 0;
};

// Hands a family's typed fields (the calls of its for_each_option) to an OptionVisitor; an
// enumeration type E needs `std::vector<std::string> enum_names(E)` beside it.
struct ErasedOptionVisit {
  OptionVisitor& visitor;

  template <typename T>
  void operator()(const char* name, T& value) const {
    if constexpr (std::is_enum_v<T>) {
      auto index = static_cast<size_t>(value);
      visitor.enumeration(name, index, enum_names(T{}));
      value = static_cast<T>(index);
    } else if constexpr (is_enum_vector<T>::value) {
      std::vector<size_t> indices;
      for (auto item : value) indices.push_back(static_cast<size_t>(item));
      visitor.enumerations(name, indices, enum_names(typename T::value_type{}));
      value.assign(indices.size(), typename T::value_type{});
      for (size_t i = 0; i < indices.size(); ++i) value[i] = static_cast<typename T::value_type>(indices[i]);
    } else {
      visitor.field(name, value);
    }
  }

 private:
  template <typename T>
  struct is_enum_vector : std::false_type {};
  template <typename E>
  struct is_enum_vector<std::vector<E>> : std::is_enum<E> {};
};

// What validate() reports a bad value with: std::runtime_error "<source>: model option '<name>'
// must be <expected>, got <value>" (source: a file, a flag, a module's name).
class OptionCheck {
 public:
  explicit OptionCheck(std::string source) : source_(std::move(source)) {}
  [[noreturn]] void fail(const char* name, const std::string& expected, const std::string& got) const;
  void range(const char* name, int64_t value, int64_t low, int64_t high) const;
  // The options every hierarchical classifier has: sizes, stages (heads divide each stage's
  // width embed_dim * 2^s), the window, the MLP, stochastic depth and the input normalisation.
  template <typename Options>
  void hierarchical(const Options& o) const {
    range("image_size", o.image_size(), 1, 4096);
    range("in_channels", o.in_channels(), 1, 1024);
    range("num_classes", o.num_classes(), 1, 1 << 20);
    range("patch_size", o.patch_size(), 1, o.image_size());
    range("embed_dim", o.embed_dim(), 1, 4096);
    stages(o.embed_dim(), o.depths(), o.heads());
    if (o.kernel_size() < 1 || o.kernel_size() > 31 || o.kernel_size() % 2 == 0) {
      fail("kernel_size", "odd and in [1, 31]", show(o.kernel_size()));
    }
    if (!(o.mlp_ratio() > 0 && o.mlp_ratio() <= 64)) fail("mlp_ratio", "in (0, 64]", show(o.mlp_ratio()));
    if (!(o.drop_path_rate() >= 0 && o.drop_path_rate() < 1)) {
      fail("drop_path_rate", "in [0, 1)", show(o.drop_path_rate()));
    }
    normalization(o.in_channels(), o.input_mean(), o.input_std());
  }
  // 1 to 8 stages of 1 to 64 blocks; heads: one per stage, dividing the stage's width.
  void stages(int64_t embed_dim, const std::vector<int64_t>& depths, const std::vector<int64_t>& heads) const;
  // input_mean: one finite number per channel; input_std: one positive number per channel.
  void normalization(int64_t channels, const std::vector<double>& mean, const std::vector<double>& std) const;

  static std::string show(int64_t value);
  static std::string show(double value);
  static std::string show(const std::vector<int64_t>& values);
  static std::string show(const std::vector<double>& values);
  static std::string quoted(const std::string& text);  // as JSON writes it

 private:
  std::string source_;
};

// A built classifier: the module (parameters, train / eval, save / load) and the classifier it is.
struct BuiltModel {
  std::shared_ptr<torch::nn::Module> module;
  Classifier* classifier = nullptr;  // the same object as module
};

// A family, its options type erased (std::any holding the options). Make one with
// classifier_family<Options, Module>() and add it with register_family().
struct ModelFamily {
  std::string name;
  std::type_index options_type = typeid(void);
  std::function<std::any()> defaults;
  // Presets by name, in the order they are listed.
  std::vector<std::pair<std::string, std::function<std::any()>>> presets;
  std::function<void(std::any& options, OptionVisitor& visitor)> for_each_option;
  // Throws (OptionCheck) for options the module does not take.
  std::function<void(const std::any& options, const OptionCheck& check)> validate;
  // About how many parameters the model has: readers refuse descriptions of models too large.
  std::function<double(const std::any& options)> parameter_estimate;
  std::function<BuiltModel(const std::any& options)> build;
  // Options added after the description format, with the value that reproduces the models
  // described before them: a JSON object {"option": value}.
  std::string added_later = "{}";
};

// The family of Options, whose module holder Module (a TORCH_MODULE of a Classifier) is built from
// them. Options needs the fields image_size, in_channels, num_classes (integers), input_mean and
// input_std (lists of numbers); for_each_option(Options&, visit) is found beside Options.
template <typename Options, typename Module>
ModelFamily classifier_family(std::string name, std::vector<std::pair<std::string, Options (*)()>> presets,
                              void (*validate)(const Options&, const OptionCheck&),
                              double (*parameter_estimate)(const Options&), std::string added_later = "{}") {
  ModelFamily family;
  family.name = std::move(name);
  family.options_type = typeid(Options);
  family.defaults = [] { return std::any(Options()); };
  for (const auto& [preset, make] : presets) family.presets.emplace_back(preset, [make = make] { return std::any(make()); });
  family.for_each_option = [](std::any& options, OptionVisitor& visitor) {
    for_each_option(std::any_cast<Options&>(options), ErasedOptionVisit{visitor});
  };
  family.validate = [validate](const std::any& options, const OptionCheck& check) {
    validate(std::any_cast<const Options&>(options), check);
  };
  family.parameter_estimate = [parameter_estimate](const std::any& options) {
    return parameter_estimate(std::any_cast<const Options&>(options));
  };
  family.build = [](const std::any& options) {
    Module module(std::any_cast<const Options&>(options));
    return BuiltModel{module.ptr(), module.get()};
  };
  family.added_later = std::move(added_later);
  return family;
}

// Adds a family to the table (the library's own, slide_transformer and mvit, are always there).
// std::runtime_error if its name or options type is taken, or it lacks an option every family has.
void register_family(ModelFamily family);
// Removes a family added by register_family (a test's); descriptions of it must be gone.
void unregister_family(const std::string& name);
// The families, in registration order.
std::vector<const ModelFamily*> model_families();
// The family of that name; std::runtime_error "<source>: unknown model family '<name>' (this
// program builds 'a' and 'b')" for others.
const ModelFamily& model_family(const std::string& name, const std::string& source);

// A model of any family: the family and its options. Copies are values. A default-constructed
// description describes nothing (every query throws) until assigned.
class ModelDescription {
 public:
  ModelDescription() = default;
  ModelDescription(const ModelFamily& family, std::any options);
  // A model of the registered family of Options.
  template <typename Options, typename = std::enable_if_t<!std::is_same_v<std::decay_t<Options>, ModelDescription>>>
  explicit ModelDescription(Options options) : ModelDescription(family_of(typeid(Options)), std::any(std::move(options))) {}

  // A preset of any family by name; std::runtime_error "unknown preset '<name>' (expected one of
  // ...)" for others.
  static ModelDescription preset(const std::string& name);
  // Every family's presets, in family order.
  static std::vector<std::string> preset_names();
  // Parses, reads strictly and validates a description {"family": ..., "options": {...}}: throws
  // std::runtime_error "<source>: <problem>" for malformed JSON, an unknown family, a missing,
  // unknown, mistyped or out-of-range option, or a model too large to build.
  static ModelDescription from_json(const std::string& json, const std::string& source);
  std::string to_json() const;

  const ModelFamily& family() const;
  // The options, of their own type (std::bad_any_cast for another family's).
  template <typename Options>
  const Options& options() const {
    return std::any_cast<const Options&>(options_);
  }
  template <typename Options>
  Options& options() {
    return std::any_cast<Options&>(options_);
  }
  // nullptr for another family's options type.
  template <typename Options>
  const Options* options_if() const {
    return std::any_cast<Options>(&options_);
  }

  // The family's validate() and size limit, as from_json applies them.
  void validate(const std::string& source) const;
  BuiltModel build() const;
  // The preset's name when this is exactly one, else "custom".
  std::string name() const;

  // The options every family has.
  int64_t image_size() const;
  int64_t in_channels() const;
  int64_t num_classes() const;
  std::vector<double> input_mean() const;
  std::vector<double> input_std() const;
  void set_image_size(int64_t size);
  void set_in_channels(int64_t channels);
  void set_num_classes(int64_t classes);
  void set_input_normalization(std::vector<double> mean, std::vector<double> std);

  bool operator==(const ModelDescription& other) const;
  bool operator!=(const ModelDescription& other) const { return !(*this == other); }

 private:
  static const ModelFamily& family_of(std::type_index options_type);
  template <typename T>
  T& option(const char* name);

  const ModelFamily* family_ = nullptr;
  std::any options_;
};

}  // namespace slideformer::nn
