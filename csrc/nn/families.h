#pragma once
// The library's own model families (registry.h): each family's file holds its presets, its
// validate() and its registry entry; the registry's table starts with builtin_families().
#include <c10/util/Exception.h>

#include <string>
#include <utility>
#include <vector>

#include "slideformer/nn/description.h"
#include "slideformer/nn/registry.h"

namespace slideformer::nn {

ModelFamily slide_transformer_family();
ModelFamily mvit_family();

inline std::vector<ModelFamily> builtin_families() { return {slide_transformer_family(), mvit_family()}; }

// A family's presets by name, in the order names are listed: one table serves the list, the
// lookup and the error message.
template <typename Options>
using PresetTable = std::vector<std::pair<std::string, Options (*)()>>;

template <typename Options>
std::vector<std::string> table_names(const PresetTable<Options>& table) {
  std::vector<std::string> names;
  for (const auto& entry : table) names.push_back(entry.first);
  return names;
}

template <typename Options>
Options find_preset(const PresetTable<Options>& table, const std::string& name, const char* what) {
  for (const auto& entry : table) {
    if (entry.first == name) return entry.second();
  }
  std::string expected;
  for (const auto& entry : table) expected += (expected.empty() ? "" : ", ") + entry.first;
  TORCH_CHECK(false, "slideformer: unknown ", what, " '", name, "', expected one of ", expected);
}

// About how many parameters a hierarchical classifier has: the blocks dominate, (4 + 2 *
// mlp_ratio) d^2 each, plus `extra` (embedding tables, mergings) and the head.
template <typename Options>
double hierarchical_parameter_estimate(const Options& o, double extra) {
  double parameters = extra, dim = static_cast<double>(o.embed_dim());
  for (size_t s = 0; s < o.depths().size(); ++s, dim *= 2) {
    parameters += o.depths()[s] * (4 + 2 * o.mlp_ratio()) * dim * dim;
  }
  return parameters + dim / 2 * o.num_classes();
}

}  // namespace slideformer::nn
