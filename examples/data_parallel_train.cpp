// A training loop of your own, data-parallel over several processes with slideformer::distributed.
//
//   data_parallel_train --nproc 2            # starts 2 ranks on this machine and trains
//   torchrun --nproc-per-node 2 data_parallel_train   # or any launcher that sets RANK, WORLD_SIZE, ...
//
// It trains the `fashion` preset on a synthetic 10-class task (a bright square whose position is
// the class, in noise), so it needs no dataset. Every rank runs this same loop on its part of each
// global batch; rank 0 alone prints.
#include <torch/torch.h>

#include <cstdio>
#include <string>

#include "slideformer/distributed.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"

namespace dist = slideformer::distributed;
namespace F = torch::nn::functional;

namespace {

// n images of 28x28: noise plus a bright 6x6 square at one of 10 positions; the label is the position.
std::pair<at::Tensor, at::Tensor> synthetic_data(int64_t n, uint64_t seed) {
  at::Generator generator = at::detail::createCPUGenerator(seed);
  at::Tensor images = 0.1 * at::randn({n, 1, 28, 28}, generator);
  const at::Tensor labels = at::randint(0, 10, {n}, generator, at::kLong);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t k = labels[i].item<int64_t>(), row = 3 + 12 * (k / 5), col = 1 + 5 * (k % 5);
    images[i].narrow(1, row, 6).narrow(2, col, 6).add_(2.0);
  }
  return {images, labels};
}

double option(int argc, char** argv, const std::string& name, double fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == name) return std::stod(argv[i + 1]);
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const auto nproc = static_cast<int64_t>(option(argc, argv, "--nproc", 2));
  const auto epochs = static_cast<int64_t>(option(argc, argv, "--epochs", 3));
  const auto batch_size = static_cast<int64_t>(option(argc, argv, "--batch-size", 32));
  const auto accumulate = static_cast<int64_t>(option(argc, argv, "--accumulate", 1));
  const double lr = option(argc, argv, "--lr", 2e-3);
  try {
    if (!dist::launched_from_environment()) {
      // Not started by a launcher: start nproc copies of this program as the ranks of a job.
      return dist::launch_local(std::vector<std::string>(argv, argv + argc), nproc).exit_code;
    }
    at::set_num_threads(1);
    const dist::ProcessGroup group(dist::ProcessGroupOptions::from_environment(std::chrono::seconds(60)));
    const bool main_rank = group.rank() == 0;

    torch::manual_seed(0);  // any initialisation: DataParallel copies rank 0's to every rank
    slideformer::nn::SlideTransformer model(slideformer::nn::preset("fashion"));
    dist::DataParallel parallel(model.ptr(), group);
    torch::optim::AdamW optimizer(model->parameters(), torch::optim::AdamWOptions(lr));

    const auto [images, labels] = synthetic_data(640, 1);
    const auto [test_images, test_labels] = synthetic_data(200, 2);
    // Each optimizer step takes `accumulate` global batches of batch_size samples.
    dist::DistributedSampler sampler(images.size(0), group.rank(), group.world_size(),
                                     dist::DistributedSamplerOptions(batch_size).seed(7));
    for (int64_t epoch = 0; epoch < epochs; ++epoch) {
      model->train();
      const at::Tensor order = sampler.order(epoch);
      double loss_sum = 0;
      for (int64_t step = 0; step < sampler.steps_per_epoch(); ++step) {
        const dist::BatchShard part = sampler.batch(order, step);
        at::Tensor logits;
        {
          // drop_path draws for the whole global batch: results do not depend on the rank count.
          slideformer::nn::functional::GlobalBatchSlice slice(part.offset, part.global_size);
          logits = model(images.index_select(0, part.indices));
        }
        // Summed over this rank's samples, divided by the global count: the ranks' losses add up
        // to the global mean, and a rank with no samples adds zero.
        const at::Tensor loss = F::cross_entropy(logits, labels.index_select(0, part.indices),
                                                 F::CrossEntropyFuncOptions().reduction(torch::kSum)) /
                                (part.global_size * accumulate);
        const bool last_of_group = (step + 1) % accumulate == 0 || step + 1 == sampler.steps_per_epoch();
        if (last_of_group) {
          parallel.backward(loss, 1.0);  // reduces everything accumulated since the last step
          optimizer.step();
          optimizer.zero_grad();
        } else {
          auto local_only = parallel.no_sync();
          parallel.backward(loss);
        }
        loss_sum += dist::all_reduce_sum(group, loss.item<double>() * accumulate);
      }
      if (main_rank) std::printf("epoch %lld: loss %.4f\n", static_cast<long long>(epoch + 1), loss_sum / sampler.steps_per_epoch());
    }

    // Evaluation: each rank scores its shard of the test set; the counts are summed.
    model->eval();
    torch::NoGradGuard no_grad;
    const dist::DistributedSampler test_sampler(test_images.size(0), group.rank(), group.world_size(),
                                                dist::DistributedSamplerOptions(test_images.size(0)).shuffle(false));
    const at::Tensor mine = test_sampler.shard(0);
    const double correct = model(test_images.index_select(0, mine)).argmax(1).eq(test_labels.index_select(0, mine)).sum().item<double>();
    const std::vector<double> totals = dist::all_reduce_sum(group, {correct, double(mine.numel())});
    if (main_rank) {
      std::printf("%lld processes (%s): test accuracy %.1f%% on %.0f images\n", static_cast<long long>(group.world_size()),
                  group.backend_name().c_str(), 100.0 * totals[0] / totals[1], totals[1]);
    }
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "data_parallel_train: error: %s\n", error.what());
    return 1;
  }
}
