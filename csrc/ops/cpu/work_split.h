#pragma once
// Work split and scratch carving shared by the CPU kernels that keep per-thread scratch and
// deterministic partial sums.
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>

namespace slideformer::ops::cpu {

// Tasks dealt out as `groups` fixed contiguous slices of [0, tasks), handed to the threads one
// group at a time as they come free, so a thread slowed by other load on the machine simply
// takes fewer. Partial sums kept per group and added in group order are deterministic for a
// given thread count, whichever thread ran which group.
class WorkSplit {
 public:
  explicit WorkSplit(int64_t tasks)
      : tasks_(tasks),
        workers_(std::min<int64_t>(at::get_num_threads(), tasks)),
        groups_(std::min<int64_t>(8 * at::get_num_threads(), tasks)) {}
  int64_t workers() const { return workers_; }
  int64_t groups() const { return groups_; }
  int64_t begin(int64_t group) const { return group * tasks_ / groups_; }
  int64_t end(int64_t group) const { return (group + 1) * tasks_ / groups_; }

  // Runs fn(group, worker) once for every group; `worker` < workers() indexes per-thread scratch.
  template <typename Fn>
  void run(const Fn& fn) const {
    std::atomic<int64_t> next{0};
    at::parallel_for(0, workers_, 1, [&](int64_t first, int64_t last) {
      for (int64_t worker = first; worker < last; ++worker) {
        for (int64_t group = next++; group < groups_; group = next++) fn(group, worker);
      }
    });
  }

 private:
  int64_t tasks_, workers_, groups_;
};

// Carves one worker's scratch into named buffers.
template <typename T>
class ScratchCursor {
 public:
  explicit ScratchCursor(T* base) : next_(base) {}
  T* take(int64_t n) {
    T* p = next_;
    next_ += n;
    return p;
  }

 private:
  T* next_;
};

}  // namespace slideformer::ops::cpu
