// The recipe's one list of fields (recipe.h): every field travels through a checkpoint, older
// checkpoints read with the defaults of the fields they predate, and a resumed run keeps its
// recipe except where an option may change.
#include <torch/torch.h>

#include <string>
#include <utility>
#include <vector>

#include "checkpoint.h"
#include "recipe.h"
#include "scratch_dir.h"

namespace slideformer::app {
namespace {

using RecipeTest = slideformer::testing::ScratchDirTest;

// Every field set by hand (not through the visitor) to a value other than its default.
CheckpointState state_without_defaults() {
  CheckpointState state;
  state.model = preset_model("fashion");
  TrainConfig& c = state.config;
  c.data_dir = "/data/a";
  c.epochs = 9;
  c.batch_size = 33;
  c.lr = 2.5e-3;
  c.weight_decay = 0.125;
  c.label_smoothing = 0.25;
  c.augment = true;
  c.limit = 77;
  c.seed = -5;
  c.train_dir = "/data/t";
  c.val_dir = "/data/v";
  c.image_size = 32;
  c.crop_pct = 0.5;
  c.skip_bad_images = true;
  c.amp = "fp16";
  c.init = "/weights/w.safetensors";
  c.init_from = "timm";
  c.freeze_stages = 1;
  c.lr_decay = 0.75;
  state.progress = TrainProgress{4, 6, 50, 12.5, 8.25, 2, 1024.0, 17};
  state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  return state;
}

void expect_same_recipe(const TrainConfig& a, const TrainConfig& b) {
  EXPECT_EQ(a.data_dir, b.data_dir);
  EXPECT_EQ(a.epochs, b.epochs);
  EXPECT_EQ(a.batch_size, b.batch_size);
  EXPECT_EQ(a.lr, b.lr);
  EXPECT_EQ(a.weight_decay, b.weight_decay);
  EXPECT_EQ(a.label_smoothing, b.label_smoothing);
  EXPECT_EQ(a.augment, b.augment);
  EXPECT_EQ(a.limit, b.limit);
  EXPECT_EQ(a.seed, b.seed);
  EXPECT_EQ(a.train_dir, b.train_dir);
  EXPECT_EQ(a.val_dir, b.val_dir);
  EXPECT_EQ(a.image_size, b.image_size);
  EXPECT_EQ(a.crop_pct, b.crop_pct);
  EXPECT_EQ(a.skip_bad_images, b.skip_bad_images);
  EXPECT_EQ(a.amp, b.amp);
  EXPECT_EQ(a.init, b.init);
  EXPECT_EQ(a.init_from, b.init_from);
  EXPECT_EQ(a.freeze_stages, b.freeze_stages);
  EXPECT_EQ(a.lr_decay, b.lr_decay);
}

void expect_same_progress(const TrainProgress& a, const TrainProgress& b) {
  EXPECT_EQ(a.epoch, b.epoch);
  EXPECT_EQ(a.step_in_epoch, b.step_in_epoch);
  EXPECT_EQ(a.global_step, b.global_step);
  EXPECT_EQ(a.epoch_loss_sum, b.epoch_loss_sum);
  EXPECT_EQ(a.epoch_seconds, b.epoch_seconds);
  EXPECT_EQ(a.epoch_skipped_steps, b.epoch_skipped_steps);
  EXPECT_EQ(a.loss_scale, b.loss_scale);
  EXPECT_EQ(a.loss_scale_growth_tracker, b.loss_scale_growth_tracker);
}

std::string save(const std::string& file, const CheckpointState& state) {
  nn::SlideTransformer model(nn::fashion());
  torch::optim::AdamW optimizer(model->parameters());
  save_checkpoint(file, state, *model, optimizer);
  return file;
}

TEST_F(RecipeTest, EveryFieldTravelsThroughACheckpoint) {
  const CheckpointState state = state_without_defaults();
  const CheckpointState loaded = read_checkpoint_state(save(path("c.pt"), state));
  expect_same_recipe(loaded.config, state.config);
  expect_same_progress(loaded.progress, state.progress);
}

// A checkpoint of `state` holding only the recipe fields that `kept` accepts.
template <typename Kept>
std::string checkpoint_with(const std::string& file, const CheckpointState& state, Kept kept) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string("slideformer-checkpoint-v2")));
  archive.write("model_config", c10::IValue(model_config_to_json(state.model)));
  archive.write("metrics", c10::IValue(std::string()));
  archive.write("rng_state", state.rng_state);
  visit_recipe_fields([&](const RecipeField& field, auto member) {
    if (kept(field)) archive.write(field.key, c10::IValue(recipe_value(state.config, state.progress, member)));
  });
  nn::SlideTransformer model(nn::fashion());
  torch::optim::AdamW optimizer(model->parameters());
  torch::serialize::OutputArchive model_archive, optimizer_archive;
  model->save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.save_to(file);
  return file;
}

// As a program of an earlier generation wrote it: the fields of generations after `last` absent.
std::string older_checkpoint(const std::string& file, const CheckpointState& state, RecipeGeneration last) {
  return checkpoint_with(file, state, [&](const RecipeField& field) { return field.generation <= last; });
}

TEST_F(RecipeTest, OlderCheckpointsReadWithTheDefaultsOfLaterFields) {
  CheckpointState state = state_without_defaults();
  const CheckpointState loaded = read_checkpoint_state(older_checkpoint(path("old.pt"), state, RecipeGeneration::kFirst));
  TrainConfig expected;  // the first generation's fields as saved, the others at their defaults
  expected.data_dir = state.config.data_dir;
  expected.epochs = state.config.epochs;
  expected.batch_size = state.config.batch_size;
  expected.lr = state.config.lr;
  expected.weight_decay = state.config.weight_decay;
  expected.label_smoothing = state.config.label_smoothing;
  expected.augment = state.config.augment;
  expected.limit = state.config.limit;
  expected.seed = state.config.seed;
  expect_same_recipe(loaded.config, expected);
  TrainProgress expected_progress;
  expected_progress.epoch = state.progress.epoch;
  expected_progress.step_in_epoch = state.progress.step_in_epoch;
  expected_progress.global_step = state.progress.global_step;
  expected_progress.epoch_loss_sum = state.progress.epoch_loss_sum;
  expected_progress.epoch_seconds = state.progress.epoch_seconds;
  expect_same_progress(loaded.progress, expected_progress);

  // Written before fine-tuning: the image-folder and mixed-precision fields are read.
  const CheckpointState before_fine_tuning =
      read_checkpoint_state(older_checkpoint(path("amp.pt"), state, RecipeGeneration::kMixedPrecision));
  EXPECT_EQ(before_fine_tuning.config.crop_pct, 0.5);
  EXPECT_EQ(before_fine_tuning.config.amp, "fp16");
  EXPECT_EQ(before_fine_tuning.progress.loss_scale, 1024.0);
  EXPECT_EQ(before_fine_tuning.config.init_from, TrainConfig().init_from);
  EXPECT_EQ(before_fine_tuning.config.lr_decay, TrainConfig().lr_decay);
}

TEST_F(RecipeTest, AGenerationWithOneFieldMissingIsRefused) {
  const CheckpointState state = state_without_defaults();
  for (const char* missing : {"epochs", "crop_pct", "loss_scale", "lr_decay"}) {
    const std::string file = checkpoint_with(path("c.pt"), state,
                                             [&](const RecipeField& field) { return std::string(field.key) != missing; });
    EXPECT_RUNTIME_ERROR(read_checkpoint_state(file), file + ": checkpoint lacks '" + missing + "'");
  }
}

// A recipe given on the command line for a resumed run: each field differs from `saved`.
TEST(ResumedRecipe, KeepsTheCheckpointsRecipeAndTakesTheOptionsThatMayChange) {
  const TrainConfig saved = state_without_defaults().config;
  TrainConfig given;  // the defaults: every field differs from saved
  given.data_dir = "/moved";
  GivenOptions none;
  expect_same_recipe(resumed_recipe(given, saved, none, "c.pt"), saved);

  GivenOptions moved;
  moved.recipe = {"data_dir", "train_dir", "val_dir", "skip_bad_images"};
  TrainConfig expected = saved;
  expected.data_dir = "/moved";
  expected.train_dir = given.train_dir;
  expected.val_dir = given.val_dir;
  expected.skip_bad_images = given.skip_bad_images;
  expect_same_recipe(resumed_recipe(given, saved, moved, "c.pt"), expected);

  GivenOptions other_lr;
  other_lr.recipe = {"lr"};
  EXPECT_RUNTIME_ERROR(resumed_recipe(given, saved, other_lr, "c.pt"),
                       "c.pt: --lr 0.003 differs from the checkpoint's 0.0025 (a resumed run keeps its settings: "
                       "leave --lr out, or train into another --out)");
  GivenOptions other_source;
  other_source.recipe = {"init_from"};
  EXPECT_RUNTIME_ERROR(resumed_recipe(given, saved, other_source, "c.pt"),
                       "c.pt: --from slideformer differs from the checkpoint's timm (a resumed run keeps its "
                       "settings: leave --from out, or train into another --out)");
  GivenOptions same_lr;
  same_lr.recipe = {"lr"};
  given.lr = saved.lr;
  expect_same_recipe(resumed_recipe(given, saved, same_lr, "c.pt"), saved);
}

}  // namespace
}  // namespace slideformer::app
