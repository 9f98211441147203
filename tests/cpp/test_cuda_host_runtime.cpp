// The host execution of CUDA kernels (ops/cuda/host_runtime.h) on small kernels of its own:
// barriers, warp shuffles, launch limits, blocks on several threads in a shuffled order, and the
// failures a GPU would have (deadlocks, writes past shared memory, bad configurations). A staging loop without its barrier (a test-only copy of
// for_each_staged_chunk) reads shared memory no thread wrote; under ThreadSanitizer (this file's
// cuda_host_tsan_tests build, and ./run sanitize thread) it is a reported data race.
#include <c10/util/Exception.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include "ops/cuda/launch.h"

namespace slideformer::ops::cuda {
namespace {

namespace rt = host_runtime;
constexpr const char* kOp = "cuda_host_runtime_test";

// The launch fails with a c10::Error whose message holds `fragment`.
template <typename Launch>
void expect_launch_error(const Launch& launch_it, const std::string& fragment) {
  try {
    launch_it();
    ADD_FAILURE() << "no error; expected one containing: " << fragment;
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what_without_backtrace()).find(fragment), std::string::npos)
        << "message: " << e.what_without_backtrace() << "\nexpected: " << fragment;
  }
}

// for_each_staged_chunk without the barrier after staging: a thread reads the chunk before the
// threads that stage it have run. The bug this file shows the host execution catches.
template <typename Stage, typename Consume>
__device__ void for_each_staged_chunk_missing_barrier(int64_t dim, int64_t chunk,
                                                      const Stage& stage, const Consume& consume) {
  for (int64_t c0 = 0; c0 < dim; c0 += chunk) {
    __syncthreads();
    stage(c0);
    consume(c0);
  }
}

// out[c0 + t] = in[c0 + blockDim.x - 1 - t] for each chunk of blockDim.x values, through shared
// memory: each thread reads what another staged.
template <bool kMissingBarrier>
__global__ void reverse_chunks_kernel(const float* in, float* out, int64_t n) {
  SLIDEFORMER_DYNAMIC_SHARED_MEMORY(shared_bytes);
  float* staged = reinterpret_cast<float*>(shared_bytes);
  const int64_t t = threadIdx.x, chunk = blockDim.x;
  auto stage = [&](int64_t c0) { staged[t] = in[c0 + t]; };
  auto consume = [&](int64_t c0) { out[c0 + t] = staged[chunk - 1 - t]; };
  if (kMissingBarrier) {
    for_each_staged_chunk_missing_barrier(n, chunk, stage, consume);
  } else {
    for_each_staged_chunk(n, chunk, stage, consume);
  }
}

std::vector<float> reverse_chunks(bool missing_barrier, int threads = 128, int chunks = 3) {
  std::vector<float> in(threads * chunks), out(in.size(), -1.0f);
  std::iota(in.begin(), in.end(), 0.0f);
  auto kernel = missing_barrier ? reverse_chunks_kernel<true> : reverse_chunks_kernel<false>;
  launch(kOp, kernel, 1, threads, threads * sizeof(float), in.data(), out.data(),
         static_cast<int64_t>(in.size()));
  return out;
}

TEST(EmulatedCudaRuntime, StagedChunksReachEveryThread) {
  const std::vector<float> out = reverse_chunks(false);
  for (int64_t i = 0; i < static_cast<int64_t>(out.size()); ++i) {
    EXPECT_EQ(out[i], static_cast<float>(i / 128 * 128 + 127 - i % 128)) << i;
  }
}

#if defined(SLIDEFORMER_HOST_TSAN)
// Under ThreadSanitizer the fibers are threads ordered only by the barriers: the missing one is a
// data race between the thread that stages an element and the one that reads it.
TEST(EmulatedCudaRuntime, MissingBarrierIsADataRace) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  setenv("TSAN_OPTIONS", "halt_on_error=1:exitcode=66", 1);
  EXPECT_EXIT(reverse_chunks(true), ::testing::ExitedWithCode(66),
              "WARNING: ThreadSanitizer: data race");
}
#else
// Without ThreadSanitizer the fibers run one at a time up to their next barrier: the thread that
// completes the first barrier goes on at once and reads an element before the thread that stages
// it has run, i.e. the all-ones bytes (NaN) that every block's shared memory starts with.
TEST(EmulatedCudaRuntime, MissingBarrierReadsUnwrittenSharedMemory) {
  const std::vector<float> out = reverse_chunks(true);
  EXPECT_TRUE(std::any_of(out.begin(), out.end(), [](float x) { return std::isnan(x); }));
}
#endif

// out[t] = the value of lane t ^ 1, then the sum of the 4 lanes of t's group (the butterfly of
// the attention kernels' row groups).
__global__ void shuffle_kernel(int* pairs, int* sums) {
  const int t = threadIdx.x;
  pairs[t] = __shfl_xor_sync(0xffffffffu, t, 1);
  int v = t;
  for (int offset = 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  sums[t] = v;
}

TEST(EmulatedCudaRuntime, WarpShufflesExchangeWithinWarps) {
  std::vector<int> pairs(64), sums(64);
  launch(kOp, shuffle_kernel, 2, 64, 0, pairs.data(), sums.data());
  for (int t = 0; t < 64; ++t) {
    EXPECT_EQ(pairs[t], t ^ 1);
    EXPECT_EQ(sums[t], 4 * (t / 4 * 4) + 6);
  }
}

// The failures that leave threads waiting (a launch that fails in the middle of a block) are
// checked in the plain build: under ThreadSanitizer the waiting threads' last accesses have no
// ordering with the clean-up after the failure, which it would report.
#if !defined(SLIDEFORMER_HOST_TSAN)
TEST(EmulatedCudaRuntime, ShuffleOverPartOfAWarpIsRejected) {
  std::vector<int> pairs(48), sums(48);  // the second warp has 16 lanes, the mask says 32
  expect_launch_error([&] { launch(kOp, shuffle_kernel, 1, 48, 0, pairs.data(), sums.data()); },
                      "__shfl_xor_sync over part of a warp is not emulated");
}

__global__ void early_exit_kernel() {
  if (threadIdx.x == 0) return;
  __syncthreads();
}

TEST(EmulatedCudaRuntime, BarrierThatSomeThreadsNeverReachIsADeadlock) {
  expect_launch_error([] { launch(kOp, early_exit_kernel, 1, 32, 0); },
                      "deadlock in block 0: 31 threads wait at a barrier");
  // A failed launch names the seed that repeats its order of blocks.
  expect_launch_error([] { launch(kOp, early_exit_kernel, 4, 32, 0); },
                      "its blocks shuffled with SLIDEFORMER_CUDA_HOST_SEED=" +
                          std::to_string(rt::block_order_seed()));
}
#endif

// Each block counts itself in, then waits (up to a minute) until `blocks` have started: only
// blocks that run at the same time can all finish in time. Relaxed, so that it orders nothing.
__device__ bool rendezvous(std::atomic<int>* started, int blocks, int* order) {
  const int position = started->fetch_add(1, std::memory_order_relaxed);
  if (order != nullptr) order[position] = static_cast<int>(blockIdx.x);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(1);
  while (started->load(std::memory_order_relaxed) < blocks) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::yield();
  }
  return true;
}

__global__ void rendezvous_kernel(std::atomic<int>* started, int blocks, int* order,
                                  int* timed_out) {
  if (!rendezvous(started, blocks, order)) timed_out[blockIdx.x] = 1;
}

TEST(EmulatedCudaRuntime, BlocksRunAtTheSameTime) {
  std::atomic<int> started{0};
  std::vector<int> order(2, -1), timed_out(2, 0);
  launch(kOp, rendezvous_kernel, 2, 1, 0, &started, 2, order.data(), timed_out.data());
  EXPECT_EQ(timed_out, std::vector<int>({0, 0}));
  std::sort(order.begin(), order.end());
  EXPECT_EQ(order, std::vector<int>({0, 1}));
}

TEST(EmulatedCudaRuntime, BlocksRunInAShuffledOrderOfTheSeed) {
  const std::vector<unsigned int> first = rt::block_order(64, 7), again = rt::block_order(64, 7);
  EXPECT_EQ(first, again);
  EXPECT_NE(first, rt::block_order(64, 8));
  std::vector<unsigned int> sorted = first;
  std::sort(sorted.begin(), sorted.end());
  std::vector<unsigned int> identity(64);
  std::iota(identity.begin(), identity.end(), 0u);
  EXPECT_EQ(sorted, identity);
  EXPECT_NE(first, identity);
}

#if defined(SLIDEFORMER_HOST_TSAN)
// Two blocks, at the same time, add to out[0] without an atomic: a race between blocks.
__global__ void unsynchronised_count_kernel(std::atomic<int>* started, int* out) {
  if (rendezvous(started, 2, nullptr)) out[0] += 1;
}

// The blocks run on threads of their own, so the planted race is a reported data race.
TEST(EmulatedCudaRuntime, RaceBetweenBlocksIsADataRace) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  setenv("TSAN_OPTIONS", "halt_on_error=1:exitcode=66", 1);
  EXPECT_EXIT(
      {
        std::atomic<int> started{0};
        std::vector<int> out(1, 0);
        launch(kOp, unsynchronised_count_kernel, 2, 1, 0, &started, out.data());
      },
      ::testing::ExitedWithCode(66), "WARNING: ThreadSanitizer: data race");
}

// Lane 0 writes shared memory, lane 1 reads it after a shuffle: a shuffle orders no memory access
// (only a barrier does), so it is a data race.
__global__ void shuffle_as_fence_kernel(int* out) {
  SLIDEFORMER_DYNAMIC_SHARED_MEMORY(shared_bytes);
  int* value = reinterpret_cast<int*>(shared_bytes);
  if (threadIdx.x == 0) *value = 42;
  __shfl_xor_sync(0xffffffffu, 0, 1);
  if (threadIdx.x == 1) out[0] = *value;
}

TEST(EmulatedCudaRuntime, ShuffleIsNoFence) {
  ::testing::FLAGS_gtest_death_test_style = "threadsafe";
  setenv("TSAN_OPTIONS", "halt_on_error=1:exitcode=66", 1);
  EXPECT_EXIT(
      {
        std::vector<int> out(1, 0);
        launch(kOp, shuffle_as_fence_kernel, 1, 32, sizeof(int), out.data());
      },
      ::testing::ExitedWithCode(66), "WARNING: ThreadSanitizer: data race");
}
#endif

__global__ void overflow_kernel(int64_t bytes) {
  SLIDEFORMER_DYNAMIC_SHARED_MEMORY(shared_bytes);
  if (threadIdx.x == 0) shared_bytes[bytes] = 1;
}

__global__ void read_past_kernel(int64_t bytes, unsigned char* out) {
  SLIDEFORMER_DYNAMIC_SHARED_MEMORY(shared_bytes);
  if (threadIdx.x == 0) *out = shared_bytes[bytes];
}

#if defined(SLIDEFORMER_HOST_ASAN)
// The bytes past a block's shared memory are poisoned: AddressSanitizer reports the access.
TEST(EmulatedCudaRuntime, AccessPastSharedMemoryIsReported) {
  unsigned char out = 0;
  launch(kOp, read_past_kernel, 1, 32, 64, int64_t(63), &out);
  EXPECT_DEATH(launch(kOp, read_past_kernel, 1, 32, 64, int64_t(64), &out), "use-after-poison");
  EXPECT_DEATH(launch(kOp, overflow_kernel, 1, 32, 64, int64_t(64)), "use-after-poison");
}
#else
TEST(EmulatedCudaRuntime, WritePastSharedMemoryFailsTheLaunch) {
  launch(kOp, overflow_kernel, 1, 32, 64, int64_t(63));
  expect_launch_error([] { launch(kOp, overflow_kernel, 1, 32, 64, int64_t(64)); },
                      "block 0 wrote past its 64 bytes of dynamic shared memory");
}

// Without AddressSanitizer a read past the shared memory gets the all-ones bytes of unwritten
// shared memory (NaN as a float).
TEST(EmulatedCudaRuntime, ReadPastSharedMemoryReadsUnwrittenBytes) {
  unsigned char out = 0;
  launch(kOp, read_past_kernel, 1, 32, 64, int64_t(64), &out);
  EXPECT_EQ(out, rt::kUnwrittenShared);
}
#endif

__global__ void shared_sum_kernel(int* out) {
  SLIDEFORMER_DYNAMIC_SHARED_MEMORY(shared_bytes);
  int* values = reinterpret_cast<int*>(shared_bytes);
  values[threadIdx.x] = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) {
    int sum = 0;
    for (unsigned int i = 0; i < blockDim.x; ++i) sum += values[i];
    out[blockIdx.x] = sum;
  }
}

// A GPU's launch limits: at most 1024 threads per block; more than 48 KiB of dynamic shared memory
// only after the kernel opted in (launch() does), up to the device's limit.
TEST(EmulatedCudaRuntime, LaunchLimitsAreAGpus) {
  std::vector<int> out(3);
  expect_launch_error(
      [&] { launch(kOp, shared_sum_kernel, 3, 1025, 1025 * sizeof(int), out.data()); },
      "invalid configuration argument: 3 blocks of 1025 threads");
  const size_t large = 64 * 1024;
  expect_launch_error([&] { rt::launch(shared_sum_kernel, 3, 1024, large, out.data()); },
                      "too many resources requested for launch");
  launch(kOp, shared_sum_kernel, 3, 1024, large, out.data());  // opts in
  for (int b = 0; b < 3; ++b) EXPECT_EQ(out[b], 1024 * (1024 * b) + 1023 * 1024 / 2);
  expect_launch_error(
      [&] {
        launch(kOp, shared_sum_kernel, 1, 32, rt::kA100.shared_memory_per_block_optin + 1,
               out.data());
      },
      "is more than the 166912 bytes of A100 (sm_80)");
}

}  // namespace
}  // namespace slideformer::ops::cuda
