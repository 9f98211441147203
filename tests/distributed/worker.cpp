// One rank of the multi-process tests of slideformer::distributed (test_distributed.cpp starts
// them with launch_local). Each scenario checks its own results against a single-process reference
// computed in the same rank and exits 0 when they hold, 1 (with the reason on stderr) otherwise.
#include <signal.h>
#include <torch/torch.h>

#include <cstdio>
#include <iostream>
#include <sstream>

#include "slideformer/distributed.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"

namespace {

namespace dist = slideformer::distributed;
namespace nn = slideformer::nn;
namespace F = torch::nn::functional;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void require(bool condition, const std::string& what) {
  if (!condition) throw Failure(what);
}

// max |a - b| <= tolerance * max |b| (+ a floor for all-zero tensors).
void require_close(const at::Tensor& a, const at::Tensor& b, double tolerance, const std::string& what) {
  require(a.defined() == b.defined(), what + ": one gradient is undefined");
  if (!a.defined()) return;
  const double error = (a - b).abs().max().item<double>(), scale = b.abs().max().item<double>();
  std::ostringstream text;
  text << what << ": max |difference| " << error << " > " << tolerance << " * max |reference| " << scale;
  require(error <= tolerance * scale + 1e-9, text.str());
}

// Inputs of a global batch of `size` Fashion-sized images, the same on every rank.
std::pair<at::Tensor, at::Tensor> global_batch(int64_t size, int64_t step) {
  at::Generator generator = at::detail::createCPUGenerator(1234 + step);
  return {at::randn({size, 1, 28, 28}, generator), at::randint(0, 10, {size}, generator, at::kLong)};
}

// The fashion preset (drop path, the frozen one-hot shift path) on every rank, initialised
// differently per rank: DataParallel must start every rank from rank 0's weights. For each global
// batch size, the DataParallel gradient from this rank's part must equal one process's gradient of
// the whole batch, through three SGD steps (the buckets are rebuilt after the first).
void gradients(const dist::ProcessGroup& group, int64_t bucket_bytes) {
  torch::manual_seed(100 + group.rank());
  nn::SlideTransformer model(nn::preset("fashion"));
  torch::manual_seed(100);
  nn::SlideTransformer reference(nn::preset("fashion"));
  bool has_frozen = false;
  for (const auto& item : model->named_parameters()) has_frozen = has_frozen || !item.value().requires_grad();
  require(has_frozen, "the fashion preset should have a frozen parameter (identity_weight)");

  dist::DataParallel parallel(model.ptr(), group,
                              dist::DataParallelOptions().bucket_cap_bytes(bucket_bytes).first_bucket_cap_bytes(bucket_bytes));
  const auto reference_states = reference->named_parameters();
  for (const auto& item : model->named_parameters()) {
    require(item.value().equal(reference_states[item.key()]), "rank 0's value of " + item.key() + " was not broadcast");
  }
  const size_t buckets = parallel.bucket_parameter_names().size();
  require(bucket_bytes >= (1 << 20) || buckets > 3, "small buckets should give several buckets, got " + std::to_string(buckets));

  torch::optim::SGD optimizer(model->parameters(), 0.05), reference_optimizer(reference->parameters(), 0.05);
  // 7 splits unevenly over 2 and 3 ranks; 2 leaves a rank of 3 without samples.
  const std::vector<int64_t> sizes{7, 2, 5};
  for (int64_t step = 0; step < static_cast<int64_t>(sizes.size()); ++step) {
    const auto [images, labels] = global_batch(sizes[step], step);
    dist::DistributedSampler sampler(sizes[step], group.rank(), group.world_size(),
                                     dist::DistributedSamplerOptions(sizes[step]).shuffle(false));
    const dist::BatchShard part = sampler.batch(sampler.order(0), 0);

    reference_optimizer.zero_grad();
    torch::manual_seed(1000 + step);
    F::cross_entropy(reference(images), labels).backward();

    optimizer.zero_grad();
    torch::manual_seed(1000 + step);
    at::Tensor logits;
    {
      nn::functional::GlobalBatchSlice slice(part.offset, part.global_size);
      logits = model(images.index_select(0, part.indices));
    }
    // Sum over local samples / global count: an empty part contributes an exact zero.
    const at::Tensor loss = F::cross_entropy(logits, labels.index_select(0, part.indices),
                                             F::CrossEntropyFuncOptions().reduction(torch::kSum)) / part.global_size;
    parallel.backward(loss, 1.0);

    const auto reference_parameters = reference->named_parameters();
    for (const auto& item : model->named_parameters()) {
      if (!item.value().requires_grad()) {
        require(!item.value().grad().defined(), item.key() + " is frozen but got a gradient");
        continue;
      }
      require_close(item.value().grad(), reference_parameters[item.key()].grad(), 1e-5,
                    "step " + std::to_string(step) + " gradient of " + item.key());
    }
    optimizer.step();
    reference_optimizer.step();
  }
  const dist::BackwardTiming timing = parallel.last_timing();
  require(timing.buckets == static_cast<int64_t>(parallel.bucket_parameter_names().size()),
          "every bucket should have been reduced and timed");
  require(timing.communication > 0 && timing.overlapped <= timing.communication + 1e-9 && timing.compute <= timing.backward,
          "inconsistent timing");
}

// Two micro-batches, the first under no_sync: the accumulated gradient equals one process's
// gradient of both micro-batches as one batch. In between, ranks hold different local gradients.
void no_sync(const dist::ProcessGroup& group) {
  torch::manual_seed(7);
  torch::nn::Sequential model(torch::nn::Linear(12, 16), torch::nn::Tanh(), torch::nn::Linear(16, 3));
  torch::nn::Sequential reference = std::dynamic_pointer_cast<torch::nn::SequentialImpl>(model->clone());
  dist::DataParallel parallel(model.ptr(), group, dist::DataParallelOptions().bucket_cap_bytes(256).first_bucket_cap_bytes(256));
  const int64_t micro = 5, total = 2 * micro;
  at::Generator generator = at::detail::createCPUGenerator(99);
  const at::Tensor x = at::randn({total, 12}, generator);
  const at::Tensor y = at::randint(0, 3, {total}, generator, at::kLong);
  auto part_loss = [&](int64_t first) {
    dist::DistributedSampler sampler(micro, group.rank(), group.world_size(), dist::DistributedSamplerOptions(micro).shuffle(false));
    const at::Tensor index = sampler.batch(sampler.order(0), 0).indices + first;
    return F::cross_entropy(model->forward(x.index_select(0, index)), y.index_select(0, index),
                            F::CrossEntropyFuncOptions().reduction(torch::kSum)) / total;
  };
  {
    auto guard = parallel.no_sync();
    parallel.backward(part_loss(0));
  }
  at::Tensor local = model[0]->as<torch::nn::Linear>()->weight.grad().clone(), highest = local.clone();
  group.all_reduce_(highest, dist::ReduceOp::kMax);
  group.all_reduce_(local, dist::ReduceOp::kMin);
  require(!highest.equal(local), "no_sync should leave each rank its own gradient");
  parallel.backward(part_loss(micro), 1.0);

  F::cross_entropy(reference->forward(x), y).backward();
  const auto expected = reference->named_parameters();
  for (const auto& item : model->named_parameters()) {
    require_close(item.value().grad(), expected[item.key()].grad(), 1e-5, "accumulated gradient of " + item.key());
  }
}

// A branch that rank 0 skips in step 0 and every rank skips in step 1: with find_unused_parameters
// its gradient is the weighted sum over the ranks that used it, and stays undefined when none did.
// Without the option, a parameter left without gradient is an error that names it.
struct BranchyImpl : torch::nn::Module {
  BranchyImpl() : trunk(register_module("trunk", torch::nn::Linear(6, 4))), branch(register_module("branch", torch::nn::Linear(4, 4))) {}
  at::Tensor forward(const at::Tensor& x, bool use_branch) {
    const at::Tensor h = trunk(x);
    return use_branch ? h + branch(h) : h;
  }
  torch::nn::Linear trunk, branch;
};
TORCH_MODULE(Branchy);

void unused(const dist::ProcessGroup& group) {
  torch::manual_seed(3);
  Branchy model, reference;
  reference->trunk->weight.data().copy_(model->trunk->weight.data());
  reference->trunk->bias.data().copy_(model->trunk->bias.data());
  reference->branch->weight.data().copy_(model->branch->weight.data());
  reference->branch->bias.data().copy_(model->branch->bias.data());
  dist::DataParallel parallel(model.ptr(), group, dist::DataParallelOptions().find_unused_parameters(true));
  const int64_t world = group.world_size();
  for (int64_t step = 0; step < 2; ++step) {
    auto uses_branch = [&](int64_t rank) { return step == 0 && rank != 0; };
    auto data = [&](int64_t rank) { return at::randn({3, 6}, at::detail::createCPUGenerator(50 + 10 * step + rank)); };
    model->zero_grad();
    parallel.backward(model->forward(data(group.rank()), uses_branch(group.rank())).square().mean());
    reference->zero_grad();
    at::Tensor total = at::zeros({});
    for (int64_t r = 0; r < world; ++r) total = total + reference->forward(data(r), uses_branch(r)).square().mean() / world;
    total.backward();
    const auto expected = reference->named_parameters();
    for (const auto& item : model->named_parameters()) {
      require_close(item.value().grad(), expected[item.key()].grad(), 1e-5, "step " + std::to_string(step) + " gradient of " + item.key());
    }
  }

  Branchy strict;
  dist::DataParallel strict_parallel(strict.ptr(), group);
  try {
    strict_parallel.backward(strict->forward(at::ones({2, 6}), false).sum());
    require(false, "a parameter without gradient should be an error without find_unused_parameters");
  } catch (const std::invalid_argument& error) {
    const std::string message = error.what();
    require(message.find("branch.weight") != std::string::npos && message.find("find_unused_parameters") != std::string::npos,
            "unexpected message: " + message);
  }
}

// The metric helpers and collectives, and their bad inputs.
void collectives(const dist::ProcessGroup& group) {
  const int64_t n = group.world_size(), r = group.rank();
  const std::vector<double> sums = dist::all_reduce_sum(group, {1.0, double(r), 0.5 * double(r * r)});
  require(sums[0] == double(n) && sums[1] == double(n * (n - 1) / 2), "all_reduce_sum");
  require(dist::all_reduce_sum(group, double(r + 1)) == double(n * (n + 1) / 2), "all_reduce_sum of a scalar");
  at::Tensor value = at::full({3}, double(r));
  group.all_reduce_(value, dist::ReduceOp::kMax);
  require(value.eq(double(n - 1)).all().item<bool>(), "all_reduce_ max");
  std::vector<at::Tensor> tensors{at::full({2, 2}, double(r)), at::full({4}, int64_t(10 * r))};
  group.broadcast_(tensors, n - 1);
  require(tensors[0].eq(double(n - 1)).all().item<bool>() && tensors[1].eq(10 * (n - 1)).all().item<bool>(), "broadcast_");
  group.barrier();
  require(group.describe_rank(r).find("pid " + std::to_string(getpid())) != std::string::npos, "describe_rank: " + group.describe_rank(r));
  try {
    at::Tensor strided = at::zeros({4, 4}).t();
    group.all_reduce_(strided);
    require(false, "a non-contiguous all_reduce_ should be refused");
  } catch (const std::invalid_argument& error) {
    require(std::string(error.what()).find("must be contiguous") != std::string::npos, error.what());
  }
}

// The last rank dies (SIGKILL) after a barrier; the others' next collective must fail with a
// CommunicationError that names it.
void lost(const dist::ProcessGroup& group) {
  const int64_t victim = group.world_size() - 1;
  group.barrier();
  if (group.rank() == victim) raise(SIGKILL);
  at::Tensor value = at::ones({1000});
  try {
    for (int i = 0; i < 100; ++i) group.all_reduce_(value);
    require(false, "the all-reduce should fail once rank " + std::to_string(victim) + " is gone");
  } catch (const dist::CommunicationError& error) {
    std::cerr << "rank " << group.rank() << " caught: " << error.what() << "\n";
    require(error.lost_ranks() == std::vector<int64_t>{victim}, std::string("wrong lost ranks in: ") + error.what());
    require(std::string(error.what()).find("rank " + std::to_string(victim)) != std::string::npos, error.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string scenario = argc > 1 ? argv[1] : "";
  try {
    at::set_num_threads(1);
    const dist::ProcessGroup group(dist::ProcessGroupOptions::from_environment(std::chrono::seconds(60)));
    if (scenario == "gradients") {
      gradients(group, argc > 2 ? std::stoll(argv[2]) : 25 << 20);
    } else if (scenario == "no_sync") {
      no_sync(group);
    } else if (scenario == "unused") {
      unused(group);
    } else if (scenario == "collectives") {
      collectives(group);
    } else if (scenario == "lost") {
      lost(group);
    } else {
      std::cerr << "unknown scenario '" << scenario << "'\n";
      return 2;
    }
  } catch (const std::exception& error) {
    std::cerr << "[" << scenario << "] " << error.what() << "\n";
    return 1;
  }
  return 0;
}
