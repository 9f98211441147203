#pragma once
// Host execution of our CUDA kernels, in the spirit of Numba's CUDA simulator: the kernel source
// that nvcc compiles for the GPU is compiled by the host compiler and run on the CPU. Only the
// test build compiles kernels this way (tests/cuda_host); the shipped library never does.
//
// Every CUDA thread of a block is a fiber (ucontext) with its own stack. The fibers of a block run
// on one thread, one at a time, each until it waits at __syncthreads() or at a warp shuffle, so shared memory, barriers and missing barriers behave as on a GPU:
// - each block's shared memory starts as all-ones bytes (NaN in float and double), so a thread
//   that reads what another has not written yet (a missing barrier) reads NaN;
// - under ThreadSanitizer every fiber is a thread of its own, synchronised with the others only
//   by the barriers (and the launch), so a missing barrier is reported as a data race;
// - a barrier that some threads never reach is reported as a deadlock; a block that writes past
//   its dynamic shared memory, an invalid launch configuration, or more than 48 KiB of shared
//   memory without the opt-in, fail the launch with a c10::Error as a GPU launch would fail.
// - the blocks of a launch run concurrently on several threads (SLIDEFORMER_CUDA_HOST_THREADS,
//   default 2), taken in a shuffled order (seeded: SLIDEFORMER_CUDA_HOST_SEED, else random per
//   process; a failed launch names the seed), so a race between blocks is a data race under
//   ThreadSanitizer and can give a wrong result in any build;
// - a warp shuffle exchanges values but orders no memory access (as on a GPU, where only a
//   barrier does): under ThreadSanitizer, shared memory passed between lanes with a shuffle as
//   the only synchronisation is a data race;
// - under AddressSanitizer the bytes past a block's dynamic shared memory are poisoned, so a
//   read past it is reported (without it, they read as NaN).
// What our kernels use, and only that: 1-d grids and blocks, dynamic shared memory,
// __syncthreads(), __shfl_xor_sync() over full warps and the opt-in to more dynamic shared
// memory. The device limits are those of an A100 (sm_80) unless a test picks another device
// (ScopedEmulatedDevice).
#include <c10/util/Exception.h>
#include <ucontext.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_THREAD__)
#define SLIDEFORMER_HOST_TSAN 1
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SLIDEFORMER_HOST_ASAN 1
#endif
#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SLIDEFORMER_HOST_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define SLIDEFORMER_HOST_ASAN 1
#endif
#endif
#if defined(SLIDEFORMER_HOST_TSAN)
#include <sanitizer/tsan_interface.h>
#endif
#if defined(SLIDEFORMER_HOST_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// The CUDA keywords and built-ins our kernels use.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define threadIdx (::slideformer::ops::cuda::host_runtime::current_fiber().thread_idx)
#define blockIdx (::slideformer::ops::cuda::host_runtime::current_fiber().block_idx)
#define blockDim (::slideformer::ops::cuda::host_runtime::current_launch().block_dim)
#define gridDim (::slideformer::ops::cuda::host_runtime::current_launch().grid_dim)
#define __syncthreads() ::slideformer::ops::cuda::host_runtime::sync_threads()
#define __shfl_xor_sync(...) ::slideformer::ops::cuda::host_runtime::shfl_xor_sync(__VA_ARGS__)

namespace slideformer::ops::cuda::host_runtime {

struct Index3 {
  unsigned int x = 0, y = 0, z = 0;
};

// What the launches check against.
struct DeviceProperties {
  const char* name;
  size_t shared_memory_per_block_optin;  // cudaDeviceProp::sharedMemPerBlockOptin
  int max_threads_per_block;
};
inline constexpr DeviceProperties kA100{"A100 (sm_80)", 166912, 1024};
inline constexpr DeviceProperties kH100{"H100 (sm_90)", 232448, 1024};
// Dynamic shared memory a kernel may use without cudaFuncAttributeMaxDynamicSharedMemorySize.
inline constexpr size_t kDefaultDynamicSharedBytes = 48 * 1024;
inline constexpr int kWarpSize = 32;

inline DeviceProperties& emulated_device() {
  static DeviceProperties device = kA100;
  return device;
}

// Emulates `device` while it lives (tests that check the launch configuration of other GPUs).
class ScopedEmulatedDevice {
 public:
  explicit ScopedEmulatedDevice(const DeviceProperties& device) : saved_(emulated_device()) {
    emulated_device() = device;
  }
  ~ScopedEmulatedDevice() { emulated_device() = saved_; }
  ScopedEmulatedDevice(const ScopedEmulatedDevice&) = delete;
  ScopedEmulatedDevice& operator=(const ScopedEmulatedDevice&) = delete;

 private:
  DeviceProperties saved_;
};

// ---------------------------------------------------------------------------------------------
// Sanitizer annotations of the fiber switches (no-ops in a plain build).

struct SanitizerFiber {
#if defined(SLIDEFORMER_HOST_TSAN)
  void* tsan = nullptr;
#endif
#if defined(SLIDEFORMER_HOST_ASAN)
  void* asan_fake_stack = nullptr;
#endif
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
};

// Happens-before edges: a release on `token` by one fiber, then an acquire of it by another.
inline void sanitizer_release(const void* token) {
#if defined(SLIDEFORMER_HOST_TSAN)
  __tsan_release(const_cast<void*>(token));
#endif
  (void)token;
}
inline void sanitizer_acquire(const void* token) {
#if defined(SLIDEFORMER_HOST_TSAN)
  __tsan_acquire(const_cast<void*>(token));
#endif
  (void)token;
}

// Right before swapcontext from `from` to `to`. Only a switch that starts `to` on a block orders
// what `from` did before it (the launch, the block's set-up) before `to`; the others add no
// ordering, so only barriers order the threads' accesses. AddressSanitizer keeps `from`'s fake
// stack (its frames for use-after-return detection) in from.asan_fake_stack, also when `from`
// ends: the fiber slot passes it on to its next fiber (start_fibers), since making and destroying
// one per fiber (a mapping, and zeroing its shadow) took most of the fuzz target's time.
inline void sanitizer_before_switch(SanitizerFiber& from, const SanitizerFiber& to,
                                    bool starts_to = false) {
#if defined(SLIDEFORMER_HOST_TSAN)
  __tsan_switch_to_fiber(to.tsan, starts_to ? 0 : __tsan_switch_to_fiber_no_sync);
#endif
#if defined(SLIDEFORMER_HOST_ASAN)
  __sanitizer_start_switch_fiber(&from.asan_fake_stack, to.stack_bottom, to.stack_size);
#endif
  (void)from, (void)to, (void)starts_to;
}

// Right after swapcontext returned into `self`; `previous` learns its stack (the scheduler's).
inline void sanitizer_after_switch(SanitizerFiber& self, SanitizerFiber& previous) {
#if defined(SLIDEFORMER_HOST_ASAN)
  __sanitizer_finish_switch_fiber(self.asan_fake_stack, &previous.stack_bottom,
                                  &previous.stack_size);
#endif
  (void)self, (void)previous;
}

// ---------------------------------------------------------------------------------------------
// Fibers, barriers and the scheduler.

// A barrier of `expected` fibers; generation counts the completed rounds. The counters are
// atomics so that ThreadSanitizer sees no race in the bookkeeping (they add no ordering); the
// ordering a barrier gives comes from the release / acquire annotations on `tokens_`, one per
// parity of the generation, so a fiber that runs ahead to the next round cannot pass its new
// accesses to a fiber still leaving this one.
// A warp's barrier (behind its shuffles) orders nothing: `orders_memory` false.
class Barrier {
 public:
  void reset(int expected, bool orders_memory) {
    expected_ = expected;
    orders_memory_ = orders_memory;
    arrived_.store(0, std::memory_order_relaxed);
  }
  const std::atomic<uint64_t>& generation() const { return generation_; }
  uint64_t current_generation() const { return generation_.load(std::memory_order_relaxed); }
  // Counts the caller in; true when it completed the round (the others may go on).
  bool arrive(uint64_t round) {
    if (orders_memory_) sanitizer_release(&tokens_[round & 1]);
    if (arrived_.fetch_add(1, std::memory_order_relaxed) + 1 < expected_) return false;
    arrived_.store(0, std::memory_order_relaxed);
    generation_.store(round + 1, std::memory_order_relaxed);
    return true;
  }
  void leave(uint64_t round) const {
    if (orders_memory_) sanitizer_acquire(&tokens_[round & 1]);
  }

 private:
  int expected_ = 0;
  bool orders_memory_ = true;
  std::atomic<int> arrived_{0};
  std::atomic<uint64_t> generation_{0};
  char tokens_[2] = {};
};

// One CUDA thread.
struct Fiber {
  Index3 thread_idx, block_idx;
  ucontext_t context;
  char* stack = nullptr;
  SanitizerFiber sanitizer;
  bool started = false;  // the scheduler's: the fiber runs the current block
  std::atomic<bool> finished{false};
  // Set while the fiber waits: it may run again once *waiting_on != waiting_round.
  std::atomic<const std::atomic<uint64_t>*> waiting_on{nullptr};
  std::atomic<uint64_t> waiting_round{0};

  bool runnable() const {
    if (finished.load(std::memory_order_relaxed)) return false;
    const std::atomic<uint64_t>* on = waiting_on.load(std::memory_order_relaxed);
    return on == nullptr ||
           on->load(std::memory_order_relaxed) != waiting_round.load(std::memory_order_relaxed);
  }
};

// The state of one kernel launch on this thread.
struct Launch {
  Index3 grid_dim, block_dim;
  unsigned char* shared = nullptr;
  size_t shared_bytes = 0;
  const std::function<void()>* body = nullptr;
  Barrier block_barrier;
  std::unique_ptr<Barrier[]> warp_barriers;
  // [warp][parity][lane] 8-byte slots; atomic so that the exchange itself is no race, relaxed
  // so that it orders nothing else.
  std::unique_ptr<std::atomic<uint64_t>[]> warp_exchange;
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // of the first fiber that threw; read after block_end_token
  char block_end_token = 0;  // fibers release it when they end, the scheduler then acquires
  SanitizerFiber scheduler;
  ucontext_t scheduler_context;
};

inline constexpr size_t kFiberStackBytes = 256 * 1024;
inline constexpr size_t kSharedCanaryBytes = 64;
inline constexpr unsigned char kUnwrittenShared = 0xFF;

struct ThreadState {
  Launch* launch = nullptr;
  std::atomic<Fiber*> fiber{nullptr};
  // Fiber stacks (and ThreadSanitizer fibers) kept for the next launches of this thread.
  std::vector<std::unique_ptr<char[]>> stacks;
#if defined(SLIDEFORMER_HOST_ASAN)
  std::vector<void*> asan_fake_stacks;  // of the same fibers (sanitizer_before_switch)
#endif
  // The fibers and the shared memory of the blocks, kept too: making (zeroing) them per launch,
  // about 1 KB per fiber, was a third of the fuzz target's time.
  std::unique_ptr<Fiber[]> fibers;
  unsigned int fiber_count = 0;
  std::vector<unsigned char> shared;
#if defined(SLIDEFORMER_HOST_TSAN)
  std::vector<void*> tsan_fibers;
  ~ThreadState() {
    for (void* f : tsan_fibers) __tsan_destroy_fiber(f);
  }
#endif
};

inline ThreadState& thread_state() {
  thread_local ThreadState state;
  return state;
}

inline Fiber& current_fiber() {
  Fiber* fiber = thread_state().fiber.load(std::memory_order_relaxed);
  TORCH_CHECK(fiber != nullptr, "CUDA host runtime: a device built-in was used outside a kernel");
  return *fiber;
}

inline Launch& current_launch() { return *thread_state().launch; }

inline unsigned char* dynamic_shared_memory() { return current_launch().shared; }

// Suspends the calling fiber until `barrier` completes `round`.
inline void wait_for(Fiber& self, const Barrier& barrier, uint64_t round) {
  self.waiting_round.store(round, std::memory_order_relaxed);
  self.waiting_on.store(&barrier.generation(), std::memory_order_relaxed);
  Launch& launch = current_launch();
  sanitizer_before_switch(self.sanitizer, launch.scheduler);
  swapcontext(&self.context, &launch.scheduler_context);
  sanitizer_after_switch(self.sanitizer, launch.scheduler);
  self.waiting_on.store(nullptr, std::memory_order_relaxed);
}

// Counts the calling fiber in at `barrier`, whose current round is `round`, and returns once
// every fiber of the round arrived.
inline void arrive_and_wait(Barrier& barrier, uint64_t round) {
  if (!barrier.arrive(round)) wait_for(current_fiber(), barrier, round);
  barrier.leave(round);
}

inline void sync_threads() {
  Barrier& barrier = current_launch().block_barrier;
  arrive_and_wait(barrier, barrier.current_generation());
}

// __shfl_xor_sync: the value of lane (lane ^ lane_mask) of the caller's warp. Every lane of the
// warp takes part (mask = the full warp), as in our kernels.
template <typename T>
T shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = kWarpSize) {
  static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "8-byte shuffles at most");
  const Fiber& self = current_fiber();
  Launch& launch = current_launch();
  const unsigned int thread = self.thread_idx.x;
  const unsigned int warp = thread / kWarpSize, lane = thread % kWarpSize;
  const unsigned int warp_lanes =
      std::min<unsigned int>(kWarpSize, launch.block_dim.x - warp * kWarpSize);
  const unsigned int full_mask = warp_lanes == 32 ? 0xffffffffu : (1u << warp_lanes) - 1;
  TORCH_CHECK(mask == full_mask && width == kWarpSize,
              "CUDA host runtime: __shfl_xor_sync over part of a warp is not emulated (mask ",
              mask, ", width ", width, ")");
  TORCH_CHECK((lane ^ static_cast<unsigned int>(lane_mask)) < warp_lanes,
              "CUDA host runtime: __shfl_xor_sync reads lane ",
              lane ^ static_cast<unsigned int>(lane_mask), " of a warp of ", warp_lanes);
  Barrier& barrier = launch.warp_barriers[warp];
  const uint64_t round = barrier.current_generation();
  std::atomic<uint64_t>* slots = launch.warp_exchange.get() + (warp * 2 + (round & 1)) * kWarpSize;
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  slots[lane].store(bits, std::memory_order_relaxed);
  arrive_and_wait(barrier, round);
  bits = slots[lane ^ static_cast<unsigned int>(lane_mask)].load(std::memory_order_relaxed);
  T result;
  std::memcpy(&result, &bits, sizeof(T));
  return result;
}

// The entry of every fiber: runs the kernel body for the fiber's thread of the current block.
// Never returns, so it is not instrumented by AddressSanitizer: a frame of its own on the fake
// stack would stay allocated there when the fake stack passes to the slot's next fiber.
#if defined(SLIDEFORMER_HOST_ASAN)
__attribute__((no_sanitize("address")))
#endif
inline void fiber_main() {
  ThreadState& state = thread_state();
  Launch& launch = *state.launch;
  Fiber& self = *state.fiber.load(std::memory_order_relaxed);
  sanitizer_after_switch(self.sanitizer, launch.scheduler);
  try {
    (*launch.body)();
  } catch (...) {
    if (!launch.failed.exchange(true, std::memory_order_relaxed)) {
      launch.error = std::current_exception();
    }
  }
  // Last reads of the launch's state before the release that orders them before its clean-up.
  SanitizerFiber me = self.sanitizer;
  const SanitizerFiber scheduler = launch.scheduler;
  const ucontext_t* scheduler_context = &launch.scheduler_context;
#if defined(SLIDEFORMER_HOST_ASAN)
  void*& kept_fake_stack = state.asan_fake_stacks[self.thread_idx.x];
#endif
  sanitizer_release(&launch.block_end_token);
  self.finished.store(true, std::memory_order_relaxed);
  sanitizer_before_switch(me, scheduler);
#if defined(SLIDEFORMER_HOST_ASAN)
  kept_fake_stack = me.asan_fake_stack;
#endif
  setcontext(scheduler_context);
}

// Per-kernel dynamic shared memory opt-ins (cudaFuncSetAttribute).
inline std::map<const void*, size_t>& shared_memory_opt_ins() {
  static std::map<const void*, size_t> opt_ins;
  return opt_ins;
}
inline std::mutex& shared_memory_opt_ins_mutex() {
  static std::mutex mutex;
  return mutex;
}

inline void set_max_dynamic_shared_memory(const void* kernel, size_t bytes) {
  TORCH_CHECK(bytes <= emulated_device().shared_memory_per_block_optin,
              "CUDA host runtime: cudaFuncSetAttribute(MaxDynamicSharedMemorySize = ", bytes,
              ") is more than the ", emulated_device().shared_memory_per_block_optin, " bytes of ",
              emulated_device().name);
  const std::lock_guard<std::mutex> lock(shared_memory_opt_ins_mutex());
  shared_memory_opt_ins()[kernel] = bytes;
}

inline size_t max_dynamic_shared_memory(const void* kernel) {
  const std::lock_guard<std::mutex> lock(shared_memory_opt_ins_mutex());
  const auto it = shared_memory_opt_ins().find(kernel);
  return it == shared_memory_opt_ins().end() ? kDefaultDynamicSharedBytes
                                             : std::max(it->second, kDefaultDynamicSharedBytes);
}

// ---------------------------------------------------------------------------------------------
// Blocks: each runs on one thread, fiber per CUDA thread; the blocks of a launch run on several
// threads at once.

// What the threads running one launch share: the launch, the order of its blocks, the first
// error.
struct Grid {
  unsigned int threads;
  size_t shared_bytes;
  const std::function<void()>* body;
  std::vector<unsigned int> order;  // blocks in the order the threads take them
  std::atomic<size_t> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::exception_ptr error;
};

// Sets up `launch` (this thread's copy) for blocks of `grid`; each block fills its shared memory.
inline void prepare_launch(const Grid& grid, Launch& launch, std::vector<unsigned char>& shared) {
  const unsigned int threads = grid.threads;
  launch.grid_dim = {static_cast<unsigned int>(grid.order.size()), 1, 1};
  launch.block_dim = {threads, 1, 1};
  launch.body = grid.body;
  const unsigned int warps = (threads + kWarpSize - 1) / kWarpSize;
  launch.warp_barriers = std::make_unique<Barrier[]>(warps);
  launch.warp_exchange = std::make_unique<std::atomic<uint64_t>[]>(warps * 2 * kWarpSize);
  if (shared.size() < grid.shared_bytes + kSharedCanaryBytes + 16) {
    shared.resize(grid.shared_bytes + kSharedCanaryBytes + 16);
  }
  // 16-byte aligned, like __align__(16) extern __shared__ arrays.
  launch.shared = shared.data() + (16 - reinterpret_cast<uintptr_t>(shared.data()) % 16) % 16;
  launch.shared_bytes = grid.shared_bytes;
#if defined(SLIDEFORMER_HOST_TSAN)
  launch.scheduler.tsan = __tsan_get_current_fiber();
#endif
}

// The canary past a block's shared memory: all-ones bytes, poisoned under AddressSanitizer so
// that reading it is reported.
inline void set_shared_canary(unsigned char* canary, bool poisoned) {
#if defined(SLIDEFORMER_HOST_ASAN)
  if (poisoned) {
    ASAN_POISON_MEMORY_REGION(canary, kSharedCanaryBytes);
  } else {
    ASAN_UNPOISON_MEMORY_REGION(canary, kSharedCanaryBytes);
  }
#endif
  (void)canary, (void)poisoned;
}

// The context every fiber starts from: this thread's signal mask and floating-point environment
// (makecontext then gives it a stack and an entry). Apart, so that no caller returns twice.
inline ucontext_t fresh_context() {
  ucontext_t context;
  getcontext(&context);
  return context;
}

// Fresh fibers (with this thread's stacks) at the start of thread 0 .. threads - 1 of `block`.
inline void start_fibers(ThreadState& state, unsigned int threads, unsigned int block,
                         const ucontext_t& fresh) {
  for (unsigned int t = 0; t < threads; ++t) {
    Fiber& f = state.fibers[t];
    f.thread_idx = {t, 0, 0};
    f.block_idx = {block, 0, 0};
    f.started = false;
    f.finished.store(false, std::memory_order_relaxed);
    f.waiting_on.store(nullptr, std::memory_order_relaxed);
    f.stack = state.stacks[t].get();
    f.sanitizer = SanitizerFiber{};
    f.sanitizer.stack_bottom = f.stack;
    f.sanitizer.stack_size = kFiberStackBytes;
#if defined(SLIDEFORMER_HOST_ASAN)
    f.sanitizer.asan_fake_stack = state.asan_fake_stacks[t];
#endif
#if defined(SLIDEFORMER_HOST_TSAN)
    f.sanitizer.tsan = state.tsan_fibers[t];
#endif
    f.context = fresh;
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kFiberStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, &fiber_main, 0);
  }
}

// Runs one block on this thread: round robin over the fibers that may run, until all finished
// or none can go on; in ascending thread order in even blocks, descending in odd ones, so that a
// missing barrier shows whichever of two threads reads what the other writes.
inline void run_block(ThreadState& state, Launch& launch, unsigned int threads, unsigned int block,
                      const ucontext_t& fresh) {
  unsigned char* const canary = launch.shared + launch.shared_bytes;
  set_shared_canary(canary, false);
  std::memset(launch.shared, kUnwrittenShared, launch.shared_bytes + kSharedCanaryBytes);
  set_shared_canary(canary, true);
  launch.block_barrier.reset(static_cast<int>(threads), /*orders_memory=*/true);
  for (unsigned int w = 0; w * kWarpSize < threads; ++w) {
    launch.warp_barriers[w].reset(
        static_cast<int>(std::min(kWarpSize * (w + 1), threads) - kWarpSize * w),
        /*orders_memory=*/false);
  }
  start_fibers(state, threads, block, fresh);
  unsigned int finished = 0;
  while (finished < threads) {
    bool progressed = false;
    finished = 0;
    for (unsigned int i = 0; i < threads; ++i) {
      Fiber& f = state.fibers[block % 2 == 0 ? i : threads - 1 - i];
      if (f.runnable()) {
        progressed = true;
        state.fiber.store(&f, std::memory_order_relaxed);
        const bool starts = !f.started;
        f.started = true;
        sanitizer_before_switch(launch.scheduler, f.sanitizer, starts);
        swapcontext(&launch.scheduler_context, &f.context);
        sanitizer_after_switch(launch.scheduler, f.sanitizer);
        state.fiber.store(nullptr, std::memory_order_relaxed);
      }
      finished += f.finished.load(std::memory_order_relaxed);
    }
    if (launch.failed.load(std::memory_order_relaxed)) break;
    TORCH_CHECK(progressed || finished == threads, "CUDA host runtime: deadlock in block ", block,
                ": ", threads - finished,
                " threads wait at a barrier that the other threads of the block or warp never "
                "reach");
  }
  sanitizer_acquire(&launch.block_end_token);
  if (launch.error) std::rethrow_exception(launch.error);
  set_shared_canary(canary, false);
  for (size_t i = 0; i < kSharedCanaryBytes; ++i) {
    TORCH_CHECK(canary[i] == kUnwrittenShared, "CUDA host runtime: block ", block,
                " wrote past its ", launch.shared_bytes, " bytes of dynamic shared memory");
  }
}

// One thread's share of a launch: blocks taken from `grid.order` until none is left or a block
// failed (the first error is kept).
inline void run_blocks(Grid& grid) {
  ThreadState& state = thread_state();
  while (state.stacks.size() < grid.threads) {
    // Not zeroed: only the pages a fiber touches get memory.
    state.stacks.push_back(std::unique_ptr<char[]>(new char[kFiberStackBytes]));
#if defined(SLIDEFORMER_HOST_ASAN)
    state.asan_fake_stacks.push_back(nullptr);  // made by AddressSanitizer on first use
#endif
#if defined(SLIDEFORMER_HOST_TSAN)
    state.tsan_fibers.push_back(__tsan_create_fiber(0));
#endif
  }
  if (state.fiber_count < grid.threads) {
    state.fibers.reset(new Fiber[grid.threads]);
    state.fiber_count = grid.threads;
  }
  Launch launch;
  prepare_launch(grid, launch, state.shared);
  const ucontext_t fresh = fresh_context();
  state.launch = &launch;
  struct Restore {
    ThreadState& state;
    ~Restore() {
      state.launch = nullptr;
      state.fiber.store(nullptr, std::memory_order_relaxed);
    }
  } restore{state};
  try {
    for (size_t i = grid.next++; i < grid.order.size() && !grid.failed.load(); i = grid.next++) {
      run_block(state, launch, grid.threads, grid.order[i], fresh);
    }
  } catch (...) {
    const std::lock_guard<std::mutex> lock(grid.error_mutex);
    if (!grid.failed.exchange(true)) grid.error = std::current_exception();
  }
  set_shared_canary(launch.shared + launch.shared_bytes, false);
}

// Threads that run blocks beside the launching thread, started on first use and kept (never
// destroyed, so that no launch outlives them at exit). One launch at a time uses them; a launch
// from another thread meanwhile runs its blocks on its own thread.
class BlockRunners {
 public:
  static BlockRunners& instance() {
    static BlockRunners* runners = new BlockRunners;
    return *runners;
  }

  // Runs `grid` on the caller and on up to `helpers` of these threads.
  void run(Grid& grid, unsigned int helpers) {
    std::unique_lock<std::mutex> in_use(use_, std::try_to_lock);
    if (!in_use.owns_lock() || helpers == 0) {
      run_blocks(grid);
      return;
    }
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      while (threads_.size() < helpers) threads_.emplace_back([this] { serve(); });
      job_ = &grid;
      wanted_ = helpers;
      running_ = 0;
      ++round_;
    }
    wake_.notify_all();
    run_blocks(grid);
    std::unique_lock<std::mutex> lock(mutex_);
    wanted_ = 0;  // threads that did not start yet stay out
    done_.wait(lock, [this] { return running_ == 0; });
    job_ = nullptr;
  }

 private:
  void serve() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return round_ != seen; });
      seen = round_;
      if (wanted_ == 0) continue;
      --wanted_;
      ++running_;
      Grid* grid = job_;
      lock.unlock();
      run_blocks(*grid);
      lock.lock();
      if (--running_ == 0) done_.notify_all();
    }
  }

  std::mutex use_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> threads_;
  Grid* job_ = nullptr;
  unsigned int wanted_ = 0, running_ = 0;
  uint64_t round_ = 0;
};

// The environment variable `name` as a number, or `fallback`.
inline uint64_t env_number(const char* name, uint64_t fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && *value != '\0' ? std::strtoull(value, nullptr, 10) : fallback;
}

// The seed of the block orders of this process (SLIDEFORMER_CUDA_HOST_SEED, else random).
inline uint64_t block_order_seed() {
  static const uint64_t seed = env_number("SLIDEFORMER_CUDA_HOST_SEED", std::random_device{}());
  return seed;
}

// How many threads run the blocks of a launch (SLIDEFORMER_CUDA_HOST_THREADS, default 2).
inline unsigned int block_threads() {
  static const unsigned int threads = static_cast<unsigned int>(
      std::clamp<uint64_t>(env_number("SLIDEFORMER_CUDA_HOST_THREADS", 2), 1, 64));
  return threads;
}

// Blocks 0 .. grid - 1 shuffled by the process's seed and the launch's number on this thread.
inline std::vector<unsigned int> block_order(unsigned int grid, uint64_t launch_number) {
  std::vector<unsigned int> order(grid);
  std::iota(order.begin(), order.end(), 0u);
  std::mt19937_64 random(block_order_seed() ^ (launch_number * 0x9E3779B97F4A7C15ull));
  std::shuffle(order.begin(), order.end(), random);
  return order;
}

// While a test points it at a vector, the launches of this thread are appended to it.
struct LaunchRecord {
  const void* kernel;
  unsigned int blocks, threads;
  size_t shared_bytes;
};
inline std::vector<LaunchRecord>*& launch_log() {
  thread_local std::vector<LaunchRecord>* log = nullptr;
  return log;
}
// Kernels launched on this thread so far.
inline uint64_t& launch_count() {
  thread_local uint64_t count = 0;
  return count;
}

// Runs blocks 0 .. grid - 1 of `body` (the kernel applied to its parameters), `threads` fibers
// each, in a shuffled order on block_threads() threads.
inline void run_grid(const void* kernel, unsigned int grid, unsigned int threads,
                     size_t shared_bytes, const std::function<void()>& body) {
  TORCH_CHECK(thread_state().launch == nullptr,
              "CUDA host runtime: a kernel launched another kernel");
  TORCH_CHECK(grid >= 1 && threads >= 1 &&
                  threads <= static_cast<unsigned int>(emulated_device().max_threads_per_block),
              "CUDA host runtime: invalid configuration argument: ", grid, " blocks of ", threads,
              " threads");
  TORCH_CHECK(shared_bytes <= max_dynamic_shared_memory(kernel),
              "CUDA host runtime: too many resources requested for launch: ", shared_bytes,
              " bytes of dynamic shared memory, the kernel may use ",
              max_dynamic_shared_memory(kernel));
  const uint64_t number = launch_count()++;
  if (launch_log() != nullptr) launch_log()->push_back({kernel, grid, threads, shared_bytes});
  Grid run{threads, shared_bytes, &body, block_order(grid, number)};
  BlockRunners::instance().run(run, std::min(grid, block_threads()) - 1);
  if (!run.error) return;
  try {
    std::rethrow_exception(run.error);
  } catch (c10::Error& e) {
    e.add_context(c10::str("(launch ", number, " of this thread, its blocks shuffled with "
                           "SLIDEFORMER_CUDA_HOST_SEED=", block_order_seed(), ")"));
    throw;
  }
}

// kernel<<<grid, threads, shared_bytes>>>(args...) on the host. The arguments are copied once,
// as a launch copies kernel parameters.
template <typename... KernelArgs, typename... Args>
void launch(void (*kernel)(KernelArgs...), unsigned int grid, unsigned int threads,
            size_t shared_bytes, Args&&... args) {
  std::tuple<std::decay_t<KernelArgs>...> parameters(std::forward<Args>(args)...);
  const std::function<void()> body = [&] { std::apply(kernel, parameters); };
  run_grid(reinterpret_cast<const void*>(kernel), grid, threads, shared_bytes, body);
}

}  // namespace slideformer::ops::cuda::host_runtime
