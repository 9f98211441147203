#pragma once
// The training recipe (the options of `slideformer train` other than the model) and a run's
// progress, both saved in every checkpoint, and TrainRun, one invocation of `slideformer train`.
// visit_recipe_fields() lists the saved fields once, with each field's checkpoint key,
// command-line option and resume rule: the checkpoint writer and reader, the command line's
// record of the options given and the resume check all follow it.
#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "grad_scaler.h"
#include "model_config.h"

namespace slideformer::app {

inline constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";

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

// Where a run stands.
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

// The checkpoint generations that added recipe fields. A checkpoint older than a generation lacks
// all of its fields, and its run used their defaults.
enum class RecipeGeneration { kFirst, kImageFolders, kMixedPrecision, kFineTuning };

// What a resumed run does with an option given again.
enum class OnResume {
  kMustAgree,  // the run keeps the checkpoint's value: a different one is an error
  kMayChange,  // the data may have moved, bad images may be skipped or not: the given value wins
};

struct RecipeField {
  const char* key;     // in the checkpoint
  const char* option;  // of `slideformer train`; nullptr for progress
  OnResume on_resume;
  RecipeGeneration generation;
};

// Calls visit(field, member) for every field of TrainConfig and then of TrainProgress, member
// being a pointer to that member (`T TrainConfig::*` or `T TrainProgress::*`), in a fixed order
// in which the fields of a generation are adjacent.
template <typename Visitor>
void visit_recipe_fields(Visitor&& visit) {
  using G = RecipeGeneration;
  constexpr OnResume agree = OnResume::kMustAgree, change = OnResume::kMayChange;
  visit(RecipeField{"data_dir", "--data", change, G::kFirst}, &TrainConfig::data_dir);
  visit(RecipeField{"epochs", "--epochs", agree, G::kFirst}, &TrainConfig::epochs);
  visit(RecipeField{"batch_size", "--batch-size", agree, G::kFirst}, &TrainConfig::batch_size);
  visit(RecipeField{"lr", "--lr", agree, G::kFirst}, &TrainConfig::lr);
  visit(RecipeField{"weight_decay", "--weight-decay", agree, G::kFirst}, &TrainConfig::weight_decay);
  visit(RecipeField{"label_smoothing", "--label-smoothing", agree, G::kFirst}, &TrainConfig::label_smoothing);
  visit(RecipeField{"augment", "--augment", agree, G::kFirst}, &TrainConfig::augment);
  visit(RecipeField{"limit", "--limit", agree, G::kFirst}, &TrainConfig::limit);
  visit(RecipeField{"seed", "--seed", agree, G::kFirst}, &TrainConfig::seed);
  visit(RecipeField{"train_dir", "--train-dir", change, G::kImageFolders}, &TrainConfig::train_dir);
  visit(RecipeField{"val_dir", "--val-dir", change, G::kImageFolders}, &TrainConfig::val_dir);
  visit(RecipeField{"image_size", "--image-size", agree, G::kImageFolders}, &TrainConfig::image_size);
  visit(RecipeField{"crop_pct", "--crop-pct", agree, G::kImageFolders}, &TrainConfig::crop_pct);
  visit(RecipeField{"skip_bad_images", "--skip-bad-images", change, G::kImageFolders}, &TrainConfig::skip_bad_images);
  visit(RecipeField{"amp", "--amp", agree, G::kMixedPrecision}, &TrainConfig::amp);
  visit(RecipeField{"init", "--init", agree, G::kFineTuning}, &TrainConfig::init);
  visit(RecipeField{"init_from", "--from", agree, G::kFineTuning}, &TrainConfig::init_from);
  visit(RecipeField{"freeze_stages", "--freeze-stages", agree, G::kFineTuning}, &TrainConfig::freeze_stages);
  visit(RecipeField{"lr_decay", "--lr-decay", agree, G::kFineTuning}, &TrainConfig::lr_decay);
  visit(RecipeField{"epoch", nullptr, agree, G::kFirst}, &TrainProgress::epoch);
  visit(RecipeField{"step_in_epoch", nullptr, agree, G::kFirst}, &TrainProgress::step_in_epoch);
  visit(RecipeField{"global_step", nullptr, agree, G::kFirst}, &TrainProgress::global_step);
  visit(RecipeField{"epoch_loss_sum", nullptr, agree, G::kFirst}, &TrainProgress::epoch_loss_sum);
  visit(RecipeField{"epoch_seconds", nullptr, agree, G::kFirst}, &TrainProgress::epoch_seconds);
  visit(RecipeField{"epoch_skipped_steps", nullptr, agree, G::kMixedPrecision}, &TrainProgress::epoch_skipped_steps);
  visit(RecipeField{"loss_scale", nullptr, agree, G::kMixedPrecision}, &TrainProgress::loss_scale);
  visit(RecipeField{"loss_scale_growth_tracker", nullptr, agree, G::kMixedPrecision},
        &TrainProgress::loss_scale_growth_tracker);
}

// The value a member pointer of visit_recipe_fields denotes in (config, progress), both const or not.
template <typename Config, typename Progress, typename T>
auto& recipe_value(Config& config, Progress&, T TrainConfig::*member) {
  return config.*member;
}
template <typename Config, typename Progress, typename T>
auto& recipe_value(Config&, Progress& progress, T TrainProgress::*member) {
  return progress.*member;
}
template <typename Member>
inline constexpr bool kIsTrainConfigMember = false;
template <typename T>
inline constexpr bool kIsTrainConfigMember<T TrainConfig::*> = true;

// The options of `slideformer train` that the user gave (the others hold their defaults).
struct GivenOptions {
  bool preset = false, threads = false, nproc = false;
  std::set<std::string> recipe;  // keys of the recipe fields given

  bool has(const RecipeField& field) const { return recipe.count(field.key) > 0; }
};

// One invocation of `slideformer train`: the model, the recipe and how this invocation runs it.
struct TrainRun {
  ModelConfig model = preset_model("fashion");
  TrainConfig config;
  std::string out_dir;
  int64_t threads = 1;
  // Continue from out_dir/checkpoint.pt with its model and recipe. Options given on the command
  // line must then agree with the checkpoint, except those that may change (OnResume::kMayChange),
  // --threads and --stop-after.
  bool resume = false;
  GivenOptions given;
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

// A resumed run continues with the recipe it started with: `saved` with the kMayChange fields
// that were given replaced by `given`'s. Throws std::runtime_error "<checkpoint>: <option> <value>
// differs from the checkpoint's <value> ..." for a kMustAgree option given with another value.
TrainConfig resumed_recipe(const TrainConfig& given, const TrainConfig& saved, const GivenOptions& given_options,
                           const std::string& checkpoint);

}  // namespace slideformer::app
