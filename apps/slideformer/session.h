#pragma once
// What a training run needs before its first step: its state (fresh, or a checkpoint's), its data,
// its model and optimizer. Every rank opens one; the writer (rank 0) also prepares the output
// directory.
#include <torch/optim/adamw.h>

#include <memory>
#include <optional>
#include <vector>

#include "checkpoint.h"
#include "idx.h"
#include "model_config.h"
#include "recipe.h"
#include "slideformer/data.h"

namespace slideformer::app {

struct Session {
  CheckpointState state;
  Dataset train_data, test_data;  // Fashion-MNIST's IDX files
  // Or image folders, read by loaders that give normalised batches.
  std::optional<data::ImageFolder> train_folder, val_folder;
  std::unique_ptr<data::Loader> train_loader, val_loader;
  int64_t train_size = 0;
  Model model;
  std::unique_ptr<torch::optim::AdamW> optimizer;
  std::vector<double> lr_scales;  // of the optimizer's groups (layer-wise decay)
};

// The state a run starts from: with --resume the checkpoint's (checked against the options given,
// its recipe then replacing run.config), else a fresh one. Writes nothing.
CheckpointState starting_state(TrainRun& run);

// Opens the run. The writer's output directory is checked first; a resumed run's metrics files
// are rewritten from the checkpoint's history, a fresh run removes a previous run's.
Session open_session(TrainRun& run, bool writer);

}  // namespace slideformer::app
