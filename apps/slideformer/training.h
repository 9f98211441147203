#pragma once
// Training, evaluation and checkpoints of the slideformer command-line program.
#include <torch/torch.h>

#include <set>
#include <string>
#include <vector>

#include "grad_scaler.h"
#include "idx.h"
#include "model_config.h"

namespace slideformer::app {

inline constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";

// The training recipe (the model is described apart: ModelConfig).
struct TrainConfig {
  std::string data_dir = kDefaultDataDir;
  int64_t epochs = 6;
  int64_t batch_size = 128;
  double lr = 3e-3;
  double weight_decay = 0.05;
  double label_smoothing = 0.1;
  // Random crop (2-pixel padding) and horizontal flip. Off by default: in a 6-epoch schedule it
  // costs accuracy (measured: 76% instead of 82% after 3 epochs of 20k images).
  bool augment = false;
  int64_t limit = 0;  // use only the first N images of each split (0 = all)
  int64_t seed = 0;
  // Image folders (docs/data.md): --train-dir / --val-dir, else data_dir/train and data_dir/val
  // when data_dir/train exists. The model takes its channels and classes from the data.
  std::string train_dir, val_dir;
  int64_t image_size = 0;   // the model's input size (0: the preset's)
  double crop_pct = 0.875;  // eval transform: resize the short side to image_size / crop_pct, crop
  bool skip_bad_images = false;  // count unreadable images instead of stopping
  // Mixed precision: "none", "bf16" (the forward under autocast to bfloat16) or "fp16" (float16,
  // with a dynamic loss scale: grad_scaler.h).
  std::string amp = "none";
  // Fine-tuning (pretrained.h, docs/pretrained.md): the first step starts from the weights of
  // `init` (a file of the `init_from` family), the first `freeze_stages` stages stay as they
  // are, and the learning rate of the depth-d parameters is scaled by lr_decay^(L + 1 - d).
  std::string init;
  std::string init_from = "slideformer";
  int64_t freeze_stages = 0;
  double lr_decay = 1.0;
};

// Where a run stands; saved in every checkpoint.
struct TrainProgress {
  int64_t epoch = 0;          // completed epochs
  int64_t step_in_epoch = 0;  // steps of the current epoch already taken
  int64_t global_step = 0;
  // Sum of the step losses and training seconds of the current epoch so far (for its metrics).
  double epoch_loss_sum = 0.0;
  double epoch_seconds = 0.0;
  // --amp fp16: steps of the current epoch skipped for inf / NaN gradients, and the loss scale.
  int64_t epoch_skipped_steps = 0;
  double loss_scale = GradScaler::kInitialScale;
  int64_t loss_scale_growth_tracker = 0;
};

struct TrainRun {
  ModelConfig model = preset_model("fashion");
  TrainConfig config;
  std::string out_dir;
  int64_t threads = 1;
  // Continue from out_dir/checkpoint.pt with its model and recipe. Options given on the command
  // line ("--lr", "--preset", ...) must then agree with the checkpoint, except --data (data may
  // have moved), --threads and --stop-after.
  bool resume = false;
  std::set<std::string> given_options;
  // > 0: end this invocation after that many epochs (the schedule still spans config.epochs).
  int64_t stop_after = 0;
  // Data parallelism. nproc > 1 starts that many processes of this program on this machine (the
  // ranks, each with `threads` threads), which meet on 127.0.0.1:master_port (0: a free port).
  // A process a launcher started (WORLD_SIZE, RANK, ... in the environment, as torchrun sets
  // them) joins that job instead. Either way --batch-size is the global batch, split over the
  // ranks, so the results do not depend on their number; rank 0 alone prints and writes files.
  int64_t nproc = 1;
  int64_t master_port = 0;
  // Bound on the rendezvous, on each collective and on how long a silent rank stalls the others.
  int64_t timeout_seconds = 300;
  // Gradients are all-reduced in buckets of this many KiB (the first one at most 1024), each
  // launched as soon as its gradients are ready, overlapping the rest of the backward.
  int64_t bucket_kib = 25 * 1024;
  // Non-empty: rank 0 writes the gradients of this run's first step there, after the all-reduce
  // and before the optimizer uses them ((name, tensor) pairs: dict(torch.load(path)) in Python).
  std::string save_gradients;
  // The command line (argv[0] is replaced by this program's file): what the ranks run.
  std::vector<std::string> argv;
};

// Trains run.model into run.out_dir (checkpoint.pt, metrics.jsonl, curves.png). Returns
// the process exit code (130 after Ctrl-C, with the checkpoint saved; with nproc > 1, 1 when a
// rank failed).
int train(TrainRun run);

// Predicted classes of [0, 1] images run through `logits` in batches.
at::Tensor predict_classes(const std::function<at::Tensor(const at::Tensor&)>& logits,
                           const Dataset& data, int64_t batch_size = 500);

// The model a checkpoint holds (weights loaded, eval mode), its description and recipe.
struct LoadedModel {
  Model model;
  ModelConfig model_config;
  TrainConfig config;
  std::string data_config;  // JSON of slideformer::data::DataConfig ("" for Fashion-MNIST's IDX files)
};
LoadedModel load_model(const std::string& checkpoint_path);

// Throws std::runtime_error unless the images have the model's channels and size.
void check_data_fits(const ModelConfig& model, const Dataset& data);

// [0, 1] float images normalised as the model expects.
at::Tensor normalise(const slideformer::nn::Classifier& model, const at::Tensor& unit_images);

}  // namespace slideformer::app
