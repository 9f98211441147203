#include "training.h"

#include <fmt/format.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

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

void check_data_fits(const nn::SlideTransformerOptions& options, const Dataset& data,
                     const std::string& preset) {
  if (data.images.size(1) != options.in_channels() || data.images.size(2) != options.image_size() ||
      data.images.size(3) != options.image_size()) {
    throw std::runtime_error(fmt::format(
        "preset '{}' expects {}x{}x{} images, the data has {}x{}x{}", preset,
        options.in_channels(), options.image_size(), options.image_size(), data.images.size(1),
        data.images.size(2), data.images.size(3)));
  }
}

void write_plot(const std::string& out_dir) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) return;  // no plotter: no plot
  const std::string data = out_dir + "/curves.dat";
  const std::string script = fmt::format(
      "set terminal pngcairo size 900,400 noenhanced; set output '{0}/curves.png';"
      "set multiplot layout 1,2; set xlabel 'epoch'; set grid;"
      "plot '{1}' using 1:2 with linespoints title 'train loss';"
      "plot '{1}' using 1:(100*$3) with linespoints title 'test accuracy (%)';"
      "unset multiplot",
      out_dir, data);
  const std::string command = "gnuplot -e \"" + script + "\" >/dev/null 2>&1";
  if (std::system(command.c_str()) != 0) {
    const std::string png = "set terminal png size 900,400;";  // gnuplot-nox without cairo
    std::string fallback = script;
    fallback.replace(0, fallback.find(';') + 1, png);
    std::system(("gnuplot -e \"" + fallback + "\" >/dev/null 2>&1").c_str());
  }
}

}  // namespace

at::Tensor normalise(const nn::SlideTransformerOptions& options, const at::Tensor& unit) {
  const int64_t c = options.in_channels();
  const at::Tensor mean = torch::tensor(options.input_mean(), at::kFloat).view({1, c, 1, 1});
  const at::Tensor std = torch::tensor(options.input_std(), at::kFloat).view({1, c, 1, 1});
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
  loaded.config = read_checkpoint_state(checkpoint_path).config;
  loaded.model = nn::SlideTransformer(nn::preset(loaded.config.preset));
  load_checkpoint_weights(checkpoint_path, *loaded.model, nullptr);
  loaded.model->eval();
  return loaded;
}

int train(TrainRun run) {
  namespace fs = std::filesystem;
  TrainConfig& config = run.config;
  const std::string& out_dir = run.out_dir;
  const int64_t threads = run.threads;
  const bool resume = run.resume;
  fs::create_directories(out_dir);
  const std::string checkpoint_path = out_dir + "/checkpoint.pt";
  CheckpointState state;
  if (!resume && access(checkpoint_path.c_str(), F_OK) == 0) {
    throw std::runtime_error(checkpoint_path +
                             ": a checkpoint is already there (continue it with --resume, or "
                             "train into another --out)");
  }
  if (!resume) {
    // A fresh run starts fresh curves.
    for (const char* name : {"metrics.jsonl", "curves.dat", "curves.png"}) std::remove((out_dir + "/" + name).c_str());
  }
  if (resume) {
    state = read_checkpoint_state(checkpoint_path);
    if (state.config.preset != config.preset) {
      throw std::runtime_error(fmt::format("{}: checkpoint of preset '{}', not '{}'",
                                           checkpoint_path, state.config.preset, config.preset));
    }
    const std::string data_dir = config.data_dir;
    config = state.config;  // the run continues with the settings it started with
    if (run.data_dir_given) config.data_dir = data_dir;
  }
  state.config = config;
  at::set_num_threads(static_cast<int>(threads));

  const Dataset train_data = load_fashion_mnist(config.data_dir, true, config.limit);
  const Dataset test_data = load_fashion_mnist(config.data_dir, false, config.limit);
  torch::manual_seed(static_cast<uint64_t>(config.seed));
  nn::SlideTransformer model(nn::preset(config.preset));
  const nn::SlideTransformerOptions& options = model->options;
  check_data_fits(options, train_data, config.preset);
  torch::optim::AdamW optimizer(parameter_groups(*model, config.weight_decay));
  if (resume) {
    load_checkpoint_weights(checkpoint_path, *model, &optimizer);
    at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the global one
    std::lock_guard<std::mutex> lock(generator.mutex());
    generator.set_state(state.rng_state);
  }

  const int64_t n = train_data.images.size(0);
  const int64_t steps_per_epoch = (n + config.batch_size - 1) / config.batch_size;
  const int64_t total_steps = steps_per_epoch * config.epochs;
  TrainProgress& progress = state.progress;
  const bool terminal = isatty(STDOUT_FILENO);
  interrupted = false;
  std::signal(SIGINT, on_interrupt);
  fmt::print("training {} ({} trainable parameters) on {} images, {} epochs of {} steps, {} threads\n",
             config.preset, nn::count_parameters(*model, true), n, config.epochs, steps_per_epoch,
             threads);
  auto save = [&] {
    state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
    save_checkpoint(checkpoint_path, state, *model, optimizer);
  };

  const auto run_start = Clock::now();
  int64_t steps_this_run = 0, epochs_this_run = 0;
  while (progress.epoch < config.epochs) {
    const int64_t epoch = progress.epoch;
    // Data order and (at an epoch's start) the random stream are functions of (seed, epoch), so
    // a resumed run draws exactly what an uninterrupted one would.
    at::Generator order = at::detail::createCPUGenerator(static_cast<uint64_t>(config.seed * 1000003 + epoch));
    const at::Tensor permutation = at::randperm(n, order, at::kLong);
    if (progress.step_in_epoch == 0) torch::manual_seed(static_cast<uint64_t>(config.seed * 7919 + epoch + 1));
    model->train();
    const auto epoch_start = Clock::now();
    // The epoch's loss and time so far, carried over an interrupted run.
    double loss_sum = progress.epoch_loss_sum;
    auto epoch_seconds = [&] { return progress.epoch_seconds + seconds_since(epoch_start); };
    for (int64_t step = progress.step_in_epoch; step < steps_per_epoch; ++step) {
      const int64_t start = step * config.batch_size;
      const at::Tensor index = permutation.narrow(0, start, std::min(config.batch_size, n - start));
      const at::Tensor unit = unit_images(train_data, index);
      const at::Tensor images = normalise(options, config.augment ? augment(unit) : unit);
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
    model->eval();
    const at::Tensor predictions = predict_classes(
        [&](const at::Tensor& unit) { return model(normalise(options, unit)); }, test_data);
    const double accuracy = predictions.eq(test_data.labels).to(at::kDouble).mean().item<double>();
    progress.epoch += 1;
    progress.step_in_epoch = 0;
    progress.epoch_loss_sum = 0.0;
    progress.epoch_seconds = 0.0;
    save();
    const double images_per_second = n / std::max(train_seconds, 1e-9);
    std::ofstream(out_dir + "/metrics.jsonl", std::ios::app) << fmt::format(
        "{{\"epoch\": {}, \"train_loss\": {:.6f}, \"test_accuracy\": {:.6f}, "
        "\"images_per_second\": {:.1f}, \"seconds\": {:.1f}}}\n",
        progress.epoch, train_loss, accuracy, images_per_second, train_seconds);
    std::ofstream(out_dir + "/curves.dat", std::ios::app)
        << fmt::format("{} {:.6f} {:.6f}\n", progress.epoch, train_loss, accuracy);
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
