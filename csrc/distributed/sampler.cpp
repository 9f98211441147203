// DistributedSampler: each global batch of an epoch's order, split across the ranks.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "slideformer/distributed.h"

namespace slideformer::distributed {

namespace {

constexpr const char* kWho = "slideformer::distributed::DistributedSampler";

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(std::string(kWho) + ": " + what); }

}  // namespace

DistributedSampler::DistributedSampler(int64_t dataset_size, int64_t rank, int64_t world_size,
                                       DistributedSamplerOptions options)
    : dataset_size_(dataset_size), rank_(rank), world_size_(world_size), options_(options) {
  if (dataset_size < 0) fail("dataset_size must be >= 0, got " + std::to_string(dataset_size));
  if (world_size < 1) fail("world_size must be >= 1, got " + std::to_string(world_size));
  if (rank < 0 || rank >= world_size) {
    fail("rank must be in [0, world_size = " + std::to_string(world_size) + "), got " + std::to_string(rank));
  }
  if (options.batch_size() < 1) fail("batch_size must be >= 1, got " + std::to_string(options.batch_size()));
}

int64_t DistributedSampler::steps_per_epoch() const {
  return (dataset_size_ + options_.batch_size() - 1) / options_.batch_size();
}

at::Tensor DistributedSampler::order(int64_t epoch) const {
  if (!options_.shuffle()) return at::arange(dataset_size_, at::kLong);
  // A generator of its own, seeded by (seed, epoch) alone: a resumed run draws the same order.
  at::Generator generator = at::detail::createCPUGenerator(options_.seed() * 1000003 + static_cast<uint64_t>(epoch));
  return at::randperm(dataset_size_, generator, at::kLong);
}

BatchShard DistributedSampler::batch(const at::Tensor& order, int64_t step) const {
  if (order.dim() != 1 || order.size(0) != dataset_size_ || order.scalar_type() != at::kLong) {
    fail("batch: order must be a 1-D int64 tensor of dataset_size = " + std::to_string(dataset_size_) +
         " indices (from order()), got " + order.toString() + " of shape " + c10::str(order.sizes()));
  }
  if (step < 0 || step >= steps_per_epoch()) {
    fail("batch: step must be in [0, " + std::to_string(steps_per_epoch()) + "), got " + std::to_string(step));
  }
  const int64_t start = step * options_.batch_size();
  BatchShard shard;
  shard.global_size = std::min(options_.batch_size(), dataset_size_ - start);
  const int64_t base = shard.global_size / world_size_, extra = shard.global_size % world_size_;
  shard.offset = rank_ * base + std::min(rank_, extra);
  shard.indices = order.narrow(0, start + shard.offset, base + (rank_ < extra ? 1 : 0));
  return shard;
}

at::Tensor DistributedSampler::shard(int64_t epoch) const {
  const at::Tensor epoch_order = order(epoch);
  std::vector<at::Tensor> parts;
  for (int64_t step = 0; step < steps_per_epoch(); ++step) parts.push_back(batch(epoch_order, step).indices);
  return parts.empty() ? at::empty({0}, at::kLong) : at::cat(parts);
}

}  // namespace slideformer::distributed
