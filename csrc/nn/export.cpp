// The TorchScript machinery the modules share (csrc/nn/script.h), the Layer walk, and the export
// of a whole classifier. Each module's own TorchScript form lives next to its C++ forward.
#include "slideformer/nn/export.h"

#include <c10/util/Type.h>
#include <c10/util/irange.h>
#include <torch/csrc/jit/frontend/resolver.h>

#include <iomanip>
#include <sstream>

#include "nn/layers.h"
#include "nn/script.h"

namespace slideformer::nn {

namespace script {

namespace {

// Resolves `torch` to the aten builtins (as the default resolver does) and `slideformer` to our
// operators, so the source can call slideformer.attention(...). Saved modules print these calls as
// ops.slideformer.*, which torch::jit::load resolves once the library is loaded.
struct OpResolver : torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string& name,
                                                         torch::jit::GraphFunction&,
                                                         const torch::jit::SourceRange&) override {
    if (name == "torch") return std::make_shared<torch::jit::BuiltinModule>("aten");
    if (name == "slideformer") return std::make_shared<torch::jit::BuiltinModule>("slideformer");
    return nullptr;
  }
  c10::TypePtr resolveType(const std::string&, const torch::jit::SourceRange&) override {
    return nullptr;
  }
};

}  // namespace

std::string int_list(c10::IntArrayRef values) {
  std::ostringstream out;
  out << "[";
  for (const auto i : c10::irange(values.size())) out << (i ? ", " : "") << values[i];
  out << "]";
  return out.str();
}

void define(torch::jit::Module& module, const std::string& source) {
  module.define(source, std::make_shared<OpResolver>());
}

void add_parameter(torch::jit::Module& module, const std::string& name, const at::Tensor& value) {
  module.register_parameter(name, value.detach().clone(), /*is_buffer=*/false);
}

void add_buffer(torch::jit::Module& module, const std::string& name, const at::Tensor& value) {
  module.register_buffer(name, value.detach().clone());
}

std::string literal(double value) {
  std::ostringstream out;
  out << std::setprecision(17) << value;
  std::string text = out.str();
  if (text.find_first_of(".en") == std::string::npos) text += ".0";  // a float, not an int
  return text;
}

namespace {
// Registers `name`_weight and, when defined, `name`_bias; returns "self.<name>_weight, <bias>"
// with the bias "None" when there is none.
std::string weight_and_bias(torch::jit::Module& module, const std::string& name, const at::Tensor& weight,
                            const at::Tensor& bias) {
  add_parameter(module, name + "_weight", weight);
  if (!bias.defined()) return "self." + name + "_weight, None";
  add_parameter(module, name + "_bias", bias);
  return "self." + name + "_weight, self." + name + "_bias";
}
}  // namespace

std::string layer_norm(torch::jit::Module& module, const std::string& name,
                       const torch::nn::LayerNormImpl& norm, const std::string& input) {
  return "torch.layer_norm(" + input + ", " + int_list(norm.options.normalized_shape()) + ", " +
         weight_and_bias(module, name, norm.weight, norm.bias) + ", " + literal(norm.options.eps()) + ")";
}

std::string linear(torch::jit::Module& module, const std::string& name,
                   const torch::nn::LinearImpl& linear, const std::string& input) {
  return "torch.linear(" + input + ", " + weight_and_bias(module, name, linear.weight, linear.bias) + ")";
}

std::string conv2d(torch::jit::Module& module, const std::string& name,
                   const torch::nn::Conv2dImpl& conv, const std::string& input) {
  const auto* padding = std::get_if<torch::ExpandingArray<2>>(&conv.options.padding());
  TORCH_CHECK(padding, "slideformer::to_torchscript: convolution '", name,
              "' has a string padding mode; the export needs explicit padding");
  return convolution(module, name, conv.weight, conv.bias, *conv.options.stride(), **padding,
                     *conv.options.dilation(), conv.options.groups(), input);
}

std::string convolution(torch::jit::Module& module, const std::string& name, const at::Tensor& weight,
                        const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                        c10::IntArrayRef dilation, int64_t groups, const std::string& input) {
  const std::string parameters = weight_and_bias(module, name, weight, bias);
  return "torch.conv" + std::to_string(weight.dim() - 2) + "d(" + input + ", " + parameters + ", " +
         int_list(stride) + ", " + int_list(padding) + ", " + int_list(dilation) + ", " + std::to_string(groups) + ")";
}

std::string submodule(torch::jit::Module& module, const std::string& name, const ScriptForm& child,
                      const std::string& args) {
  module.register_module(name, child.script_form());
  return "self." + name + ".forward(" + args + ")";
}

}  // namespace script

namespace {
std::string type_name(const torch::nn::Module& module) {
  return c10::demangle(typeid(module).name());
}
}  // namespace

Layer& as_layer(torch::nn::Module& module) {
  auto* layer = dynamic_cast<Layer*>(&module);
  TORCH_CHECK(layer, "slideformer::nn::as_layer: module ", module.name(), " (", type_name(module),
              ") is not a slideformer::nn::Layer: it has no forward walk step and no TorchScript form");
  return *layer;
}

const ScriptForm& as_script_form(const torch::nn::Module& module) {
  const auto* form = dynamic_cast<const ScriptForm*>(&module);
  TORCH_CHECK(form, "slideformer::to_torchscript: module ", module.name(), " (", type_name(module),
              ") has no TorchScript form (it does not implement slideformer::nn::ScriptForm)");
  return *form;
}

at::Tensor forward_layers(const NamedLayers& layers, at::Tensor x,
                          const std::function<void(const std::string&, torch::nn::Module&,
                                                   const at::Tensor&)>& visit) {
  for (const auto& [name, module] : layers) {
    x = as_layer(*module).forward(x);
    if (visit) visit(name, *module, x);
  }
  return x;
}

namespace {

// Whether layers[i] is the last block of its stage ("block_<stage>_<i>"): where a stage output is.
bool ends_stage(const NamedLayers& layers, size_t i) {
  const std::string& name = layers[i].first;
  if (name.rfind("block_", 0) != 0) return false;
  const std::string stage = name.substr(0, name.find('_', 6) + 1);  // "block_<stage>_"
  return i + 1 == layers.size() || layers[i + 1].first.rfind(stage, 0) != 0;
}

// The TorchScript lines from [0, 1] images (normalised with the model's mean and std) through
// every layer, the layers registered as submodules of `root`; `after_stage` follows the line of
// each stage's last block.
std::string script_walk(const Classifier& model, torch::jit::Module& root, const std::string& after_stage) {
  const int64_t channels = model.in_channels();
  TORCH_CHECK(static_cast<int64_t>(model.input_mean().size()) == channels &&
                  static_cast<int64_t>(model.input_std().size()) == channels,
              "slideformer::to_torchscript: input_mean and input_std need one entry per input "
              "channel (", channels, "), got ", model.input_mean().size(), " and ", model.input_std().size());
  root.register_buffer("input_mean", torch::tensor(model.input_mean(), at::kFloat).view({1, channels, 1, 1}));
  root.register_buffer("input_std", torch::tensor(model.input_std(), at::kFloat).view({1, channels, 1, 1}));
  std::ostringstream code;
  code << "    x = (images - self.input_mean) / self.input_std\n";
  const NamedLayers layers = model.layers();
  for (size_t i = 0; i < layers.size(); ++i) {
    code << "    x = " << script::submodule(root, layers[i].first, as_script_form(*layers[i].second), "x") << "\n";
    if (ends_stage(layers, i)) code << after_stage;
  }
  return code.str();
}

}  // namespace

std::vector<std::vector<double>> drop_path_schedule(const std::vector<int64_t>& depths, double rate) {
  int64_t total = 0;
  for (int64_t depth : depths) total += depth;
  std::vector<std::vector<double>> rates;
  int64_t index = 0;
  for (int64_t depth : depths) {
    rates.emplace_back();
    for (int64_t i = 0; i < depth; ++i, ++index) rates.back().push_back(total > 1 ? rate * index / (total - 1) : 0.0);
  }
  return rates;
}

at::Tensor Classifier::forward_tokens(
    const at::Tensor& images,
    const std::function<void(const std::string&, torch::nn::Module&, const at::Tensor&)>& visit) {
  return forward_layers(layers(), images, visit);
}

std::vector<at::Tensor> Classifier::forward_features(const at::Tensor& images) {
  const NamedLayers all = layers();
  std::vector<at::Tensor> stages;
  at::Tensor x = images;
  for (size_t i = 0; i < all.size(); ++i) {
    x = as_layer(*all[i].second).forward(x);
    if (ends_stage(all, i)) stages.push_back(x.permute({0, 3, 1, 2}));
  }
  return stages;
}

at::Tensor Classifier::forward_head(const at::Tensor& features) {
  return apply_linear(head, norm(features).mean({1, 2}));
}

at::Tensor Classifier::forward(const at::Tensor& images) { return forward_head(forward_tokens(images)); }

torch::jit::Module Classifier::script_form() const {
  torch::jit::Module root("Classifier");
  const std::string walk = script_walk(*this, root, "");
  std::ostringstream code;
  code << "def forward(self, images: Tensor) -> Tensor:\n" << walk
       << "    x = " << script::layer_norm(root, "norm", *norm, "x") << "\n"
       << "    return " << script::linear(root, "head", *head, "x.mean([1, 2])") << "\n";
  script::define(root, code.str());
  root.eval();
  return root;
}

torch::jit::Module Classifier::features_script_form() const {
  torch::jit::Module root("Backbone");
  const std::string walk = script_walk(*this, root, "    features.append(x.permute(0, 3, 1, 2))\n");
  script::define(root, "def forward(self, images: Tensor) -> List[Tensor]:\n    features: List[Tensor] = []\n" + walk +
                           "    return features\n");
  root.eval();
  return root;
}

torch::jit::Module to_torchscript(const Classifier& model) { return model.script_form(); }

torch::jit::Module to_torchscript(const VideoMViTImpl& model) { return model.script_form(); }

torch::jit::Module to_torchscript_features(const Classifier& model) { return model.features_script_form(); }

}  // namespace slideformer::nn
