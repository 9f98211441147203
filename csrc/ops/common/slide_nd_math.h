#pragma once
// The per-pixel and per-position computations of slide_attention_nd (docs/operators.md), for maps
// of 1, 2 or 3 axes, shared by its CPU kernel (ops/cpu/slide_attention_nd_kernel.cpp) and its CUDA
// kernels (ops/cuda/slide_attention_nd_kernels.cuh), which only differ in how they deal out the
// pixels and where each pixel's scratch lives. Free of ATen types.
//
// Layout: query, key, value, grad_output contiguous (B*H, N, D) with N the map's positions in
// row-major order; the parameter tables of ops/common/slide_parameters.h, channels innermost with
// channel stride D, K = the window's slots (prod of the per-axis kernel sizes) in the role of k2.
// Window slot m = row-major over the per-axis slots (j_0, ..., j_{rank-1}).
// Each axis follows the 2-D operator's border rules (ops/common/slide_math.h); with `causal` the
// first axis instead looks back only: slot j of coordinate t reads t - (k - 1 - j) * dilation,
// nothing before 0 (zeros: reads 0 and stays in the softmax; clamp: masked).
// Scratch a caller provides per pixel: `slots` (K position indices, -1 where the slot reads
// nothing) and K values of the accumulate type A. Loops over channels run innermost, so the CPU
// compiler vectorises them; the channel-range functions let a CUDA thread work in register-sized
// chunks of channels.
#include <c10/macros/Macros.h>

#include <cstdint>

#include "ops/common/online_softmax.h"
#include "ops/common/slide_math.h"
#include "ops/common/slide_parameters.h"

// The next loop sums into `sum`, which the CPU compiler may vectorise (reassociating it).
#if defined(_OPENMP) && !defined(__CUDA_ARCH__)
#define SLIDEFORMER_SIMD_SUM _Pragma("omp simd reduction(+ : sum)")
#else
#define SLIDEFORMER_SIMD_SUM
#endif

namespace slideformer::ops::nd {

inline constexpr int kMaxRank = 3;
inline constexpr int64_t kMaxAxisKernel = 127;  // kernel_size per axis, checked by the op

struct NdGeometry {
  int rank;
  int64_t heads, head_dim;
  int64_t length[kMaxRank], kernel[kMaxRank], dilation[kMaxRank];
  bool causal;
  math::SlideBorder border;
  int64_t window;     // K
  int64_t positions;  // N

  C10_HOST_DEVICE math::SlideAxis axis(int a) const { return {length[a], kernel[a], dilation[a]}; }
  C10_HOST_DEVICE bool causal_axis(int a) const { return causal && a == 0; }
};

// Where slot 0 of coordinate i's window lies along axis a, before clipping to the axis: slot j
// sits at this + j * dilation and reads nothing outside [0, length) (math::neighbor_position).
// The causal axis's window ends at i.
C10_HOST_DEVICE inline int64_t axis_window_start(const NdGeometry& g, int a, int64_t i) {
  return g.causal_axis(a) ? i - (g.kernel[a] - 1) * g.dilation[a]
                          : math::window_first_position(g.border, i, g.axis(a));
}

// Candidate readers of coordinate t along axis a, enumerated by axis_reader_of(e).
C10_HOST_DEVICE inline int64_t axis_reader_count(const NdGeometry& g, int a, int64_t t) {
  return g.causal_axis(a) ? g.kernel[a] : math::reader_count(g.border, t, g.axis(a));
}

C10_HOST_DEVICE inline math::AxisReader axis_reader_of(const NdGeometry& g, int a, int64_t t,
                                                       int64_t e) {
  if (g.causal_axis(a)) {
    const int64_t pixel = t + (g.kernel[a] - 1 - e) * g.dilation[a];
    return {pixel < g.length[a] ? pixel : -1, e};
  }
  return math::axis_reader(g.border, t, e, g.axis(a));
}

C10_HOST_DEVICE inline void coordinates(const NdGeometry& g, int64_t position, int64_t* coord) {
  for (int a = g.rank - 1; a >= 0; --a) {
    coord[a] = position % g.length[a];
    position /= g.length[a];
  }
}

// axis_window_start of every axis for the pixel at `position`.
C10_HOST_DEVICE inline void window_start(const NdGeometry& g, int64_t position, int64_t* start) {
  coordinates(g, position, start);
  for (int a = 0; a < g.rank; ++a) start[a] = axis_window_start(g, a, start[a]);
}

// The position slot m of the window starting at `start` reads, or -1.
C10_HOST_DEVICE inline int64_t window_slot(const NdGeometry& g, const int64_t* start, int64_t m) {
  int64_t position = 0, stride = 1;
  for (int a = g.rank - 1; a >= 0; --a) {
    const int64_t at = start[a] + m % g.kernel[a] * g.dilation[a];
    if (at < 0 || at >= g.length[a]) return -1;
    position += at * stride;
    stride *= g.length[a];
    m /= g.kernel[a];
  }
  return position;
}

// slots[m] for every slot of the pixel at `position`, walking the per-axis slots j (the last
// axis fastest) without a division per slot.
C10_HOST_DEVICE inline void window_slots(const NdGeometry& g, int64_t position, int64_t* slots) {
  int64_t start[kMaxRank], j[kMaxRank] = {};
  window_start(g, position, start);
  for (int64_t m = 0; m < g.window; ++m) {
    int64_t at = 0;
    bool inside = true;
    for (int a = 0; a < g.rank; ++a) {
      const int64_t along = start[a] + j[a] * g.dilation[a];
      inside &= along >= 0 && along < g.length[a];
      at = at * g.length[a] + along;
    }
    slots[m] = inside ? at : -1;
    for (int a = g.rank - 1; a >= 0 && ++j[a] == g.kernel[a]; --a) j[a] = 0;
  }
}

// Only clamp mode leaves slots that read nothing out of the softmax.
C10_HOST_DEVICE inline bool slot_masked(const NdGeometry& g, const int64_t* slots, int64_t n) {
  return g.border == math::SlideBorder::kClamp && slots[n] < 0;
}

// The tensors of one call. Pixel = b_h * N + position; its row of D channels starts at pixel * D.
template <typename T, typename A>
struct NdTensors {
  const T* query;
  const T* key;
  const T* value;
  const T* grad_output;  // backward only
  const A* logsumexp;    // backward only, (B*H*N)
  const A* weight;       // null: the pure shift
  const A* key_bias;     // one bias table per head
  const A* value_bias;
  SlideParameterLayout params;
  NdGeometry g;
  A scale;

  C10_HOST_DEVICE int64_t plane(int64_t pixel) const {  // first element of the pixel's (b, h)
    return pixel / g.positions * g.positions * g.head_dim;
  }
  C10_HOST_DEVICE const A* key_bias_of(int64_t pixel) const {
    return key_bias + params.key_bias_table(pixel / g.positions % g.heads);
  }
};

// out[n] = <u, Xn> for every slot n (0 for masked ones), where the shifted copy
// Xn[c] = bias[c, n] + sum_m W[c, n, m] * X[slot m][c] (pure shift: X[slot n][c]) and X = plane.
template <typename T, typename A>
C10_HOST_DEVICE void contract_window(const NdTensors<T, A>& p, const T* u, const T* plane,
                                     const A* bias, const int64_t* slots, A* out) {
  const int64_t d = p.g.head_dim;
  for (int64_t n = 0; n < p.g.window; ++n) {
    if (slot_masked(p.g, slots, n)) {
      out[n] = A(0);
      continue;
    }
    const A* b = bias + p.params.bias(0, n);
    A sum = A(0);
    SLIDEFORMER_SIMD_SUM
    for (int64_t c = 0; c < d; ++c) sum += A(u[c]) * b[c];
    A acc = sum;
    for (int64_t m = p.weight ? 0 : n; m < (p.weight ? p.g.window : n + 1); ++m) {
      if (slots[m] < 0) continue;
      const T* x = plane + slots[m] * d;
      sum = A(0);
      if (p.weight) {
        const A* w = p.weight + p.params.weight(0, n, m);
        SLIDEFORMER_SIMD_SUM
        for (int64_t c = 0; c < d; ++c) sum += A(u[c]) * w[c] * A(x[c]);
      } else {
        SLIDEFORMER_SIMD_SUM
        for (int64_t c = 0; c < d; ++c) sum += A(u[c]) * A(x[c]);
      }
      acc += sum;
    }
    out[n] = acc;
  }
}

// acc[c - c0] = sum_n coeffs[n] * Xn[c] for the channels [c0, c1) (Xn as in contract_window).
// Zero coefficients (masked or underflowed slots) are skipped.
template <typename T, typename A>
C10_HOST_DEVICE void combine_window(const NdTensors<T, A>& p, const T* plane, const A* bias,
                                    const int64_t* slots, const A* coeffs, int64_t c0, int64_t c1,
                                    A* acc) {
  const int64_t d = p.g.head_dim, k = p.g.window;
  for (int64_t c = c0; c < c1; ++c) acc[c - c0] = A(0);
  for (int64_t n = 0; n < k; ++n) {
    const A coeff = coeffs[n];
    if (coeff == A(0)) continue;
    const A* b = bias + p.params.bias(0, n);
    for (int64_t c = c0; c < c1; ++c) acc[c - c0] += coeff * b[c];
  }
  for (int64_t m = 0; m < k; ++m) {
    if (slots[m] < 0) continue;
    const T* x = plane + slots[m] * d;
    for (int64_t n = p.weight ? 0 : m; n < (p.weight ? k : m + 1); ++n) {
      const A coeff = coeffs[n];
      if (coeff == A(0)) continue;
      if (p.weight) {
        const A* w = p.weight + p.params.weight(0, n, m);
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += coeff * w[c] * A(x[c]);
      } else {
        for (int64_t c = c0; c < c1; ++c) acc[c - c0] += coeff * A(x[c]);
      }
    }
  }
}

// The pixel's slots and window probabilities (in `probs`); returns the log-sum-exp.
template <typename T, typename A>
C10_HOST_DEVICE A window_softmax(const NdTensors<T, A>& p, int64_t pixel, int64_t* slots,
                                 A* probs) {
  const NdGeometry& g = p.g;
  window_slots(g, pixel % g.positions, slots);
  contract_window(p, p.query + pixel * g.head_dim, p.key + p.plane(pixel), p.key_bias_of(pixel),
                  slots, probs);
  A row_max = math::neg_inf<A>();
  for (int64_t n = 0; n < g.window; ++n) {
    probs[n] = slot_masked(g, slots, n) ? math::neg_inf<A>() : p.scale * probs[n];
    row_max = math::merged_max(row_max, probs[n]);
  }
  A sum = A(0);
  for (int64_t n = 0; n < g.window; ++n) {
    probs[n] = math::probability(probs[n], row_max);  // 0 for masked slots
    sum += probs[n];
  }
  const A normalizer = math::output_normalizer(sum);
  for (int64_t n = 0; n < g.window; ++n) probs[n] *= normalizer;
  return math::finish_logsumexp(row_max, sum);
}

// Backward, per pixel: slots, probabilities recomputed from the saved log-sum-exp and the scaled
// logit gradients dlogit_n = scale * p_n * (<dO, Vn> - sum_j p_j <dO, Vj>).
template <typename T, typename A>
C10_HOST_DEVICE void window_gradients(const NdTensors<T, A>& p, int64_t pixel, int64_t* slots,
                                      A* probs, A* dlogits) {
  const NdGeometry& g = p.g;
  const int64_t row = pixel * g.head_dim;
  window_slots(g, pixel % g.positions, slots);
  contract_window(p, p.query + row, p.key + p.plane(pixel), p.key_bias_of(pixel), slots, probs);
  contract_window(p, p.grad_output + row, p.value + p.plane(pixel), p.value_bias, slots, dlogits);
  A delta = A(0);
  for (int64_t n = 0; n < g.window; ++n) {
    probs[n] = slot_masked(g, slots, n) ? A(0)
                                        : math::probability(p.scale * probs[n], p.logsumexp[pixel]);
    delta += probs[n] * dlogits[n];
  }
  for (int64_t n = 0; n < g.window; ++n) {
    dlogits[n] = p.scale * math::logit_grad(probs[n], dlogits[n], delta);
  }
}

// The pixel's share of the bias gradients, added to `grads` (laid out by p.params):
//   dkey_bias[h,n] += dlogit_n sum_c q[c];  dshift_bias[c,n] += dlogit_n q[c] + p_n dO[c].
template <typename T, typename A>
C10_HOST_DEVICE void add_bias_grads(const NdTensors<T, A>& p, int64_t pixel, const A* probs,
                                    const A* dlogits, A* grads) {
  const NdGeometry& g = p.g;
  const SlideParameterLayout& l = p.params;
  const int64_t d = g.head_dim, k = g.window;
  const T* q = p.query + pixel * d;
  const T* dout = p.grad_output + pixel * d;
  if (l.key_bias_grads > 0) {
    A q_sum = A(0);
    for (int64_t c = 0; c < d; ++c) q_sum += A(q[c]);
    const int64_t h = pixel / g.positions % g.heads;
    for (int64_t n = 0; n < k; ++n) grads[l.key_bias_grad(h, n)] += dlogits[n] * q_sum;
  }
  if (l.shift_bias_grads > 0) {
    for (int64_t n = 0; n < k; ++n) {
      A* entry = grads + l.shift_bias_grad(0, n);
      for (int64_t c = 0; c < d; ++c) entry[c] += dlogits[n] * A(q[c]) + probs[n] * A(dout[c]);
    }
  }
}

// The pixel's factors of dW[c,n,m] += dlogit_n q[c] K[slot m][c] + p_n dO[c] V[slot m][c], as rows
// [m][c]: key_row = q * K[slot m], value_row = dO * V[slot m] (0 where the slot reads nothing), so
// that a block of pixels adds its dW as two matrix products (the CPU kernel).
template <typename T, typename A>
C10_HOST_DEVICE void weight_grad_rows(const NdTensors<T, A>& p, int64_t pixel,
                                      const int64_t* slots, A* key_row, A* value_row) {
  const int64_t d = p.g.head_dim;
  const T* q = p.query + pixel * d;
  const T* dout = p.grad_output + pixel * d;
  for (int64_t m = 0; m < p.g.window; ++m, key_row += d, value_row += d) {
    if (slots[m] < 0) {
      for (int64_t c = 0; c < d; ++c) key_row[c] = value_row[c] = A(0);
      continue;
    }
    const T* key = p.key + p.plane(pixel) + slots[m] * d;
    const T* value = p.value + p.plane(pixel) + slots[m] * d;
    for (int64_t c = 0; c < d; ++c) {
      key_row[c] = A(q[c]) * A(key[c]);
      value_row[c] = A(dout[c]) * A(value[c]);
    }
  }
}

// Entry e of the parameter gradients (sections in order: dkey_bias (h, n), dW (c, n, m),
// dshift_bias (c, n); the terms of add_bias_grads and weight_grad_rows) summed over pixels [begin, end), for a
// kernel that gives each thread whole entries; *where gets the entry's place in the layout.
template <typename T, typename A>
C10_HOST_DEVICE A parameter_grad_entry(const NdTensors<T, A>& p, const A* probs, const A* dlogits,
                                       int64_t e, int64_t begin, int64_t end, int64_t* where) {
  const NdGeometry& g = p.g;
  const SlideParameterLayout& l = p.params;
  const int64_t d = g.head_dim, k = g.window;
  A sum = A(0);
  if (e < l.key_bias_grads) {
    const int64_t h = e / k, n = e % k;
    *where = l.key_bias_grad(h, n);
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      if (pixel / g.positions % g.heads != h) continue;
      A q_sum = A(0);
      for (int64_t c = 0; c < d; ++c) q_sum += A(p.query[pixel * d + c]);
      sum += dlogits[pixel * k + n] * q_sum;
    }
  } else if (e < l.key_bias_grads + l.weight_grads) {
    const int64_t i = e - l.key_bias_grads, c = i / (k * k), n = i / k % k, m = i % k;
    *where = l.weight_grad(c, n, m);
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      int64_t start[kMaxRank];
      window_start(g, pixel % g.positions, start);
      const int64_t slot = window_slot(g, start, m);
      if (slot < 0) continue;
      const int64_t at = p.plane(pixel) + slot * d + c, row = pixel * d + c;
      sum += dlogits[pixel * k + n] * A(p.query[row]) * A(p.key[at]) +
             probs[pixel * k + n] * A(p.grad_output[row]) * A(p.value[at]);
    }
  } else {
    const int64_t i = e - l.key_bias_grads - l.weight_grads, c = i / k, n = i % k;
    *where = l.shift_bias_grad(c, n);
    for (int64_t pixel = begin; pixel < end; ++pixel) {
      sum += dlogits[pixel * k + n] * A(p.query[pixel * d + c]) +
             probs[pixel * k + n] * A(p.grad_output[pixel * d + c]);
    }
  }
  return sum;
}

// The readers of one position, per axis: the coordinates that read it and through which slot
// (those that do not exist left out); a reader of the position takes one of each axis.
struct WindowReaders {
  math::AxisReader axis[kMaxRank][kMaxAxisKernel];
  int64_t count[kMaxRank];
  int64_t total;  // the product of the counts

  C10_HOST_DEVICE WindowReaders(const NdGeometry& g, int64_t position) : total(1) {
    int64_t coord[kMaxRank];
    coordinates(g, position, coord);
    for (int a = 0; a < g.rank; ++a) {
      count[a] = 0;
      for (int64_t e = 0; e < axis_reader_count(g, a, coord[a]); ++e) {
        const math::AxisReader reader = axis_reader_of(g, a, coord[a], e);
        if (reader.pixel >= 0) axis[a][count[a]++] = reader;
      }
      total *= count[a];
    }
  }
};

// dK and dV of the position `pixel` (b_h * N + position), channels [c0, c1), gathered from the
// pixels whose windows read it (fixed order: deterministic, no atomics):
//   dK[c] += q_r[c] * sum_n dlogit_rn W[c,n,m],  dV[c] += dO_r[c] * sum_n p_rn W[c,n,m]
// over the readers r and the slot m through which each reads it (pure shift: n = m only).
// probs and dlogits: window_gradients' values of every pixel, K apart.
template <typename T, typename A>
C10_HOST_DEVICE void gather_key_value_grads(const NdTensors<T, A>& p, const A* probs,
                                            const A* dlogits, int64_t pixel, int64_t c0,
                                            int64_t c1, A* grad_key, A* grad_value) {
  const NdGeometry& g = p.g;
  const int64_t d = g.head_dim, k = g.window, first = pixel / g.positions * g.positions;
  const WindowReaders readers(g, pixel % g.positions);
  int64_t e[kMaxRank] = {};
  for (int64_t c = c0; c < c1; ++c) grad_key[c - c0] = grad_value[c - c0] = A(0);
  for (int64_t r = 0; r < readers.total; ++r) {
    int64_t position = 0, m = 0;  // the reader and the slot it reads the position through
    for (int a = 0; a < g.rank; ++a) {
      const math::AxisReader& axis = readers.axis[a][e[a]];
      position = position * g.length[a] + axis.pixel;
      m = m * g.kernel[a] + axis.slot;
    }
    for (int a = g.rank - 1; a >= 0 && ++e[a] == readers.count[a]; --a) e[a] = 0;
    const int64_t at = first + position;
    const T* q = p.query + at * d;
    const T* dout = p.grad_output + at * d;
    for (int64_t n = p.weight ? 0 : m; n < (p.weight ? k : m + 1); ++n) {
      const A dlogit = dlogits[at * k + n], prob = probs[at * k + n];
      if (dlogit == A(0) && prob == A(0)) continue;
      if (p.weight) {
        const A* w = p.weight + p.params.weight(0, n, m);
        for (int64_t c = c0; c < c1; ++c) {
          grad_key[c - c0] += dlogit * w[c] * A(q[c]);
          grad_value[c - c0] += prob * w[c] * A(dout[c]);
        }
      } else {
        for (int64_t c = c0; c < c1; ++c) {
          grad_key[c - c0] += dlogit * A(q[c]);
          grad_value[c - c0] += prob * A(dout[c]);
        }
      }
    }
  }
}

}  // namespace slideformer::ops::nd
