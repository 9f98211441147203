#include "checkpoint.h"

#include <cstdio>
#include <stdexcept>
#include <utility>
#include <vector>

namespace slideformer::app {

namespace {

constexpr const char* kFormat = "slideformer-checkpoint-v1";

torch::serialize::InputArchive open_archive(const std::string& path) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error&) {
    throw std::runtime_error(path + ": not a readable checkpoint (missing, truncated or corrupt)");
  }
  c10::IValue format;
  if (!archive.try_read("format", format) || !format.isString() || format.toStringRef() != kFormat) {
    throw std::runtime_error(path + ": not a slideformer checkpoint (no '" + kFormat + "' marker)");
  }
  return archive;
}

template <typename T>
T read_value(torch::serialize::InputArchive& archive, const std::string& path, const char* key) {
  c10::IValue value;
  if (!archive.try_read(key, value)) throw std::runtime_error(path + ": checkpoint lacks '" + key + "'");
  return value.to<T>();
}

}  // namespace

void save_checkpoint(const std::string& path, const CheckpointState& state,
                     const torch::nn::Module& model, const torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  const TrainConfig& c = state.config;
  archive.write("preset", c10::IValue(c.preset));
  archive.write("data_dir", c10::IValue(c.data_dir));
  archive.write("epochs", c10::IValue(c.epochs));
  archive.write("batch_size", c10::IValue(c.batch_size));
  archive.write("lr", c10::IValue(c.lr));
  archive.write("weight_decay", c10::IValue(c.weight_decay));
  archive.write("label_smoothing", c10::IValue(c.label_smoothing));
  archive.write("augment", c10::IValue(c.augment));
  archive.write("limit", c10::IValue(c.limit));
  archive.write("seed", c10::IValue(c.seed));
  archive.write("epoch", c10::IValue(state.progress.epoch));
  archive.write("step_in_epoch", c10::IValue(state.progress.step_in_epoch));
  archive.write("global_step", c10::IValue(state.progress.global_step));
  archive.write("epoch_loss_sum", c10::IValue(state.progress.epoch_loss_sum));
  archive.write("epoch_seconds", c10::IValue(state.progress.epoch_seconds));
  archive.write("rng_state", state.rng_state);
  torch::serialize::OutputArchive model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  const std::string temporary = path + ".tmp";
  archive.save_to(temporary);
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::remove(temporary.c_str());
    throw std::runtime_error(path + ": cannot replace the checkpoint");
  }
}

CheckpointState read_checkpoint_state(const std::string& path) {
  torch::serialize::InputArchive archive = open_archive(path);
  CheckpointState state;
  TrainConfig& c = state.config;
  c.preset = read_value<std::string>(archive, path, "preset");
  c.data_dir = read_value<std::string>(archive, path, "data_dir");
  c.epochs = read_value<int64_t>(archive, path, "epochs");
  c.batch_size = read_value<int64_t>(archive, path, "batch_size");
  c.lr = read_value<double>(archive, path, "lr");
  c.weight_decay = read_value<double>(archive, path, "weight_decay");
  c.label_smoothing = read_value<double>(archive, path, "label_smoothing");
  c.augment = read_value<bool>(archive, path, "augment");
  c.limit = read_value<int64_t>(archive, path, "limit");
  c.seed = read_value<int64_t>(archive, path, "seed");
  state.progress.epoch = read_value<int64_t>(archive, path, "epoch");
  state.progress.step_in_epoch = read_value<int64_t>(archive, path, "step_in_epoch");
  state.progress.global_step = read_value<int64_t>(archive, path, "global_step");
  state.progress.epoch_loss_sum = read_value<double>(archive, path, "epoch_loss_sum");
  state.progress.epoch_seconds = read_value<double>(archive, path, "epoch_seconds");
  archive.read("rng_state", state.rng_state);
  return state;
}

void load_checkpoint_weights(const std::string& path, torch::nn::Module& model,
                             torch::optim::Optimizer* optimizer) {
  torch::serialize::InputArchive archive = open_archive(path);
  torch::serialize::InputArchive model_archive;
  archive.read("model", model_archive);
  // Module::load replaces each tensor whole (set_), whatever its shape: compare the shapes after.
  std::vector<std::pair<std::string, std::vector<int64_t>>> expected_shapes;
  for (const auto& item : model.named_parameters()) expected_shapes.emplace_back(item.key(), item.value().sizes().vec());
  for (const auto& item : model.named_buffers()) expected_shapes.emplace_back(item.key(), item.value().sizes().vec());
  try {
    model.load(model_archive);
    if (optimizer) {
      torch::serialize::InputArchive optimizer_archive;
      archive.read("optimizer", optimizer_archive);
      optimizer->load(optimizer_archive);
    }
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": weights do not fit the model (" +
                             std::string(e.what_without_backtrace()).substr(0, 200) + ")");
  }
  const auto parameters = model.named_parameters();
  const auto buffers = model.named_buffers();
  for (const auto& [name, shape] : expected_shapes) {
    const at::Tensor* loaded = parameters.find(name);
    if (!loaded) loaded = buffers.find(name);
    if (loaded->sizes() != c10::IntArrayRef(shape)) {
      throw std::runtime_error(path + ": weights do not fit the model (" + name + " has shape " +
                               c10::str(loaded->sizes()) + ", the model expects " +
                               c10::str(c10::IntArrayRef(shape)) + ")");
    }
  }
}

}  // namespace slideformer::app
