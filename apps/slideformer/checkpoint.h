#pragma once
// Checkpoint files (format v2): the model's full description (model_config.h), the training
// recipe and progress (recipe.h), RNG state, metrics so far, the weights and the optimizer state.
// Written atomically (atomic_file.h): after a crash or a kill at any moment the file is the old
// checkpoint or the new one, whole. Recipe fields added after a checkpoint was written take
// their defaults when it is read.
//
// A v1 checkpoint (written before the model description was stored: it names a preset) still
// loads: its preset is rebuilt as it was while v1 was written (where the preset changed during
// that time, the version whose tensor shapes match the saved weights), and every shape is checked.
#include <torch/torch.h>

#include <string>

#include "model_config.h"
#include "recipe.h"

namespace slideformer::app {

struct CheckpointState {
  ModelConfig model;
  TrainConfig config;
  TrainProgress progress;
  at::Tensor rng_state;  // the default CPU generator's state
  std::string metrics;   // metrics.jsonl of the completed epochs (empty in v1 checkpoints)
  // The data the model was trained on (JSON of slideformer::data::DataConfig: class names, input
  // size, mean, std, crop_pct); empty for Fashion-MNIST's IDX files and older checkpoints.
  std::string data_config;
};

void save_checkpoint(const std::string& path, const CheckpointState& state,
                     const torch::nn::Module& model, const torch::optim::Optimizer& optimizer);

// Whether `path` is a ZIP archive whose pickles declare no length past their own bytes. torch's
// reader reserves each declared length before reading it, so a damaged file could make it take
// gigabytes: the program checks this before torch sees a checkpoint or an exported model.
bool torch_archive_is_sound(const std::string& path);

// Everything but the weights; std::runtime_error "<path>: <problem>" if the file is missing,
// unreadable, not a checkpoint or holds values out of range.
CheckpointState read_checkpoint_state(const std::string& path);

// Loads the weights (and the optimizer state when given) saved in `path`; std::runtime_error
// "<path>: <problem>" unless every tensor fits the model.
void load_checkpoint_weights(const std::string& path, torch::nn::Module& model,
                             torch::optim::Optimizer* optimizer);

}  // namespace slideformer::app
