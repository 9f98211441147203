#include "checkpoint.h"

#include "atomic_file.h"
#include "slideformer/data/transforms.h"
#include "slideformer/io/torch_save.h"
#include "slideformer/io/weight_mapping.h"
#include "slideformer/nn/description.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <torch/script.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <map>
#include <stdexcept>
#include <type_traits>
#include <utility>
#include <vector>

namespace slideformer::app {

namespace {

constexpr const char* kFormat = "slideformer-checkpoint-v2";
constexpr const char* kFormatV1 = "slideformer-checkpoint-v1";

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

std::string system_error(const std::string& what) { return what + " (" + std::strerror(errno) + ")"; }

// The architectures a preset name of a v1 checkpoint may denote (the library's list).
std::vector<ModelConfig> v1_preset_versions(const std::string& preset, const std::string& path) {
  const nlohmann::json versions = nlohmann::json::parse(nn::v1_presets());
  if (!versions.contains(preset)) fail(path, "v1 checkpoint of an unknown preset '" + preset + "'");
  std::vector<ModelConfig> configs;
  for (const auto& json : versions[preset]) configs.push_back(model_config_from_json(json.dump(), "v1 preset " + preset));
  return configs;
}

}  // namespace

bool torch_archive_is_sound(const std::string& path) {
  try {
    io::check_torch_archive(path);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

namespace {

struct OpenedCheckpoint {
  torch::serialize::InputArchive archive;
  bool v1 = false;
};

OpenedCheckpoint open_checkpoint(const std::string& path) {
  struct stat info {};
  if (stat(path.c_str(), &info) != 0) fail(path, system_error("cannot open the checkpoint"));
  if (S_ISDIR(info.st_mode)) fail(path, "is a directory, not a checkpoint file");
  if (!torch_archive_is_sound(path)) fail(path, "not a readable checkpoint (truncated or corrupt)");
  OpenedCheckpoint opened;
  // torch's reader throws c10::Error for most damage, plain std:: exceptions for some (an
  // attribute the archive's class lacks: std::out_of_range).
  try {
    opened.archive.load_from(path);
  } catch (const std::exception&) {
    fail(path, "not a readable checkpoint (truncated or corrupt)");
  }
  c10::IValue format;
  if (opened.archive.try_read("format", format) && format.isString()) {
    if (format.toStringRef() == kFormat) return opened;
    if (format.toStringRef() == kFormatV1) {
      opened.v1 = true;
      return opened;
    }
    fail(path, "checkpoint format '" + format.toStringRef() + "' is not one this program reads (" +
                   kFormat + " or " + kFormatV1 + ")");
  }
  // Exported models are readable archives too: they hold methods, not a format marker.
  bool exported_model = false;
  try {
    exported_model = torch::jit::load(path).find_method("forward").has_value();
  } catch (const std::exception&) {
  }
  if (exported_model) fail(path, "is an exported TorchScript model, not a checkpoint (predict takes those)");
  fail(path, std::string("not a slideformer checkpoint (no '") + kFormat + "' marker)");
}

template <typename T>
T read_value(torch::serialize::InputArchive& archive, const std::string& path, const char* key) {
  c10::IValue value;
  if (!archive.try_read(key, value)) fail(path, std::string("checkpoint lacks '") + key + "'");
  bool fits = false;
  if constexpr (std::is_same_v<T, int64_t>) fits = value.isInt();
  if constexpr (std::is_same_v<T, double>) fits = value.isDouble();
  if constexpr (std::is_same_v<T, bool>) fits = value.isBool();
  if constexpr (std::is_same_v<T, std::string>) fits = value.isString();
  if (!fits) fail(path, std::string("checkpoint's '") + key + "' has the wrong type (" + value.tagKind() + ")");
  return value.to<T>();
}

// Values a damaged or hand-made checkpoint could hold that training would trip over.
void check_state(const CheckpointState& state, const std::string& path) {
  const TrainConfig& c = state.config;
  const TrainProgress& p = state.progress;
  auto check = [&](bool ok, const char* key, const auto& value, const char* expected) {
    if (!ok) fail(path, fmt::format("checkpoint's '{}' must be {}, got {}", key, expected, value));
  };
  check(c.epochs >= 1, "epochs", c.epochs, ">= 1");
  check(c.batch_size >= 1, "batch_size", c.batch_size, ">= 1");
  check(c.lr > 0 && std::isfinite(c.lr), "lr", c.lr, "> 0");
  check(c.weight_decay >= 0 && std::isfinite(c.weight_decay), "weight_decay", c.weight_decay, ">= 0");
  check(c.label_smoothing >= 0 && c.label_smoothing <= 1, "label_smoothing", c.label_smoothing, "in [0, 1]");
  check(c.limit >= 0, "limit", c.limit, ">= 0");
  check(p.epoch >= 0 && p.epoch <= c.epochs, "epoch", p.epoch, "in [0, epochs]");
  check(c.image_size >= 0 && c.image_size <= 4096, "image_size", c.image_size, "in [0, 4096]");
  check(c.crop_pct > 0 && c.crop_pct <= 1, "crop_pct", c.crop_pct, "in (0, 1]");
  check(c.freeze_stages >= 0, "freeze_stages", c.freeze_stages, ">= 0");
  check(c.lr_decay > 0 && c.lr_decay <= 1, "lr_decay", c.lr_decay, "in (0, 1]");
  check(p.step_in_epoch >= 0, "step_in_epoch", p.step_in_epoch, ">= 0");
  check(c.amp == "none" || c.amp == "bf16" || c.amp == "fp16", "amp", c.amp, "none, bf16 or fp16");
  check(p.epoch_skipped_steps >= 0 && p.epoch_skipped_steps <= p.step_in_epoch, "epoch_skipped_steps",
        p.epoch_skipped_steps, "in [0, step_in_epoch]");
  check(p.loss_scale > 0 && std::isfinite(p.loss_scale), "loss_scale", p.loss_scale, "> 0");
  check(p.loss_scale_growth_tracker >= 0, "loss_scale_growth_tracker", p.loss_scale_growth_tracker, ">= 0");
  check(p.global_step >= p.step_in_epoch, "global_step", p.global_step, ">= step_in_epoch");
  check(state.rng_state.defined() && state.rng_state.scalar_type() == at::kByte && state.rng_state.dim() == 1,
        "rng_state", state.rng_state.defined() ? c10::str(state.rng_state.sizes()) : "nothing",
        "a 1-d uint8 tensor");
}

// The stored data config must parse and describe the model's input.
void check_data_config(const CheckpointState& state, const std::string& path) {
  data::DataConfig config;
  try {
    config = data::DataConfig::from_json(state.data_config, path);
  } catch (const std::invalid_argument& error) {
    throw std::runtime_error(error.what());
  }
  if (config.channels != state.model.in_channels() || config.image_size != state.model.image_size() ||
      static_cast<int64_t>(config.class_names.size()) != state.model.num_classes()) {
    fail(path, fmt::format("the data config ({} channels, {} x {}, {} classes) does not fit the model ({} channels, "
                           "{} x {}, {} classes)", config.channels, config.image_size, config.image_size,
                           config.class_names.size(), state.model.in_channels(), state.model.image_size(),
                           state.model.image_size(), state.model.num_classes()));
  }
}

// The tensors of a Module::save archive (a module's tensors, then an archive per child) under
// their state-dict names.
io::NamedTensors saved_tensors(torch::serialize::InputArchive& archive, const std::string& prefix = "") {
  io::NamedTensors tensors;
  for (const std::string& key : archive.keys()) {
    at::Tensor tensor;
    torch::serialize::InputArchive child;
    if (archive.try_read(key, tensor)) {
      tensors.emplace_back(prefix + key, tensor);
    } else if (archive.try_read(key, child)) {
      io::NamedTensors inner = saved_tensors(child, prefix + key + ".");
      tensors.insert(tensors.end(), std::make_move_iterator(inner.begin()), std::make_move_iterator(inner.end()));
    }
  }
  return tensors;
}

// The saved weights under today's names (the library's own table renames those of earlier
// releases), checked and copied into the model; the model is unusable if this throws.
void load_weights(torch::serialize::InputArchive& archive, const std::string& path,
                  torch::nn::Module& model, torch::optim::Optimizer* optimizer) {
  try {
    torch::serialize::InputArchive model_archive;
    archive.read("model", model_archive);
    const io::NamedTensors saved = io::map_weights(io::WeightSource::kSlideformer, saved_tensors(model_archive),
                                                   io::shapes_of(io::module_state(model)), path);
    io::load_module_state(model, saved, path);
    if (optimizer) {
      torch::serialize::InputArchive optimizer_archive;
      archive.read("optimizer", optimizer_archive);
      optimizer->load(optimizer_archive);
    }
  } catch (const io::WeightFileError& e) {
    fail(path, e.problem());
  } catch (const c10::Error& e) {
    fail(path, "weights do not fit the model (" + std::string(e.what_without_backtrace()).substr(0, 200) + ")");
  } catch (const std::exception& e) {
    fail(path, "weights do not fit the model (" + std::string(e.what()).substr(0, 200) + ")");
  }
}

// The v1-era version of the named preset whose tensor shapes match the saved weights.
ModelConfig v1_model(OpenedCheckpoint& opened, const std::string& path) {
  const std::string preset = read_value<std::string>(opened.archive, path, "preset");
  const std::vector<ModelConfig> versions = v1_preset_versions(preset, path);
  if (versions.size() == 1) return versions.front();  // load_checkpoint_weights checks the shapes
  for (const ModelConfig& version : versions) {
    const Model model = build_model(version);
    try {
      load_weights(opened.archive, path, *model.module, nullptr);
      return version;
    } catch (const std::runtime_error&) {
    }
  }
  fail(path, "v1 checkpoint of preset '" + preset + "' whose weights fit none of that preset's " +
                 std::to_string(versions.size()) + " versions");
}

// The recipe and progress fields of a checkpoint. Those of a generation later than the
// checkpoint's (image folders, mixed precision, fine-tuning) are all absent, and keep their
// defaults; a generation's first field tells whether it is there.
void read_recipe(torch::serialize::InputArchive& archive, const std::string& path, CheckpointState& state) {
  std::map<RecipeGeneration, bool> present{{RecipeGeneration::kFirst, true}};
  visit_recipe_fields([&](const RecipeField& field, auto member) {
    if (!present.count(field.generation)) {
      c10::IValue value;
      present[field.generation] = archive.try_read(field.key, value);
    }
    if (!present[field.generation]) return;
    auto& value = recipe_value(state.config, state.progress, member);
    value = read_value<std::decay_t<decltype(value)>>(archive, path, field.key);
  });
}

}  // namespace

void save_checkpoint(const std::string& path, const CheckpointState& state,
                     const torch::nn::Module& model, const torch::optim::Optimizer& optimizer) {
  torch::serialize::OutputArchive archive;
  archive.write("format", c10::IValue(std::string(kFormat)));
  archive.write("model_config", c10::IValue(model_config_to_json(state.model)));
  visit_recipe_fields([&](const RecipeField& field, auto member) {
    archive.write(field.key, c10::IValue(recipe_value(state.config, state.progress, member)));
  });
  archive.write("rng_state", state.rng_state);
  archive.write("metrics", c10::IValue(state.metrics));
  archive.write("data_config", c10::IValue(state.data_config));
  torch::serialize::OutputArchive model_archive, optimizer_archive;
  model.save(model_archive);
  optimizer.save(optimizer_archive);
  archive.write("model", model_archive);
  archive.write("optimizer", optimizer_archive);
  write_file_atomically(path, "the checkpoint", [&](std::ostream& out) { archive.save_to(out); });
}

CheckpointState read_checkpoint_state(const std::string& path) {
  OpenedCheckpoint opened = open_checkpoint(path);
  torch::serialize::InputArchive& archive = opened.archive;
  CheckpointState state;
  state.model = opened.v1 ? v1_model(opened, path)
                          : model_config_from_json(read_value<std::string>(archive, path, "model_config"), path);
  if (!opened.v1) state.metrics = read_value<std::string>(archive, path, "metrics");
  read_recipe(archive, path, state);
  if (!archive.try_read("rng_state", state.rng_state)) fail(path, "checkpoint lacks 'rng_state'");
  // The data the model was trained on, absent from checkpoints of runs on IDX files before it.
  c10::IValue present;
  if (archive.try_read("data_config", present)) {
    state.data_config = read_value<std::string>(archive, path, "data_config");
  }
  check_state(state, path);
  if (!state.data_config.empty()) check_data_config(state, path);
  return state;
}

void load_checkpoint_weights(const std::string& path, torch::nn::Module& model,
                             torch::optim::Optimizer* optimizer) {
  OpenedCheckpoint opened = open_checkpoint(path);
  load_weights(opened.archive, path, model, optimizer);
}

}  // namespace slideformer::app
