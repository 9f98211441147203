#pragma once
// slide_attention_nd, CUDA kernels and their launches (docs/operators.md, docs/cuda.md). nvcc
// compiles this header for the GPU (slide_attention_nd_kernel.cu); the test build compiles it for
// the host execution of ops/cuda/host_runtime.h (see ops/cuda/launch.h). Every computation is one
// of ops/common/slide_nd_math.h, which the CPU kernel runs too; the kernels only deal out work:
//  forward: one thread per pixel (grid-stride): slots, softmax, then the output in chunks of
//    channels held in registers;
//  backward: (1) one thread per pixel: probabilities and scaled logit gradients into
//    (B*H*N, K) buffers (no D factor), dq; (2) one thread per (pixel, channel chunk): dK and dV
//    gathered from the pixels that read it; (3) a fixed number of blocks, each summing a fixed
//    range of pixels into its own row of parameter-gradient partials, added in block order by
//    the 2-D operator's sum kernel. Deterministic, no atomics.
// Each thread's slots and window values live in a scratch row of global memory; the grid is
// capped so that the scratch stays within kScratchBytes. Inputs keep their dtype in global memory;
// arithmetic is in at::opmath_type (float32 for the half types).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>

#include "ops/attention.h"
#include "ops/common/slide_nd_math.h"
#include "ops/common/slide_parameters.h"
#include "ops/cuda/launch.h"
#include "ops/cuda/slide_attention_kernels.cuh"
#include "ops/slide_attention_nd.h"

namespace slideformer::ops::cuda {
inline namespace SLIDEFORMER_KERNEL_TARGET {
namespace slide_nd_kernels {

constexpr int kThreads = 128;
constexpr int64_t kChannelChunk = 8;  // channels a thread accumulates in registers at once
constexpr int64_t kScratchBytes = int64_t(64) << 20;
// Blocks of the parameter-gradient kernel: fixed, so the summation order is the same everywhere.
constexpr int64_t kParameterPartials = 256;

__device__ inline int64_t global_thread() { return blockIdx.x * int64_t(blockDim.x) + threadIdx.x; }
__device__ inline int64_t grid_threads() { return int64_t(gridDim.x) * blockDim.x; }

// out[pixel, c] for c in chunks: sum_n coeffs[n] * Xn[c] (nd::combine_window), cast to T.
template <typename T, typename A>
__device__ void combine_into(const nd::NdTensors<T, A>& p, const T* plane, const A* bias,
                             const int64_t* slots, const A* coeffs, T* row) {
  for (int64_t c0 = 0; c0 < p.g.head_dim; c0 += kChannelChunk) {
    const int64_t c1 = std::min<int64_t>(c0 + kChannelChunk, p.g.head_dim);
    A acc[kChannelChunk];
    nd::combine_window(p, plane, bias, slots, coeffs, c0, c1, acc);
    for (int64_t c = c0; c < c1; ++c) row[c] = static_cast<T>(acc[c - c0]);
  }
}

template <typename T, typename A>
__global__ void forward_kernel(const nd::NdTensors<T, A> p, int64_t pixels, int64_t* slots,
                               A* window, T* out, A* lse) {
  const int64_t k = p.g.window;
  int64_t* my_slots = slots + global_thread() * k;
  A* probs = window + global_thread() * k;
  for (int64_t pixel = global_thread(); pixel < pixels; pixel += grid_threads()) {
    lse[pixel] = nd::window_softmax(p, pixel, my_slots, probs);
    combine_into(p, p.value + p.plane(pixel), p.value_bias, my_slots, probs,
                 out + pixel * p.g.head_dim);
  }
}

// Backward (1): probs and dlogits rows of every pixel, dq.
template <typename T, typename A>
__global__ void window_kernel(const nd::NdTensors<T, A> p, int64_t pixels, int64_t* slots,
                              A* probs, A* dlogits, T* grad_query) {
  const int64_t k = p.g.window;
  int64_t* my_slots = slots + global_thread() * k;
  for (int64_t pixel = global_thread(); pixel < pixels; pixel += grid_threads()) {
    nd::window_gradients(p, pixel, my_slots, probs + pixel * k, dlogits + pixel * k);
    combine_into(p, p.key + p.plane(pixel), p.key_bias_of(pixel), my_slots, dlogits + pixel * k,
                 grad_query + pixel * p.g.head_dim);
  }
}

// Backward (2): one thread per (pixel, channel chunk) of dK and dV.
template <typename T, typename A>
__global__ void key_value_kernel(const nd::NdTensors<T, A> p, const A* probs, const A* dlogits,
                                 int64_t pixels, T* grad_key, T* grad_value) {
  const int64_t d = p.g.head_dim, chunks = ceil_div(d, kChannelChunk);
  for (int64_t e = global_thread(); e < pixels * chunks; e += grid_threads()) {
    const int64_t pixel = e / chunks, c0 = e % chunks * kChannelChunk;
    const int64_t c1 = std::min<int64_t>(c0 + kChannelChunk, d);
    A dk[kChannelChunk], dv[kChannelChunk];
    nd::gather_key_value_grads(p, probs, dlogits, pixel, c0, c1, dk, dv);
    for (int64_t c = c0; c < c1; ++c) {
      grad_key[pixel * d + c] = static_cast<T>(dk[c - c0]);
      grad_value[pixel * d + c] = static_cast<T>(dv[c - c0]);
    }
  }
}

// Backward (3): block i sums pixels [i P / blocks, (i + 1) P / blocks) into partials[i].
template <typename T, typename A>
__global__ void parameter_partials_kernel(const nd::NdTensors<T, A> p, const A* probs,
                                          const A* dlogits, int64_t pixels, A* partials) {
  const int64_t begin = blockIdx.x * pixels / gridDim.x;
  const int64_t end = (blockIdx.x + 1) * pixels / gridDim.x;
  const int64_t entries = p.params.gradient_size();
  A* row = partials + blockIdx.x * entries;
  for (int64_t e = threadIdx.x; e < entries; e += blockDim.x) {
    int64_t where = 0;
    const A sum = nd::parameter_grad_entry(p, probs, dlogits, e, begin, end, &where);
    row[where] = sum;
  }
}

// Threads of a per-pixel kernel: one per pixel, as many as kScratchBytes of scratch rows allow.
inline int64_t scratch_blocks(int64_t pixels, int64_t window, size_t row_bytes) {
  const int64_t rows = std::max<int64_t>(kThreads, kScratchBytes / int64_t(window * row_bytes));
  return ceil_div(std::min(pixels, rows), kThreads);
}

}  // namespace slide_nd_kernels

// _slide_attention_nd_forward and _slide_attention_nd_backward on the kernels' device.
inline std::tuple<at::Tensor, at::Tensor> slide_attention_nd_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale) {
  using namespace slide_nd_kernels;
  check_slide_attention_nd_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                                  shift_bias, border);
  check_kernel_device(kSlideAttentionNdOp, query);
  const KernelDeviceGuard device_guard(query.device());
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const auto acc = q.options().dtype(attention_accumulate_type(q.scalar_type()));
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty(q.sizes().slice(0, q.dim() - 1), acc);
  const SlideNdCall call = slide_nd_call(q, kernel_size, dilation, border, causal, scale, key_bias,
                                         shift_weight, shift_bias, acc);
  const nd::NdGeometry& g = call.g;
  const int64_t pixels = lse.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "slideformer_slide_attention_nd_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = nd_tensors<scalar_t, acc_t>(call, q, k, v);
    const int64_t blocks = scratch_blocks(pixels, g.window, sizeof(int64_t) + sizeof(acc_t));
    const at::Tensor slots = at::empty({blocks * kThreads, g.window}, q.options().dtype(at::kLong));
    const at::Tensor window = at::empty({blocks * kThreads, g.window}, acc);
    launch(kSlideAttentionNdOp, forward_kernel<scalar_t, acc_t>, blocks, kThreads, 0, p, pixels,
           slots.mutable_data_ptr<int64_t>(), window.mutable_data_ptr<acc_t>(),
           out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>());
  });
  return {out, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
slide_attention_nd_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale, std::array<bool, 3> compute_param_grads) {
  using namespace slide_nd_kernels;
  check_slide_attention_nd_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                           kernel_size, dilation, key_bias, shift_weight,
                                           shift_bias, border);
  check_kernel_device(kSlideAttentionNdOp, query);
  const KernelDeviceGuard device_guard(query.device());
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const at::Tensor dout = grad_output.contiguous();
  const auto acc = q.options().dtype(attention_accumulate_type(q.scalar_type()));
  const at::Tensor lse = logsumexp.contiguous();
  const SlideNdCall call = slide_nd_call(q, kernel_size, dilation, border, causal, scale, key_bias,
                                         shift_weight, shift_bias, acc, compute_param_grads);
  const nd::NdGeometry& g = call.g;
  const int64_t pixels = lse.numel(), entries = call.layout.gradient_size();
  const at::Tensor windows = at::empty({2, pixels, g.window}, acc);
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(q.sizes(), q.options());
  at::Tensor grad_v = at::empty(q.sizes(), q.options());
  at::Tensor param_total = at::zeros({entries}, acc);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "slideformer_slide_attention_nd_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = nd_tensors<scalar_t, acc_t>(call, q, k, v);
    p.grad_output = dout.const_data_ptr<scalar_t>();
    p.logsumexp = lse.const_data_ptr<acc_t>();
    acc_t* probs = windows[0].mutable_data_ptr<acc_t>();
    acc_t* dlogits = windows[1].mutable_data_ptr<acc_t>();
    const int64_t blocks = scratch_blocks(pixels, g.window, sizeof(int64_t));
    const at::Tensor slots = at::empty({blocks * kThreads, g.window}, q.options().dtype(at::kLong));
    launch(kSlideAttentionNdOp, window_kernel<scalar_t, acc_t>, blocks, kThreads, 0, p, pixels,
           slots.mutable_data_ptr<int64_t>(), probs, dlogits, grad_q.mutable_data_ptr<scalar_t>());
    const int64_t chunks = pixels * ceil_div(g.head_dim, kChannelChunk);
    launch(kSlideAttentionNdOp, key_value_kernel<scalar_t, acc_t>,
           slide_attention_kernels::elementwise_blocks(chunks), kThreads, 0, p,
           static_cast<const acc_t*>(probs), static_cast<const acc_t*>(dlogits), pixels,
           grad_k.mutable_data_ptr<scalar_t>(), grad_v.mutable_data_ptr<scalar_t>());
    if (entries > 0 && pixels > 0) {
      const int64_t partial_blocks = std::min<int64_t>(pixels, kParameterPartials);
      at::Tensor partials = at::empty({partial_blocks, entries}, acc);
      launch(kSlideAttentionNdOp, parameter_partials_kernel<scalar_t, acc_t>, partial_blocks,
             kThreads, 0, p, static_cast<const acc_t*>(probs), static_cast<const acc_t*>(dlogits),
             pixels, partials.mutable_data_ptr<acc_t>());
      launch(kSlideAttentionNdOp, slide_attention_kernels::sum_partials_in_order_kernel<acc_t>,
             slide_attention_kernels::elementwise_blocks(entries),
             slide_attention_kernels::kElementwiseThreads, 0,
             static_cast<const acc_t*>(partials.const_data_ptr<acc_t>()), partial_blocks, entries,
             param_total.mutable_data_ptr<acc_t>());
    }
  });
  const SlideParameterGrads params =
      unpack_slide_parameter_grads(call.layout, param_total, query.scalar_type());
  return {grad_q, grad_k, grad_v, params.key_bias, params.shift_weight, params.shift_bias};
}

}  // namespace SLIDEFORMER_KERNEL_TARGET
}  // namespace slideformer::ops::cuda
