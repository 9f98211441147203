// slide_attention_nd's CUDA kernels, compiled for the host execution (see cuda_host.h).
#include <torch/library.h>

#include "host_kernel.h"
#include "ops/cuda/slide_attention_nd_kernels.cuh"

namespace {

using slideformer::testing::HostKernel;
namespace cuda = slideformer::ops::cuda;
constexpr char kForward[] = "slideformer::_slide_attention_nd_forward";
constexpr char kBackward[] = "slideformer::_slide_attention_nd_backward";

TORCH_LIBRARY_IMPL(slideformer, TESTING_ONLY_GenericMode, m) {
  m.impl("_slide_attention_nd_forward",
         &HostKernel<decltype(cuda::slide_attention_nd_forward)>::call<
             &cuda::slide_attention_nd_forward, kForward>);
  m.impl("_slide_attention_nd_backward",
         &HostKernel<decltype(cuda::slide_attention_nd_backward)>::call<
             &cuda::slide_attention_nd_backward, kBackward>);
}

}  // namespace
