// Checkpoints: what is saved loads back bit for bit, and bad files fail naming the file.
#include <torch/torch.h>

#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <string>

#include "checkpoint.h"
#include "previous_release.h"
#include "scratch_dir.h"
#include "slideformer/nn/options.h"

namespace slideformer::app {
namespace {

using CheckpointTest = slideformer::testing::ScratchDirTest;

struct Trainee {
  explicit Trainee(const nn::SlideTransformerOptions& options = nn::fashion()) : model(options) {}

  nn::SlideTransformer model;
  torch::optim::AdamW optimizer{model->parameters(), torch::optim::AdamWOptions(1e-3)};

  // One AdamW step on a fixed batch (the optimizer gains its moment estimates).
  void step(int64_t seed) {
    torch::manual_seed(seed);
    const auto& o = model->options;
    const at::Tensor images = torch::randn({4, o.in_channels(), o.image_size(), o.image_size()});
    const at::Tensor labels = torch::randint(0, o.num_classes(), {4}, at::kLong);
    optimizer.zero_grad();
    torch::nn::functional::cross_entropy(model(images), labels).backward();
    optimizer.step();
  }
};

void expect_same_tensors(const torch::nn::Module& a, const torch::nn::Module& b) {
  const auto a_params = a.named_parameters(), b_params = b.named_parameters();
  ASSERT_EQ(a_params.size(), b_params.size());
  for (const auto& item : a_params) EXPECT_TRUE(at::equal(item.value(), b_params[item.key()])) << item.key();
  const auto a_buffers = a.named_buffers(), b_buffers = b.named_buffers();
  ASSERT_EQ(a_buffers.size(), b_buffers.size());
  for (const auto& item : a_buffers) EXPECT_TRUE(at::equal(item.value(), b_buffers[item.key()])) << item.key();
}

CheckpointState sample_state() {
  CheckpointState state;
  state.model = preset_model("fashion");
  state.metrics = "{\"epoch\": 1, \"train_loss\": 1.5, \"test_accuracy\": 0.5}\n";
  state.config.epochs = 7;
  state.config.lr = 1.5e-3;
  state.config.seed = 42;
  state.config.limit = 256;
  state.progress = {3, 11, 140, 25.125, 61.5};
  torch::manual_seed(9);
  torch::rand({3});  // move the generator off a freshly seeded state
  state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  return state;
}

TEST_F(CheckpointTest, RoundTripIsBitExact) {
  Trainee original;
  original.step(1);
  const CheckpointState state = sample_state();
  const std::string file = path("checkpoint.pt");
  save_checkpoint(file, state, *original.model, original.optimizer);
  EXPECT_NE(access((file + ".tmp").c_str(), F_OK), 0) << "the temporary file was left behind";

  const CheckpointState loaded = read_checkpoint_state(file);
  EXPECT_TRUE(loaded.model == state.model);
  EXPECT_EQ(loaded.metrics, state.metrics);
  EXPECT_EQ(loaded.config.epochs, state.config.epochs);
  EXPECT_EQ(loaded.config.lr, state.config.lr);
  EXPECT_EQ(loaded.config.seed, state.config.seed);
  EXPECT_EQ(loaded.config.limit, state.config.limit);
  EXPECT_EQ(loaded.progress.epoch, 3);
  EXPECT_EQ(loaded.progress.step_in_epoch, 11);
  EXPECT_EQ(loaded.progress.global_step, 140);
  EXPECT_EQ(loaded.progress.epoch_loss_sum, 25.125);
  EXPECT_EQ(loaded.progress.epoch_seconds, 61.5);
  EXPECT_TRUE(at::equal(loaded.rng_state, state.rng_state));

  Trainee restored;  // different initial weights until loaded
  load_checkpoint_weights(file, *restored.model, &restored.optimizer);
  expect_same_tensors(*restored.model, *original.model);
  // The same next step from both: equal only if the optimizer's moments and step counts came back.
  original.step(2);
  restored.step(2);
  expect_same_tensors(*restored.model, *original.model);
}

// A checkpoint of the previous release (SlideTransformer's position table was the model's own
// tensor "absolute_position") loads with its optimizer state and gives the same logits.
TEST_F(CheckpointTest, PreviousReleaseCheckpointsLoadAndGiveTheSameLogits) {
  Trainee original;
  ASSERT_TRUE(original.model->absolute_position);
  original.step(1);
  const std::string file = path("previous.pt");
  save_checkpoint(file, sample_state(), slideformer::testing::PreviousRelease(*original.model), original.optimizer);
  torch::serialize::InputArchive archive, model_archive;
  archive.load_from(file);
  archive.read("model", model_archive);
  at::Tensor table;
  ASSERT_TRUE(model_archive.try_read("absolute_position", table));  // the old layout indeed

  Trainee restored;
  load_checkpoint_weights(file, *restored.model, &restored.optimizer);
  expect_same_tensors(*restored.model, *original.model);
  original.model->eval();
  restored.model->eval();
  const at::Tensor images = torch::randn({3, 1, 28, 28});
  EXPECT_TRUE(at::equal(restored.model(images), original.model(images)));
  original.model->train();
  restored.model->train();
  original.step(2);  // equal only if the moments came back to the same parameters
  restored.step(2);
  expect_same_tensors(*restored.model, *original.model);
}

TEST_F(CheckpointTest, ResavingReplacesTheFileWhole) {
  Trainee trainee;
  const std::string file = path("checkpoint.pt");
  CheckpointState state = sample_state();
  save_checkpoint(file, state, *trainee.model, trainee.optimizer);
  state.progress.epoch = 4;
  trainee.step(3);
  save_checkpoint(file, state, *trainee.model, trainee.optimizer);
  EXPECT_EQ(read_checkpoint_state(file).progress.epoch, 4);
  Trainee restored;
  load_checkpoint_weights(file, *restored.model, nullptr);
  expect_same_tensors(*restored.model, *trainee.model);
}

TEST_F(CheckpointTest, TruncatedOrForeignFilesFailNamingTheFile) {
  Trainee trainee;
  const std::string file = path("checkpoint.pt");
  save_checkpoint(file, sample_state(), *trainee.model, trainee.optimizer);
  struct stat info {};
  ASSERT_EQ(stat(file.c_str(), &info), 0);
  ASSERT_EQ(truncate(file.c_str(), info.st_size / 2), 0);
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(file), file + ": not a readable checkpoint (truncated or corrupt)");
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(path("absent.pt")),
                       path("absent.pt") + ": cannot open the checkpoint (No such file or directory)");
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(dir()), dir() + ": is a directory, not a checkpoint file");

  // A readable archive that is not ours: a bare module's weights.
  const std::string foreign = path("linear.pt");
  torch::save(torch::nn::Linear(2, 2), foreign);
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(foreign),
                       foreign + ": not a slideformer checkpoint (no 'slideformer-checkpoint-v2' marker)");
}

// Found by the checkpoint fuzzer (tests/fuzz/checkpoint/regression-unknown-attribute): an
// attribute name changed inside the archive's pickle made torch's reader throw std::out_of_range,
// which escaped the loader.
TEST_F(CheckpointTest, AnAttributeTheArchiveClassLacksFailsNamingTheFile) {
  Trainee trainee;
  const std::string file = path("checkpoint.pt");
  save_checkpoint(file, sample_state(), *trainee.model, trainee.optimizer);
  std::string bytes;
  {
    std::ifstream in(file, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  // The pickled key (BINUNICODE, 13 bytes) of one attribute, renamed; torch does not check the CRC.
  const std::string key = std::string("X\x0d\0\0\0", 5) + "epoch_seconds";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  bytes[at + key.size() - 1] = 'X';
  std::ofstream(file, std::ios::binary | std::ios::trunc) << bytes;
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(file), file + ": not a readable checkpoint (truncated or corrupt)");
  EXPECT_RUNTIME_ERROR(load_checkpoint_weights(file, *trainee.model, &trainee.optimizer),
                       file + ": not a readable checkpoint (truncated or corrupt)");
}

TEST_F(CheckpointTest, WeightsOfAnotherArchitectureFailNamingTheFile) {
  Trainee trainee;
  const std::string file = path("checkpoint.pt");
  save_checkpoint(file, sample_state(), *trainee.model, trainee.optimizer);
  nn::SlideTransformer other(nn::preset("fashion").embed_dim(16).heads({1, 2}));
  try {
    load_checkpoint_weights(file, *other, nullptr);
    ADD_FAILURE() << "weights of another shape were loaded";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(file + ": weights do not fit the model", 0), 0u) << e.what();
  }
}


// A model that is no preset: shapes (embed_dim, heads, kernel_size, depths) and behaviour alone
// (border, dilation, normalisation, drop path) differ from fashion.
nn::SlideTransformerOptions custom_options() {
  return nn::fashion().embed_dim(24).heads({2, 4}).depths({1, 2}).kernel_size(5).dilation(2)
      .border("clamp").mlp_ratio(3.0).drop_path_rate(0.125).input_mean({0.5}).input_std({0.25})
      .absolute_position_embedding(false);
}

TEST_F(CheckpointTest, CustomModelLoadsIntoExactlyThatModel) {
  Trainee original(custom_options());
  original.step(1);
  CheckpointState state = sample_state();
  state.model = ModelConfig(custom_options());
  const std::string file = path("checkpoint.pt");
  save_checkpoint(file, state, *original.model, original.optimizer);

  const CheckpointState loaded = read_checkpoint_state(file);
  EXPECT_TRUE(loaded.model == state.model);
  EXPECT_EQ(model_name(loaded.model), "custom");
  const auto& options = loaded.model.options<nn::SlideTransformerOptions>();
  EXPECT_EQ(options.border(), "clamp");
  EXPECT_EQ(options.dilation(), 2);
  EXPECT_EQ(options.input_std(), std::vector<double>{0.25});
  const Model restored = build_model(loaded.model);
  load_checkpoint_weights(file, *restored.module, nullptr);
  expect_same_tensors(*restored.module, *original.model);
  original.model->eval();
  restored.module->eval();
  const at::Tensor images = torch::rand({2, 1, 28, 28});
  EXPECT_TRUE(at::equal(restored(images), original.model(images)));
}

TEST_F(CheckpointTest, LeftoverTemporaryFileNeverMatters) {
  const std::string file = path("checkpoint.pt");
  std::ofstream(file + ".tmp") << "half a checkpoint from a killed run";
  Trainee trainee;
  save_checkpoint(file, sample_state(), *trainee.model, trainee.optimizer);
  EXPECT_NE(access((file + ".tmp").c_str(), F_OK), 0);
  std::ofstream(file + ".tmp") << "another one";
  EXPECT_EQ(read_checkpoint_state(file).progress.epoch, 3);
  Trainee restored;
  load_checkpoint_weights(file, *restored.model, &restored.optimizer);
  expect_same_tensors(*restored.model, *trainee.model);
}

// The values of a checkpoint as format v1 wrote them: the preset's name, no model description,
// no metrics.
std::vector<std::pair<std::string, c10::IValue>> v1_values(const std::string& preset) {
  const CheckpointState state = sample_state();
  const TrainConfig& c = state.config;
  const TrainProgress& p = state.progress;
  return {{"format", std::string("slideformer-checkpoint-v1")}, {"preset", preset},
          {"data_dir", c.data_dir}, {"epochs", c.epochs}, {"batch_size", c.batch_size}, {"lr", c.lr},
          {"weight_decay", c.weight_decay}, {"label_smoothing", c.label_smoothing},
          {"augment", c.augment}, {"limit", c.limit}, {"seed", c.seed}, {"epoch", p.epoch},
          {"step_in_epoch", p.step_in_epoch}, {"global_step", p.global_step},
          {"epoch_loss_sum", p.epoch_loss_sum}, {"epoch_seconds", p.epoch_seconds},
          {"rng_state", state.rng_state}};
}

void save_archive(const std::string& file, const std::vector<std::pair<std::string, c10::IValue>>& values,
                  const Trainee& trainee) {
  torch::serialize::OutputArchive archive;
  for (const auto& [key, value] : values) archive.write(key, value);
  torch::serialize::OutputArchive model_archive, optimizer_archive;
  slideformer::testing::save_as_previous_release(*trainee.model, model_archive);
  trainee.optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  archive.save_to(file);
}

void save_v1_checkpoint(const std::string& file, const std::string& preset, const Trainee& trainee) {
  save_archive(file, v1_values(preset), trainee);
}

// The fashion preset as it was while v1 checkpoints were written: first without a stem, then
// with a stem and overlapping patches, then also with an absolute position table.
std::vector<nn::SlideTransformerOptions> v1_fashion_versions() {
  const auto first = nn::SlideTransformerOptions()
      .image_size(28).in_channels(1).num_classes(10).patch_size(2).stem_channels(0)
      .overlapping_patches(false).embed_dim(48).absolute_position_embedding(false).depths({2, 2})
      .heads({3, 6}).stage_kinds({nn::AttentionKind::kSlide, nn::AttentionKind::kGlobal})
      .kernel_size(3).dilation(1).border("zeros").mlp_ratio(2.0).drop_path_rate(0.05)
      .input_mean({0.2860}).input_std({0.3530});
  const auto stem = nn::SlideTransformerOptions(first).stem_channels(24).overlapping_patches(true);
  return {first, stem, nn::SlideTransformerOptions(stem).absolute_position_embedding(true)};
}

TEST_F(CheckpointTest, V1CheckpointsLoadAsTheirPresetWasThen) {
  for (const auto& options : v1_fashion_versions()) {
    Trainee original(options);
    original.step(4);
    const std::string file = path("v1.pt");
    save_v1_checkpoint(file, "fashion", original);
    const CheckpointState loaded = read_checkpoint_state(file);
    EXPECT_TRUE(loaded.model == ModelConfig(options)) << model_config_to_json(loaded.model);
    EXPECT_EQ(loaded.progress.step_in_epoch, 11);
    EXPECT_EQ(loaded.metrics, "");
    Trainee restored(loaded.model.options<nn::SlideTransformerOptions>());
    load_checkpoint_weights(file, *restored.model, &restored.optimizer);
    expect_same_tensors(*restored.model, *original.model);
  }
}

TEST_F(CheckpointTest, V1CheckpointsOfUnknownPresetsOrOtherWeightsAreRefused) {
  const std::string file = path("v1.pt");
  Trainee trainee;
  save_v1_checkpoint(file, "swin_huge", trainee);
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(file), file + ": v1 checkpoint of an unknown preset 'swin_huge'");
  Trainee custom(custom_options());
  save_v1_checkpoint(file, "fashion", custom);
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(file),
                       file + ": v1 checkpoint of preset 'fashion' whose weights fit none of that preset's 3 versions");
}

TEST_F(CheckpointTest, ValuesOfTheWrongTypeOrMissingAreNamed) {
  const std::string file = path("odd.pt");
  Trainee trainee;
  auto values = v1_values("fashion");
  for (auto& [key, value] : values) {
    if (key == "epochs") value = 7.0;
  }
  save_archive(file, values, trainee);
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(file), file + ": checkpoint's 'epochs' has the wrong type (Double)");
  values = v1_values("fashion");
  values.pop_back();  // rng_state
  save_archive(file, values, trainee);
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(file), file + ": checkpoint lacks 'rng_state'");
}

}  // namespace
}  // namespace slideformer::app
