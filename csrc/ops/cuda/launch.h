#pragma once
// What every CUDA kernel file needs around its kernels, written once for both ways the kernel
// headers (ops/cuda/*_kernels.cuh) are compiled:
// - by nvcc, for the GPU (ops/cuda/*_kernel.cu, the shipped library);
// - by the host compiler, for the host execution of the test build (ops/cuda/host_runtime.h):
//   the same kernels run on the CPU, fiber per CUDA thread.
// The kernels of each compilation live in their own inline namespace (gpu / host_emulation), so
// a process may load both without their symbols meeting.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <limits>
#include <utility>

#if defined(__CUDACC__)
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#define SLIDEFORMER_KERNEL_TARGET gpu
// The dynamic shared memory of a kernel as `unsigned char name[]`, 16-byte aligned.
#define SLIDEFORMER_DYNAMIC_SHARED_MEMORY(name) extern __shared__ __align__(16) unsigned char name[]
#else
#include "ops/cuda/host_runtime.h"
#define SLIDEFORMER_KERNEL_TARGET host_emulation
#define SLIDEFORMER_DYNAMIC_SHARED_MEMORY(name) \
  unsigned char* const name = ::slideformer::ops::cuda::host_runtime::dynamic_shared_memory()
#endif

namespace slideformer::ops::cuda {
inline namespace SLIDEFORMER_KERNEL_TARGET {

C10_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Dynamic shared memory a block may use once its kernel opted in.
inline size_t shared_memory_per_block_limit() {
#if defined(__CUDACC__)
  return at::cuda::getCurrentDeviceProperties()->sharedMemPerBlockOptin;
#else
  return host_runtime::emulated_device().shared_memory_per_block_optin;
#endif
}

// kernel<<<blocks, threads, shared_bytes, current stream>>>(args...), or the same on the host.
// Opts in to more than the default 48 KiB of dynamic shared memory when the launch needs it; an
// empty grid launches nothing.
template <typename... KernelArgs, typename... Args>
void launch(const char* op, void (*kernel)(KernelArgs...), int64_t blocks, int threads,
            size_t shared_bytes, Args&&... args) {
  if (blocks == 0) return;
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), op, ": ", blocks,
              " CUDA blocks are more than one launch allows");
  constexpr size_t kDefaultDynamicSharedBytes = 48 * 1024;
#if defined(__CUDACC__)
  if (shared_bytes > kDefaultDynamicSharedBytes) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(shared_bytes)));
  }
  kernel<<<static_cast<unsigned int>(blocks), threads, shared_bytes,
           at::cuda::getCurrentCUDAStream()>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
#else
  if (shared_bytes > kDefaultDynamicSharedBytes) {
    host_runtime::set_max_dynamic_shared_memory(reinterpret_cast<const void*>(kernel),
                                                shared_bytes);
  }
  host_runtime::launch(kernel, static_cast<unsigned int>(blocks),
                       static_cast<unsigned int>(threads), shared_bytes,
                       std::forward<Args>(args)...);
#endif
}

// The kernels' inputs live where they run: on a CUDA device, or in CPU memory for the host
// execution.
inline void check_kernel_device(const char* op, const at::Tensor& query) {
#if defined(__CUDACC__)
  TORCH_CHECK(query.is_cuda(), op, ": query must be a CUDA tensor for the CUDA kernel, got ",
              query.device());
#else
  TORCH_CHECK(query.is_cpu(), op,
              ": query must be a CPU tensor for the host execution of the CUDA kernel, got ",
              query.device());
#endif
}

// Makes the query's device current for the launches (nothing to do on the host).
#if defined(__CUDACC__)
using KernelDeviceGuard = c10::cuda::CUDAGuard;
#else
struct KernelDeviceGuard {
  explicit KernelDeviceGuard(c10::Device) {}
};
#endif

// The staged loop of the tile kernels: for each chunk [c0, c0 + chunk) of `dim` columns, the
// block stages it in shared memory (stage(c0)), then every thread reads it (consume(c0)). The
// barrier before staging waits for the readers of the previous chunk (or of whatever the caller
// kept there before the loop), the one after makes the chunk visible to every thread.
template <typename Stage, typename Consume>
__device__ void for_each_staged_chunk(int64_t dim, int64_t chunk, const Stage& stage,
                                      const Consume& consume) {
  for (int64_t c0 = 0; c0 < dim; c0 += chunk) {
    __syncthreads();
    stage(c0);
    __syncthreads();
    consume(c0);
  }
}

}  // namespace SLIDEFORMER_KERNEL_TARGET
}  // namespace slideformer::ops::cuda
