#pragma once
// Timing and reporting shared by the benchmark binaries. Every figure a benchmark reports is a
// ratio against a peer measured in the same run, on the same thread count.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "slideformer/cpu.h"

namespace slideformer::bench {

// Median wall time in seconds of `fn` over `reps` runs after `warmup` runs.
inline double median_seconds(const std::function<void()>& fn, int warmup = 1, int reps = 5) {
  for (int i = 0; i < warmup; ++i) fn();
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

// Median wall times of several contenders measured round-robin (A B C A B C ...), so that a
// background load on the machine slows each of them alike and their ratios stay meaningful.
inline std::vector<double> interleaved_median_seconds(const std::vector<std::function<void()>>& fns,
                                                      int warmup = 1, int reps = 5) {
  for (int i = 0; i < warmup; ++i)
    for (const auto& fn : fns) fn();
  std::vector<std::vector<double>> times(fns.size());
  for (int i = 0; i < reps; ++i) {
    for (size_t f = 0; f < fns.size(); ++f) {
      const auto start = std::chrono::steady_clock::now();
      fns[f]();
      times[f].push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
  }
  std::vector<double> medians;
  for (auto& t : times) {
    std::sort(t.begin(), t.end());
    medians.push_back(t[t.size() / 2]);
  }
  return medians;
}

// The title, then the machine: speed depends on the CPU's vendor and ISA (docs/benchmarks.md).
inline void print_header(const char* title) {
  std::printf("\n== %s (threads: %d) ==\n%s\n", title, at::get_num_threads(), slideformer::describe_cpu().c_str());
}

}  // namespace slideformer::bench
