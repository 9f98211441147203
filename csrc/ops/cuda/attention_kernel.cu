// attention, CUDA registration: the kernels and their launches are in attention_kernels.cuh,
// which the test build also runs on the host (ops/cuda/host_runtime.h).
#include <torch/library.h>

#include "ops/attention.h"
#include "ops/cuda/attention_kernels.cuh"

namespace slideformer::ops {

TORCH_LIBRARY_IMPL(slideformer, CUDA, m) {
  // The public op's CUDA entry is the composite one; listed here so the CUDA key names a kernel.
  m.impl("attention", &attention_via_forward);
  m.impl("_attention_forward", &cuda::attention_forward);
  m.impl("_attention_backward", &cuda::attention_backward);
}

}  // namespace slideformer::ops
