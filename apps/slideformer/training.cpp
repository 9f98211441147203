#include "training.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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
#include <sstream>

#include "checkpoint.h"

namespace slideformer::app {

namespace {

using Clock = std::chrono::steady_clock;
namespace F = torch::nn::functional;

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
// for the whole batch as one gather: a flip only reverses an image's column indices.
at::Tensor augment(const at::Tensor& images) {
  constexpr int64_t pad = 2;
  const int64_t n = images.size(0), c = images.size(1), h = images.size(2), w = images.size(3);
  const at::Tensor padded = at::constant_pad_nd(images, {pad, pad, pad, pad}).view({n, c, -1});
  const at::Tensor offsets = at::randint(0, 2 * pad + 1, {n, 2}, at::kLong);
  const at::Tensor flips = (at::rand({n}) < 0.5).unsqueeze(1);
  const at::Tensor xs = at::arange(w, at::kLong);
  const at::Tensor rows = offsets.select(1, 0).unsqueeze(1) + at::arange(h, at::kLong);  // (n, h)
  const at::Tensor cols = offsets.select(1, 1).unsqueeze(1) + at::where(flips, xs.flip(0), xs);
  const at::Tensor index = (rows.unsqueeze(2) * (w + 2 * pad) + cols.unsqueeze(1))
                               .view({n, 1, h * w})
                               .expand({n, c, h * w});
  return padded.gather(2, index).view({n, c, h, w});
}

at::Tensor unit_images(const Dataset& data, const at::Tensor& index) {
  return data.images.index_select(0, index).to(at::kFloat).div_(255.0);
}

// Weight decay on linear and convolution weights only, not on biases, norms, shift mixing and
// bias tables.
std::vector<torch::optim::OptimizerParamGroup> parameter_groups(const torch::nn::Module& model,
                                                                double weight_decay) {
  std::vector<at::Tensor> decayed, plain;
  for (const auto& item : model.named_parameters()) {
    const at::Tensor& p = item.value();
    if (!p.requires_grad()) continue;
    const std::string& name = item.key();
    const bool is_layer_weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0;
    (is_layer_weight && p.dim() >= 2 ? decayed : plain).push_back(p);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decayed, std::make_unique<torch::optim::AdamWOptions>(
                                   torch::optim::AdamWOptions().weight_decay(weight_decay)));
  groups.emplace_back(plain, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions().weight_decay(0.0)));
  return groups;
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
  if (run.given_options.count("--preset") && !(run.model == state.model)) {
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
  loaded.model = build_model(state.model);
  load_checkpoint_weights(checkpoint_path, *loaded.model.module, nullptr);
  loaded.model.module->eval();
  return loaded;
}

int train(TrainRun run) {
  TrainConfig& config = run.config;
  const std::string& out_dir = run.out_dir;
  const int64_t threads = run.threads;
  const bool resume = run.resume;
  const std::string checkpoint_path = out_dir + "/checkpoint.pt";
  prepare_out_dir(out_dir, checkpoint_path);
  CheckpointState state;
  if (resume) {
    if (access(checkpoint_path.c_str(), F_OK) != 0) {
      throw std::runtime_error(checkpoint_path + ": no checkpoint to resume (train without --resume to start)");
    }
    state = read_checkpoint_state(checkpoint_path);
    check_resume_options(run, state, checkpoint_path);
    const std::string data_dir = config.data_dir;
    config = state.config;  // the run continues with the settings it started with
    if (run.given_options.count("--data")) config.data_dir = data_dir;
    if (state.metrics.empty() && state.progress.epoch > 0) {
      state.metrics = read_text(out_dir + "/metrics.jsonl");  // a v1 checkpoint: keep the file's
    }
    write_metrics_files(out_dir, state.metrics);
  } else {
    if (access(checkpoint_path.c_str(), F_OK) == 0) {
      throw std::runtime_error(checkpoint_path +
                               ": a checkpoint is already there (continue it with --resume, or "
                               "train into another --out)");
    }
    // A fresh run starts fresh curves.
    for (const char* name : {"metrics.jsonl", "curves.dat", "curves.png", "curves.gp", "curves.log"}) std::remove((out_dir + "/" + name).c_str());
    state.model = run.model;
  }
  state.config = config;
  at::set_num_threads(static_cast<int>(threads));

  const Dataset train_data = load_fashion_mnist(config.data_dir, true, config.limit);
  const Dataset test_data = load_fashion_mnist(config.data_dir, false, config.limit);
  check_data_fits(state.model, train_data);
  check_data_fits(state.model, test_data);
  torch::manual_seed(static_cast<uint64_t>(config.seed));
  const Model model = build_model(state.model);
  const nn::Classifier& classifier = *model.classifier;
  torch::optim::AdamW optimizer(parameter_groups(*model.module, config.weight_decay));
  const int64_t n = train_data.images.size(0);
  const int64_t steps_per_epoch = (n + config.batch_size - 1) / config.batch_size;
  if (resume) {
    if (state.progress.step_in_epoch >= steps_per_epoch) {
      throw std::runtime_error(fmt::format(
          "{}: the checkpoint is at step {} of an epoch, the data ({} images in {}) has {} steps per "
          "epoch: not the data it was trained on",
          checkpoint_path, state.progress.step_in_epoch, n, config.data_dir, steps_per_epoch));
    }
    load_checkpoint_weights(checkpoint_path, *model.module, &optimizer);
    at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the global one
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state.rng_state);
  }

  const int64_t total_steps = steps_per_epoch * config.epochs;
  TrainProgress& progress = state.progress;
  const bool terminal = isatty(STDOUT_FILENO);
  interrupted = false;
  std::signal(SIGINT, on_interrupt);
  fmt::print("training {} ({} trainable parameters) on {} images, {} epochs of {} steps, {} threads\n",
             model_name(state.model), nn::count_parameters(*model.module, true), n, config.epochs, steps_per_epoch,
             threads);
  auto save = [&] {
    state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
    save_checkpoint(checkpoint_path, state, *model.module, optimizer);
  };

  const auto run_start = Clock::now();
  int64_t steps_this_run = 0, epochs_this_run = 0;
  while (progress.epoch < config.epochs) {
    const int64_t epoch = progress.epoch;
    // Data order and (at an epoch's start) the random stream are functions of (seed, epoch), so
    // a resumed run draws exactly what an uninterrupted one would.
    // (Unsigned arithmetic: any seed, no overflow.)
    const auto seed = static_cast<uint64_t>(config.seed), index = static_cast<uint64_t>(epoch);
    at::Generator order = at::detail::createCPUGenerator(seed * 1000003 + index);
    const at::Tensor permutation = at::randperm(n, order, at::kLong);
    if (progress.step_in_epoch == 0) torch::manual_seed(seed * 7919 + index + 1);
    model.module->train();
    const auto epoch_start = Clock::now();
    // The epoch's loss and time so far, carried over an interrupted run.
    double loss_sum = progress.epoch_loss_sum;
    auto epoch_seconds = [&] { return progress.epoch_seconds + seconds_since(epoch_start); };
    for (int64_t step = progress.step_in_epoch; step < steps_per_epoch; ++step) {
      const int64_t start = step * config.batch_size;
      const at::Tensor index = permutation.narrow(0, start, std::min(config.batch_size, n - start));
      const at::Tensor unit = unit_images(train_data, index);
      const at::Tensor images = normalise(classifier, config.augment ? augment(unit) : unit);
      const at::Tensor labels = train_data.labels.index_select(0, index);
      const double lr = learning_rate(config, progress.global_step, total_steps);
      for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
      const at::Tensor loss = F::cross_entropy(
          model(images), labels, F::CrossEntropyFuncOptions().label_smoothing(config.label_smoothing));
      optimizer.zero_grad();
      loss.backward();
      optimizer.step();
      loss_sum += loss.item<double>();
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
      } else if ((step + 1) % std::max<int64_t>(1, steps_per_epoch / 5) == 0 || step + 1 == steps_per_epoch) {
        fmt::print("{}\n", line);
        std::fflush(stdout);
      }
      if (interrupted) {
        progress.epoch_loss_sum = loss_sum;
        progress.epoch_seconds = epoch_seconds();
        save();
        fmt::print("\ninterrupted: checkpoint saved to {} (continue with --resume)\n", checkpoint_path);
        return 130;
      }
    }
    const double train_seconds = epoch_seconds();
    const double train_loss = loss_sum / steps_per_epoch;
    model.module->eval();
    const at::Tensor predictions = predict_classes(
        [&](const at::Tensor& unit) { return model(normalise(classifier, unit)); }, test_data);
    const double accuracy = predictions.eq(test_data.labels).to(at::kDouble).mean().item<double>();
    progress.epoch += 1;
    progress.step_in_epoch = 0;
    progress.epoch_loss_sum = 0.0;
    progress.epoch_seconds = 0.0;
    const double images_per_second = n / std::max(train_seconds, 1e-9);
    state.metrics += fmt::format(
        "{{\"epoch\": {}, \"train_loss\": {:.6f}, \"test_accuracy\": {:.6f}, "
        "\"images_per_second\": {:.1f}, \"seconds\": {:.1f}}}\n",
        progress.epoch, train_loss, accuracy, images_per_second, train_seconds);
    save();
    write_metrics_files(out_dir, state.metrics);
    write_plot(out_dir);
    fmt::print("{}epoch {}/{}: train loss {:.4f}, test accuracy {:.2f}%, {:.0f} img/s, {}\n",
               terminal ? "\n" : "", progress.epoch, config.epochs, train_loss, 100 * accuracy,
               images_per_second, duration_text(train_seconds));
    if (run.stop_after > 0 && ++epochs_this_run >= run.stop_after) break;
  }
  fmt::print("done in {}: {} (metrics.jsonl, curves.png in {})\n",
             duration_text(seconds_since(run_start)), checkpoint_path, out_dir);
  return 0;
}

}  // namespace slideformer::app
