#include "training.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "checkpoint.h"
#include "image_data.h"
#include "pretrained.h"
#include "slideformer/autocast.h"
#include "slideformer/distributed.h"
#include "slideformer/nn/functional.h"

namespace slideformer::app {

namespace {

using Clock = std::chrono::steady_clock;
namespace F = torch::nn::functional;
namespace dist = slideformer::distributed;

std::atomic<bool> interrupted{false};

void on_interrupt(int) { interrupted = true; }

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

std::string duration_text(double seconds) {
  const auto s = static_cast<int64_t>(seconds);
  return s >= 60 ? fmt::format("{}m{:02d}s", s / 60, s % 60) : fmt::format("{}s", s);
}

// Linear warm-up over the first 5% of steps, then cosine decay to zero.
double learning_rate(const TrainConfig& config, int64_t step, int64_t total_steps) {
  const int64_t warmup = std::max<int64_t>(1, total_steps / 20);
  if (step < warmup) return config.lr * static_cast<double>(step + 1) / warmup;
  const double progress = static_cast<double>(step - warmup) / std::max<int64_t>(1, total_steps - warmup);
  return config.lr * 0.5 * (1.0 + std::cos(M_PI * progress));
}

// Random crop from a 2-pixel zero-padded image and a horizontal flip, one draw per image, done
// for the whole batch as one gather: a flip only reverses an image's column indices. The images
// are rows [offset, offset + n) of a global batch of global_size: the draws are made for all of
// it, so each image gets the same crop and flip however the batch is split over processes.
at::Tensor augment(const at::Tensor& images, int64_t offset, int64_t global_size) {
  constexpr int64_t pad = 2;
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const at::Tensor padded = at::constant_pad_nd(images, {pad, pad, pad, pad}).view({n, c, -1});
  const at::Tensor offsets = at::randint(0, 2 * pad + 1, {global_size, 2}, at::kLong).narrow(0, offset, n);
  const at::Tensor flips = (at::rand({global_size}) < 0.5).narrow(0, offset, n).unsqueeze(1);
  const at::Tensor xs = at::arange(w, at::kLong);
  const at::Tensor rows = offsets.select(1, 0).unsqueeze(1) + at::arange(h, at::kLong);  // (n, h)
  const at::Tensor cols = offsets.select(1, 1).unsqueeze(1) + at::where(flips, xs.flip(0), xs);
  const at::Tensor index = (rows.unsqueeze(2) * (w + 2 * pad) + cols.unsqueeze(1))
                               .view({n, 1, h * w})
                               .expand({n, c, h * w});
  return padded.gather(2, index).view({n, c, h, w});
}

// The autocast dtype of --amp ("bf16", "fp16"); none for "none".
std::optional<at::ScalarType> amp_dtype(const std::string& amp) {
  if (amp == "bf16") return at::kBFloat16;
  if (amp == "fp16") return at::kHalf;
  return std::nullopt;
}

at::Tensor unit_images(const Dataset& data, const at::Tensor& index) {
  return data.images.index_select(0, index).to(at::kFloat).div_(255.0);
}

// Creates `out_dir` if needed and makes sure a checkpoint can be written there before any work;
// removes a temporary checkpoint a killed run left behind (never a valid one: see checkpoint.h).
void prepare_out_dir(const std::string& out_dir, const std::string& checkpoint_path) {
  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  struct stat info {};
  if (error || stat(out_dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    throw std::runtime_error(fmt::format("--out {}: cannot create the directory ({})", out_dir,
                                         error ? error.message() : "not a directory"));
  }
  std::string probe = out_dir + "/.slideformer-probe-XXXXXX";
  const int fd = mkstemp(probe.data());
  if (fd < 0) {
    throw std::runtime_error(fmt::format("--out {}: cannot write there ({})", out_dir, std::strerror(errno)));
  }
  ::close(fd);
  std::remove(probe.c_str());
  std::remove((checkpoint_path + ".tmp").c_str());
}

// A resumed run keeps the model and recipe it started with: options given again must agree.
void check_resume_options(const TrainRun& run, const CheckpointState& state, const std::string& path) {
  // A model trained on image folders is its preset fitted to the data's channels, classes and size.
  ModelConfig given_model = run.model;
  if (!state.data_config.empty()) {
    fit_model_to_data(given_model, state.model.in_channels(), state.model.num_classes(), state.config.image_size);
  }
  if (run.given_options.count("--preset") && !(given_model == state.model)) {
    throw std::runtime_error(fmt::format(
        "{}: the checkpoint holds model '{}', not --preset {} (a resumed run keeps its model: leave "
        "--preset out)", path, model_name(state.model), model_name(run.model)));
  }
  auto same = [&](const char* option, const auto& given, const auto& saved) {
    if (run.given_options.count(option) && given != saved) {
      throw std::runtime_error(fmt::format(
          "{}: {} {} differs from the checkpoint's {} (a resumed run keeps its settings: leave {} "
          "out, or train into another --out)", path, option, given, saved, option));
    }
  };
  const TrainConfig& given = run.config;
  const TrainConfig& saved = state.config;
  same("--epochs", given.epochs, saved.epochs);
  same("--batch-size", given.batch_size, saved.batch_size);
  same("--lr", given.lr, saved.lr);
  same("--weight-decay", given.weight_decay, saved.weight_decay);
  same("--label-smoothing", given.label_smoothing, saved.label_smoothing);
  same("--augment", given.augment, saved.augment);
  same("--limit", given.limit, saved.limit);
  same("--seed", given.seed, saved.seed);
  same("--image-size", given.image_size, saved.image_size);
  same("--crop-pct", given.crop_pct, saved.crop_pct);
  same("--amp", given.amp, saved.amp);
  same("--init", given.init, saved.init);
  same("--from", given.init_from, saved.init_from);
  same("--freeze-stages", given.freeze_stages, saved.freeze_stages);
  same("--lr-decay", given.lr_decay, saved.lr_decay);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Writes `text` to `path` through a temporary file and a rename: readers never see half a file.
void replace_file(const std::string& path, const std::string& text) {
  const std::string temporary = path + ".tmp";
  std::ofstream(temporary, std::ios::binary | std::ios::trunc) << text;
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    throw std::runtime_error(path + ": cannot write (" + std::strerror(errno) + ")");
  }
}

// --save-gradients: the parameters' gradients as a pickled tuple of (name, tensor) pairs, which
// torch.load reads without unpickling any class (a typed dict would need weights_only=False).
void save_gradients(const std::string& path, const torch::nn::Module& module) {
  std::vector<c10::IValue> gradients;
  for (const auto& parameter : module.named_parameters()) {
    if (parameter.value().grad().defined()) {
      gradients.push_back(c10::ivalue::Tuple::create(parameter.key(), parameter.value().grad()));
    }
  }
  const std::vector<char> bytes = torch::pickle_save(c10::ivalue::Tuple::create(std::move(gradients)));
  replace_file(path, std::string(bytes.begin(), bytes.end()));
}

// metrics.jsonl and curves.dat (epoch, train loss, test accuracy) of the completed epochs, from
// the history the checkpoint holds: a run killed between its checkpoint and these files, and
// resumed, leaves them as an uninterrupted run would.
void write_metrics_files(const std::string& out_dir, const std::string& metrics) {
  std::string curves;
  std::istringstream lines(metrics);
  for (std::string line; std::getline(lines, line);) {
    const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool valid = record.is_object() && record.contains("epoch") && record["epoch"].is_number_integer() &&
                       record.contains("train_loss") && record["train_loss"].is_number() &&
                       record.contains("test_accuracy") && record["test_accuracy"].is_number();
    if (!valid) {
      throw std::runtime_error(out_dir + "/metrics.jsonl: not a metrics line: " + line.substr(0, 200));
    }
    curves += fmt::format("{} {:.6f} {:.6f}\n", record["epoch"].dump(), record["train_loss"].get<double>(),
                          record["test_accuracy"].get<double>());
  }
  replace_file(out_dir + "/metrics.jsonl", metrics);
  replace_file(out_dir + "/curves.dat", curves);
}

// The first executable file `name` in a directory of PATH, or "" (found without a shell).
std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  const std::string dirs = path ? path : "/usr/bin:/bin";
  for (size_t start = 0; start <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string dir = end > start ? dirs.substr(start, end - start) : ".";
    const std::string candidate = dir + "/" + name;
    struct stat info {};
    if (stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode) && access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return "";
}

// Runs `argv` in directory `dir` without a shell, stdout discarded, stderr to `dir`/`log`.
// Returns the exit status, or -1 if it could not run or was killed.
int run_in_dir(const std::vector<std::string>& argv, const std::string& dir, const std::string& log) {
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addchdir_np(&actions, dir.c_str());
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::vector<char*> args;
  for (const std::string& arg : argv) args.push_back(const_cast<char*>(arg.c_str()));
  args.push_back(nullptr);
  pid_t pid = 0;
  const int spawned = posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (spawned != 0) return -1;
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

// curves.png: train loss and test accuracy per epoch, drawn by gnuplot (when installed) from
// curves.gp, run in the output directory so that no path enters the program; a failure is
// reported, training goes on.
void write_plot(const std::string& out_dir) {
  const std::string gnuplot = find_on_path("gnuplot");
  if (gnuplot.empty()) return;  // no plotter: no plot
  replace_file(out_dir + "/curves.gp",
               "# Written by slideformer train; gnuplot runs it in this directory.\n"
               "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
               "  set terminal pngcairo size 900,400 noenhanced\n"
               "} else {\n"
               "  set terminal png size 900,400 noenhanced\n"
               "}\n"
               "set output 'curves.png'\n"
               "set multiplot layout 1,2\n"
               "set xlabel 'epoch'\n"
               "set grid\n"
               "plot 'curves.dat' using 1:2 with linespoints title 'train loss'\n"
               "plot 'curves.dat' using 1:(100*$3) with linespoints title 'test accuracy (%)'\n"
               "unset multiplot\n");
  const int status = run_in_dir({gnuplot, "curves.gp"}, out_dir, "curves.log");
  if (status == 0) {
    std::remove((out_dir + "/curves.log").c_str());
  } else {
    fmt::print(stderr, "slideformer: warning: gnuplot could not draw {}/curves.png (exit status {}; see curves.log)\n",
               out_dir, status);
  }
}

}  // namespace

void check_data_fits(const ModelConfig& model, const Dataset& data) {
  if (data.images.size(1) != model.in_channels() || data.images.size(2) != model.image_size() ||
      data.images.size(3) != model.image_size()) {
    throw std::runtime_error(fmt::format(
        "model '{}' expects {}x{}x{} images, the data has {}x{}x{}", model_name(model),
        model.in_channels(), model.image_size(), model.image_size(), data.images.size(1),
        data.images.size(2), data.images.size(3)));
  }
}

at::Tensor normalise(const nn::Classifier& model, const at::Tensor& unit) {
  const int64_t c = model.in_channels();
  const at::Tensor mean = torch::tensor(model.input_mean(), at::kFloat).view({1, c, 1, 1});
  const at::Tensor std = torch::tensor(model.input_std(), at::kFloat).view({1, c, 1, 1});
  return (unit - mean) / std;
}

at::Tensor predict_classes(const std::function<at::Tensor(const at::Tensor&)>& logits,
                           const Dataset& data, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> predictions;
  const int64_t n = data.images.size(0);
  for (int64_t start = 0; start < n; start += batch_size) {
    const at::Tensor index = at::arange(start, std::min(n, start + batch_size), at::kLong);
    predictions.push_back(logits(unit_images(data, index)).argmax(1));
  }
  return predictions.empty() ? at::empty({0}, at::kLong) : at::cat(predictions);
}

LoadedModel load_model(const std::string& checkpoint_path) {
  LoadedModel loaded;
  CheckpointState state = read_checkpoint_state(checkpoint_path);
  loaded.model_config = state.model;
  loaded.config = state.config;
  loaded.data_config = state.data_config;
  loaded.model = build_model(state.model);
  load_checkpoint_weights(checkpoint_path, *loaded.model.module, nullptr);
  loaded.model.module->eval();
  return loaded;
}

namespace {

// The processes of a run: this one alone, or the ranks of a data-parallel job.
struct Ranks {
  std::optional<dist::ProcessGroup> group;

  int64_t rank() const { return group ? group->rank() : 0; }
  int64_t size() const { return group ? group->world_size() : 1; }
  // Sums over the ranks (the values themselves in a single process).
  std::vector<double> sum(const std::vector<double>& values) const {
    return group ? dist::all_reduce_sum(*group, values) : values;
  }
};

// The state a run starts from: with --resume the checkpoint's (checked against the options given,
// its recipe then replacing run.config), else a fresh one. Writes nothing.
CheckpointState starting_state(TrainRun& run) {
  TrainConfig& config = run.config;
  const std::string checkpoint_path = run.out_dir + "/checkpoint.pt";
  CheckpointState state;
  if (run.resume) {
    if (access(checkpoint_path.c_str(), F_OK) != 0) {
      throw std::runtime_error(checkpoint_path + ": no checkpoint to resume (train without --resume to start)");
    }
    state = read_checkpoint_state(checkpoint_path);
    check_resume_options(run, state, checkpoint_path);
    const TrainConfig given = config;
    config = state.config;  // the run continues with the settings it started with
    // The data may have moved; whether bad images are skipped may change.
    if (run.given_options.count("--data")) config.data_dir = given.data_dir;
    if (run.given_options.count("--train-dir")) config.train_dir = given.train_dir;
    if (run.given_options.count("--val-dir")) config.val_dir = given.val_dir;
    if (run.given_options.count("--skip-bad-images")) config.skip_bad_images = given.skip_bad_images;
  } else {
    if (access(checkpoint_path.c_str(), F_OK) == 0) {
      throw std::runtime_error(checkpoint_path +
                               ": a checkpoint is already there (continue it with --resume, or "
                               "train into another --out)");
    }
    state.model = run.model;
  }
  state.config = config;
  return state;
}

// What a run needs before its first step. Every rank loads it; the writer (rank 0) also prepares
// the output directory: a resumed run's metrics files are rewritten from the checkpoint's history,
// a fresh run removes a previous run's curves.
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
                                         "classes or input)", run.out_dir + "/checkpoint.pt", folders.train));
  }
  state.data_config = data_config.to_json();
  session.train_size = session.train_folder->size();
  session.train_loader = train_loader(*session.train_folder, data_config, config.augment, run.threads,
                                      static_cast<uint64_t>(config.seed), config.skip_bad_images);
  session.val_loader = eval_loader(*session.val_folder, data_config, run.threads, config.skip_bad_images);
}

Session open_session(TrainRun& run, bool writer) {
  const std::string& out_dir = run.out_dir;
  const std::string checkpoint_path = out_dir + "/checkpoint.pt";
  if (writer) prepare_out_dir(out_dir, checkpoint_path);
  Session session;
  CheckpointState& state = session.state;
  state = starting_state(run);
  const TrainConfig& config = run.config;
  if (writer && run.resume) {
    if (state.metrics.empty() && state.progress.epoch > 0) {
      state.metrics = read_text(out_dir + "/metrics.jsonl");  // a v1 checkpoint: keep the file's
    }
    write_metrics_files(out_dir, state.metrics);
  } else if (writer) {
    for (const char* name : {"metrics.jsonl", "curves.dat", "curves.png", "curves.gp", "curves.log"}) std::remove((out_dir + "/" + name).c_str());
  }
  at::set_num_threads(static_cast<int>(run.threads));

  if (const auto folders = image_folders(config)) {
    open_image_folders(session, *folders, run);
  } else {
    session.train_data = load_fashion_mnist(config.data_dir, true, config.limit);
    session.test_data = load_fashion_mnist(config.data_dir, false, config.limit);
    check_data_fits(state.model, session.train_data);
    check_data_fits(state.model, session.test_data);
    session.train_size = session.train_data.images.size(0);
  }
  torch::manual_seed(static_cast<uint64_t>(config.seed));
  session.model = build_model(state.model);
  if (!run.resume && !config.init.empty()) {
    const std::string report = load_initial_weights(session.model, config.init, config.init_from);
    if (writer) fmt::print("{}\n", report);
  }
  freeze_stages(session.model, config.freeze_stages);
  ParameterGroups groups = parameter_groups(session.model, config.weight_decay, config.lr_decay);
  session.lr_scales = std::move(groups.lr_scales);
  session.optimizer = std::make_unique<torch::optim::AdamW>(std::move(groups.groups));
  if (run.resume) {
    const int64_t n = session.train_size;
    const int64_t steps_per_epoch = (n + config.batch_size - 1) / config.batch_size;
    if (state.progress.step_in_epoch >= steps_per_epoch) {
      throw std::runtime_error(fmt::format(
          "{}: the checkpoint is at step {} of an epoch, the data ({} images in {}) has {} steps per "
          "epoch: not the data it was trained on",
          checkpoint_path, state.progress.step_in_epoch, n, config.data_dir, steps_per_epoch));
    }
    load_checkpoint_weights(checkpoint_path, *session.model.module, session.optimizer.get());
    at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the global one
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state.rng_state);
  }
  return session;
}

// Every rank learns whether all of them could start, so that none waits for one that gave up: the
// first rank that failed reports its own error, the others that they stop because of it.
void agree_on_start(const Ranks& ranks, const std::string& failure) {
  std::vector<double> failed(ranks.size(), 0.0);
  failed[ranks.rank()] = failure.empty() ? 0.0 : 1.0;
  failed = ranks.sum(failed);
  const auto first = std::find_if(failed.begin(), failed.end(), [](double f) { return f > 0; });
  if (first == failed.end()) return;
  const int64_t failing = first - failed.begin();
  if (failing == ranks.rank()) throw std::runtime_error(failure);
  throw std::runtime_error(fmt::format("rank {}: stopping: rank {} could not start the run", ranks.rank(), failing));
}

at::Tensor this_ranks_part(const Ranks& ranks, int64_t n) {
  return dist::DistributedSampler(n, ranks.rank(), ranks.size(),
                                  dist::DistributedSamplerOptions(std::max<int64_t>(1, n)).shuffle(false))
      .shard(0);
}

// This rank's part of the validation folder is scored; the counts are summed over the ranks.
// Returns the accuracy and the number of images skipped.
std::pair<double, int64_t> folder_accuracy(const Ranks& ranks, const Model& model, const Session& session) {
  const Scored scored = score(*session.val_loader, this_ranks_part(ranks, session.val_folder->size()),
                              [&](const at::Tensor& images) { return model(images); });
  const int64_t right = scored.labels.numel() ? scored.logits.argmax(1).eq(scored.labels).sum().item<int64_t>() : 0;
  const std::vector<double> counts = ranks.sum({double(right), double(scored.labels.numel()), double(scored.skipped)});
  return {counts[0] / std::max(counts[1], 1.0), static_cast<int64_t>(counts[2])};
}

// This rank's part of the test set is scored; the counts are summed over the ranks.
double test_accuracy(const Ranks& ranks, const Model& model, const Dataset& test) {
  const int64_t n = test.images.size(0);
  const at::Tensor mine = this_ranks_part(ranks, n);
  const Dataset part{test.images.index_select(0, mine), test.labels.index_select(0, mine)};
  const at::Tensor predictions = predict_classes(
      [&](const at::Tensor& unit) { return model(normalise(*model.classifier, unit)); }, part);
  const std::vector<double> counts =
      ranks.sum({predictions.eq(part.labels).sum().item<double>(), static_cast<double>(mine.numel())});
  return counts[0] / std::max(counts[1], 1.0);
}

// Rank 0's view of the gradient all-reduce over an epoch (BackwardTiming summed), and the time
// the per-step metric all-reduce waited for the slowest rank.
struct CommunicationTotals {
  double backward = 0, communication = 0, overlapped = 0, exposed = 0, metric_sync = 0;
  void add(const dist::BackwardTiming& timing) {
    backward += timing.backward;
    communication += timing.communication;
    overlapped += timing.overlapped;
    exposed += timing.exposed();
  }
  std::string json(int64_t processes) const {
    return fmt::format(
        ", \"processes\": {}, \"backward_seconds\": {:.3f}, \"allreduce_seconds\": {:.3f}, "
        "\"allreduce_overlapped_seconds\": {:.3f}, \"allreduce_exposed_seconds\": {:.3f}, "
        "\"metric_sync_seconds\": {:.3f}",
        processes, backward, communication, overlapped, exposed, metric_sync);
  }
};

int train_ranks(TrainRun& run, const Ranks& ranks) {
  const bool writer = ranks.rank() == 0;
  std::optional<Session> opened;
  std::string failure;
  try {
    opened = open_session(run, writer);
  } catch (const c10::Error& error) {
    failure = error.what_without_backtrace();
  } catch (const std::exception& error) {
    failure = error.what();
  }
  agree_on_start(ranks, failure);
  Session& session = *opened;
  CheckpointState& state = session.state;
  const TrainConfig& config = run.config;
  const std::string checkpoint_path = run.out_dir + "/checkpoint.pt";
  const Dataset& train_data = session.train_data;
  const Model& model = session.model;
  torch::optim::AdamW& optimizer = *session.optimizer;
  const nn::Classifier& classifier = *model.classifier;
  // Every rank starts from rank 0's weights (the same here: the same seed or checkpoint).
  std::optional<dist::DataParallel> parallel;
  if (ranks.group) {
    parallel.emplace(model.module, *ranks.group,
                     dist::DataParallelOptions()
                         .bucket_cap_bytes(run.bucket_kib * 1024)
                         .first_bucket_cap_bytes(std::min<int64_t>(run.bucket_kib, 1024) * 1024));
  }

  const int64_t n = session.train_size;
  // Global batches of --batch-size images split over the ranks (see DistributedSampler): the
  // same batches, augmentation and drop-path draws as one process, whatever the rank count.
  const dist::DistributedSampler sampler(n, ranks.rank(), ranks.size(),
                                         dist::DistributedSamplerOptions(config.batch_size).seed(static_cast<uint64_t>(config.seed)));
  const int64_t steps_per_epoch = sampler.steps_per_epoch();
  const int64_t total_steps = steps_per_epoch * config.epochs;
  TrainProgress& progress = state.progress;
  // --amp: the forward under autocast; fp16 scales the loss (grad_scaler.h).
  const std::optional<at::ScalarType> autocast_dtype = amp_dtype(config.amp);
  std::optional<GradScaler> scaler;
  if (config.amp == "fp16") scaler.emplace(progress.loss_scale, progress.loss_scale_growth_tracker);
  const bool terminal = writer && isatty(STDOUT_FILENO);
  interrupted = false;
  std::signal(SIGINT, on_interrupt);
  const std::string processes =
      ranks.size() > 1 ? fmt::format("{} processes x {} threads", ranks.size(), run.threads) : fmt::format("{} threads", run.threads);
  if (writer) {
    fmt::print("training {} ({} trainable parameters) on {} images, {} epochs of {} steps, {}{}\n",
               model_name(state.model), nn::count_parameters(*model.module, true), n, config.epochs, steps_per_epoch,
               processes, autocast_dtype ? fmt::format(", mixed precision ({})", config.amp) : "");
    std::fflush(stdout);
  }
  auto save = [&] {
    if (scaler) {
      progress.loss_scale = scaler->scale_value();
      progress.loss_scale_growth_tracker = scaler->growth_tracker();
    }
    state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
    save_checkpoint(checkpoint_path, state, *model.module, optimizer);
  };

  // The ranks exit together, once rank 0 has written its files, so that none tears its
  // connections down while another still uses them.
  auto leave_together = [&](int status) {
    ranks.sum({0.0});
    return status;
  };

  const auto run_start = Clock::now();
  int64_t steps_this_run = 0, epochs_this_run = 0;
  while (progress.epoch < config.epochs) {
    const int64_t epoch = progress.epoch;
    // Data order and (at an epoch's start) the random stream are functions of (seed, epoch), so
    // a resumed run draws exactly what an uninterrupted one would.
    // (Unsigned arithmetic: any seed, no overflow.)
    const at::Tensor order = sampler.order(epoch);
    if (progress.step_in_epoch == 0) torch::manual_seed(static_cast<uint64_t>(config.seed) * 7919 + static_cast<uint64_t>(epoch) + 1);
    model.module->train();
    const auto epoch_start = Clock::now();
    // The epoch's loss and time so far, carried over an interrupted run.
    double loss_sum = progress.epoch_loss_sum;
    auto epoch_seconds = [&] { return progress.epoch_seconds + seconds_since(epoch_start); };
    CommunicationTotals communication;
    int64_t skipped = 0;  // bad images left out of this run's batches of the epoch (--skip-bad-images)
    if (session.train_loader) {
      std::vector<at::Tensor> plan;
      for (int64_t step = progress.step_in_epoch; step < steps_per_epoch; ++step) plan.push_back(sampler.batch(order, step).indices);
      session.train_loader->start_epoch(epoch, std::move(plan));
    }
    for (int64_t step = progress.step_in_epoch; step < steps_per_epoch; ++step) {
      const dist::BatchShard part = sampler.batch(order, step);
      at::Tensor images, labels;
      if (session.train_loader) {
        data::Batch batch = *session.train_loader->next();
        for (const std::string& error : batch.errors) fmt::print(stderr, "skipped: {}\n", error);
        skipped += static_cast<int64_t>(batch.errors.size());
        images = batch.images;
        labels = batch.labels;
      } else {
        const at::Tensor unit = unit_images(train_data, part.indices);
        images = normalise(classifier, config.augment ? augment(unit, part.offset, part.global_size) : unit);
        labels = train_data.labels.index_select(0, part.indices);
      }
      const double lr = learning_rate(config, progress.global_step, total_steps);
      for (size_t g = 0; g < optimizer.param_groups().size(); ++g) {
        optimizer.param_groups()[g].options().set_lr(lr * session.lr_scales[g]);
      }
      at::Tensor logits;
      {
        nn::functional::GlobalBatchSlice slice(part.offset, part.global_size);
        std::optional<AutocastGuard> autocast;
        if (autocast_dtype) autocast.emplace(at::kCPU, *autocast_dtype);
        logits = model(images);
      }
      // This rank's share of the global batch's mean loss: the shares add up to it.
      const at::Tensor loss =
          F::cross_entropy(logits.to(at::kFloat), labels,
                           F::CrossEntropyFuncOptions().label_smoothing(config.label_smoothing).reduction(torch::kSum)) /
          static_cast<double>(part.global_size);
      optimizer.zero_grad();
      const at::Tensor scaled_loss = scaler ? scaler->scale(loss) : loss;
      if (parallel) {
        parallel->backward(scaled_loss, 1.0);  // the sum of the shares' gradients
        communication.add(parallel->last_timing());
      } else {
        scaled_loss.backward();
      }
      // The gradients are the all-reduced ones: every rank skips the same steps.
      const bool finite = !scaler || scaler->unscale_and_update(model.module->parameters());
      if (writer && steps_this_run == 0 && !run.save_gradients.empty()) {
        save_gradients(run.save_gradients, *model.module);
      }
      if (finite) {
        optimizer.step();
      } else {
        ++progress.epoch_skipped_steps;
      }
      // The global batch's loss, and whether any rank was interrupted: every rank stops at the
      // same step.
      const auto sync_start = Clock::now();
      const std::vector<double> reduced = ranks.sum({loss.item<double>(), interrupted ? 1.0 : 0.0});
      communication.metric_sync += seconds_since(sync_start);
      loss_sum += reduced[0];
      ++progress.step_in_epoch;
      ++progress.global_step;
      ++steps_this_run;

      const int64_t images_seen = std::min(n, progress.step_in_epoch * config.batch_size);
      const double per_step = seconds_since(run_start) / steps_this_run;
      const std::string line = fmt::format(
          "epoch {}/{}  step {}/{}  loss {:.4f}  {:.0f} img/s  ETA {}", epoch + 1, config.epochs,
          step + 1, steps_per_epoch, loss_sum / progress.step_in_epoch,
          images_seen / std::max(epoch_seconds(), 1e-9),
          duration_text(per_step * (total_steps - progress.global_step)));
      if (terminal) {
        fmt::print("\r{:<78}", line);
        std::fflush(stdout);
      } else if (writer && ((step + 1) % std::max<int64_t>(1, steps_per_epoch / 5) == 0 || step + 1 == steps_per_epoch)) {
        fmt::print("{}\n", line);
        std::fflush(stdout);
      }
      if (reduced[1] > 0) {
        if (writer) {
          progress.epoch_loss_sum = loss_sum;
          progress.epoch_seconds = epoch_seconds();
          save();
          fmt::print("\ninterrupted: checkpoint saved to {} (continue with --resume)\n", checkpoint_path);
        }
        return leave_together(130);
      }
    }
    const double train_seconds = epoch_seconds();
    const double train_loss = loss_sum / steps_per_epoch;
    model.module->eval();
    double accuracy = 0;
    int64_t val_skipped = 0;
    if (session.val_loader) {
      std::tie(accuracy, val_skipped) = folder_accuracy(ranks, model, session);
    } else {
      accuracy = test_accuracy(ranks, model, session.test_data);
    }
    const int64_t train_skipped = static_cast<int64_t>(ranks.sum({static_cast<double>(skipped)})[0]);
    const std::string skipped_json = config.skip_bad_images
        ? fmt::format(", \"skipped_images\": {}, \"skipped_val_images\": {}", train_skipped, val_skipped) : "";
    const int64_t skipped_steps = progress.epoch_skipped_steps;
    const std::string amp_json = scaler ? fmt::format(", \"skipped_steps\": {}, \"loss_scale\": {}", skipped_steps,
                                                      scaler->scale_value()) : "";
    progress.epoch += 1;
    progress.step_in_epoch = 0;
    progress.epoch_loss_sum = 0.0;
    progress.epoch_seconds = 0.0;
    progress.epoch_skipped_steps = 0;
    const double images_per_second = n / std::max(train_seconds, 1e-9);
    state.metrics += fmt::format(
        "{{\"epoch\": {}, \"train_loss\": {:.6f}, \"test_accuracy\": {:.6f}, "
        "\"images_per_second\": {:.1f}, \"seconds\": {:.1f}{}{}{}}}\n",
        progress.epoch, train_loss, accuracy, images_per_second, train_seconds,
        ranks.size() > 1 ? communication.json(ranks.size()) : "", skipped_json, amp_json);
    if (writer) {
      save();
      write_metrics_files(run.out_dir, state.metrics);
      write_plot(run.out_dir);
      fmt::print("{}epoch {}/{}: train loss {:.4f}, test accuracy {:.2f}%, {:.0f} img/s, {}{}{}\n",
                 terminal ? "\n" : "", progress.epoch, config.epochs, train_loss, 100 * accuracy,
                 images_per_second, duration_text(train_seconds),
                 config.skip_bad_images ? fmt::format(", {} bad images skipped ({} in validation)", train_skipped, val_skipped)
                                        : "",
                 scaler ? fmt::format(", {} steps skipped (inf/NaN gradients in float16)", skipped_steps) : "");
    }
    if (run.stop_after > 0 && ++epochs_this_run >= run.stop_after) break;
  }
  if (writer) {
    fmt::print("done in {}: {} (metrics.jsonl, curves.png in {})\n",
               duration_text(seconds_since(run_start)), checkpoint_path, run.out_dir);
  }
  return leave_together(0);
}

// This program's file, which the launcher starts as the ranks.
std::string this_program() {
  std::error_code error;
  const std::filesystem::path path = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) throw std::runtime_error("--nproc: cannot find this program's file to start the ranks (" + error.message() + ")");
  return path.string();
}

// --nproc N: the ranks as N processes of this program on this machine. The mistakes every rank
// would make are found once, before any starts.
int launch_ranks(const TrainRun& run) {
  TrainRun checked = run;
  prepare_out_dir(checked.out_dir, checked.out_dir + "/checkpoint.pt");
  starting_state(checked);
  std::vector<std::string> argv = run.argv;
  argv.at(0) = this_program();
  // A rank that fails makes the others stop within the timeout; only a hung one is terminated.
  const auto grace = std::chrono::seconds(run.timeout_seconds + 10);
  return dist::launch_local(argv, dist::LaunchOptions(run.nproc).master_port(run.master_port).grace(grace)).exit_code;
}

}  // namespace

int train(TrainRun run) {
  if (!dist::launched_from_environment()) return run.nproc > 1 ? launch_ranks(run) : train_ranks(run, Ranks{});
  // A rank of a job a launcher started (launch_local above, torchrun, ...).
  if (!run.given_options.count("--threads")) {
    // The processes of this machine share its cores.
    const char* local = std::getenv("LOCAL_WORLD_SIZE");
    run.threads = std::max<int64_t>(1, run.threads / std::max<int64_t>(1, local ? std::atoll(local) : 1));
  }
  // c10d logs each failed store request after a rank is lost as a warning with a stack trace;
  // this rank's error names the lost rank instead (TORCH_CPP_LOG_LEVEL=INFO shows them again).
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) FLAGS_caffe2_log_level = std::max(FLAGS_caffe2_log_level, 2);
  const dist::ProcessGroupOptions options =
      dist::ProcessGroupOptions::from_environment(std::chrono::seconds(run.timeout_seconds));
  if (run.given_options.count("--nproc") && run.nproc != options.world_size()) {
    throw std::runtime_error(fmt::format(
        "--nproc {} disagrees with WORLD_SIZE={} set by the launcher (under a launcher, leave --nproc out)",
        run.nproc, options.world_size()));
  }
  Ranks ranks;
  ranks.group.emplace(options);
  return train_ranks(run, ranks);
}

}  // namespace slideformer::app
