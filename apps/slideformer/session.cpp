#include "session.h"

#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <mutex>
#include <stdexcept>

#include "atomic_file.h"
#include "image_data.h"
#include "inference.h"
#include "pretrained.h"
#include "run_files.h"

namespace slideformer::app {

namespace {

std::string checkpoint_path_of(const TrainRun& run) { return run.out_dir + "/checkpoint.pt"; }

// A resumed run keeps the model and recipe it started with: options given again must agree.
TrainConfig resumed_config(const TrainRun& run, const CheckpointState& state, const std::string& path) {
  // A model trained on image folders is its preset fitted to the data's channels, classes and size.
  ModelConfig given_model = run.model;
  if (!state.data_config.empty()) {
    fit_model_to_data(given_model, state.model.in_channels(), state.model.num_classes(), state.config.image_size);
  }
  if (run.given.preset && !(given_model == state.model)) {
    throw std::runtime_error(fmt::format(
        "{}: the checkpoint holds model '{}', not --preset {} (a resumed run keeps its model: leave "
        "--preset out)", path, model_name(state.model), model_name(run.model)));
  }
  return resumed_recipe(run.config, state.config, run.given, path);
}

// Opens a run's image folders: the model takes the data's channels and classes (a fresh run) or
// must fit them (a resumed one); the data config goes into the checkpoint.
void open_image_folders(Session& session, const ImageFolders& folders, const TrainRun& run) {
  const TrainConfig& config = run.config;
  CheckpointState& state = session.state;
  session.train_folder = open_folder(folders.train, config.limit);
  session.val_folder = open_folder(folders.val, config.limit);
  if (session.val_folder->classes() != session.train_folder->classes()) {
    throw std::runtime_error(fmt::format("{}: its class folders differ from those of {} ({} and {} classes): the "
                                         "validation data must have the training data's classes",
                                         folders.val, folders.train, session.val_folder->classes().size(),
                                         session.train_folder->classes().size()));
  }
  const auto& classes = session.train_folder->classes();
  if (!run.resume) {
    fit_model_to_data(state.model, detect_channels(*session.train_folder), static_cast<int64_t>(classes.size()),
                      config.image_size);
    check_model_config(state.model, folders.train);
  }
  const data::DataConfig data_config = data_config_for(state.model, classes, config.crop_pct);
  if (run.resume && !state.data_config.empty() &&
      !(data::DataConfig::from_json(state.data_config, run.out_dir) == data_config)) {
    throw std::runtime_error(fmt::format("{}: the data in {} is not what the checkpoint was trained on (other "
                                         "classes or input)", checkpoint_path_of(run), folders.train));
  }
  state.data_config = data_config.to_json();
  session.train_size = session.train_folder->size();
  session.train_loader = train_loader(*session.train_folder, data_config, config.augment, run.threads,
                                      static_cast<uint64_t>(config.seed), config.skip_bad_images);
  session.val_loader = eval_loader(*session.val_folder, data_config, run.threads, config.skip_bad_images);
}

void open_data(Session& session, const TrainRun& run) {
  const TrainConfig& config = run.config;
  if (const auto folders = image_folders(config)) {
    open_image_folders(session, *folders, run);
    return;
  }
  session.train_data = load_fashion_mnist(config.data_dir, true, config.limit);
  session.test_data = load_fashion_mnist(config.data_dir, false, config.limit);
  check_data_fits(session.state.model, session.train_data);
  check_data_fits(session.state.model, session.test_data);
  session.train_size = session.train_data.images.size(0);
}

// The model (from the seed, or --init's weights) and its optimizer.
void build_trainee(Session& session, const TrainRun& run, bool writer) {
  const TrainConfig& config = run.config;
  torch::manual_seed(static_cast<uint64_t>(config.seed));
  session.model = build_model(session.state.model);
  if (!run.resume && !config.init.empty()) {
    const std::string report = load_initial_weights(session.model, config.init, config.init_from);
    if (writer) fmt::print("{}\n", report);
  }
  freeze_stages(session.model, config.freeze_stages);
  ParameterGroups groups = parameter_groups(session.model, config.weight_decay, config.lr_decay);
  session.lr_scales = std::move(groups.lr_scales);
  session.optimizer = std::make_unique<torch::optim::AdamW>(std::move(groups.groups));
}

// A resumed run's weights, optimizer state and random stream, from its checkpoint.
void restore_from_checkpoint(Session& session, const TrainRun& run) {
  const TrainConfig& config = run.config;
  const CheckpointState& state = session.state;
  const int64_t n = session.train_size;
  const int64_t steps_per_epoch = (n + config.batch_size - 1) / config.batch_size;
  if (state.progress.step_in_epoch >= steps_per_epoch) {
    throw std::runtime_error(fmt::format(
        "{}: the checkpoint is at step {} of an epoch, the data ({} images in {}) has {} steps per "
        "epoch: not the data it was trained on",
        checkpoint_path_of(run), state.progress.step_in_epoch, n, config.data_dir, steps_per_epoch));
  }
  load_checkpoint_weights(checkpoint_path_of(run), *session.model.module, session.optimizer.get());
  at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the global one
  std::lock_guard<std::mutex> lock(generator.mutex());
  generator.set_state(state.rng_state);
}

}  // namespace

CheckpointState starting_state(TrainRun& run) {
  const std::string checkpoint_path = checkpoint_path_of(run);
  CheckpointState state;
  if (run.resume) {
    if (access(checkpoint_path.c_str(), F_OK) != 0) {
      throw std::runtime_error(checkpoint_path + ": no checkpoint to resume (train without --resume to start)");
    }
    state = read_checkpoint_state(checkpoint_path);
    run.config = resumed_config(run, state, checkpoint_path);  // the settings it started with
  } else {
    if (access(checkpoint_path.c_str(), F_OK) == 0) {
      throw std::runtime_error(checkpoint_path +
                               ": a checkpoint is already there (continue it with --resume, or "
                               "train into another --out)");
    }
    state.model = run.model;
  }
  state.config = run.config;
  return state;
}

Session open_session(TrainRun& run, bool writer) {
  const std::string& out_dir = run.out_dir;
  if (writer) prepare_out_dir(out_dir, checkpoint_path_of(run));
  Session session;
  CheckpointState& state = session.state;
  state = starting_state(run);
  if (writer && run.resume) {
    if (state.metrics.empty() && state.progress.epoch > 0) {
      state.metrics = read_text(out_dir + "/metrics.jsonl");  // a v1 checkpoint: keep the file's
    }
    write_metrics_files(out_dir, state.metrics);
  } else if (writer) {
    remove_metrics_files(out_dir);
  }
  at::set_num_threads(static_cast<int>(run.threads));
  open_data(session, run);
  build_trainee(session, run, writer);
  if (run.resume) restore_from_checkpoint(session, run);
  return session;
}

}  // namespace slideformer::app
