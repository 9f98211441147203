#include "slideformer/nn/functional.h"

#include <ATen/ATen.h>

namespace slideformer::nn::functional {

namespace {
// The slice set by GlobalBatchSlice on this thread; global_size 0: none.
thread_local int64_t slice_offset = 0;
thread_local int64_t slice_global_size = 0;
}  // namespace

GlobalBatchSlice::GlobalBatchSlice(int64_t offset, int64_t global_size)
    : previous_offset_(slice_offset), previous_global_size_(slice_global_size) {
  TORCH_CHECK(global_size >= 1 && offset >= 0 && offset <= global_size,
              "slideformer::GlobalBatchSlice: need 0 <= offset <= global_size and global_size >= 1, got offset ",
              offset, " and global_size ", global_size);
  slice_offset = offset;
  slice_global_size = global_size;
}

GlobalBatchSlice::~GlobalBatchSlice() {
  slice_offset = previous_offset_;
  slice_global_size = previous_global_size_;
}

at::Tensor drop_path(const at::Tensor& x, double p, bool training) {
  if (!training || p == 0.0) return x;
  TORCH_CHECK(p > 0.0 && p < 1.0, "slideformer::drop_path: p must be in [0, 1), got ", p);
  const int64_t batch = x.size(0);
  const bool sliced = slice_global_size > 0;
  TORCH_CHECK(!sliced || slice_offset + batch <= slice_global_size, "slideformer::drop_path: a batch of ",
              batch, " samples at offset ", slice_offset, " does not fit the GlobalBatchSlice of ",
              slice_global_size, " samples");
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = sliced ? slice_global_size : batch;
  at::Tensor keep = at::empty(shape, x.options()).bernoulli_(1.0 - p).div_(1.0 - p);
  if (sliced) keep = keep.narrow(0, slice_offset, batch);
  return x * keep;
}

at::Tensor relative_position_index(int64_t size) { return relative_position_index(size, size); }

at::Tensor relative_position_index(int64_t rows, int64_t cols) {
  TORCH_CHECK(rows >= 1 && cols >= 1, "slideformer::relative_position_index: rows and cols must be >= 1, got ",
              rows, " and ", cols);
  const at::Tensor y = at::arange(rows, at::kLong).repeat_interleave(cols);
  const at::Tensor x = at::arange(cols, at::kLong).repeat({rows});
  const at::Tensor dy = y.unsqueeze(1) - y.unsqueeze(0) + (rows - 1);
  const at::Tensor dx = x.unsqueeze(1) - x.unsqueeze(0) + (cols - 1);
  return dy * (2 * cols - 1) + dx;
}

at::Tensor merge_patches(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "slideformer::merge_patches: input must be (B, Y, X, C), got shape ",
              x.sizes());
  at::Tensor padded = x;
  const int64_t pad_y = x.size(1) % 2, pad_x = x.size(2) % 2;
  if (pad_y || pad_x) padded = at::constant_pad_nd(x, {0, 0, 0, pad_x, 0, pad_y});
  using at::indexing::Slice;
  auto pick = [&](int64_t row, int64_t col) {
    return padded.index({Slice(), Slice(row, at::indexing::None, 2), Slice(col, at::indexing::None, 2)});
  };
  return at::cat({pick(0, 0), pick(1, 0), pick(0, 1), pick(1, 1)}, -1);
}

}  // namespace slideformer::nn::functional
