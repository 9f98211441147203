#include "slideformer/io/module_state.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <unordered_map>
#include <unordered_set>

namespace slideformer::io {

namespace {

// "'a', 'b', 'c', 'd', 'e' and 4 more"
std::string name_list(const std::vector<std::string>& names) {
  constexpr size_t kShown = 5;
  std::string text;
  for (size_t i = 0; i < names.size() && i < kShown; ++i) text += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > kShown) text += " and " + std::to_string(names.size() - kShown) + " more";
  return text;
}

TensorShapes shapes(const torch::OrderedDict<std::string, at::Tensor>& tensors) {
  TensorShapes out;
  for (const auto& item : tensors) out.emplace_back(item.key(), item.value().sizes().vec());
  return out;
}

}  // namespace

TensorShapes shapes_of(const NamedTensors& tensors) {
  TensorShapes out;
  for (const auto& [name, tensor] : tensors) out.emplace_back(name, tensor.sizes().vec());
  return out;
}

NamedTensors module_state(const torch::nn::Module& module) {
  NamedTensors state;
  for (const auto& item : module.named_parameters()) state.emplace_back(item.key(), item.value());
  for (const auto& item : module.named_buffers()) state.emplace_back(item.key(), item.value());
  return state;
}

void check_weights_fit(const NamedTensors& tensors, const TensorShapes& parameters, const TensorShapes& buffers,
                       const std::string& source) {
  std::unordered_map<std::string, const std::vector<int64_t>*> targets;
  for (const auto* list : {&parameters, &buffers}) {
    for (const auto& [name, shape] : *list) targets.emplace(name, &shape);
  }
  std::unordered_set<std::string> given;
  std::vector<std::string> missing, unexpected, wrong_shape;
  for (const auto& [name, tensor] : tensors) {
    given.insert(name);
    const auto target = targets.find(name);
    if (target == targets.end()) {
      unexpected.push_back(name);
    } else if (tensor.sizes() != c10::IntArrayRef(*target->second)) {
      wrong_shape.push_back("'" + name + "' has shape " + c10::str(tensor.sizes()) + ", the model's is " +
                            c10::str(c10::IntArrayRef(*target->second)));
    }
  }
  for (const auto& [name, shape] : parameters) {
    if (!given.count(name)) missing.push_back(name);
  }
  std::vector<std::string> problems;
  if (!missing.empty()) problems.push_back("missing " + name_list(missing));
  if (!unexpected.empty()) problems.push_back("unexpected " + name_list(unexpected));
  if (!wrong_shape.empty()) {
    problems.push_back(wrong_shape.front() + (wrong_shape.size() > 1 ? " (and " + std::to_string(wrong_shape.size() - 1) +
                                                                          " more tensors of another shape)" : ""));
  }
  if (problems.empty()) return;
  std::string text = "weights do not fit the model: " + problems[0];
  for (size_t i = 1; i < problems.size(); ++i) text += "; " + problems[i];
  throw WeightFileError(source, text);
}

void load_module_state(torch::nn::Module& module, const NamedTensors& tensors, const std::string& source) {
  const auto parameters = module.named_parameters(), buffers = module.named_buffers();
  check_weights_fit(tensors, shapes(parameters), shapes(buffers), source);
  torch::NoGradGuard no_grad;
  for (const auto& [name, tensor] : tensors) {
    const at::Tensor* target = parameters.find(name);
    (target ? *target : buffers[name]).copy_(tensor);
  }
}

}  // namespace slideformer::io
