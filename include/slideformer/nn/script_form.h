#pragma once
// TorchScript forms owned by the modules (docs/export.md). Every module of the models writes its
// TorchScript form next to its C++ forward, in its own source file: one place per module to
// change, with the constants (LayerNorm eps, strides, ...) taken from the module's options. The
// models' forward, their export and the command-line program's layer walk all go through
// layers(): no second copy of a forward walk.
#include <ATen/Tensor.h>
#include <torch/csrc/jit/api/module.h>
#include <torch/nn/module.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace slideformer::nn {

// A module with a TorchScript form.
class ScriptForm {
 public:
  virtual ~ScriptForm() = default;
  // A torch::jit::Module whose forward computes what the module's forward does, with copies of
  // its weights (the module itself is left as it is). Its methods call only aten and the
  // slideformer operators, so loading it needs only the slideformer op library.
  virtual torch::jit::Module script_form() const = 0;
};

// A step of a model's walk from images to features: one tensor in, one out.
class Layer : public ScriptForm {
 public:
  virtual at::Tensor forward(const at::Tensor& x) = 0;
};

// A model's steps in forward order, with the names their TorchScript forms get in the export.
using NamedLayers = std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>;

// The module as a Layer / ScriptForm; a c10::Error naming the module's type when it has none (a
// new block kind must provide its TorchScript form before a model can use it).
Layer& as_layer(torch::nn::Module& module);
const ScriptForm& as_script_form(const torch::nn::Module& module);

// Runs the layers in order; `visit`, when given, sees each layer's output.
at::Tensor forward_layers(const NamedLayers& layers, at::Tensor x,
                          const std::function<void(const std::string&, torch::nn::Module&,
                                                   const at::Tensor&)>& visit = {});

}  // namespace slideformer::nn
