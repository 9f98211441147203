#pragma once
// What the *Emulated* suites share: a fixture whose tests run the internal ops on the
// host-executed CUDA kernels (tests/cuda_host) and fail if no kernel ran (a silent fallback to the
// CPU kernels would pass the parity checks), and the kernels' instantiation names.
#include <gtest/gtest.h>

#include <initializer_list>
#include <set>
#include <string>

#include "cuda_host.h"

namespace slideformer::testing {

class CudaHostExecutionTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (expect_launches_) {
      EXPECT_FALSE(launches_.kernels().empty()) << "no CUDA kernel ran";
    }
  }
  // Tests that launch nothing (empty inputs, bad inputs) turn the check off.
  bool expect_launches_ = true;
  ScopedCudaHostExecution host_;
  RecordedLaunches launches_;
};

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

}  // namespace slideformer::testing
