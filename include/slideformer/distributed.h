#pragma once
// Data-parallel training from C++ on torch's c10d: a TCPStore rendezvous, Gloo for CPU tensors and
// NCCL for CUDA tensors (when the library was built with it), gradients averaged by c10d's Reducer
// in buckets launched from autograd hooks, so communication overlaps the backward pass.
//
//   auto group = slideformer::distributed::ProcessGroup(
//       slideformer::distributed::ProcessGroupOptions::from_environment());   // torchrun's variables
//   slideformer::distributed::DataParallel ddp(model.ptr(), group);            // rank 0's weights
//   slideformer::distributed::DistributedSampler sampler(n, group.rank(), group.world_size(),
//       slideformer::distributed::DistributedSamplerOptions(global_batch).seed(0));
//   for (epoch...) { at::Tensor order = sampler.order(epoch);
//     for (step...) { auto batch = sampler.batch(order, step);
//       optimizer.zero_grad();
//       ddp.backward(loss_of(batch.indices));   // the average over ranks
//       optimizer.step(); } }
//
// The c10d and Gloo headers stay inside the library: including this header needs only LibTorch.
#include <ATen/Tensor.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/arg.h>
#include <torch/nn/module.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace c10d {
class ProcessGroup;
}  // namespace c10d

namespace slideformer::distributed {

// A collective or the rendezvous failed: a rank died, hung past the timeout, never arrived, or
// the store could not be reached. The message names the ranks it could identify as lost. After
// one, the group is unusable: end the process.
class CommunicationError : public std::runtime_error {
 public:
  CommunicationError(const std::string& message, std::vector<int64_t> lost_ranks);
  // Ranks found without a heartbeat (or that never arrived); empty when none could be named.
  const std::vector<int64_t>& lost_ranks() const { return lost_ranks_; }

 private:
  std::vector<int64_t> lost_ranks_;
};

// Where this process stands in the job and how it meets the others (the variables torchrun sets).
struct ProcessGroupOptions {
  TORCH_ARG(int64_t, rank) = 0;
  TORCH_ARG(int64_t, world_size) = 1;
  // Index among the processes of this machine: the CUDA device NCCL uses.
  TORCH_ARG(int64_t, local_rank) = 0;
  // Rank 0 hosts the rendezvous store (a c10d::TCPStore) at master_addr:master_port.
  TORCH_ARG(std::string, master_addr) = "127.0.0.1";
  TORCH_ARG(int64_t, master_port) = 29500;
  // False when the launcher already hosts the store there (torchrun's agent does): then rank 0
  // connects to it like the others.
  TORCH_ARG(bool, host_store) = true;
  // Prefix of this job's keys in the store (torchrun: one per restart attempt).
  TORCH_ARG(std::string, store_prefix) = "";
  // Bound on the rendezvous (every rank must arrive within it), on each collective and on how
  // long a silent peer may stall the others before they stop.
  TORCH_ARG(std::chrono::milliseconds, timeout) = std::chrono::minutes(5);
  // CUDA tensors through NCCL when the library was built with it and CUDA is available; CPU
  // tensors always go through Gloo.
  TORCH_ARG(bool, nccl) = true;
  // Rank 0 only: a socket already bound and listening on master_port that the store adopts (a
  // launcher that picked a free port passes it down, so no other program can take the port in
  // between). -1: rank 0 binds master_port itself.
  TORCH_ARG(int, listen_fd) = -1;

 public:  // (TORCH_ARG leaves the section private)
  // RANK, WORLD_SIZE, LOCAL_RANK (default 0), MASTER_ADDR (default 127.0.0.1) and MASTER_PORT
  // (default 29500), as torchrun sets them; torchrun's TORCHELASTIC_USE_AGENT_STORE=True and
  // TORCHELASTIC_RESTART_COUNT (the agent hosts the store; keys per attempt, as in PyTorch); and
  // launch_local's SLIDEFORMER_LISTEN_FD (rank 0). std::invalid_argument names a missing or
  // malformed one.
  static ProcessGroupOptions from_environment(
      std::chrono::milliseconds timeout = std::chrono::minutes(5));
};

// True when the environment describes a job (WORLD_SIZE is set), as under torchrun.
bool launched_from_environment();

enum class ReduceOp { kSum, kMax, kMin };

// The processes of one job. Construction blocks until every rank has arrived (or throws
// CommunicationError naming the ranks that did not arrive within the timeout). A cheap handle:
// copies share the group. While it lives, a background thread keeps this rank's heartbeat in the
// store, which is how a failed collective learns which rank was lost.
class ProcessGroup {
 public:
  explicit ProcessGroup(const ProcessGroupOptions& options);

  int64_t rank() const;
  int64_t world_size() const;
  int64_t local_rank() const;
  // The device this rank computes on: cuda:local_rank with NCCL, otherwise the CPU.
  at::Device device() const;
  // "gloo" or "gloo+nccl".
  std::string backend_name() const;

  // Blocking collectives over every rank (Gloo for CPU tensors, NCCL for CUDA ones). A failure
  // throws CommunicationError naming the lost ranks.
  void all_reduce_(at::Tensor& tensor, ReduceOp op = ReduceOp::kSum) const;
  void broadcast_(std::vector<at::Tensor> tensors, int64_t root = 0) const;
  void barrier() const;

  // Ranks whose heartbeat has stopped (checked over a few heartbeat periods, so this blocks for
  // about three seconds); rank 0 when the store it hosts is unreachable or does not answer within
  // the timeout (at most 5 s: a link that went down).
  std::vector<int64_t> lost_ranks() const;
  // "rank 1 (pid 4242 on host)": a rank as it announced itself at the rendezvous.
  std::string describe_rank(int64_t rank) const;

  // The c10d group, for collectives this API does not wrap (include
  // <torch/csrc/distributed/c10d/ProcessGroup.hpp> to use it).
  const c10::intrusive_ptr<c10d::ProcessGroup>& c10d_group() const;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

// Metrics summed over every rank (loss sums, correct counts): one all-reduce for the whole list,
// in float64 (counts stay exact up to 2^53).
std::vector<double> all_reduce_sum(const ProcessGroup& group, const std::vector<double>& values);
double all_reduce_sum(const ProcessGroup& group, double value);

struct DataParallelOptions {
  // Gradients are reduced in buckets of about this many bytes (the first one smaller, so the
  // first all-reduce starts early in the backward).
  TORCH_ARG(int64_t, bucket_cap_bytes) = 25 * 1024 * 1024;
  TORCH_ARG(int64_t, first_bucket_cap_bytes) = 1024 * 1024;
  // Trace the graph of each loss for parameters that get no gradient in a step (a branch not
  // taken): they count as zero from that rank. Without it, backward() fails naming a parameter
  // that got no gradient.
  TORCH_ARG(bool, find_unused_parameters) = false;
  // Copy rank 0's buffers (running statistics) to every rank at the end of each synchronised
  // backward, so the next forward starts from the same ones everywhere. Off saves a collective
  // per step for modules whose buffers never change (index tables).
  TORCH_ARG(bool, broadcast_buffers) = true;
};

// Timing of the last synchronised backward(), in seconds.
struct BackwardTiming {
  double backward = 0;       // backward() from its start to its return
  double compute = 0;        // start -> the last bucket's gradients were ready
  double communication = 0;  // time during which at least one bucket all-reduce was in flight
  double overlapped = 0;     // the part of `communication` before `compute` ended
  int64_t buckets = 0;
  // What the backward waited for communication after its own computation ended.
  double exposed() const { return backward - compute; }
};

// Data parallelism for any torch::nn::Module. Construction copies rank 0's parameters and buffers
// to every rank (all ranks must build the same module). backward(loss) runs loss.backward() while
// c10d's Reducer all-reduces buckets of gradients as autograd produces them. Parameters with
// requires_grad = false (frozen, or constant tables) are broadcast but never reduced.
class DataParallel {
 public:
  DataParallel(std::shared_ptr<torch::nn::Module> module, ProcessGroup group,
               DataParallelOptions options = {});
  ~DataParallel();
  DataParallel(DataParallel&&) noexcept;
  DataParallel& operator=(DataParallel&&) noexcept;

  // loss.backward(), then every gradient is sum over ranks of weight * (that rank's gradient).
  // weight defaults to 1 / world_size (the average). For exact global-batch gradients when ranks
  // hold different numbers of samples, pass this rank's share of the global batch (local / global
  // samples; the shares sum to 1), or compute the loss as a sum over local samples divided by the
  // global count and pass 1. Inside no_sync() only the local backward runs.
  void backward(const at::Tensor& loss, std::optional<double> weight = std::nullopt);

  // While the guard lives, backward() accumulates gradients locally without communication; the
  // next synchronised backward() reduces the accumulated sum.
  class NoSync {
   public:
    explicit NoSync(DataParallel& parallel);
    ~NoSync();
    NoSync(const NoSync&) = delete;
    NoSync& operator=(const NoSync&) = delete;

   private:
    DataParallel& parallel_;
    bool previous_;
  };
  [[nodiscard]] NoSync no_sync() { return NoSync(*this); }

  // Copies rank 0's buffers to every rank (backward() does it when broadcast_buffers is set).
  // Not between a forward and its backward: the forward may have saved a buffer.
  void broadcast_buffers();

  const ProcessGroup& group() const;
  torch::nn::Module& module() const;
  BackwardTiming last_timing() const;
  // Names of the parameters in each bucket, in reduction order.
  std::vector<std::vector<std::string>> bucket_parameter_names() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

struct DistributedSamplerOptions {
  /* implicit */ DistributedSamplerOptions(int64_t batch_size) : batch_size_(batch_size) {}
  // Samples per step over all ranks together (the global batch).
  TORCH_ARG(int64_t, batch_size);
  TORCH_ARG(uint64_t, seed) = 0;
  TORCH_ARG(bool, shuffle) = true;
};

// This rank's part of one global batch.
struct BatchShard {
  at::Tensor indices;       // int64 sample indices (may be empty, see DistributedSampler)
  int64_t offset = 0;       // position of indices[0] in the global batch
  int64_t global_size = 0;  // samples in the global batch, all ranks together
  // This rank's share of the global batch: the weight for DataParallel::backward.
  double share() const { return global_size ? double(indices.numel()) / double(global_size) : 0.0; }
};

// Splits each epoch over the ranks. An epoch's order is a permutation drawn from (seed, epoch)
// alone, the same on every rank (or 0..n-1 without shuffle). Step k takes the global batch
// order[k * batch_size, (k + 1) * batch_size) (the last one shorter when batch_size does not divide
// n) and gives each rank a contiguous part: sizes differ by at most one, the first
// (global batch mod world_size) ranks taking one more. So every rank takes the same number of
// steps, the shards are disjoint and cover the epoch exactly once (nothing repeated or dropped),
// the shards' sizes differ by at most the number of steps, and a global batch smaller than the
// world leaves some ranks an empty part. The concatenated global batch is the one a single process
// would see at the same batch_size, so results do not depend on the number of ranks.
class DistributedSampler {
 public:
  DistributedSampler(int64_t dataset_size, int64_t rank, int64_t world_size,
                     DistributedSamplerOptions options);

  int64_t steps_per_epoch() const;
  // The epoch's order of all samples (the same on every rank).
  at::Tensor order(int64_t epoch) const;
  // This rank's part of step `step` of the epoch whose order() is given.
  BatchShard batch(const at::Tensor& order, int64_t step) const;
  // All of this rank's samples of the epoch, in the order its batches take them.
  at::Tensor shard(int64_t epoch) const;

 private:
  int64_t dataset_size_, rank_, world_size_;
  DistributedSamplerOptions options_;
};

struct LaunchOptions {
  /* implicit */ LaunchOptions(int64_t nproc) : nproc_(nproc) {}
  // Processes to start: ranks 0 .. nproc - 1.
  TORCH_ARG(int64_t, nproc);
  // Port of 127.0.0.1 for the rendezvous; 0 picks a free one.
  TORCH_ARG(int64_t, master_port) = 0;
  // Once a rank has failed, how long the others may take to notice and stop on their own before
  // they are terminated (SIGTERM, then SIGKILL 5 s later).
  TORCH_ARG(std::chrono::milliseconds, grace) = std::chrono::seconds(30);
};

struct LaunchResult {
  // 0 when every rank exited 0; 130 after an interrupt (SIGINT or SIGTERM) the ranks obeyed;
  // 1 otherwise (a rank failed, was killed, or had to be terminated).
  int exit_code = 0;
  // Each rank's exit status; 128 + the signal number for a rank killed by a signal.
  std::vector<int> rank_status;
};

// Runs the program argv[0] with arguments argv[1..] nproc times on this machine, as the ranks of
// one job: each gets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR=127.0.0.1 and MASTER_PORT, so
// ProcessGroupOptions::from_environment() joins them. The launcher binds the port itself and
// hands the listening socket to rank 0 (SLIDEFORMER_LISTEN_FD), so no other program can take it
// in between. SIGINT and SIGTERM are forwarded to the ranks (a second one kills them). A rank
// that fails is reported on stderr with its exit status or signal. The ranks die with the thread
// that launched them (SIGKILL from the kernel, PR_SET_PDEATHSIG): a launcher killed by any signal,
// kill -9 included, leaves none running. Throws std::runtime_error when the port cannot be bound
// or a process cannot start.
LaunchResult launch_local(const std::vector<std::string>& argv, const LaunchOptions& options);

}  // namespace slideformer::distributed
