#pragma once
// slide_attention on the CPU, fast path for the Slide-Transformer configuration: zeros border,
// 3x3 window, learnable deformed shift, any dilation and head dim. The general kernels of
// slide_attention_kernel.cpp serve every other configuration (and are the reference for this
// one in the tests, through the shared parity cases).
#include <ATen/core/Tensor.h>

#include "ops/common/slide_math.h"
#include "ops/common/slide_parameters.h"

namespace slideformer::ops::cpu {

// k = 3, zeros border, a shift weight and a query with elements (an empty map, Y, X or D = 0, has
// no data for the channel-major planes to point into; the general kernel takes it).
bool slide_zeros_kernel_applies(int64_t kernel_size, math::SlideBorder border,
                                bool has_shift_weight, int64_t query_elements);

// The parameters, in the dtype of q: tables (with a weight) laid out channels outermost
// (SlideParameterLayout::channels_outermost), gradient sections as the backward wants them.
struct SlideZerosParameters {
  int64_t dilation;
  double scale;
  SlideParameterLayout layout;
  SlideParameterTables tables;
};

// q, k, v: (B, H, Y, X, D) float or double with unit channel stride. out (B, H, Y, X, D) and
// lse (B, H, Y, X) are contiguous and written in full.
void slide_zeros_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const SlideZerosParameters& p, at::Tensor& out, at::Tensor& lse);

struct SlideZerosGrads {
  at::Tensor query, key, value;  // (B, H, Y, X, D) contiguous
  SlideParameterGrads params;    // in the dtype of q; those p.layout has no section for undefined
};

SlideZerosGrads slide_zeros_backward(const at::Tensor& dout, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& lse, const SlideZerosParameters& p);

}  // namespace slideformer::ops::cpu
