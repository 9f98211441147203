// Checkpoints: what is saved loads back bit for bit, and bad files fail naming the file.
#include <torch/torch.h>

#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "scratch_dir.h"
#include "slideformer/nn/options.h"

namespace slideformer::app {
namespace {

using CheckpointTest = slideformer::testing::ScratchDirTest;

struct Trainee {
  nn::SlideTransformer model{nn::preset("fashion")};
  torch::optim::AdamW optimizer{model->parameters(), torch::optim::AdamWOptions(1e-3)};

  // One AdamW step on a fixed batch (the optimizer gains its moment estimates).
  void step(int64_t seed) {
    torch::manual_seed(seed);
    const at::Tensor images = torch::randn({4, 1, 28, 28});
    const at::Tensor labels = torch::randint(0, 10, {4}, at::kLong);
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
  state.config.preset = "fashion";
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
  EXPECT_EQ(loaded.config.preset, state.config.preset);
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
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(file),
                       file + ": not a readable checkpoint (missing, truncated or corrupt)");
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(path("absent.pt")),
                       path("absent.pt") + ": not a readable checkpoint (missing, truncated or corrupt)");

  // A readable archive that is not ours: a bare module's weights.
  const std::string foreign = path("linear.pt");
  torch::save(torch::nn::Linear(2, 2), foreign);
  EXPECT_RUNTIME_ERROR(read_checkpoint_state(foreign),
                       foreign + ": not a slideformer checkpoint (no 'slideformer-checkpoint-v1' marker)");
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

}  // namespace
}  // namespace slideformer::app
