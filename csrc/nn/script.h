#pragma once
// What the modules' script_form() implementations share (include/slideformer/nn/script_form.h):
// TorchScript source with the slideformer operators in scope, and registration of weight copies
// returning the TorchScript expression that applies a layer with its own options.
#include <torch/csrc/jit/api/module.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>

#include <string>

#include "slideformer/nn/script_form.h"

namespace slideformer::nn::script {

// Defines methods from TorchScript source in which `torch` names the aten builtins and
// `slideformer` the slideformer operators (saved modules print them as ops.slideformer.*).
void define(torch::jit::Module& module, const std::string& source);

// A detached copy of `value` as parameter / buffer `name`: the exported module must not share
// storage with the live model.
void add_parameter(torch::jit::Module& module, const std::string& name, const at::Tensor& value);
void add_buffer(torch::jit::Module& module, const std::string& name, const at::Tensor& value);

// A list of ints as TorchScript source: "[1, 2, 3]".
std::string int_list(c10::IntArrayRef values);

// A double as TorchScript source, exactly (17 significant digits).
std::string literal(double value);

// Register the layer's weights as `name`_weight / `name`_bias and return the TorchScript
// expression applying it to `input`, with the layer's own shape, eps, stride, padding, groups.
std::string layer_norm(torch::jit::Module& module, const std::string& name,
                       const torch::nn::LayerNormImpl& norm, const std::string& input);
std::string linear(torch::jit::Module& module, const std::string& name,
                   const torch::nn::LinearImpl& linear, const std::string& input);
std::string conv2d(torch::jit::Module& module, const std::string& name,
                   const torch::nn::Conv2dImpl& conv, const std::string& input);
// torch.conv<rank>d with explicit weight, bias (may be undefined), stride, padding, dilation.
std::string convolution(torch::jit::Module& module, const std::string& name, const at::Tensor& weight,
                        const at::Tensor& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                        c10::IntArrayRef dilation, int64_t groups, const std::string& input);

// Registers child.script_form() as submodule `name` and returns "self.<name>.forward(<args>)".
std::string submodule(torch::jit::Module& module, const std::string& name, const ScriptForm& child,
                      const std::string& args);

}  // namespace slideformer::nn::script
