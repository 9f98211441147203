// The weight-file functions as operators of their own namespace, so Python (slideformer.weights)
// and TorchScript reach them without bindings: torch.ops.slideformer_io.*. Dicts keep the
// files' order.
#include <ATen/core/Dict.h>
#include <torch/library.h>

#include "slideformer/io/safetensors.h"
#include "slideformer/io/torch_save.h"
#include "slideformer/io/weight_file.h"
#include "slideformer/io/weight_mapping.h"

namespace slideformer::io {

namespace {

c10::Dict<std::string, at::Tensor> to_dict(const NamedTensors& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : tensors) dict.insert_or_assign(name, tensor);
  return dict;
}

NamedTensors from_dict(const c10::Dict<std::string, at::Tensor>& dict) {
  NamedTensors tensors;
  for (const auto& item : dict) tensors.emplace_back(item.key(), item.value());
  return tensors;
}

}  // namespace

TORCH_LIBRARY(slideformer_io, m) {
  m.def("read_weights(str path, str entry=\"\") -> Dict(str, Tensor)",
        [](const std::string& path, const std::string& entry) { return to_dict(read_weights(path, entry)); });
  m.def("read_safetensors(str path) -> (Dict(str, Tensor), Dict(str, str))", [](const std::string& path) {
    const SafetensorsContents contents = read_safetensors(path);
    c10::Dict<std::string, std::string> metadata;
    for (const auto& [key, value] : contents.metadata) metadata.insert_or_assign(key, value);
    return std::make_tuple(to_dict(contents.tensors), metadata);
  });
  m.def("save_safetensors(Dict(str, Tensor) tensors, str path, Dict(str, str)? metadata=None) -> ()",
        [](const c10::Dict<std::string, at::Tensor>& tensors, const std::string& path,
           const std::optional<c10::Dict<std::string, std::string>>& metadata) {
          Metadata pairs;
          if (metadata) {
            for (const auto& item : *metadata) pairs.emplace_back(item.key(), item.value());
          }
          save_safetensors(path, from_dict(tensors), pairs);
        });
  m.def("torch_save_state_dict_entries(str path) -> str[]",
        [](const std::string& path) { return torch_save_state_dict_entries(path); });
  m.def("check_torch_archive(str path) -> ()", [](const std::string& path) { check_torch_archive(path); });
  // The model's state dict gives the names and shapes to fill (meta tensors will do).
  m.def("map_weights(str source, Dict(str, Tensor) tensors, Dict(str, Tensor) model, str file) -> Dict(str, Tensor)",
        [](const std::string& source, const c10::Dict<std::string, at::Tensor>& tensors,
           const c10::Dict<std::string, at::Tensor>& model, const std::string& file) {
          const WeightSource family = weight_source(source);  // std::invalid_argument: a ValueError in Python
          return to_dict(map_weights(family, from_dict(tensors), shapes_of(from_dict(model)), file));
        });
  m.def("check_weights_fit(Dict(str, Tensor) tensors, Dict(str, Tensor) parameters, Dict(str, Tensor) buffers, "
        "str file) -> ()",
        [](const c10::Dict<std::string, at::Tensor>& tensors, const c10::Dict<std::string, at::Tensor>& parameters,
           const c10::Dict<std::string, at::Tensor>& buffers, const std::string& file) {
          check_weights_fit(from_dict(tensors), shapes_of(from_dict(parameters)), shapes_of(from_dict(buffers)), file);
        });
  m.def("mapping_table(str source) -> str[][]", [](const std::string& source) {
    std::vector<std::vector<std::string>> rows;
    for (const MappingRow& row : mapping_table(weight_source(source))) rows.push_back({row.source, row.target, row.change});
    return rows;
  });
}

}  // namespace slideformer::io
