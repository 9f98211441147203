#pragma once
// What the *Emulated* suites share: a fixture whose tests run the internal ops on the
// host-executed CUDA kernels (tests/cuda_host) and fail if no kernel ran (a silent fallback to the
// CPU kernels would pass the parity checks), and the kernels' instantiation names.
#include <c10/core/ScalarType.h>
#include <gtest/gtest.h>

#include <initializer_list>
#include <iostream>
#include <set>
#include <string>
#include <vector>

#include "cuda_host.h"

namespace slideformer::testing {

class CudaHostExecutionTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (expect_launches_) {
      EXPECT_FALSE(launches_.kernels().empty()) << "no CUDA kernel ran";
    }
    if (HasFailure()) {
      std::cout << "The blocks ran in shuffled orders: SLIDEFORMER_CUDA_HOST_SEED="
                << host_execution_seed() << " repeats them.\n";
    }
  }
  // Tests that launch nothing (empty inputs, bad inputs) turn the check off.
  bool expect_launches_ = true;
  ScopedCudaHostExecution host_;
  RecordedLaunches launches_;
};

// The CPU half of an agreement test: the CPU kernels serve the calls, and the test fails if a
// host-executed CUDA kernel ran all the same (then both halves would be one kernel).
class CpuKernelsOnly {
 public:
  CpuKernelsOnly() = default;
  CpuKernelsOnly(const CpuKernelsOnly&) = delete;
  CpuKernelsOnly& operator=(const CpuKernelsOnly&) = delete;
  ~CpuKernelsOnly() {
    EXPECT_TRUE(launches_.kernels().empty())
        << "the CPU half ran " << launches_.kernels().size() << " CUDA kernels, first "
        << launches_.kernels().front();
  }

 private:
  ScopedCpuKernels cpu_;
  RecordedLaunches launches_;
};

// The distinct kernels among `launches`.
inline std::set<std::string> distinct_kernels(const RecordedLaunches& launches) {
  const std::vector<std::string> kernels = launches.kernels();
  return {kernels.begin(), kernels.end()};
}

// "name<args>" for every name and template argument list, e.g. "kernel<double, double>".
inline std::set<std::string> kernel_instantiations(std::initializer_list<const char*> names,
                                                   std::initializer_list<const char*> args) {
  std::set<std::string> all;
  for (const char* name : names) {
    for (const char* arg : args) all.insert(std::string(name) + arg);
  }
  return all;
}

// The template arguments <scalar_t, acc_t> of the four dtypes.
inline constexpr std::initializer_list<const char*> kEveryDtype = {
    "<double, double>", "<float, float>", "<c10::Half, float>", "<c10::BFloat16, float>"};

// The template arguments <scalar_t, acc_t> of one of them.
inline const char* kernel_dtype_args(c10::ScalarType dtype) {
  switch (dtype) {
    case c10::kDouble: return "<double, double>";
    case c10::kFloat: return "<float, float>";
    case c10::kHalf: return "<c10::Half, float>";
    case c10::kBFloat16: return "<c10::BFloat16, float>";
    default: ADD_FAILURE() << "no kernel instantiation for " << dtype; return "";
  }
}

}  // namespace slideformer::testing
