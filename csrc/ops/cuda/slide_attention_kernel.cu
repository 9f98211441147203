// slide_attention, CUDA registration: the kernels and their launches are in
// slide_attention_kernels.cuh, which the test build also runs on the host
// (ops/cuda/host_runtime.h).
#include <torch/library.h>

#include "ops/cuda/slide_attention_kernels.cuh"
#include "ops/slide_attention.h"

namespace slideformer::ops {

TORCH_LIBRARY_IMPL(slideformer, CUDA, m) {
  // The public op's CUDA entry is the composite one; listed here so the CUDA key names a kernel.
  m.impl("slide_attention", &slide_attention_via_forward);
  m.impl("_slide_attention_forward", &cuda::slide_attention_forward);
  m.impl("_slide_attention_backward", &cuda::slide_attention_backward);
}

}  // namespace slideformer::ops
