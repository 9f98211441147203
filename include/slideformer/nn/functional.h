#pragma once
// Functional twins of the slideformer modules.
#include <ATen/Tensor.h>

#include <cstdint>
#include <string>

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

// The library that multiplies a float32 CPU linear layer's matrices: oneDNN's inner product
// (mkldnn::_linear_pointwise, which torch bundles) or ATen's at::linear / at::mm (MKL's sgemm in
// torch's x86 wheels).
enum class GemmBackend { kOnednn, kAten };

// The backend of the forward product and of the two backward products (dX = dY W, dW = dY^T X).
struct LinearBackends {
  GemmBackend forward = GemmBackend::kOnednn, backward = GemmBackend::kOnednn;
  std::string reason;  // the rule or setting that chose them
};

// The rule, measured per CPU (docs/benchmarks.md). `setting` is SLIDEFORMER_GEMM's value: "onednn"
// or "aten" force that backend for all three products; "" or "auto": forward on oneDNN; backward
// on at::mm where torch has MKL and the CPU is Intel's, on oneDNN elsewhere (MKL runs its AVX2 code
// on AMD CPUs); ATen alone where torch has no oneDNN. Deterministic, so a resumed run multiplies
// as the first one did. Throws for any other setting.
LinearBackends choose_linear_backends(const std::string& setting, const std::string& cpu_vendor, bool has_mkl,
                                      bool has_onednn);
// This process's backends: the rule for this CPU and torch, SLIDEFORMER_GEMM read on first use.
const LinearBackends& linear_backends();
// One line naming the backends and why, for benchmark headers.
std::string describe_linear_backends();

// y = activation(x W^T + b) over the last dimension of x (b may be undefined), with
// linear_backends(); float32 CPU tensors only (anything else, and autocast, runs at::linear then
// at::gelu). On oneDNN the GELU is fused in when no gradient is needed. Differentiable in x, W, b.
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                  Activation activation = Activation::kNone);
// The same with the given backends (the tests run both).
at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Activation activation,
                  const LinearBackends& backends);

// (B, Y, X, C) -> (B, ceil(Y/2), ceil(X/2), 4C), neighbours in the order (0,0),(1,0),(0,1),(1,1)
// (row, col); odd maps are zero-padded at the bottom / right first.
at::Tensor merge_patches(const at::Tensor& x);

}  // namespace slideformer::nn::functional
