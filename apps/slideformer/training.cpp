#include "training.h"

#include <fmt/format.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <tuple>

#include "grad_scaler.h"
#include "inference.h"
#include "ranks.h"
#include "run_files.h"
#include "schedule.h"
#include "session.h"
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

// An epoch's totals so far (the loss and time carried over an interrupted run).
struct EpochTotals {
  Clock::time_point start = Clock::now();
  double loss_sum = 0;
  double carried_seconds = 0;
  CommunicationTotals communication;
  int64_t skipped_images = 0;  // bad images left out of this run's batches (--skip-bad-images)

  double seconds() const { return carried_seconds + seconds_since(start); }
};

// A run in progress on one rank: the loop over epochs and steps.
class Trainer {
 public:
  Trainer(const TrainRun& run, const Ranks& ranks, Session& session);
  int train();  // the exit code

 private:
  bool run_epoch();  // false when interrupted (the checkpoint then saved)
  void start_epoch(const at::Tensor& order);
  bool take_step(int64_t step, const at::Tensor& order, EpochTotals& totals);  // false when interrupted
  std::pair<at::Tensor, at::Tensor> batch(const dist::BatchShard& part, EpochTotals& totals);
  at::Tensor loss_share(const at::Tensor& images, const at::Tensor& labels, const dist::BatchShard& part);
  void update(const at::Tensor& loss, EpochTotals& totals);
  void print_progress(int64_t step, const EpochTotals& totals);
  void finish_epoch(const EpochTotals& totals);
  void save();
  // The ranks exit together, once rank 0 has written its files, so that none tears its
  // connections down while another still uses them.
  int leave_together(int status) {
    ranks_.sum({0.0});
    return status;
  }

  const TrainRun& run_;
  const TrainConfig& config_;
  const Ranks& ranks_;
  Session& session_;
  TrainProgress& progress_;
  const bool writer_;
  const bool terminal_;
  const std::string checkpoint_path_;
  // Global batches of --batch-size images split over the ranks (see DistributedSampler): the
  // same batches, augmentation and drop-path draws as one process, whatever the rank count.
  const dist::DistributedSampler sampler_;
  const int64_t steps_per_epoch_, total_steps_;
  // --amp: the forward under autocast; fp16 scales the loss (grad_scaler.h).
  const std::optional<at::ScalarType> autocast_dtype_;
  std::optional<GradScaler> scaler_;
  std::optional<dist::DataParallel> parallel_;
  const Clock::time_point run_start_ = Clock::now();
  int64_t steps_this_run_ = 0, epochs_this_run_ = 0;
};

Trainer::Trainer(const TrainRun& run, const Ranks& ranks, Session& session)
    : run_(run),
      config_(run.config),
      ranks_(ranks),
      session_(session),
      progress_(session.state.progress),
      writer_(ranks.rank() == 0),
      terminal_(writer_ && isatty(STDOUT_FILENO)),
      checkpoint_path_(run.out_dir + "/checkpoint.pt"),
      sampler_(session.train_size, ranks.rank(), ranks.size(),
               dist::DistributedSamplerOptions(run.config.batch_size).seed(static_cast<uint64_t>(run.config.seed))),
      steps_per_epoch_(sampler_.steps_per_epoch()),
      total_steps_(steps_per_epoch_ * run.config.epochs),
      autocast_dtype_(amp_dtype(run.config.amp)) {
  if (config_.amp == "fp16") scaler_.emplace(progress_.loss_scale, progress_.loss_scale_growth_tracker);
  // Every rank starts from rank 0's weights (the same here: the same seed or checkpoint).
  if (ranks.group) {
    parallel_.emplace(session.model.module, *ranks.group,
                      dist::DataParallelOptions()
                          .bucket_cap_bytes(run.bucket_kib * 1024)
                          .first_bucket_cap_bytes(std::min<int64_t>(run.bucket_kib, 1024) * 1024));
  }
}

int Trainer::train() {
  interrupted = false;
  std::signal(SIGINT, on_interrupt);
  if (writer_) {
    const std::string processes = ranks_.size() > 1
        ? fmt::format("{} processes x {} threads", ranks_.size(), run_.threads) : fmt::format("{} threads", run_.threads);
    fmt::print("training {} ({} trainable parameters) on {} images, {} epochs of {} steps, {}{}\n",
               model_name(session_.state.model), nn::count_parameters(*session_.model.module, true),
               session_.train_size, config_.epochs, steps_per_epoch_, processes,
               autocast_dtype_ ? fmt::format(", mixed precision ({})", config_.amp) : "");
    std::fflush(stdout);
  }
  while (progress_.epoch < config_.epochs) {
    if (!run_epoch()) return leave_together(130);
    if (run_.stop_after > 0 && ++epochs_this_run_ >= run_.stop_after) break;
  }
  if (writer_) {
    fmt::print("done in {}: {} (metrics.jsonl, curves.png in {})\n",
               duration_text(seconds_since(run_start_)), checkpoint_path_, run_.out_dir);
  }
  return leave_together(0);
}

bool Trainer::run_epoch() {
  // Data order and (at an epoch's start) the random stream are functions of (seed, epoch), so a
  // resumed run draws exactly what an uninterrupted one would. (Unsigned arithmetic: any seed,
  // no overflow.)
  const at::Tensor order = sampler_.order(progress_.epoch);
  if (progress_.step_in_epoch == 0) {
    torch::manual_seed(static_cast<uint64_t>(config_.seed) * 7919 + static_cast<uint64_t>(progress_.epoch) + 1);
  }
  session_.model.module->train();
  EpochTotals totals;
  totals.loss_sum = progress_.epoch_loss_sum;
  totals.carried_seconds = progress_.epoch_seconds;
  start_epoch(order);
  for (int64_t step = progress_.step_in_epoch; step < steps_per_epoch_; ++step) {
    if (take_step(step, order, totals)) continue;
    if (writer_) {
      progress_.epoch_loss_sum = totals.loss_sum;
      progress_.epoch_seconds = totals.seconds();
      save();
      fmt::print("\ninterrupted: checkpoint saved to {} (continue with --resume)\n", checkpoint_path_);
    }
    return false;
  }
  finish_epoch(totals);
  return true;
}

// An image-folder loader is told the batches it is to decode ahead.
void Trainer::start_epoch(const at::Tensor& order) {
  if (!session_.train_loader) return;
  std::vector<at::Tensor> plan;
  for (int64_t step = progress_.step_in_epoch; step < steps_per_epoch_; ++step) {
    plan.push_back(sampler_.batch(order, step).indices);
  }
  session_.train_loader->start_epoch(progress_.epoch, std::move(plan));
}

bool Trainer::take_step(int64_t step, const at::Tensor& order, EpochTotals& totals) {
  const dist::BatchShard part = sampler_.batch(order, step);
  const auto [images, labels] = batch(part, totals);
  const double lr = learning_rate(config_, progress_.global_step, total_steps_);
  auto& groups = session_.optimizer->param_groups();
  for (size_t g = 0; g < groups.size(); ++g) groups[g].options().set_lr(lr * session_.lr_scales[g]);
  const at::Tensor loss = loss_share(images, labels, part);
  update(loss, totals);
  // The global batch's loss, and whether any rank was interrupted: every rank stops at the same step.
  const auto sync_start = Clock::now();
  const std::vector<double> reduced = ranks_.sum({loss.item<double>(), interrupted ? 1.0 : 0.0});
  totals.communication.metric_sync += seconds_since(sync_start);
  totals.loss_sum += reduced[0];
  ++progress_.step_in_epoch;
  ++progress_.global_step;
  ++steps_this_run_;
  print_progress(step, totals);
  return reduced[1] == 0;
}

// The images (normalised) and labels of this rank's part of a batch.
std::pair<at::Tensor, at::Tensor> Trainer::batch(const dist::BatchShard& part, EpochTotals& totals) {
  if (session_.train_loader) {
    data::Batch loaded = *session_.train_loader->next();
    for (const std::string& error : loaded.errors) fmt::print(stderr, "skipped: {}\n", error);
    totals.skipped_images += static_cast<int64_t>(loaded.errors.size());
    return {loaded.images, loaded.labels};
  }
  const Dataset& data = session_.train_data;
  const at::Tensor unit = unit_images(data, part.indices);
  return {normalise(*session_.model.classifier,
                    config_.augment ? augment(unit, part.offset, part.global_size) : unit),
          data.labels.index_select(0, part.indices)};
}

// This rank's share of the global batch's mean loss: the shares add up to it.
at::Tensor Trainer::loss_share(const at::Tensor& images, const at::Tensor& labels, const dist::BatchShard& part) {
  at::Tensor logits;
  {
    nn::functional::GlobalBatchSlice slice(part.offset, part.global_size);
    std::optional<AutocastGuard> autocast;
    if (autocast_dtype_) autocast.emplace(at::kCPU, *autocast_dtype_);
    logits = session_.model(images);
  }
  return F::cross_entropy(logits.to(at::kFloat), labels,
                          F::CrossEntropyFuncOptions().label_smoothing(config_.label_smoothing).reduction(torch::kSum)) /
         static_cast<double>(part.global_size);
}

// The backward (its gradients all-reduced over the ranks) and the optimizer step.
void Trainer::update(const at::Tensor& loss, EpochTotals& totals) {
  torch::optim::AdamW& optimizer = *session_.optimizer;
  optimizer.zero_grad();
  const at::Tensor scaled_loss = scaler_ ? scaler_->scale(loss) : loss;
  if (parallel_) {
    parallel_->backward(scaled_loss, 1.0);  // the sum of the shares' gradients
    totals.communication.add(parallel_->last_timing());
  } else {
    scaled_loss.backward();
  }
  // The gradients are the all-reduced ones: every rank skips the same steps.
  const bool finite = !scaler_ || scaler_->unscale_and_update(session_.model.module->parameters());
  if (writer_ && steps_this_run_ == 0 && !run_.save_gradients.empty()) {
    save_gradients(run_.save_gradients, *session_.model.module);
  }
  if (finite) {
    optimizer.step();
  } else {
    ++progress_.epoch_skipped_steps;
  }
}

void Trainer::print_progress(int64_t step, const EpochTotals& totals) {
  const int64_t images_seen = std::min(session_.train_size, progress_.step_in_epoch * config_.batch_size);
  const double per_step = seconds_since(run_start_) / steps_this_run_;
  const std::string line = fmt::format(
      "epoch {}/{}  step {}/{}  loss {:.4f}  {:.0f} img/s  ETA {}", progress_.epoch + 1, config_.epochs,
      step + 1, steps_per_epoch_, totals.loss_sum / progress_.step_in_epoch,
      images_seen / std::max(totals.seconds(), 1e-9),
      duration_text(per_step * (total_steps_ - progress_.global_step)));
  if (terminal_) {
    fmt::print("\r{:<78}", line);
    std::fflush(stdout);
  } else if (writer_ && ((step + 1) % std::max<int64_t>(1, steps_per_epoch_ / 5) == 0 || step + 1 == steps_per_epoch_)) {
    fmt::print("{}\n", line);
    std::fflush(stdout);
  }
}

// The epoch's evaluation, its metrics line, and (rank 0) the checkpoint and the run's files.
void Trainer::finish_epoch(const EpochTotals& totals) {
  const double train_seconds = totals.seconds();
  const double train_loss = totals.loss_sum / steps_per_epoch_;
  session_.model.module->eval();
  double accuracy = 0;
  int64_t val_skipped = 0;
  if (session_.val_loader) {
    std::tie(accuracy, val_skipped) =
        folder_accuracy(ranks_, session_.model, *session_.val_loader, session_.val_folder->size());
  } else {
    accuracy = test_accuracy(ranks_, session_.model, session_.test_data);
  }
  const int64_t train_skipped = static_cast<int64_t>(ranks_.sum({static_cast<double>(totals.skipped_images)})[0]);
  const std::string skipped_json = config_.skip_bad_images
      ? fmt::format(", \"skipped_images\": {}, \"skipped_val_images\": {}", train_skipped, val_skipped) : "";
  const int64_t skipped_steps = progress_.epoch_skipped_steps;
  const std::string amp_json = scaler_ ? fmt::format(", \"skipped_steps\": {}, \"loss_scale\": {}", skipped_steps,
                                                     scaler_->scale_value()) : "";
  progress_.epoch += 1;
  progress_.step_in_epoch = 0;
  progress_.epoch_loss_sum = 0.0;
  progress_.epoch_seconds = 0.0;
  progress_.epoch_skipped_steps = 0;
  const double images_per_second = session_.train_size / std::max(train_seconds, 1e-9);
  session_.state.metrics += fmt::format(
      "{{\"epoch\": {}, \"train_loss\": {:.6f}, \"test_accuracy\": {:.6f}, "
      "\"images_per_second\": {:.1f}, \"seconds\": {:.1f}{}{}{}}}\n",
      progress_.epoch, train_loss, accuracy, images_per_second, train_seconds,
      ranks_.size() > 1 ? totals.communication.json(ranks_.size()) : "", skipped_json, amp_json);
  if (!writer_) return;
  save();
  write_metrics_files(run_.out_dir, session_.state.metrics);
  write_plot(run_.out_dir);
  fmt::print("{}epoch {}/{}: train loss {:.4f}, test accuracy {:.2f}%, {:.0f} img/s, {}{}{}\n",
             terminal_ ? "\n" : "", progress_.epoch, config_.epochs, train_loss, 100 * accuracy,
             images_per_second, duration_text(train_seconds),
             config_.skip_bad_images ? fmt::format(", {} bad images skipped ({} in validation)", train_skipped, val_skipped)
                                     : "",
             scaler_ ? fmt::format(", {} steps skipped (inf/NaN gradients in float16)", skipped_steps) : "");
}

void Trainer::save() {
  if (scaler_) {
    progress_.loss_scale = scaler_->scale_value();
    progress_.loss_scale_growth_tracker = scaler_->growth_tracker();
  }
  session_.state.rng_state = at::detail::getDefaultCPUGenerator().get_state();
  save_checkpoint(checkpoint_path_, session_.state, *session_.model.module, *session_.optimizer);
}

// One process's part of the run (all of it without data parallelism).
int train_ranks(TrainRun& run, const Ranks& ranks) {
  std::optional<Session> session;
  std::string failure;
  try {
    session = open_session(run, ranks.rank() == 0);
  } catch (const c10::Error& error) {
    failure = error.what_without_backtrace();
  } catch (const std::exception& error) {
    failure = error.what();
  }
  agree_on_start(ranks, failure);
  return Trainer(run, ranks, *session).train();
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

// A rank of a job a launcher started (launch_local above, torchrun, ...).
int join_launched_job(TrainRun& run) {
  if (!run.given.threads) {
    // The processes of this machine share its cores.
    const char* local = std::getenv("LOCAL_WORLD_SIZE");
    run.threads = std::max<int64_t>(1, run.threads / std::max<int64_t>(1, local ? std::atoll(local) : 1));
  }
  // c10d logs each failed store request after a rank is lost as a warning with a stack trace;
  // this rank's error names the lost rank instead (TORCH_CPP_LOG_LEVEL=INFO shows them again).
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr) FLAGS_caffe2_log_level = std::max(FLAGS_caffe2_log_level, 2);
  const dist::ProcessGroupOptions options =
      dist::ProcessGroupOptions::from_environment(std::chrono::seconds(run.timeout_seconds));
  if (run.given.nproc && run.nproc != options.world_size()) {
    throw std::runtime_error(fmt::format(
        "--nproc {} disagrees with WORLD_SIZE={} set by the launcher (under a launcher, leave --nproc out)",
        run.nproc, options.world_size()));
  }
  Ranks ranks;
  ranks.group.emplace(options);
  return train_ranks(run, ranks);
}

}  // namespace

int train(TrainRun run) {
  if (dist::launched_from_environment()) return join_launched_job(run);
  return run.nproc > 1 ? launch_ranks(run) : train_ranks(run, Ranks{});
}

}  // namespace slideformer::app
