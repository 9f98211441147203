#pragma once
// Checkpoint files: written to a temporary file in the same directory, then renamed over the
// old one, so an interrupted or failed write never replaces a good checkpoint.
#include <torch/torch.h>

#include <string>

#include "training.h"

namespace slideformer::app {

struct CheckpointState {
  TrainConfig config;
  TrainProgress progress;
  at::Tensor rng_state;  // the default CPU generator's state
};

void save_checkpoint(const std::string& path, const CheckpointState& state,
                     const torch::nn::Module& model, const torch::optim::Optimizer& optimizer);

// Configuration, progress and RNG state; std::runtime_error "<path>: <problem>" if unreadable.
CheckpointState read_checkpoint_state(const std::string& path);

// Loads the weights (and the optimizer state when given) saved in `path`.
void load_checkpoint_weights(const std::string& path, torch::nn::Module& model,
                             torch::optim::Optimizer* optimizer);

}  // namespace slideformer::app
