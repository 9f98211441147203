#pragma once
// `slideformer train`: a run of the training recipe (recipe.h) on one process or several.
#include "recipe.h"

namespace slideformer::app {

// Trains run.model into run.out_dir (checkpoint.pt, metrics.jsonl, curves.png). Returns
// the process exit code (130 after Ctrl-C, with the checkpoint saved; with nproc > 1, 1 when a
// rank failed).
int train(TrainRun run);

}  // namespace slideformer::app
