// slideformer::distributed: the sampler, GlobalBatchSlice, process-group set-up and its failures in
// this process, and the multi-process scenarios of tests/distributed/worker.cpp over Gloo on
// loopback (gradients against one process, bucketing, no_sync, unused parameters, a lost rank).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>

#include "slideformer/distributed.h"
#include "slideformer/nn/functional.h"
#include "test_paths.h"

namespace {

namespace dist = slideformer::distributed;
using Clock = std::chrono::steady_clock;

// Asserts that `statement` throws `type` whose message contains `fragment`.
#define EXPECT_THROW_WHAT(statement, type, fragment)                                         \
  do {                                                                                       \
    try {                                                                                    \
      (void)(statement);                                                                     \
      ADD_FAILURE() << "no exception; expected one containing: " << (fragment);              \
    } catch (const type& e) {                                                                \
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos)                     \
          << "message: " << e.what() << "\nexpected: " << (fragment);                        \
    }                                                                                        \
  } while (0)

// A socket listening on a free port of 127.0.0.1: {fd, port}.
std::pair<int, int> listening_socket() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  EXPECT_EQ(listen(fd, 16), 0);
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  return {fd, ntohs(address.sin_port)};
}

double seconds_since(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

TEST(DistributedSampler, ShardsAreDisjointCoverTheEpochAndFormTheSingleProcessBatches) {
  for (int64_t n : {0, 1, 10, 97}) {
    for (int64_t batch : {1, 4, 32}) {
      for (int64_t world : {1, 2, 3, 5}) {
        const std::string where = "n " + std::to_string(n) + ", batch " + std::to_string(batch) + ", world " + std::to_string(world);
        const dist::DistributedSampler single(n, 0, 1, dist::DistributedSamplerOptions(batch).seed(4));
        std::vector<dist::DistributedSampler> ranks;
        for (int64_t r = 0; r < world; ++r) ranks.emplace_back(n, r, world, dist::DistributedSamplerOptions(batch).seed(4));
        const at::Tensor order = single.order(2);
        std::vector<at::Tensor> shards;
        for (const auto& sampler : ranks) {
          ASSERT_EQ(sampler.steps_per_epoch(), (n + batch - 1) / batch) << where;
          EXPECT_TRUE(sampler.order(2).equal(order)) << where << ": every rank sees the same order";
          shards.push_back(sampler.shard(2));
        }
        // Disjoint and covering: together a permutation of 0..n-1.
        const at::Tensor all = at::cat(shards);
        EXPECT_TRUE(std::get<0>(all.sort()).equal(at::arange(n, at::kLong))) << where;
        for (int64_t step = 0; step < single.steps_per_epoch(); ++step) {
          const dist::BatchShard whole = single.batch(order, step);
          std::vector<at::Tensor> parts;
          int64_t offset = 0, smallest = whole.global_size, largest = 0;
          for (const auto& sampler : ranks) {
            const dist::BatchShard part = sampler.batch(order, step);
            EXPECT_EQ(part.offset, offset) << where;
            EXPECT_EQ(part.global_size, whole.global_size) << where;
            offset += part.indices.numel();
            smallest = std::min(smallest, part.indices.numel());
            largest = std::max(largest, part.indices.numel());
            parts.push_back(part.indices);
          }
          EXPECT_TRUE(at::cat(parts).equal(whole.indices)) << where << ", step " << step << ": the parts in rank order are the one-process batch";
          EXPECT_LE(largest - smallest, 1) << where;
        }
      }
    }
  }
}

TEST(DistributedSampler, OrderIsAFunctionOfSeedAndEpoch) {
  const dist::DistributedSampler a(50, 1, 3, dist::DistributedSamplerOptions(8).seed(11));
  const dist::DistributedSampler b(50, 1, 3, dist::DistributedSamplerOptions(8).seed(11));
  const dist::DistributedSampler other_seed(50, 1, 3, dist::DistributedSamplerOptions(8).seed(12));
  EXPECT_TRUE(a.shard(3).equal(b.shard(3)));
  EXPECT_TRUE(a.shard(3).equal(a.shard(3)));
  EXPECT_FALSE(a.shard(3).equal(a.shard(4)));
  EXPECT_FALSE(a.shard(3).equal(other_seed.shard(3)));
  const dist::DistributedSampler sequential(10, 0, 1, dist::DistributedSamplerOptions(4).shuffle(false));
  EXPECT_TRUE(sequential.order(5).equal(at::arange(10, at::kLong)));
}

TEST(DistributedSampler, BadArguments) {
  using dist::DistributedSampler;
  EXPECT_THROW_WHAT(DistributedSampler(10, 2, 2, 4), std::invalid_argument, "rank must be in [0, world_size = 2), got 2");
  EXPECT_THROW_WHAT(DistributedSampler(10, 0, 0, 4), std::invalid_argument, "world_size must be >= 1, got 0");
  EXPECT_THROW_WHAT(DistributedSampler(10, 0, 1, 0), std::invalid_argument, "batch_size must be >= 1, got 0");
  EXPECT_THROW_WHAT(DistributedSampler(-1, 0, 1, 4), std::invalid_argument, "dataset_size must be >= 0, got -1");
  const DistributedSampler sampler(10, 0, 2, 4);
  EXPECT_THROW_WHAT(sampler.batch(sampler.order(0), 3), std::invalid_argument, "step must be in [0, 3), got 3");
  EXPECT_THROW_WHAT(sampler.batch(at::arange(9, at::kLong), 0), std::invalid_argument, "order must be a 1-D int64 tensor of dataset_size = 10");
}

TEST(GlobalBatchSlice, DropPathDrawsEachRanksSliceOfTheGlobalMask) {
  using slideformer::nn::functional::drop_path;
  const at::Tensor x = at::randn({9, 3, 2});
  torch::manual_seed(21);
  const at::Tensor whole = drop_path(x, 0.5, true);
  std::vector<at::Tensor> parts;
  for (auto [offset, size] : std::vector<std::pair<int64_t, int64_t>>{{0, 4}, {4, 3}, {7, 2}, {9, 0}}) {
    torch::manual_seed(21);
    slideformer::nn::functional::GlobalBatchSlice slice(offset, 9);
    parts.push_back(drop_path(x.narrow(0, offset, size), 0.5, true));
  }
  EXPECT_TRUE(at::cat(parts).equal(whole));
  EXPECT_FALSE(whole.equal(x)) << "with p = 0.5 some of 9 samples should be dropped";
  {
    slideformer::nn::functional::GlobalBatchSlice slice(5, 9);
    EXPECT_THROW(drop_path(x.narrow(0, 0, 6), 0.5, true), c10::Error);
  }
  EXPECT_THROW(slideformer::nn::functional::GlobalBatchSlice(10, 9), c10::Error);
}

TEST(ProcessGroup, OneRankGroupAndDataParallel) {
  const auto [fd, port] = listening_socket();
  const dist::ProcessGroup group(dist::ProcessGroupOptions().master_port(port).listen_fd(fd).timeout(std::chrono::seconds(30)));
  EXPECT_EQ(group.world_size(), 1);
  EXPECT_EQ(group.backend_name().rfind("gloo", 0), 0u);
  EXPECT_EQ(dist::all_reduce_sum(group, {2.5, 3.0}), (std::vector<double>{2.5, 3.0}));
  torch::manual_seed(0);
  torch::nn::Linear layer(3, 2);
  dist::DataParallel parallel(layer.ptr(), group);
  const at::Tensor x = at::randn({4, 3});
  parallel.backward(layer(x).sum());
  const at::Tensor expected = torch::autograd::grad({layer(x).sum()}, {layer->weight})[0];
  EXPECT_TRUE(layer->weight.grad().allclose(expected));
  EXPECT_THROW_WHAT(parallel.backward(layer(x).sum(), std::nan("")), std::invalid_argument, "weight must be finite");
}

TEST(ProcessGroup, BadOptionsAndEnvironment) {
  using dist::ProcessGroup, dist::ProcessGroupOptions;
  EXPECT_THROW_WHAT(ProcessGroup(ProcessGroupOptions().rank(2).world_size(2)), std::invalid_argument,
                    "rank must be in [0, world_size = 2), got 2");
  EXPECT_THROW_WHAT(ProcessGroup(ProcessGroupOptions().master_port(70000)), std::invalid_argument,
                    "master_port must be in [1, 65535], got 70000");
  EXPECT_THROW_WHAT(ProcessGroup(ProcessGroupOptions().timeout(std::chrono::milliseconds(0))), std::invalid_argument,
                    "timeout must be positive");
  unsetenv("RANK");
  setenv("WORLD_SIZE", "2", 1);
  EXPECT_TRUE(dist::launched_from_environment());
  EXPECT_THROW_WHAT(ProcessGroupOptions::from_environment(), std::invalid_argument, "the environment variable RANK is not set");
  setenv("RANK", "one", 1);
  EXPECT_THROW_WHAT(ProcessGroupOptions::from_environment(), std::invalid_argument, "RANK must be an integer, got 'one'");
  setenv("RANK", "1", 1);
  setenv("MASTER_PORT", "1234", 1);
  const ProcessGroupOptions options = ProcessGroupOptions::from_environment(std::chrono::seconds(7));
  EXPECT_EQ(options.rank(), 1);
  EXPECT_EQ(options.world_size(), 2);
  EXPECT_EQ(options.master_port(), 1234);
  EXPECT_EQ(options.timeout(), std::chrono::seconds(7));
  for (const char* name : {"RANK", "WORLD_SIZE", "MASTER_PORT"}) unsetenv(name);
  EXPECT_FALSE(dist::launched_from_environment());
}

TEST(ProcessGroup, ARankThatNeverArrivesTimesOutNamingIt) {
  const auto [fd, port] = listening_socket();
  const auto start = Clock::now();
  try {
    dist::ProcessGroup(dist::ProcessGroupOptions().world_size(3).master_port(port).listen_fd(fd).timeout(std::chrono::milliseconds(1500)));
    ADD_FAILURE() << "the rendezvous should time out";
  } catch (const dist::CommunicationError& error) {
    EXPECT_NE(std::string(error.what()).find("ranks 1, 2 of 3 never arrived"), std::string::npos) << error.what();
    EXPECT_EQ(error.lost_ranks(), (std::vector<int64_t>{1, 2}));
  }
  EXPECT_LT(seconds_since(start), 15.0);
}

TEST(ProcessGroup, RankZeroThatNeverArrivesTimesOut) {
  int port;
  {
    const auto [fd, free_port] = listening_socket();
    port = free_port;
    close(fd);  // nobody listens there now
  }
  const auto start = Clock::now();
  try {
    dist::ProcessGroup(dist::ProcessGroupOptions().rank(1).world_size(2).master_port(port).timeout(std::chrono::milliseconds(1500)));
    ADD_FAILURE() << "reaching the store should time out";
  } catch (const dist::CommunicationError& error) {
    EXPECT_NE(std::string(error.what()).find("rank 0 never arrived"), std::string::npos) << error.what();
    EXPECT_EQ(error.lost_ranks(), (std::vector<int64_t>{0}));
  }
  EXPECT_LT(seconds_since(start), 15.0);
}

TEST(ProcessGroup, APortInUseIsReported) {
  const auto [fd, port] = listening_socket();
  EXPECT_THROW_WHAT(dist::ProcessGroup(dist::ProcessGroupOptions().master_port(port).timeout(std::chrono::seconds(2))),
                    dist::CommunicationError, "rank 0 cannot host the rendezvous store at 127.0.0.1:" + std::to_string(port));
  EXPECT_THROW_WHAT(dist::launch_local({"/bin/true"}, dist::LaunchOptions(2).master_port(port)), std::runtime_error,
                    "cannot listen on 127.0.0.1:" + std::to_string(port));
  close(fd);
}

// The scenarios of worker.cpp, each rank checking itself against one process.
dist::LaunchResult run_workers(int64_t nproc, std::vector<std::string> arguments) {
  arguments.insert(arguments.begin(), slideformer::test_paths::distributed_worker);
  return dist::launch_local(arguments, dist::LaunchOptions(nproc).grace(std::chrono::seconds(60)));
}

TEST(DistributedProcesses, GradientsEqualOneProcessWithBucketsSmallerThanTheModel) {
  for (int64_t nproc : {2, 3}) {
    const dist::LaunchResult result = run_workers(nproc, {"gradients", "4096"});
    EXPECT_EQ(result.exit_code, 0) << nproc << " ranks (their messages are above)";
  }
}

TEST(DistributedProcesses, GradientsEqualOneProcessWithDefaultBuckets) {
  EXPECT_EQ(run_workers(2, {"gradients"}).exit_code, 0);
}

TEST(DistributedProcesses, NoSyncAccumulationEqualsOneLargeBatch) {
  EXPECT_EQ(run_workers(2, {"no_sync"}).exit_code, 0);
}

TEST(DistributedProcesses, UnusedParameters) {
  EXPECT_EQ(run_workers(2, {"unused"}).exit_code, 0);
}

TEST(DistributedProcesses, CollectivesAndMetricHelpers) {
  EXPECT_EQ(run_workers(3, {"collectives"}).exit_code, 0);
}

TEST(DistributedProcesses, AKilledRankIsNamedByTheOthers) {
  const auto start = Clock::now();
  const dist::LaunchResult result = run_workers(3, {"lost"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_EQ(result.rank_status, (std::vector<int>{0, 0, 128 + SIGKILL})) << "ranks 0 and 1 check the error they get";
  EXPECT_LT(seconds_since(start), 60.0);
}

}  // namespace
