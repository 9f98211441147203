#pragma once
// A torch::nn::Module's weights as named tensors, and named tensors into a module, checked.
#include <torch/nn/module.h>

#include <string>
#include <utility>
#include <vector>

#include "slideformer/io/weight_file.h"

namespace slideformer::io {

// Names and shapes of a model's parameters or buffers.
using TensorShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;
TensorShapes shapes_of(const NamedTensors& tensors);

// The module's parameters, then its buffers, under their state-dict names.
NamedTensors module_state(const torch::nn::Module& module);

// Whether `tensors` fit a model of these parameters and buffers: every parameter is there, every
// tensor has its target's shape and names a parameter or buffer; buffers may be absent (the
// models' buffers are computed from their options, not learned). Otherwise WeightFileError(
// source, "weights do not fit the model: " + every mismatch).
void check_weights_fit(const NamedTensors& tensors, const TensorShapes& parameters, const TensorShapes& buffers,
                       const std::string& source);

// check_weights_fit, then copies `tensors` into the module's parameters and buffers of the same
// names (converting the dtype where it differs); the module is unchanged if they do not fit.
void load_module_state(torch::nn::Module& module, const NamedTensors& tensors, const std::string& source);

}  // namespace slideformer::io
