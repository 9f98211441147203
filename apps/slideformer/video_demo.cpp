// `slideformer video-demo` (video_demo.h).
#include "video_demo.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include <chrono>

#include "atomic_file.h"
#include "idx.h"
#include "schedule.h"
#include "slideformer/data/moving_clips.h"
#include "slideformer/nn/export.h"
#include "slideformer/nn/modules.h"
#include "slideformer/nn/options.h"

namespace slideformer::app {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// uint8 clips (N, 1, T, S, S), or their middle frame when the model sees one frame, as the model's
// normalised float input.
at::Tensor model_input(const at::Tensor& clips, const nn::VideoMViTOptions& o) {
  at::Tensor x = clips;
  if (o.frames() == 1) x = clips.narrow(2, clips.size(2) / 2, 1);
  return (x.to(at::kFloat).div_(255).sub_(o.input_mean()[0])).div_(o.input_std()[0]);
}

double accuracy(nn::VideoMViT& model, const data::MovingClips& test, int64_t batch_size) {
  torch::NoGradGuard no_grad;
  model->eval();
  int64_t correct = 0;
  for (int64_t begin = 0; begin < test.labels.size(0); begin += batch_size) {
    const int64_t n = std::min(batch_size, test.labels.size(0) - begin);
    const at::Tensor logits = model->forward(model_input(test.clips.narrow(0, begin, n), model->options));
    correct += logits.argmax(1).eq(test.labels.narrow(0, begin, n)).sum().item<int64_t>();
  }
  return test.labels.size(0) > 0 ? 100.0 * static_cast<double>(correct) / static_cast<double>(test.labels.size(0)) : 0;
}

// AdamW on the training program's schedule (schedule.h: linear warm-up, cosine decay to 0);
// prints one line per epoch. Returns the final test accuracy (percent).
double train(const std::string& name, nn::VideoMViT& model, const data::MovingClips& train_set,
             const data::MovingClips& test_set, const VideoDemoConfig& config) {
  torch::optim::AdamW optimizer(model->parameters(),
                                torch::optim::AdamWOptions(config.learning_rate).weight_decay(0.05));
  const int64_t steps_per_epoch = std::max<int64_t>(1, train_set.labels.size(0) / config.batch_size);
  const int64_t total_steps = steps_per_epoch * config.epochs;
  TrainConfig schedule;
  schedule.lr = config.learning_rate;
  double test_accuracy = 0;
  int64_t step = 0;
  for (int64_t epoch = 1; epoch <= config.epochs; ++epoch) {
    const auto start = Clock::now();
    model->train();
    const at::Tensor order = at::randperm(train_set.labels.size(0), at::kLong);
    double loss_sum = 0;
    for (int64_t s = 0; s < steps_per_epoch; ++s, ++step) {
      const double lr = learning_rate(schedule, step, total_steps);
      for (auto& group : optimizer.param_groups()) group.options().set_lr(lr);
      const at::Tensor batch = order.narrow(0, s * config.batch_size,
                                            std::min(config.batch_size, train_set.labels.size(0) - s * config.batch_size));
      const at::Tensor logits = model->forward(model_input(train_set.clips.index_select(0, batch), model->options));
      const at::Tensor loss = at::cross_entropy_loss(logits, train_set.labels.index_select(0, batch));
      optimizer.zero_grad();
      loss.backward();
      torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
      optimizer.step();
      loss_sum += loss.item<double>();
    }
    const double train_seconds = seconds_since(start);
    test_accuracy = accuracy(model, test_set, 4 * config.batch_size);
    fmt::print("{:>12} epoch {}/{}: loss {:.4f}, test accuracy {:.2f}%, {:.0f} clips/s ({:.1f} s)\n", name, epoch,
               config.epochs, loss_sum / static_cast<double>(steps_per_epoch), test_accuracy,
               static_cast<double>(steps_per_epoch * config.batch_size) / train_seconds, train_seconds);
    std::fflush(stdout);
  }
  return test_accuracy;
}

}  // namespace

int video_demo(const VideoDemoConfig& config) {
  at::set_num_threads(static_cast<int>(config.threads));
  const nn::VideoMViTOptions video = nn::video_mvit_preset("moving_mvit");
  const auto clip_options = data::MovingClipsOptions().frames(video.frames()).canvas(video.image_size());
  const auto make = [&](bool train_split, int64_t count, uint64_t seed) {
    const Dataset garments = load_fashion_mnist(config.data_dir, train_split);
    return data::make_moving_clips(garments.images.squeeze(1), garments.labels, count,
                                   data::MovingClipsOptions(clip_options).seed(seed));
  };
  const data::MovingClips train_set = make(true, config.train_clips, 2 * config.seed);
  const data::MovingClips test_set = make(false, config.test_clips, 2 * config.seed + 1);
  fmt::print("moving Fashion-MNIST: {} training and {} test clips of {} frames, {}x{}; the label is the class of "
             "the garment moving right\n",
             config.train_clips, config.test_clips, video.frames(), video.image_size(), video.image_size());
  const auto start = Clock::now();
  torch::manual_seed(config.seed);
  nn::VideoMViT clip_model(video);
  const double clip_accuracy = train("video", clip_model, train_set, test_set, config);
  torch::manual_seed(config.seed);
  nn::VideoMViT frame_model(nn::VideoMViTOptions(video).frames(1));
  const double frame_accuracy = train("single frame", frame_model, train_set, test_set, config);
  fmt::print("test accuracy: video model {:.2f}%, single-frame model {:.2f}%, margin {:+.2f} points ({:.0f} s of "
             "training)\n",
             clip_accuracy, frame_accuracy, clip_accuracy - frame_accuracy, seconds_since(start));
  if (!config.out.empty()) {
    const torch::jit::Module scripted = nn::to_torchscript(*clip_model);
    write_file_atomically(config.out, "TorchScript model", [&](std::ostream& stream) { scripted.save(stream); });
    fmt::print("wrote {}\n", config.out);
  }
  return 0;
}

}  // namespace slideformer::app
