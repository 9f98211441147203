// attention's CUDA kernels, compiled for the host execution (see cuda_host.h).
#include <torch/library.h>

#include "host_kernel.h"
#include "ops/cuda/attention_kernels.cuh"

namespace {

using slideformer::testing::HostKernel;
namespace cuda = slideformer::ops::cuda;
constexpr char kForward[] = "slideformer::_attention_forward";
constexpr char kBackward[] = "slideformer::_attention_backward";

TORCH_LIBRARY_IMPL(slideformer, TESTING_ONLY_GenericMode, m) {
  m.impl("_attention_forward",
         &HostKernel<decltype(cuda::attention_forward)>::call<&cuda::attention_forward, kForward>);
  m.impl("_attention_backward",
         &HostKernel<decltype(cuda::attention_backward)>::call<&cuda::attention_backward,
                                                                kBackward>);
}

}  // namespace
