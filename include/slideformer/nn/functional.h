#pragma once
// Functional twins of the slideformer modules.
#include <ATen/Tensor.h>

#include <cstdint>

namespace slideformer::nn::functional {

// Stochastic depth: zeroes whole samples with probability p in training, scaling the kept ones
// by 1 / (1 - p); identity in eval mode or for p = 0.
at::Tensor drop_path(const at::Tensor& x, double p, bool training);

// This thread's batch as a slice of a larger one. While a GlobalBatchSlice lives, drop_path draws
// its per-sample masks for all `global_size` samples and keeps rows [offset, offset + batch): a
// data-parallel rank draws what a single process running the whole global batch would, so results
// do not depend on how the batch is split. The guard restores the previous slice when it ends.
class GlobalBatchSlice {
 public:
  GlobalBatchSlice(int64_t offset, int64_t global_size);
  ~GlobalBatchSlice();
  GlobalBatchSlice(const GlobalBatchSlice&) = delete;
  GlobalBatchSlice& operator=(const GlobalBatchSlice&) = delete;

 private:
  int64_t previous_offset_, previous_global_size_;
};

// Swin relative-position index of an R x R map: (R*R, R*R) int64 entries in [0, (2R-1)^2).
at::Tensor relative_position_index(int64_t size);
// The same for a rows x cols map: (rows*cols, rows*cols) entries in [0, (2 rows - 1)(2 cols - 1)).
at::Tensor relative_position_index(int64_t rows, int64_t cols);

// What linear() applies after the affine map.
enum class Activation { kNone, kGelu };

// y = activation(x W^T + b) over the last dimension of x (b may be undefined). float32 on the CPU
// runs oneDNN's inner product, forward and backward, with the GELU fused in when no gradient is
// needed; anything else runs at::linear (then at::gelu). Differentiable in x, W and b.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                  Activation activation = Activation::kNone);

// (B, Y, X, C) -> (B, ceil(Y/2), ceil(X/2), 4C), neighbours in the order (0,0),(1,0),(0,1),(1,1)
// (row, col); odd maps are zero-padded at the bottom / right first.
at::Tensor merge_patches(const at::Tensor& x);

}  // namespace slideformer::nn::functional
