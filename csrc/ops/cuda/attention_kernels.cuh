#pragma once
// attention, CUDA kernels and their launches (docs/operators.md, docs/cuda.md): a flash-style
// forward (online softmax over key tiles, log-sum-exp saved) and a backward that recomputes the
// probabilities tile by tile from it. No (Nq, Nk) tensor is ever stored. Inputs keep their dtype
// in global memory; everything is staged and accumulated in at::opmath_type (float32 for the half
// types, float64 for float64). nvcc compiles this header for the GPU (attention_kernel.cu); the
// test build compiles it for the host execution of ops/cuda/host_runtime.h (see
// ops/cuda/launch.h).
//
// Tiling: a block of 128 threads works on 32 x 32 tiles of (queries x keys). Thread t owns row
// t / 4 of a tile and its 8 columns (t % 4) + 4u; the 4 threads of a row are adjacent lanes of
// one warp and reduce with butterfly shuffles, so every one of them holds the same row state.
// Feature dimensions pass through shared memory in chunks of 32. Per-row accumulators (output,
// dQ, dK, dV) live in shared memory, each element owned by a single thread for the whole kernel.
//
// Backward is deterministic without atomics: one kernel per key tile writes dK and dV, one per
// query tile writes dQ, and the bias gradient has its own kernel in which each block owns a tile
// of the gradient and sums the broadcast (batch, head, query, key) members in a fixed order.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

#include "ops/attention.h"
#include "ops/common/attention_math.h"
#include "ops/common/online_softmax.h"
#include "ops/cuda/launch.h"

namespace slideformer::ops::cuda {
inline namespace SLIDEFORMER_KERNEL_TARGET {
namespace attention_kernels {

constexpr int kTile = 32;   // queries and keys per tile
constexpr int kChunk = 32;  // feature columns staged at once
constexpr int kThreads = 128;
constexpr int kLanesPerRow = kThreads / kTile;
constexpr int kColsPerThread = kTile / kLanesPerRow;
constexpr int kTileStride = kChunk + 1;  // padding keeps column reads free of bank conflicts
constexpr int kTileElems = kTile * kTileStride;
static_assert(kTile == kChunk, "staged feature chunks and score tiles share one square layout");
static_assert(kLanesPerRow * kColsPerThread == kTile && kLanesPerRow <= 32, "row groups in a warp");

// Row stride of a per-row accumulator: a multiple of the chunk plus 4, so the 8 rows x 4 lanes a
// warp touches at once fall on 32 different banks.
C10_HOST_DEVICE inline int64_t accumulator_stride(int64_t dim) {
  return (dim + kChunk - 1) / kChunk * kChunk + 4;
}

template <typename scalar_t, typename acc_t>
struct Params {
  const scalar_t* query;  // (B, H, Nq, D), contiguous
  const scalar_t* key;    // (B, H, Nk, D)
  const scalar_t* value;  // (B, H, Nk, Dv)
  const scalar_t* bias;   // null, or read through the strides of its (B, H, Nq, Nk) expansion
  int64_t bias_stride[4];
  int64_t heads, num_queries, num_keys, head_dim, value_dim;
  acc_t scale;
  bool causal;
  // Backward only.
  const scalar_t* grad_output;  // (B, H, Nq, Dv)
  const acc_t* logsumexp;       // (B, H, Nq)
  const acc_t* delta;           // (B, H, Nq): rowsum(dO * O)
};

__device__ inline int tile_row() { return threadIdx.x / kLanesPerRow; }
__device__ inline int tile_lane() { return threadIdx.x % kLanesPerRow; }
__device__ inline int tile_col(int u) { return tile_lane() + kLanesPerRow * u; }

template <typename T>
__device__ T row_group_max(T v) {
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {
    v = math::merged_max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

template <typename T>
__device__ T row_group_sum(T v) {
#pragma unroll
  for (int offset = kLanesPerRow / 2; offset > 0; offset /= 2) {
    v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

// dst[r][c] = src[r * dim + col0 + c] for r < rows and col0 + c < dim, else 0, by the whole
// block (for_each_staged_chunk puts the barriers around it).
template <typename scalar_t, typename acc_t>
__device__ void stage_rows(acc_t* dst, const scalar_t* src, int64_t rows, int64_t dim,
                           int64_t col0) {
  for (int e = threadIdx.x; e < kTile * kChunk; e += kThreads) {
    const int r = e / kChunk, c = e % kChunk;
    dst[r * kTileStride + c] =
        (r < rows && col0 + c < dim) ? static_cast<acc_t>(src[r * dim + col0 + c]) : acc_t(0);
  }
}

// out[u] = <a[tile_row()], b[tile_col(u)]> over `dim` features; a and b point at the first row
// of their tiles and have a_rows and b_rows valid rows.
template <typename scalar_t, typename acc_t>
__device__ void tile_dot(const scalar_t* a, int64_t a_rows, const scalar_t* b, int64_t b_rows,
                         int64_t dim, acc_t* a_tile, acc_t* b_tile,
                         acc_t (&out)[kColsPerThread]) {
#pragma unroll
  for (int u = 0; u < kColsPerThread; ++u) out[u] = acc_t(0);
  const int row = tile_row();
  for_each_staged_chunk(
      dim, kChunk,
      [&](int64_t col0) {
        stage_rows(a_tile, a, a_rows, dim, col0);
        stage_rows(b_tile, b, b_rows, dim, col0);
      },
      [&](int64_t) {
#pragma unroll 4
        for (int c = 0; c < kChunk; ++c) {
          const acc_t x = a_tile[row * kTileStride + c];
#pragma unroll
          for (int u = 0; u < kColsPerThread; ++u) {
            out[u] += x * b_tile[tile_col(u) * kTileStride + c];
          }
        }
      });
}

// The staged accumulations of every kernel: for the columns c of `dim` the thread owns,
//   acc_row[c] = acc_row[c] * correction + sum_j coeff(tile_row(), j) * src[j][c],
// src being the `rows` valid rows of a tile (row stride `dim`), staged a chunk at a time in
// `stage`. coeffs is a shared tile read as coeff(r, j) = coeffs[r][j], or coeffs[j][r] when
// kTransposed (dK and dV, whose rows are keys of a tile computed as [query][key]).
template <bool kTransposed, typename scalar_t, typename acc_t>
__device__ void accumulate_staged_product(acc_t* acc_row, const acc_t* coeffs,
                                          const scalar_t* src, int64_t rows, int64_t dim,
                                          acc_t* stage, acc_t correction = acc_t(1)) {
  const int row = tile_row();
  for_each_staged_chunk(
      dim, kChunk, [&](int64_t c0) { stage_rows(stage, src, rows, dim, c0); },
      [&](int64_t c0) {
#pragma unroll
        for (int u = 0; u < kColsPerThread; ++u) {
          const int64_t c = c0 + tile_col(u);
          if (c >= dim) continue;
          acc_t sum = acc_t(0);
          for (int j = 0; j < kTile; ++j) {
            const acc_t coeff =
                kTransposed ? coeffs[j * kTileStride + row] : coeffs[row * kTileStride + j];
            sum += coeff * stage[j * kTileStride + tile_col(u)];
          }
          acc_row[c] = acc_row[c] * correction + sum;
        }
      });
}

// Logits of the thread's entries of tile (i0, j0) of head bh: scale <q_i, k_j> + bias, and -inf
// where the key is masked or the entry lies outside the problem.
template <typename scalar_t, typename acc_t>
__device__ void tile_logits(const Params<scalar_t, acc_t>& p, int64_t bh, int64_t i0, int64_t j0,
                            acc_t* a_tile, acc_t* b_tile, acc_t (&logits)[kColsPerThread]) {
  const int64_t nq = p.num_queries, nk = p.num_keys, d = p.head_dim;
  tile_dot(p.query + (bh * nq + i0) * d, std::min<int64_t>(kTile, nq - i0),
           p.key + (bh * nk + j0) * d, std::min<int64_t>(kTile, nk - j0), d, a_tile, b_tile,
           logits);
  const int64_t i = i0 + tile_row();
  const int64_t visible = i < nq ? math::visible_keys(i, nq, nk, p.causal) : 0;
  const scalar_t* bias_row = nullptr;
  if (p.bias != nullptr && i < nq) {
    bias_row = p.bias + (bh / p.heads) * p.bias_stride[0] + (bh % p.heads) * p.bias_stride[1] +
               i * p.bias_stride[2];
  }
#pragma unroll
  for (int u = 0; u < kColsPerThread; ++u) {
    const int64_t j = j0 + tile_col(u);
    if (j < visible) {
      logits[u] *= p.scale;
      if (bias_row != nullptr) logits[u] += static_cast<acc_t>(bias_row[j * p.bias_stride[3]]);
    } else {
      logits[u] = math::neg_inf<acc_t>();
    }
  }
}

// Keys [0, n) hold every key some row of the query tile at i0 may see.
template <typename scalar_t, typename acc_t>
__device__ int64_t tile_keys_end(const Params<scalar_t, acc_t>& p, int64_t i0) {
  const int64_t last_row = std::min<int64_t>(i0 + kTile, p.num_queries) - 1;
  return math::visible_keys(last_row, p.num_queries, p.num_keys, p.causal);
}

template <typename acc_t>
__device__ acc_t* shared_tiles() {
  SLIDEFORMER_DYNAMIC_SHARED_MEMORY(shared_bytes);
  return reinterpret_cast<acc_t*>(shared_bytes);
}

// One block per (b, h, query tile).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attention_forward_kernel(const Params<scalar_t, acc_t> p, int64_t query_tiles,
                             scalar_t* out, acc_t* lse) {
  acc_t* a_tile = shared_tiles<acc_t>();
  acc_t* b_tile = a_tile + kTileElems;
  acc_t* prob_tile = b_tile + kTileElems;
  acc_t* out_acc = prob_tile + kTileElems;
  const int64_t nq = p.num_queries, nk = p.num_keys, dv = p.value_dim;
  const int64_t bh = blockIdx.x / query_tiles;
  const int64_t i0 = (blockIdx.x % query_tiles) * kTile;
  const int row = tile_row(), lane = tile_lane();
  acc_t* acc_row = out_acc + row * accumulator_stride(dv);
  for (int64_t c = lane; c < dv; c += kLanesPerRow) acc_row[c] = acc_t(0);

  acc_t row_max = math::neg_inf<acc_t>(), row_sum = acc_t(0);
  const int64_t keys_end = tile_keys_end(p, i0);
  for (int64_t j0 = 0; j0 < keys_end; j0 += kTile) {
    __syncthreads();  // the previous tile's readers of prob_tile are done
    acc_t logits[kColsPerThread];
    tile_logits(p, bh, i0, j0, a_tile, b_tile, logits);
    acc_t block_max = math::neg_inf<acc_t>();
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) block_max = math::merged_max(block_max, logits[u]);
    const acc_t new_max = math::merged_max(row_max, row_group_max(block_max));
    acc_t block_sum = acc_t(0);
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) {
      // Nothing visible yet: every probability is 0 (and exp(-inf - -inf) would be NaN).
      const acc_t e = new_max == math::neg_inf<acc_t>() ? acc_t(0) : std::exp(logits[u] - new_max);
      prob_tile[row * kTileStride + tile_col(u)] = e;
      block_sum += e;
    }
    const acc_t correction = math::rescale_factor(row_max, new_max);
    row_sum = row_sum * correction + row_group_sum(block_sum);
    row_max = new_max;
    // acc = acc * correction + P V
    accumulate_staged_product<false>(acc_row, prob_tile, p.value + (bh * nk + j0) * dv,
                                     std::min<int64_t>(kTile, nk - j0), dv, b_tile, correction);
  }

  const int64_t i = i0 + row;
  if (i < nq) {
    const acc_t normalizer = math::output_normalizer(row_sum);
    scalar_t* out_row = out + (bh * nq + i) * dv;
    for (int64_t c = lane; c < dv; c += kLanesPerRow) {
      out_row[c] = static_cast<scalar_t>(acc_row[c] * normalizer);
    }
    if (lane == 0) lse[bh * nq + i] = math::finish_logsumexp(row_max, row_sum);
  }
}

// Recomputed probabilities P = exp(S - lse) and logit gradients dS = P (dP - delta), dP = dO V^T,
// of the thread's entries of tile (i0, j0) of head bh.
template <typename scalar_t, typename acc_t>
__device__ void tile_score_grads(const Params<scalar_t, acc_t>& p, int64_t bh, int64_t i0,
                                 int64_t j0, acc_t* a_tile, acc_t* b_tile,
                                 acc_t (&prob)[kColsPerThread],
                                 acc_t (&dlogits)[kColsPerThread]) {
  const int64_t nq = p.num_queries, nk = p.num_keys, dv = p.value_dim;
  tile_logits(p, bh, i0, j0, a_tile, b_tile, prob);
  const int64_t i = i0 + tile_row();
  // A padding row gets lse = +inf: its probabilities, and so its gradients, are 0.
  const acc_t lse = i < nq ? p.logsumexp[bh * nq + i] : std::numeric_limits<acc_t>::infinity();
  const acc_t delta = i < nq ? p.delta[bh * nq + i] : acc_t(0);
  acc_t dprob[kColsPerThread];
  tile_dot(p.grad_output + (bh * nq + i0) * dv, std::min<int64_t>(kTile, nq - i0),
           p.value + (bh * nk + j0) * dv, std::min<int64_t>(kTile, nk - j0), dv, a_tile, b_tile,
           dprob);
#pragma unroll
  for (int u = 0; u < kColsPerThread; ++u) {
    prob[u] = math::probability(prob[u], lse);
    dlogits[u] = math::logit_grad(prob[u], dprob[u], delta);
  }
}

// dQ = scale dS K. One block per (b, h, query tile).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attention_backward_query_kernel(const Params<scalar_t, acc_t> p, int64_t query_tiles,
                                    scalar_t* grad_query) {
  acc_t* a_tile = shared_tiles<acc_t>();
  acc_t* b_tile = a_tile + kTileElems;
  acc_t* dlogit_tile = b_tile + kTileElems;
  acc_t* dq_acc = dlogit_tile + kTileElems;
  const int64_t nq = p.num_queries, nk = p.num_keys, d = p.head_dim;
  const int64_t bh = blockIdx.x / query_tiles;
  const int64_t i0 = (blockIdx.x % query_tiles) * kTile;
  const int row = tile_row(), lane = tile_lane();
  acc_t* acc_row = dq_acc + row * accumulator_stride(d);
  for (int64_t c = lane; c < d; c += kLanesPerRow) acc_row[c] = acc_t(0);

  const int64_t keys_end = tile_keys_end(p, i0);
  for (int64_t j0 = 0; j0 < keys_end; j0 += kTile) {
    __syncthreads();  // the previous tile's readers of dlogit_tile are done
    acc_t prob[kColsPerThread], dlogits[kColsPerThread];
    tile_score_grads(p, bh, i0, j0, a_tile, b_tile, prob, dlogits);
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) {
      dlogit_tile[row * kTileStride + tile_col(u)] = dlogits[u];
    }
    accumulate_staged_product<false>(acc_row, dlogit_tile, p.key + (bh * nk + j0) * d,
                                     std::min<int64_t>(kTile, nk - j0), d, b_tile);
  }

  const int64_t i = i0 + row;
  if (i < nq) {
    scalar_t* out_row = grad_query + (bh * nq + i) * d;
    for (int64_t c = lane; c < d; c += kLanesPerRow) {
      out_row[c] = static_cast<scalar_t>(acc_row[c] * p.scale);
    }
  }
}

// dV = P^T dO and dK = scale dS^T Q. One block per (b, h, key tile), looping over the query
// tiles that can see it. In the accumulation the thread's tile row indexes a key of the tile.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attention_backward_key_value_kernel(const Params<scalar_t, acc_t> p, int64_t key_tiles,
                                        scalar_t* grad_key, scalar_t* grad_value) {
  acc_t* a_tile = shared_tiles<acc_t>();
  acc_t* b_tile = a_tile + kTileElems;
  acc_t* prob_tile = b_tile + kTileElems;
  acc_t* dlogit_tile = prob_tile + kTileElems;
  acc_t* dk_acc = dlogit_tile + kTileElems;
  const int64_t nq = p.num_queries, nk = p.num_keys, d = p.head_dim, dv = p.value_dim;
  acc_t* dv_acc = dk_acc + kTile * accumulator_stride(d);
  const int64_t bh = blockIdx.x / key_tiles;
  const int64_t j0 = (blockIdx.x % key_tiles) * kTile;
  const int row = tile_row(), lane = tile_lane();
  acc_t* dk_row = dk_acc + row * accumulator_stride(d);
  acc_t* dv_row = dv_acc + row * accumulator_stride(dv);
  for (int64_t c = lane; c < d; c += kLanesPerRow) dk_row[c] = acc_t(0);
  for (int64_t c = lane; c < dv; c += kLanesPerRow) dv_row[c] = acc_t(0);

  const int64_t first_query = math::first_query_seeing(j0, nq, nk, p.causal);
  for (int64_t i0 = first_query / kTile * kTile; i0 < nq; i0 += kTile) {
    __syncthreads();  // the previous tile's readers of prob_tile and dlogit_tile are done
    acc_t prob[kColsPerThread], dlogits[kColsPerThread];
    tile_score_grads(p, bh, i0, j0, a_tile, b_tile, prob, dlogits);
#pragma unroll
    for (int u = 0; u < kColsPerThread; ++u) {  // [query][key], as computed
      prob_tile[row * kTileStride + tile_col(u)] = prob[u];
      dlogit_tile[row * kTileStride + tile_col(u)] = dlogits[u];
    }
    const int64_t query_rows = std::min<int64_t>(kTile, nq - i0);
    accumulate_staged_product<true>(dv_row, prob_tile, p.grad_output + (bh * nq + i0) * dv,
                                    query_rows, dv, a_tile);
    accumulate_staged_product<true>(dk_row, dlogit_tile, p.query + (bh * nq + i0) * d,
                                    query_rows, d, a_tile);
  }

  const int64_t j = j0 + row;
  if (j < nk) {
    scalar_t* dk_out = grad_key + (bh * nk + j) * d;
    scalar_t* dv_out = grad_value + (bh * nk + j) * dv;
    for (int64_t c = lane; c < d; c += kLanesPerRow) {
      dk_out[c] = static_cast<scalar_t>(dk_row[c] * p.scale);
    }
    for (int64_t c = lane; c < dv; c += kLanesPerRow) dv_out[c] = static_cast<scalar_t>(dv_row[c]);
  }
}

// The bias gradient (gB, gH, gNq, gNk): the bias's shape padded to 4 dimensions, each either
// the full size or 1 (summed over).
struct BiasGradLayout {
  int64_t batch, heads, rows, cols;
  bool sum_batch, sum_heads, sum_queries, sum_keys;
  // Tiles of the gradient along queries and keys: one when that dimension is summed.
  int64_t query_tiles() const { return sum_queries ? 1 : ceil_div(rows, kTile); }
  int64_t key_tiles() const { return sum_keys ? 1 : ceil_div(cols, kTile); }
};

// One block per tile of the gradient; it visits every (b, h, query tile, key tile) that folds
// into its tile, in a fixed order, and is the only writer of its elements.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    attention_backward_bias_kernel(const Params<scalar_t, acc_t> p, int64_t batch,
                                   BiasGradLayout g, int64_t query_tiles, int64_t key_tiles,
                                   acc_t* grad_bias) {
  acc_t* a_tile = shared_tiles<acc_t>();
  acc_t* b_tile = a_tile + kTileElems;
  acc_t* dlogit_tile = b_tile + kTileElems;
  acc_t* grad_tile = dlogit_tile + kTileElems;
  int64_t block = blockIdx.x;
  const int64_t tk = block % key_tiles;
  block /= key_tiles;
  const int64_t tq = block % query_tiles;
  block /= query_tiles;
  const int64_t gh = block % g.heads, gb = block / g.heads;
  const int grad_rows = g.sum_queries ? 1 : kTile, grad_cols = g.sum_keys ? 1 : kTile;
  // Element e of grad_tile belongs to thread e % kThreads throughout.
  for (int e = threadIdx.x; e < grad_rows * grad_cols; e += kThreads) grad_tile[e] = acc_t(0);

  const int64_t nq = p.num_queries, nk = p.num_keys;
  const int64_t b_begin = g.sum_batch ? 0 : gb, b_end = g.sum_batch ? batch : gb + 1;
  const int64_t h_begin = g.sum_heads ? 0 : gh, h_end = g.sum_heads ? p.heads : gh + 1;
  const int64_t i_begin = g.sum_queries ? 0 : tq * kTile;
  const int64_t i_end = g.sum_queries ? nq : std::min<int64_t>(i_begin + kTile, nq);
  const int64_t j_begin = g.sum_keys ? 0 : tk * kTile;
  const int64_t j_end = g.sum_keys ? nk : std::min<int64_t>(j_begin + kTile, nk);
  const int row = tile_row();
  for (int64_t b = b_begin; b < b_end; ++b) {
    for (int64_t h = h_begin; h < h_end; ++h) {
      for (int64_t i0 = i_begin; i0 < i_end; i0 += kTile) {
        const int64_t keys_end = std::min(j_end, tile_keys_end(p, i0));
        for (int64_t j0 = j_begin; j0 < keys_end; j0 += kTile) {
          __syncthreads();  // the previous tile's readers of dlogit_tile are done
          acc_t prob[kColsPerThread], dlogits[kColsPerThread];
          tile_score_grads(p, b * p.heads + h, i0, j0, a_tile, b_tile, prob, dlogits);
#pragma unroll
          for (int u = 0; u < kColsPerThread; ++u) {
            dlogit_tile[row * kTileStride + tile_col(u)] = dlogits[u];
          }
          __syncthreads();
          for (int e = threadIdx.x; e < grad_rows * grad_cols; e += kThreads) {
            const int gr = e / grad_cols, gc = e % grad_cols;
            const int r_begin = g.sum_queries ? 0 : gr, r_end = g.sum_queries ? kTile : gr + 1;
            const int c_begin = g.sum_keys ? 0 : gc, c_end = g.sum_keys ? kTile : gc + 1;
            acc_t sum = acc_t(0);
            for (int r = r_begin; r < r_end; ++r) {
              for (int c = c_begin; c < c_end; ++c) sum += dlogit_tile[r * kTileStride + c];
            }
            grad_tile[e] += sum;
          }
        }
      }
    }
  }

  for (int e = threadIdx.x; e < grad_rows * grad_cols; e += kThreads) {
    const int64_t gi = g.sum_queries ? 0 : tq * kTile + e / grad_cols;
    const int64_t gj = g.sum_keys ? 0 : tk * kTile + e % grad_cols;
    if (gi < g.rows && gj < g.cols) {
      grad_bias[((gb * g.heads + gh) * g.rows + gi) * g.cols + gj] = grad_tile[e];
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Launches.

// Launches `kernel` with one block of kThreads per tile and `shared_elems` accumulators of shared
// memory, after checking that this GPU has that much.
template <typename scalar_t, typename acc_t, typename... KernelArgs, typename... Args>
void launch_tiles(void (*kernel)(const Params<scalar_t, acc_t>, KernelArgs...), int64_t blocks,
                  int64_t shared_elems, const Params<scalar_t, acc_t>& p, Args&&... args) {
  const size_t shared_bytes = static_cast<size_t>(shared_elems) * sizeof(acc_t);
  const size_t shared_limit = shared_memory_per_block_limit();
  TORCH_CHECK(blocks == 0 || shared_bytes <= shared_limit, kAttentionOp, ": head dims D = ",
              p.head_dim, " and Dv = ", p.value_dim, " need ", shared_bytes,
              " bytes of shared memory per block, more than the ", shared_limit,
              " this GPU allows");
  launch(kAttentionOp, kernel, blocks, kThreads, shared_bytes, p, std::forward<Args>(args)...);
}

template <typename scalar_t, typename acc_t>
Params<scalar_t, acc_t> make_params(const at::Tensor& q, const at::Tensor& k,
                                    const at::Tensor& v, const at::Tensor& expanded_bias,
                                    bool is_causal, double scale) {
  Params<scalar_t, acc_t> p{};
  p.query = q.const_data_ptr<scalar_t>();
  p.key = k.const_data_ptr<scalar_t>();
  p.value = v.const_data_ptr<scalar_t>();
  if (expanded_bias.defined()) {
    p.bias = expanded_bias.const_data_ptr<scalar_t>();
    for (int d = 0; d < 4; ++d) p.bias_stride[d] = expanded_bias.stride(d);
  }
  p.heads = q.size(1);
  p.num_queries = q.size(2);
  p.num_keys = k.size(2);
  p.head_dim = q.size(3);
  p.value_dim = v.size(3);
  p.scale = static_cast<acc_t>(scale);
  p.causal = is_causal;
  return p;
}

// The bias as a (B, H, Nq, Nk) view (zero strides where it broadcasts); no copy.
inline at::Tensor expanded_bias(const std::optional<at::Tensor>& attn_bias,
                                const at::Tensor& query, const at::Tensor& key) {
  if (!attn_bias.has_value() || !attn_bias->defined()) return {};
  return attn_bias->expand({query.size(0), query.size(1), query.size(2), key.size(2)});
}

inline BiasGradLayout bias_grad_layout(const at::Tensor& attn_bias) {
  std::vector<int64_t> shape(4 - attn_bias.dim(), 1);
  for (int64_t s : attn_bias.sizes()) shape.push_back(s);
  return BiasGradLayout{shape[0],      shape[1],      shape[2],      shape[3],
                        shape[0] == 1, shape[1] == 1, shape[2] == 1, shape[3] == 1};
}

}  // namespace attention_kernels

// _attention_forward and _attention_backward on the kernels' device.
inline std::tuple<at::Tensor, at::Tensor> attention_forward(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_bias, bool is_causal, std::optional<double> scale) {
  using namespace attention_kernels;
  check_attention_inputs(query, key, value, attn_bias);
  check_kernel_device(kAttentionOp, query);
  const KernelDeviceGuard device_guard(query.device());
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const at::Tensor bias = expanded_bias(attn_bias, q, k);
  const int64_t batch = q.size(0), heads = q.size(1), nq = q.size(2), dv = v.size(3);
  at::Tensor out = at::empty({batch, heads, nq, dv}, q.options());
  at::Tensor lse = at::empty({batch, heads, nq},
                             q.options().dtype(attention_accumulate_type(q.scalar_type())));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "slideformer_attention_forward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto p = make_params<scalar_t, acc_t>(q, k, v, bias, is_causal,
                                                attention_scale(query, scale));
    const int64_t query_tiles = ceil_div(nq, kTile);
    launch_tiles(attention_forward_kernel<scalar_t, acc_t>, batch * heads * query_tiles,
                 3 * kTileElems + kTile * accumulator_stride(dv), p, query_tiles,
                 out.mutable_data_ptr<scalar_t>(), lse.mutable_data_ptr<acc_t>());
  });
  return {out, lse};
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_bias, const at::Tensor& output,
    const at::Tensor& logsumexp, bool is_causal, std::optional<double> scale,
    bool compute_bias_grad) {
  using namespace attention_kernels;
  check_attention_backward_inputs(grad_output, query, key, value, attn_bias, output, logsumexp);
  check_kernel_device(kAttentionOp, query);
  const KernelDeviceGuard device_guard(query.device());
  const at::Tensor q = query.contiguous(), k = key.contiguous(), v = value.contiguous();
  const at::Tensor dout = grad_output.contiguous();
  const at::Tensor bias = expanded_bias(attn_bias, q, k);
  const auto acc_type = attention_accumulate_type(q.scalar_type());
  const at::Tensor lse = logsumexp.to(acc_type).contiguous();
  // delta_i = rowsum(dO * O), an ATen reduction (deterministic) in the accumulate type.
  const at::Tensor delta = (dout.to(acc_type) * output.to(acc_type)).sum(-1).contiguous();
  const int64_t batch = q.size(0), heads = q.size(1), nq = q.size(2), nk = k.size(2);
  const int64_t d = q.size(3), dv = v.size(3);
  at::Tensor grad_q = at::empty_like(q), grad_k = at::empty_like(k), grad_v = at::empty_like(v);
  at::Tensor grad_bias;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(),
                                  "slideformer_attention_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto p = make_params<scalar_t, acc_t>(q, k, v, bias, is_causal, attention_scale(query, scale));
    p.grad_output = dout.const_data_ptr<scalar_t>();
    p.logsumexp = lse.const_data_ptr<acc_t>();
    p.delta = delta.const_data_ptr<acc_t>();
    const int64_t query_tiles = ceil_div(nq, kTile), key_tiles = ceil_div(nk, kTile);
    launch_tiles(attention_backward_query_kernel<scalar_t, acc_t>, batch * heads * query_tiles,
                 3 * kTileElems + kTile * accumulator_stride(d), p, query_tiles,
                 grad_q.mutable_data_ptr<scalar_t>());
    launch_tiles(attention_backward_key_value_kernel<scalar_t, acc_t>, batch * heads * key_tiles,
                 4 * kTileElems + kTile * (accumulator_stride(d) + accumulator_stride(dv)), p,
                 key_tiles, grad_k.mutable_data_ptr<scalar_t>(),
                 grad_v.mutable_data_ptr<scalar_t>());
    if (compute_bias_grad && bias.defined()) {
      const BiasGradLayout g = bias_grad_layout(*attn_bias);
      at::Tensor grad_bias4 = at::empty({g.batch, g.heads, g.rows, g.cols}, lse.options());
      launch_tiles(attention_backward_bias_kernel<scalar_t, acc_t>,
                   grad_bias4.numel() == 0 ? 0 : g.batch * g.heads * g.query_tiles() * g.key_tiles(),
                   4 * kTileElems, p, batch, g, g.query_tiles(), g.key_tiles(),
                   grad_bias4.mutable_data_ptr<acc_t>());
      grad_bias = grad_bias4.reshape(attn_bias->sizes()).to(attn_bias->scalar_type());
    }
  });
  return {grad_q, grad_k, grad_v, grad_bias};
}

}  // namespace SLIDEFORMER_KERNEL_TARGET
}  // namespace slideformer::ops::cuda
