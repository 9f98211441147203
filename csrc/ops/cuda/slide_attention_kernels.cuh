#pragma once
// slide_attention, CUDA kernels and their launches (docs/operators.md, docs/cuda.md). nvcc
// compiles this header for the GPU (slide_attention_kernel.cu); the test build compiles it for
// the host execution of ops/cuda/host_runtime.h (see ops/cuda/launch.h). Every per-element computation (window slots,
// masks, inverse neighbourhood, deformed-shift mixing and its adjoint, softmax pieces) comes from
// ops/common/slide_math.h and ops/common/online_softmax.h, which the CPU kernel and its tests use.
//
// Forward: one block per tile of pixels of one (b, h). Channels pass in chunks; for each chunk the
// block stages the tile's K (then V) plus its halo in shared memory, zero-filled outside the map,
// so every window is a regular grid of slots there (math::WindowSlots) and no k*k-fold tensor is
// formed. Pass 1 accumulates the k*k logits of each pixel over the chunks, then the softmax, then
// pass 2 mixes V the same way into the output. Only out and the per-pixel log-sum-exp are stored.
//
// Backward, deterministic without atomics:
//  1. window kernel (same tiling): recomputes logits from the saved lse, dp = <dO, Vn>, and writes
//     each pixel's k*k probabilities and scaled logit gradients (B, H, Y, X, k*k; no D factor),
//     then dq = sum_n dlogit_n Kn;
//  2. key/value kernel: one thread per element of dK and dV gathers over the pixels whose windows
//     read it (the inverse neighbourhood) through the adjoint of the mixing;
//  3. parameter kernel: a fixed number of blocks, each summing a fixed range of pixel rows into its
//     own slice of a partial-sum buffer for dkey_bias, dW and dshift_bias (laid out by
//     ops/common/slide_parameters.h); a second kernel adds the slices in block order.
// Inputs keep their dtype in global memory; staging and accumulation use at::opmath_type (float32
// for the half types, float64 for float64).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <array>
#include <limits>
#include <optional>
#include <tuple>

#include "ops/attention.h"
#include "ops/common/online_softmax.h"
#include "ops/common/slide_math.h"
#include "ops/common/slide_parameters.h"
#include "ops/cuda/launch.h"
#include "ops/slide_attention.h"

namespace slideformer::ops::cuda {
inline namespace SLIDEFORMER_KERNEL_TARGET {
namespace slide_attention_kernels {

constexpr int kElementwiseThreads = 256;
// Blocks of the parameter-gradient kernel: fixed (not derived from the GPU), so the summation
// order, and hence the result, is the same on every run and every device.
constexpr int64_t kParameterPartials = 256;

// Geometry of one call and the tiling chosen for it.
struct SlideLayout {
  int64_t heads, height, width, head_dim;
  int64_t kernel_size, k2;
  math::SlideBorder border;
  math::SlideAxis rows, cols;
  // Positions a tile's windows reach past the tile on each side (both axes share k and dilation).
  int64_t halo;
  int tile_rows, tile_cols;  // pixels per block; one thread per pixel
  int chunk;                 // channels staged at once
  int64_t tiles_y, tiles_x;

  C10_HOST_DEVICE int tile_pixels() const { return tile_rows * tile_cols; }
  C10_HOST_DEVICE int64_t region_rows() const { return tile_rows + 2 * halo; }
  C10_HOST_DEVICE int64_t region_cols() const { return tile_cols + 2 * halo; }
  C10_HOST_DEVICE int64_t plane_elems() const { return height * width * head_dim; }
};

template <typename scalar_t, typename acc_t>
struct SlideParams {
  const scalar_t* query;  // (B, H, Y, X, D), contiguous
  const scalar_t* key;
  const scalar_t* value;
  // The parameter tables (ops/common/slide_parameters.h), laid out by `params`, channels
  // outermost.
  const acc_t* weight;  // null for the pure shift
  const acc_t* key_bias;
  const acc_t* value_bias;
  SlideParameterLayout params;
  SlideLayout g;
  acc_t scale;
  // Backward only.
  const scalar_t* grad_output;  // (B, H, Y, X, D)
  const acc_t* logsumexp;       // (B, H, Y, X)
};

// The block's tile and the thread's pixel in it.
struct TilePixel {
  int64_t bh, y0, x0;  // (b * H + h) and the tile's first row and column
  int64_t y, x;
  int64_t pixel;  // (bh * Y + y) * X + x
  bool inside;    // ragged edge tiles have threads without a pixel
  int64_t first_row, first_col;  // the window's slot 0 in staged-region coordinates
};

__device__ inline TilePixel tile_pixel(const SlideLayout& g) {
  const int64_t tiles = g.tiles_y * g.tiles_x;
  const int64_t block = blockIdx.x;
  TilePixel t;
  t.bh = block / tiles;
  t.y0 = (block % tiles) / g.tiles_x * g.tile_rows;
  t.x0 = (block % tiles) % g.tiles_x * g.tile_cols;
  t.y = t.y0 + threadIdx.x / g.tile_cols;
  t.x = t.x0 + threadIdx.x % g.tile_cols;
  t.inside = t.y < g.height && t.x < g.width;
  t.pixel = (t.bh * g.height + t.y) * g.width + t.x;
  t.first_row = math::window_first_position(g.border, t.y, g.rows) - (t.y0 - g.halo);
  t.first_col = math::window_first_position(g.border, t.x, g.cols) - (t.x0 - g.halo);
  return t;
}

// Whether slot n of the thread's pixel is left out of the softmax.
__device__ inline bool slot_masked(const SlideLayout& g, const TilePixel& t, int64_t n) {
  return math::slot_is_masked(g.border,
                              math::neighbor_position(g.border, t.y, n / g.kernel_size, g.rows),
                              math::neighbor_position(g.border, t.x, n % g.kernel_size, g.cols));
}

// dst[c][r][col] = plane[row0 + r, col0 + col, c0 + c] for g.chunk channels, 0 outside the map or
// past D. Channel-major, so the threads of a warp (adjacent pixels) read adjacent words.
template <typename scalar_t, typename acc_t>
__device__ void stage_region(acc_t* dst, const scalar_t* plane, const SlideLayout& g, int64_t row0,
                             int64_t col0, int64_t rows, int64_t cols, int64_t c0) {
  const int64_t count = g.chunk * rows * cols;
  for (int64_t e = threadIdx.x; e < count; e += blockDim.x) {
    const int64_t c = e % g.chunk, cell = e / g.chunk;  // channel fastest: coalesced reads
    const int64_t y = row0 + cell / cols, x = col0 + cell % cols, channel = c0 + c;
    const bool inside = y >= 0 && y < g.height && x >= 0 && x < g.width && channel < g.head_dim;
    dst[c * rows * cols + cell] =
        inside ? static_cast<acc_t>(plane[(y * g.width + x) * g.head_dim + channel]) : acc_t(0);
  }
}

// The tile of the thread's block and the halo its windows reach, channels [c0, c0 + g.chunk).
template <typename scalar_t, typename acc_t>
__device__ void stage_halo_region(acc_t* dst, const scalar_t* plane, const SlideLayout& g,
                                  const TilePixel& t, int64_t c0) {
  stage_region(dst, plane, g, t.y0 - g.halo, t.x0 - g.halo, g.region_rows(), g.region_cols(), c0);
}

inline int64_t tile_shared_elems(const SlideLayout& g, int window_buffers) {
  return g.chunk * (g.region_rows() * g.region_cols() + g.tile_pixels()) +
         window_buffers * g.k2 * g.tile_pixels();
}

// Shared memory of a tile kernel (tile_shared_elems values): the staged K or V region, the
// staged q or dO tile, and `window_buffers` arrays of k2 values per pixel, laid out [n][pixel]
// (conflict-free).
template <typename acc_t>
struct TileShared {
  acc_t* region;
  acc_t* tile;
  acc_t* window[2];

  __device__ explicit TileShared(const SlideLayout& g) {
    SLIDEFORMER_DYNAMIC_SHARED_MEMORY(shared_bytes);
    region = reinterpret_cast<acc_t*>(shared_bytes);
    tile = region + g.chunk * g.region_rows() * g.region_cols();
    window[0] = tile + g.chunk * g.tile_pixels();
    window[1] = window[0] + g.k2 * g.tile_pixels();
  }
};

// The staged window of the thread's pixel at staged channel c: slot (jy, jx) is dilation rows
// and columns apart in the region.
template <typename acc_t>
__device__ math::WindowSlots<acc_t> staged_window(const acc_t* region, const SlideLayout& g,
                                                  const TilePixel& t, int64_t c) {
  const int64_t cols = g.region_cols();
  return {region + (c * g.region_rows() + t.first_row) * cols + t.first_col,
          g.rows.dilation * cols, g.rows.dilation};
}

// Shifted copy n of channel c plus its bias: the deformed shift when there is a weight, else
// slot n itself.
template <typename scalar_t, typename acc_t>
__device__ acc_t shifted_copy(const SlideParams<scalar_t, acc_t>& p, const acc_t* bias, int64_t c,
                              int64_t n, const math::WindowSlots<acc_t>& window) {
  const acc_t b = bias[p.params.bias(c, n)];
  if (p.weight == nullptr) return *window.slot(n / p.g.kernel_size, n % p.g.kernel_size) + b;
  return math::mix_shifted<acc_t>(p.weight + p.params.weight(c, n, 0), p.params.weight_slot_step,
                                  window, p.g.kernel_size, b);
}

// out[n] += sum_c tile[c] * Xn[c] over all channels, where X is `plane` (keys or values) shifted
// with the bias table `bias` and tile is `tile_plane` (q or dO) at the thread's pixel.
template <typename scalar_t, typename acc_t>
__device__ void accumulate_window_dots(const SlideParams<scalar_t, acc_t>& p,
                                       const TileShared<acc_t>& s, const TilePixel& t,
                                       const scalar_t* plane, const scalar_t* tile_plane,
                                       const acc_t* bias, acc_t* out) {
  const SlideLayout& g = p.g;
  const int me = threadIdx.x, pixels = g.tile_pixels();
  for_each_staged_chunk(
      g.head_dim, g.chunk,
      [&](int64_t c0) {
        stage_halo_region(s.region, plane, g, t, c0);
        stage_region(s.tile, tile_plane, g, t.y0, t.x0, g.tile_rows, g.tile_cols, c0);
      },
      [&](int64_t c0) {
        if (!t.inside) return;
        const int64_t channels = std::min<int64_t>(g.chunk, g.head_dim - c0);
        for (int64_t c = 0; c < channels; ++c) {
          const acc_t factor = s.tile[c * pixels + me];
          const math::WindowSlots<acc_t> window = staged_window(s.region, g, t, c);
          for (int64_t n = 0; n < g.k2; ++n) {
            out[n * pixels + me] += factor * shifted_copy(p, bias, c0 + c, n, window);
          }
        }
      });
}

// dst[c] = sum_n coeffs[n] * Xn[c] at the thread's pixel, X = `plane` shifted with the bias table
// `bias`; coeffs laid out [n][pixel] in shared memory.
template <typename scalar_t, typename acc_t>
__device__ void combine_shifted_copies(const SlideParams<scalar_t, acc_t>& p,
                                       const TileShared<acc_t>& s, const TilePixel& t,
                                       const scalar_t* plane, const acc_t* bias,
                                       const acc_t* coeffs, scalar_t* dst_plane) {
  const SlideLayout& g = p.g;
  const int me = threadIdx.x, pixels = g.tile_pixels();
  for_each_staged_chunk(
      g.head_dim, g.chunk, [&](int64_t c0) { stage_halo_region(s.region, plane, g, t, c0); },
      [&](int64_t c0) {
        if (!t.inside) return;
        const int64_t channels = std::min<int64_t>(g.chunk, g.head_dim - c0);
        scalar_t* dst = dst_plane + (t.y * g.width + t.x) * g.head_dim + c0;
        for (int64_t c = 0; c < channels; ++c) {
          const math::WindowSlots<acc_t> window = staged_window(s.region, g, t, c);
          acc_t sum = acc_t(0);
          for (int64_t n = 0; n < g.k2; ++n) {
            const acc_t coeff = coeffs[n * pixels + me];
            if (coeff == acc_t(0)) continue;  // masked or underflowed: contributes nothing
            sum += coeff * shifted_copy(p, bias, c0 + c, n, window);
          }
          dst[c] = static_cast<scalar_t>(sum);
        }
      });
}

// logits[n][me] = scale * <q, Kn> of the thread's pixel, -inf for masked slots.
template <typename scalar_t, typename acc_t>
__device__ void window_logits(const SlideParams<scalar_t, acc_t>& p, const TileShared<acc_t>& s,
                              const TilePixel& t, acc_t* logits) {
  const SlideLayout& g = p.g;
  const int me = threadIdx.x, pixels = g.tile_pixels();
  if (t.inside) {
    for (int64_t n = 0; n < g.k2; ++n) logits[n * pixels + me] = acc_t(0);
  }
  const int64_t plane = t.bh * g.plane_elems();
  const acc_t* key_bias = p.key_bias + p.params.key_bias_table(t.bh % g.heads);
  accumulate_window_dots(p, s, t, p.key + plane, p.query + plane, key_bias, logits);
  if (!t.inside) return;
  for (int64_t n = 0; n < g.k2; ++n) {
    acc_t& logit = logits[n * pixels + me];
    logit = slot_masked(g, t, n) ? math::neg_inf<acc_t>() : p.scale * logit;
  }
}

// One block per (b, h, tile).
template <typename scalar_t, typename acc_t>
__global__ void slide_forward_kernel(const SlideParams<scalar_t, acc_t> p, scalar_t* out,
                                     acc_t* lse) {
  const SlideLayout& g = p.g;
  const TileShared<acc_t> s(g);
  const TilePixel t = tile_pixel(g);
  const int me = threadIdx.x, pixels = g.tile_pixels();
  acc_t* probs = s.window[0];
  window_logits(p, s, t, probs);
  if (t.inside) {
    acc_t row_max = math::neg_inf<acc_t>();
    for (int64_t n = 0; n < g.k2; ++n) row_max = math::merged_max(row_max, probs[n * pixels + me]);
    acc_t sum = acc_t(0);
    for (int64_t n = 0; n < g.k2; ++n) {
      acc_t& e = probs[n * pixels + me];
      e = math::probability(e, row_max);  // exp(logit - max), 0 for masked slots
      sum += e;
    }
    const acc_t normalizer = math::output_normalizer(sum);
    for (int64_t n = 0; n < g.k2; ++n) probs[n * pixels + me] *= normalizer;
    lse[t.pixel] = math::finish_logsumexp(row_max, sum);
  }
  const int64_t plane = t.bh * g.plane_elems();
  combine_shifted_copies(p, s, t, p.value + plane, p.value_bias, probs, out + plane);
}

// Backward pass 1, one block per (b, h, tile): the thread's window probabilities and scaled logit
// gradients into probs_out / dlogits_out ((B, H, Y, X, k2)), and dq.
template <typename scalar_t, typename acc_t>
__global__ void slide_backward_window_kernel(const SlideParams<scalar_t, acc_t> p,
                                             acc_t* probs_out, acc_t* dlogits_out,
                                             scalar_t* grad_query) {
  const SlideLayout& g = p.g;
  const TileShared<acc_t> s(g);
  const TilePixel t = tile_pixel(g);
  const int me = threadIdx.x, pixels = g.tile_pixels();
  acc_t* probs = s.window[0];
  acc_t* dlogits = s.window[1];  // holds dp = <dO, Vn> until it is turned into dlogits
  window_logits(p, s, t, probs);
  if (t.inside) {
    for (int64_t n = 0; n < g.k2; ++n) dlogits[n * pixels + me] = acc_t(0);
  }
  const int64_t plane = t.bh * g.plane_elems();
  accumulate_window_dots(p, s, t, p.value + plane, p.grad_output + plane, p.value_bias, dlogits);
  if (t.inside) {
    const acc_t lse = p.logsumexp[t.pixel];
    acc_t delta = acc_t(0);  // sum_n p_n dp_n = <dO, out>
    for (int64_t n = 0; n < g.k2; ++n) {
      acc_t& prob = probs[n * pixels + me];
      prob = math::probability(prob, lse);
      delta += prob * dlogits[n * pixels + me];
    }
    for (int64_t n = 0; n < g.k2; ++n) {
      const acc_t prob = probs[n * pixels + me];
      acc_t& dlogit = dlogits[n * pixels + me];
      dlogit = p.scale * math::logit_grad(prob, dlogit, delta);
      probs_out[t.pixel * g.k2 + n] = prob;
      dlogits_out[t.pixel * g.k2 + n] = dlogit;
    }
  }
  const acc_t* key_bias = p.key_bias + p.params.key_bias_table(t.bh % g.heads);
  combine_shifted_copies(p, s, t, p.key + plane, key_bias, dlogits, grad_query + plane);
}

// Backward pass 2, one thread per element (b, h, y, x, c) of dK and dV: the sum over the pixels
// whose windows read (y, x), through the slot m they read it with, of
//   dK += q[c] * sum_n dlogit_n W[c,n,m],   dV += dO[c] * sum_n p_n W[c,n,m].
template <typename scalar_t, typename acc_t>
__global__ void slide_backward_key_value_kernel(const SlideParams<scalar_t, acc_t> p,
                                                const acc_t* probs, const acc_t* dlogits,
                                                int64_t total, scalar_t* grad_key,
                                                scalar_t* grad_value) {
  const SlideLayout& g = p.g;
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total;
       e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % g.head_dim, position = e / g.head_dim;
    const int64_t x = position % g.width, y = position / g.width % g.height;
    const int64_t bh = position / (g.width * g.height);
    acc_t dk = acc_t(0), dv = acc_t(0);
    const int64_t row_readers = math::reader_count(g.border, y, g.rows);
    const int64_t col_readers = math::reader_count(g.border, x, g.cols);
    for (int64_t ey = 0; ey < row_readers; ++ey) {
      const math::AxisReader ry = math::axis_reader(g.border, y, ey, g.rows);
      if (ry.pixel < 0) continue;
      for (int64_t ex = 0; ex < col_readers; ++ex) {
        const math::AxisReader rx = math::axis_reader(g.border, x, ex, g.cols);
        if (rx.pixel < 0) continue;
        const int64_t slot = ry.slot * g.kernel_size + rx.slot;
        const int64_t reader = (bh * g.height + ry.pixel) * g.width + rx.pixel;
        const acc_t* coeffs[2] = {dlogits + reader * g.k2, probs + reader * g.k2};
        acc_t adjoint[2];
        if (p.weight == nullptr) {
          adjoint[0] = coeffs[0][slot];
          adjoint[1] = coeffs[1][slot];
        } else {
          math::mix_shifted_adjoint_sets<2, acc_t>(p.weight + p.params.weight(c, 0, slot),
                                                   p.params.weight_shift_step, coeffs, g.k2,
                                                   adjoint);
        }
        dk += static_cast<acc_t>(p.query[reader * g.head_dim + c]) * adjoint[0];
        dv += static_cast<acc_t>(p.grad_output[reader * g.head_dim + c]) * adjoint[1];
      }
    }
    grad_key[e] = static_cast<scalar_t>(dk);
    grad_value[e] = static_cast<scalar_t>(dv);
  }
}

// Backward pass 3, block i sums rows [i R / P, (i + 1) R / P) of the R = B*H*Y pixel rows into
// partials[i], the gradient vector of p.params (E entries: dkey_bias, dW, dshift_bias); each thread
// owns entries threadIdx.x + j * blockDim.x of the sections in this order:
//   dkey_bias[h,n]   += dlogit_n sum_c q[c]          (h, n) (pixels of head h)
//   dW[c,n,m]        += dlogit_n q[c] K[c, slot m] + p_n dO[c] V[c, slot m]    (c, n, m)
//   dshift_bias[c,n] += dlogit_n q[c] + p_n dO[c]    (c, n)
// and writes its sum where the layout puts that entry (the CUDA layout has no padding, so the
// entries fill the vector).
template <typename scalar_t, typename acc_t>
__global__ void slide_backward_parameter_partials_kernel(const SlideParams<scalar_t, acc_t> p,
                                                         const acc_t* probs, const acc_t* dlogits,
                                                         int64_t total_rows, acc_t* partials) {
  const SlideLayout& g = p.g;
  const SlideParameterLayout& l = p.params;
  const int64_t row_begin = blockIdx.x * total_rows / gridDim.x;
  const int64_t row_end = (blockIdx.x + 1) * total_rows / gridDim.x;
  const int64_t d = g.head_dim, k2 = g.k2;
  acc_t* block_partials = partials + blockIdx.x * l.gradient_size();
  for (int64_t e = threadIdx.x; e < l.gradient_size(); e += blockDim.x) {
    acc_t sum = acc_t(0);
    int64_t entry = 0;  // where the layout puts it
    if (e < l.key_bias_grads) {
      const int64_t h = e / k2, n = e % k2;
      entry = l.key_bias_grad(h, n);
      for (int64_t row = row_begin; row < row_end; ++row) {
        if (row / g.height % g.heads != h) continue;
        for (int64_t pixel = row * g.width; pixel < (row + 1) * g.width; ++pixel) {
          acc_t q_sum = acc_t(0);
          for (int64_t c = 0; c < d; ++c) q_sum += static_cast<acc_t>(p.query[pixel * d + c]);
          sum += dlogits[pixel * k2 + n] * q_sum;
        }
      }
    } else if (e < l.key_bias_grads + l.weight_grads) {
      const int64_t i = e - l.key_bias_grads;
      const int64_t c = i / (k2 * k2), n = i / k2 % k2, m = i % k2;
      entry = l.weight_grad(c, n, m);
      for (int64_t row = row_begin; row < row_end; ++row) {
        const int64_t bh = row / g.height, y = row % g.height;
        const int64_t slot_row = math::neighbor_position(g.border, y, m / g.kernel_size, g.rows);
        if (slot_row < 0) continue;  // the slot reads 0 for every pixel of the row
        for (int64_t x = 0; x < g.width; ++x) {
          const int64_t slot_col = math::neighbor_position(g.border, x, m % g.kernel_size, g.cols);
          if (slot_col < 0) continue;
          const int64_t pixel = row * g.width + x;
          const int64_t slot = ((bh * g.height + slot_row) * g.width + slot_col) * d + c;
          sum += dlogits[pixel * k2 + n] * static_cast<acc_t>(p.query[pixel * d + c]) *
                     static_cast<acc_t>(p.key[slot]) +
                 probs[pixel * k2 + n] * static_cast<acc_t>(p.grad_output[pixel * d + c]) *
                     static_cast<acc_t>(p.value[slot]);
        }
      }
    } else {
      const int64_t i = e - l.key_bias_grads - l.weight_grads;
      const int64_t c = i / k2, n = i % k2;
      entry = l.shift_bias_grad(c, n);
      for (int64_t pixel = row_begin * g.width; pixel < row_end * g.width; ++pixel) {
        sum += dlogits[pixel * k2 + n] * static_cast<acc_t>(p.query[pixel * d + c]) +
               probs[pixel * k2 + n] * static_cast<acc_t>(p.grad_output[pixel * d + c]);
      }
    }
    block_partials[entry] = sum;
  }
}

// total[e] = sum over blocks i = 0, 1, ... of partials[i][e], in that order.
template <typename acc_t>
__global__ void sum_partials_in_order_kernel(const acc_t* partials, int64_t blocks,
                                             int64_t entries, acc_t* total) {
  for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < entries;
       e += int64_t(gridDim.x) * blockDim.x) {
    acc_t sum = acc_t(0);
    for (int64_t i = 0; i < blocks; ++i) sum += partials[i * entries + e];
    total[e] = sum;
  }
}

// ---------------------------------------------------------------------------------------------
// Host side.

inline SlideLayout make_layout(const at::Tensor& q, int64_t kernel_size, int64_t dilation,
                        c10::string_view border) {
  SlideLayout g{};
  g.heads = q.size(1);
  g.height = q.size(2);
  g.width = q.size(3);
  g.head_dim = q.size(4);
  g.kernel_size = kernel_size;
  g.k2 = kernel_size * kernel_size;
  g.border = parse_slide_border(border);
  g.rows = {g.height, kernel_size, dilation};
  g.cols = {g.width, kernel_size, dilation};
  // A clamped window holds its pixel, so it lies within (k - 1) * dilation of it; a zeros-mode
  // window is centred on it (math::window_first_position).
  g.halo = (g.border == math::SlideBorder::kZeros ? kernel_size / 2 : kernel_size - 1) * dilation;
  return g;
}

// Picks the largest channel chunk, then the largest tile, whose shared memory fits the GPU.
inline void choose_tiling(SlideLayout& g, int window_buffers, size_t element_bytes) {
  static constexpr int kTiles[][2] = {{8, 16}, {8, 8}, {4, 8}, {2, 16}};
  const size_t limit = shared_memory_per_block_limit();
  for (int chunk : {16, 8, 4, 2, 1}) {
    for (const auto& tile : kTiles) {
      g.tile_rows = tile[0];
      g.tile_cols = tile[1];
      g.chunk = chunk;
      if (static_cast<size_t>(tile_shared_elems(g, window_buffers)) * element_bytes <=
          limit) {
        g.tiles_y = ceil_div(g.height, g.tile_rows);
        g.tiles_x = ceil_div(g.width, g.tile_cols);
        return;
      }
    }
  }
  TORCH_CHECK(false, kSlideAttentionOp, ": kernel_size = ", g.kernel_size, " with dilation ",
              g.rows.dilation, " needs more shared memory per block than this GPU allows (",
              limit, " bytes)");
}

// Blocks of a grid-stride elementwise kernel over `total` elements.
inline int64_t elementwise_blocks(int64_t total) {
  return std::min<int64_t>(ceil_div(total, kElementwiseThreads), int64_t(1) << 20);
}

template <typename scalar_t, typename acc_t, typename... KernelArgs, typename... Args>
void launch_tiles(void (*kernel)(KernelArgs...), const SlideParams<scalar_t, acc_t>& p,
                  int64_t batch, int window_buffers, Args&&... args) {
  const SlideLayout& g = p.g;
  const size_t shared_bytes = tile_shared_elems(g, window_buffers) * sizeof(acc_t);
  launch(kSlideAttentionOp, kernel, batch * g.heads * g.tiles_y * g.tiles_x, g.tile_pixels(),
         shared_bytes, p, std::forward<Args>(args)...);
}

template <typename scalar_t, typename acc_t>
SlideParams<scalar_t, acc_t> make_params(const at::Tensor& q, const at::Tensor& k,
                                         const at::Tensor& v, const SlideParameterLayout& params,
                                         const SlideParameterTables& tables, const SlideLayout& g,
                                         double scale) {
  SlideParams<scalar_t, acc_t> p{};
  p.query = q.const_data_ptr<scalar_t>();
  p.key = k.const_data_ptr<scalar_t>();
  p.value = v.const_data_ptr<scalar_t>();
  p.weight = tables.weight.defined() ? tables.weight.const_data_ptr<acc_t>() : nullptr;
  p.key_bias = tables.key_bias.const_data_ptr<acc_t>();
  p.value_bias = tables.value_bias.const_data_ptr<acc_t>();
  p.params = params;
  p.g = g;
  p.scale = static_cast<acc_t>(scale);
  return p;
}

}  // namespace slide_attention_kernels

// _slide_attention_forward and _slide_attention_backward on the kernels' device.
inline std::tuple<at::Tensor, at::Tensor> slide_attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t kernel_size,
    int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale) {
  using namespace slide_attention_kernels;
  check_slide_attention_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                               shift_bias, border);
  check_kernel_device(kSlideAttentionOp, query);
  const KernelDeviceGuard device_guard(query.device());
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const auto acc = q.options().dtype(attention_accumulate_type(q.scalar_type()));
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty(q.sizes().slice(0, 4), acc);
  SlideLayout g = make_layout(q, kernel_size, dilation, border);
  const auto params = SlideParameterLayout::channels_outermost(g.heads, g.head_dim, g.k2);
  const SlideParameterTables tables =
      slide_parameter_tables(params, acc, key_bias, shift_weight, shift_bias);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "slideformer_slide_attention_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    choose_tiling(g, /*window_buffers=*/1, sizeof(acc_t));
    const auto p = make_params<scalar_t, acc_t>(q, k, v, params, tables, g,
                                                slide_attention_scale(query, scale));
    launch_tiles(slide_forward_kernel<scalar_t, acc_t>, p, q.size(0), 1,
                 out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>());
  });
  return {out, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
slide_attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    int64_t kernel_size, int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale, std::array<bool, 3> compute_param_grads) {
  using namespace slide_attention_kernels;
  check_slide_attention_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                        kernel_size, dilation, key_bias, shift_weight, shift_bias,
                                        border);
  check_kernel_device(kSlideAttentionOp, query);
  const KernelDeviceGuard device_guard(query.device());
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const at::Tensor dout = grad_output.to(q.scalar_type()).contiguous();
  const auto acc = q.options().dtype(attention_accumulate_type(q.scalar_type()));
  const at::Tensor lse = logsumexp.to(acc).contiguous();
  const std::array<bool, 3> want = {compute_param_grads[0] && given(key_bias),
                                    compute_param_grads[1] && given(shift_weight),
                                    compute_param_grads[2] && given(shift_bias)};
  SlideLayout g = make_layout(q, kernel_size, dilation, border);
  const auto params =
      SlideParameterLayout::channels_outermost(g.heads, g.head_dim, g.k2).with_gradients(want);
  const SlideParameterTables tables =
      slide_parameter_tables(params, acc, key_bias, shift_weight, shift_bias);
  const int64_t batch = q.size(0);
  const int64_t window_pixels = batch * g.heads * g.height * g.width;
  // Each pixel's window probabilities and scaled logit gradients: k2 values each, no D factor.
  const at::Tensor probs = at::empty({window_pixels, g.k2}, acc);
  const at::Tensor dlogits = at::empty({window_pixels, g.k2}, acc);
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(q.sizes(), q.options());
  at::Tensor grad_v = at::empty(q.sizes(), q.options());
  at::Tensor param_total = at::zeros({params.gradient_size()}, acc);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "slideformer_slide_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    choose_tiling(g, /*window_buffers=*/2, sizeof(acc_t));
    auto p = make_params<scalar_t, acc_t>(q, k, v, params, tables, g,
                                          slide_attention_scale(query, scale));
    p.grad_output = dout.const_data_ptr<scalar_t>();
    p.logsumexp = lse.const_data_ptr<acc_t>();
    acc_t* probs_ptr = probs.mutable_data_ptr<acc_t>();
    acc_t* dlogits_ptr = dlogits.mutable_data_ptr<acc_t>();
    launch_tiles(slide_backward_window_kernel<scalar_t, acc_t>, p, batch, 2, probs_ptr,
                 dlogits_ptr, grad_q.mutable_data_ptr<scalar_t>());
    const int64_t elements = q.numel();
    launch(kSlideAttentionOp, slide_backward_key_value_kernel<scalar_t, acc_t>,
           elementwise_blocks(elements),
           kElementwiseThreads, 0, p, static_cast<const acc_t*>(probs_ptr),
           static_cast<const acc_t*>(dlogits_ptr), elements, grad_k.mutable_data_ptr<scalar_t>(),
           grad_v.mutable_data_ptr<scalar_t>());
    const int64_t entries = params.gradient_size();
    if (entries > 0) {
      const int64_t rows = batch * g.heads * g.height;
      const int64_t blocks = std::clamp<int64_t>(rows, 1, kParameterPartials);
      at::Tensor partials = at::empty({blocks, entries}, acc);
      launch(kSlideAttentionOp, slide_backward_parameter_partials_kernel<scalar_t, acc_t>, blocks,
             kElementwiseThreads, 0, p, static_cast<const acc_t*>(probs_ptr),
             static_cast<const acc_t*>(dlogits_ptr), rows, partials.mutable_data_ptr<acc_t>());
      launch(kSlideAttentionOp, sum_partials_in_order_kernel<acc_t>, elementwise_blocks(entries),
             kElementwiseThreads, 0, static_cast<const acc_t*>(partials.const_data_ptr<acc_t>()),
             blocks, entries, param_total.mutable_data_ptr<acc_t>());
    }
  });

  const SlideParameterGrads param_grads =
      unpack_slide_parameter_grads(params, param_total, query.scalar_type());
  return {grad_q,
          grad_k,
          grad_v,
          param_grads.key_bias,
          param_grads.shift_weight,
          param_grads.shift_bias};
}

}  // namespace SLIDEFORMER_KERNEL_TARGET
}  // namespace slideformer::ops::cuda
