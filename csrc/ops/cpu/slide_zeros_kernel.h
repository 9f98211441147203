#pragma once
// slide_attention on the CPU, fast path for the Slide-Transformer configuration: zeros border,
// 3x3 window, learnable deformed shift, any dilation and head dim. The general kernels of
// slide_attention_kernel.cpp serve every other configuration (and are the reference for this
// one in the tests, through the shared parity cases).
#include <ATen/core/Tensor.h>

#include <array>

#include "ops/common/slide_math.h"

namespace slideformer::ops::cpu {

bool slide_zeros_kernel_applies(int64_t kernel_size, math::SlideBorder border,
                                bool has_shift_weight);

// The parameters in the layouts of this kernel, in the dtype of q.
struct SlideZerosParameters {
  int64_t dilation;
  double scale;
  at::Tensor weight;      // (D, k2 [m], k2 [n]) = shift_weight[c, n, m]
  at::Tensor key_bias;    // (H, D, k2) = shift_bias[c, n] + key_bias[h, n]
  at::Tensor value_bias;  // (D, k2) = shift_bias[c, n]
};

// q, k, v: (B, H, Y, X, D) float or double with unit channel stride. out (B, H, Y, X, D) and
// lse (B, H, Y, X) are contiguous and written in full.
void slide_zeros_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const SlideZerosParameters& p, at::Tensor& out, at::Tensor& lse);

struct SlideZerosGrads {
  at::Tensor query, key, value;  // (B, H, Y, X, D) contiguous
  at::Tensor key_bias;           // (H, k2) or undefined when not wanted
  at::Tensor shift_weight;       // (D, k2 [n], k2 [m]) or undefined
  at::Tensor shift_bias;         // (D, k2) or undefined
};

// want = which of (key_bias, shift_weight, shift_bias) get a gradient.
SlideZerosGrads slide_zeros_backward(const at::Tensor& dout, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& lse, const SlideZerosParameters& p,
                                     std::array<bool, 3> want);

}  // namespace slideformer::ops::cpu
