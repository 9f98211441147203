#pragma once
// Published weights into this library's models: one table per source family maps each tensor's
// name (and, where the layouts differ, its shape) to the model's. The tables work on name ->
// tensor maps and the model's name -> shape map, not on module code; docs/pretrained.md lists
// every row.
//   slide-transformer  the official Slide-Transformer code (LeapLabTHU/Slide-Transformer,
//                      SlideSwinTransformer) -> slide_swin_tiny / small / base
//   timm               timm 1.0's MultiScaleVit (mvitv2_tiny / small / base), and the original
//                      MViTv2 checkpoints timm's checkpoint_filter_fn converts -> mvitv2_*
//   slideformer        this library's own names (export --format safetensors), unchanged
#include <torch/nn/module.h>

#include <string>
#include <utility>
#include <vector>

#include "slideformer/io/module_state.h"
#include "slideformer/io/weight_file.h"

namespace slideformer::io {

enum class WeightSource { kSlideformer, kSlideTransformer, kTimm };

// "slideformer", "slide-transformer", "timm"; std::invalid_argument listing them otherwise.
WeightSource weight_source(const std::string& name);
const char* weight_source_name(WeightSource source);

// One row of a family's table: the source names (a regular expression), the model's names it
// becomes ($1, $2: the groups; empty: dropped) and what happens to the tensor.
struct MappingRow {
  std::string source, target, change;
};
std::vector<MappingRow> mapping_table(WeightSource source);

// The tensors of a file of `source`'s family under the model's names, reshaped (and resized
// where the family's conventions resize) to the model's shapes. A leading "module." (a
// DataParallel wrapper) is dropped. WeightFileError(file, ...) when tensors fit no row of the
// table or have a shape the row cannot turn into the model's; names the model lacks pass
// through, for load_module_state to report with everything else that does not fit.
NamedTensors map_weights(WeightSource source, const NamedTensors& tensors, const TensorShapes& model,
                         const std::string& file);

// read_weights(path, entry), map_weights and load_module_state: `model` holds the file's weights,
// or WeightFileError naming the file and every mismatch, and `model` is unchanged.
void import_weights(torch::nn::Module& model, const std::string& path, WeightSource source,
                    const std::string& entry = "");

}  // namespace slideformer::io
