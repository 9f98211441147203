#pragma once
// Published and exported weights in the program (docs/pretrained.md): `slideformer import`,
// `export --format safetensors`, and what `train --init` does before its first step (weights
// from a file, frozen stages, layer-wise learning-rate decay).
#include <torch/optim/optimizer.h>

#include <string>
#include <vector>

#include "model_config.h"

namespace slideformer::app {

struct ImportRun {
  std::string source = "slide-transformer";  // slide-transformer | timm | slideformer
  std::string file;
  std::string preset;       // empty: the model_config a slideformer safetensors file carries
  std::string out_dir;      // receives checkpoint.pt
  std::string entry;        // torch.save files: the state dict's key ("" picks one, weight_file.h)
  std::string class_names;  // a text file, one name per line ("" names the classes 0, 1, ...)
  double crop_pct = 0;      // 0: the source's pretrained configuration (timm 0.9, Slide-Transformer 0.875)
};

// Writes run.out_dir/checkpoint.pt holding the file's weights in the preset, with the pretrained
// input configuration (size, mean and std, crop_pct, class names); eval, export, predict and
// train --init take it like any checkpoint.
int import_checkpoint(const ImportRun& run);

// The checkpoint's parameters and buffers under the model's names in a safetensors file whose
// metadata carries the model description and data config ("model_config", "data_config").
int export_safetensors(const std::string& checkpoint, const std::string& out);

// The weights `file` holds for `model`: a checkpoint of this program, or a safetensors /
// torch.save file of the `source` family (slideformer, slide-transformer, timm). A head of
// another class count is left as initialised (the returned line says so); any other tensor
// that does not fit stops with the list of mismatches.
std::string load_initial_weights(const Model& model, const std::string& file, const std::string& source);

// Freezes (requires_grad false) the patch embedding, the position encodings and the first
// `stages` stages with the mergings that follow them (Swin's frozen_stages >= 1 convention).
// std::runtime_error unless 0 <= stages < the model's stage count.
void freeze_stages(const Model& model, int64_t stages);

// Optimizer groups: weight decay on linear and convolution weights only (not biases, norms,
// shift mixing and bias tables) and, with lr_decay < 1, one group per depth (BEiT / timm
// layer-wise decay: the patch embedding is depth 0, the i-th block overall i + 1, a merging
// the depth of the block after it, the final norm and head L + 1 for L blocks; a group's
// learning rate is scaled by lr_decay^(L + 1 - depth)). Frozen parameters are left out.
struct ParameterGroups {
  std::vector<torch::optim::OptimizerParamGroup> groups;
  std::vector<double> lr_scales;  // one per group
};
ParameterGroups parameter_groups(const Model& model, double weight_decay, double lr_decay);

}  // namespace slideformer::app
