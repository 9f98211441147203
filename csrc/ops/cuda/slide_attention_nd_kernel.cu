// slide_attention_nd, CUDA registration: the kernels and their launches are in
// slide_attention_nd_kernels.cuh, which the test build also runs on the host
// (ops/cuda/host_runtime.h).
#include <torch/library.h>

#include "ops/cuda/slide_attention_nd_kernels.cuh"
#include "ops/slide_attention_nd.h"

namespace slideformer::ops {

TORCH_LIBRARY_IMPL(slideformer, CUDA, m) {
  // The public op's CUDA entry is the composite one; listed here so the CUDA key names a kernel.
  m.impl("slide_attention_nd", &slide_attention_nd_via_forward);
  m.impl("_slide_attention_nd_forward", &cuda::slide_attention_nd_forward);
  m.impl("_slide_attention_nd_backward", &cuda::slide_attention_nd_backward);
}

}  // namespace slideformer::ops
