#pragma once
// The CUDA kernels of both operators, executed on the host (ops/cuda/host_runtime.h), for the
// tests: libslideformer_cuda_host registers them for the TESTING_ONLY_GenericMode dispatch key,
// which is off unless a thread turns it on. While it is on, the internal ops
// (_attention_forward/_backward, _slide_attention_forward/_backward) on CPU tensors run the CUDA
// kernels, with the launch configurations of the CUDA dispatch, fiber per CUDA thread; every
// other op runs as usual. Nothing of this is in the shipped library.
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace slideformer::ops::cuda::host_runtime {
struct LaunchRecord;
}

namespace slideformer::testing {

// The host-executed CUDA kernels serve this thread's calls while the object lives.
class ScopedCudaHostExecution {
 public:
  ScopedCudaHostExecution();

 private:
  c10::impl::IncludeDispatchKeyGuard include_;
};

// The CPU kernels serve this thread's calls while the object lives, also inside a
// ScopedCudaHostExecution (the CPU half of an agreement test).
class ScopedCpuKernels {
 public:
  ScopedCpuKernels();

 private:
  c10::impl::ExcludeDispatchKeyGuard exclude_;
};

// The seed of the shuffled block orders of this process (SLIDEFORMER_CUDA_HOST_SEED repeats them).
uint64_t host_execution_seed();

// The GPUs whose limits the host execution can take (the launch configuration depends on them).
enum class EmulatedGpu { kA100, kH100 };

// Emulates `gpu` while the object lives (A100 otherwise).
class ScopedEmulatedGpu {
 public:
  explicit ScopedEmulatedGpu(EmulatedGpu gpu);
  ~ScopedEmulatedGpu();
  ScopedEmulatedGpu(const ScopedEmulatedGpu&) = delete;
  ScopedEmulatedGpu& operator=(const ScopedEmulatedGpu&) = delete;
};

// One kernel launch: the kernel as "name<template arguments>", e.g.
// "attention_forward_kernel<double, double>", and its configuration.
struct KernelLaunch {
  std::string kernel;
  unsigned int blocks, threads;
  size_t shared_bytes;
};

// The launches of this thread while the object lives, in launch order (an enclosing recorder
// gets them too).
class RecordedLaunches {
 public:
  RecordedLaunches();
  ~RecordedLaunches();
  RecordedLaunches(const RecordedLaunches&) = delete;
  RecordedLaunches& operator=(const RecordedLaunches&) = delete;
  std::vector<KernelLaunch> launches() const;
  std::vector<std::string> kernels() const;  // the names of launches()

 private:
  std::vector<ops::cuda::host_runtime::LaunchRecord> records_;
  std::vector<ops::cuda::host_runtime::LaunchRecord>* previous_;
};

}  // namespace slideformer::testing
