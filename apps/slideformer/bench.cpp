#include "bench.h"

#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <vector>

#include "bench_common.h"
#include "slideformer/cpu.h"
#include "slideformer/nn/functional.h"
#include "model_config.h"

namespace slideformer::app {

namespace {

// Output size of a convolution along one side.
int64_t conv_output(int64_t size, int64_t kernel, int64_t stride, int64_t padding) {
  return (size + 2 * padding - kernel) / stride + 1;
}

// 2 * multiply-adds of a k x k convolution producing an out x out map.
double conv_flops(int64_t in_channels, int64_t out_channels, int64_t kernel, int64_t out) {
  return 2.0 * in_channels * out_channels * kernel * kernel * out * out;
}

}  // namespace

FlopCount forward_flops(const nn::SlideTransformerOptions& o) {
  FlopCount flops;
  int64_t size = o.image_size(), channels = o.in_channels();
  if (o.stem_channels() > 0) {  // two 3x3 convolutions, padding 1
    flops.convolution += conv_flops(channels, o.stem_channels(), 3, size) +
                         conv_flops(o.stem_channels(), o.stem_channels(), 3, size);
    channels = o.stem_channels();
  }
  const int64_t patch = o.patch_size();
  const int64_t kernel = o.overlapping_patches() ? 2 * patch - 1 : patch;
  size = conv_output(size, kernel, patch, o.overlapping_patches() ? patch - 1 : 0);
  flops.convolution += conv_flops(channels, o.embed_dim(), kernel, size);

  const double window = static_cast<double>(o.kernel_size()) * o.kernel_size();
  int64_t dim = o.embed_dim();
  for (size_t s = 0; s < o.depths().size(); ++s) {
    const double tokens = static_cast<double>(size) * size;
    const auto hidden = static_cast<int64_t>(dim * o.mlp_ratio());
    for (int64_t i = 0; i < o.depths()[s]; ++i) {
      // qkv, proj, fc1, fc2
      flops.linear += 2.0 * tokens * dim * (3 * dim + dim + 2 * hidden);
      if (o.stage_kinds()[s] == nn::AttentionKind::kSlide) {
        // QK^T and PV over the window, and the shift mixing window x window slots of K and V
        // per channel.
        flops.slide_attention += 2.0 * tokens * dim * (2 * window + 2 * window * window);
      } else {
        flops.global_attention += 2.0 * 2 * tokens * tokens * dim;
      }
    }
    if (s + 1 < o.depths().size()) {  // patch merging: 2x2 patches, 4C -> 2C
      size = (size + 1) / 2;
      flops.linear += 2.0 * size * size * (4 * dim) * (2 * dim);
      dim *= 2;
    }
  }
  flops.linear += 2.0 * dim * o.num_classes();
  return flops;
}

int bench(const BenchConfig& config) {
  at::set_num_threads(static_cast<int>(config.threads));
  torch::manual_seed(0);
  const ModelConfig model = preset_model(config.preset);
  const auto* slide = model.options_if<nn::SlideTransformerOptions>();
  if (!slide) {
    throw std::runtime_error("bench: preset '" + config.preset + "' is not a slide_transformer (the FLOP count is theirs)");
  }
  const nn::SlideTransformerOptions& options = *slide;
  const int64_t n = config.batch_size;
  const at::Tensor images =
      torch::randn({n, options.in_channels(), options.image_size(), options.image_size()});
  const at::Tensor labels = torch::randint(options.num_classes(), {n}, at::kLong);

  const Model inference = build_model(model);
  dynamic_cast<nn::SlideTransformerImpl&>(*inference.module).reparameterize();
  inference.module->eval();
  const Model training = build_model(model);
  training.module->train();
  torch::optim::AdamW optimizer(training.module->parameters(), torch::optim::AdamWOptions(1e-4));
  const at::Tensor a = torch::randn({1024, 1024}), b = torch::randn({1024, 1024});

  // Round-robin after one warm-up round, so that a background load slows each step alike.
  const std::vector<double> seconds = slideformer::bench::interleaved_median_seconds(
      {[&] { at::mm(a, b); },
       [&] {
         torch::NoGradGuard no_grad;
         inference(images);
       },
       [&] {
         optimizer.zero_grad();
         torch::nn::functional::cross_entropy(training(images), labels).backward();
         optimizer.step();
       }},
      1, static_cast<int>(config.rounds));

  const FlopCount flops = forward_flops(options);
  const double mm_rate = 2.0 * 1024 * 1024 * 1024 / seconds[0];
  const double forward_rate = n / seconds[1], train_rate = n / seconds[2];
  // A training step: the forward, and a backward of twice its products.
  const double forward_fraction = flops.total() * forward_rate / mm_rate;
  const double train_fraction = 3 * flops.total() * train_rate / mm_rate;
  if (config.json) {
    const nlohmann::json result = {
        {"preset", config.preset}, {"batch_size", n}, {"threads", config.threads}, {"rounds", config.rounds},
        {"forward_img_s", forward_rate}, {"train_img_s", train_rate}, {"flops_per_image", flops.total()},
        {"mm_flop_s", mm_rate}, {"forward_mm_fraction", forward_fraction}, {"train_mm_fraction", train_fraction},
        {"cpu", describe_cpu()}, {"linear_backends", nn::functional::describe_linear_backends()}};
    fmt::print("{}\n", result.dump());
    return 0;
  }
  fmt::print("{}: batch {}, {} threads, {}x{} images, medians of {} rounds (round-robin)\n{}\n{}\n",
             config.preset, n, config.threads, options.image_size(), options.image_size(),
             config.rounds, describe_cpu(), nn::functional::describe_linear_backends());
  fmt::print("FLOPs per image (forward)  {:.3f} G: linear {:.3f}, convolution {:.3f}, global "
             "attention {:.3f}, slide attention {:.3f}\n",
             flops.total() / 1e9, flops.linear / 1e9, flops.convolution / 1e9,
             flops.global_attention / 1e9, flops.slide_attention / 1e9);
  fmt::print("at::mm 1024^3              {:.1f} GFLOP/s\n", mm_rate / 1e9);
  fmt::print("forward (eval, reparameterized)  {:8.2f} img/s  {:6.1f} GFLOP/s  {:.2f} of at::mm\n",
             forward_rate, flops.total() * forward_rate / 1e9, forward_fraction);
  fmt::print("training step (AdamW)            {:8.2f} img/s  {:6.1f} GFLOP/s  {:.2f} of at::mm "
             "(3x the forward FLOPs)\n",
             train_rate, 3 * flops.total() * train_rate / 1e9, train_fraction);
  return 0;
}

}  // namespace slideformer::app
