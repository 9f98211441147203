#pragma once
// Per-element math of slide_attention shared by the CPU and CUDA kernels (docs/operators.md):
// - which key/value position each window slot of a pixel reads, in both border modes, one
//   spatial axis at a time (slot n = (n / k, n % k) combines a row slot and a column slot);
// - the inverse maps: which pixels read a given position, and through which slot (backward
//   gathers dK and dV over them, so it needs no atomics);
// - the deformed-shift mixing Kn[c] = sum_m W[c,n,m] * gathered[c,m] + bias and its adjoint,
//   reading the gathered neighbours through WindowSlots (scratch copy or the tensor itself).
// Free of ATen types. The mixing is templated on the value type V, so a kernel runs it on one
// channel (V = T) or on a vector of channels (a CPU kernel specialises SlideLanes for it).
#include <c10/macros/Macros.h>

#include <cstdint>

namespace slideformer::ops::math {

enum class SlideBorder : int32_t {
  kZeros,  // Slide-Transformer: outside positions read 0 and stay in the softmax
  kClamp,  // neighbourhood attention: windows shift inward; slots past a short axis are masked
};

// One spatial axis of the window geometry.
struct SlideAxis {
  int64_t length;       // Y or X
  int64_t kernel_size;  // k, odd
  int64_t dilation;     // >= 1
};

C10_HOST_DEVICE inline int64_t window_radius(const SlideAxis& a) { return a.kernel_size / 2; }

// clamp mode: first sub-axis index of pixel i's window. Pixel i belongs to dilation group
// g = i mod dilation, whose sub-axis has ceil((L - g) / dilation) positions; i sits at
// i div dilation on it and its window of k sub-positions is pushed inside the sub-axis.
C10_HOST_DEVICE inline int64_t clamp_window_start(int64_t i, const SlideAxis& a) {
  const int64_t group = i % a.dilation;
  const int64_t sub_length = (a.length - group + a.dilation - 1) / a.dilation;
  const int64_t last_start = sub_length > a.kernel_size ? sub_length - a.kernel_size : 0;
  const int64_t start = i / a.dilation - window_radius(a);
  return start < 0 ? 0 : (start > last_start ? last_start : start);
}

// Where slot 0 of pixel i's window lies along the axis, before clipping to the map: slot j sits
// at this + j * dilation. It lies within (k - 1) * dilation of i in clamp mode (the window holds
// i), within (k / 2) * dilation in zeros mode.
C10_HOST_DEVICE inline int64_t window_first_position(SlideBorder border, int64_t i,
                                                     const SlideAxis& a) {
  return border == SlideBorder::kZeros ? i - window_radius(a) * a.dilation
                                       : i % a.dilation + a.dilation * clamp_window_start(i, a);
}

// Position along the axis that slot j (0 <= j < k) of pixel i reads, or -1 when the slot reads
// nothing: outside the map (zeros) or past the end of a sub-axis shorter than k (clamp).
C10_HOST_DEVICE inline int64_t neighbor_position(SlideBorder border, int64_t i, int64_t j,
                                                 const SlideAxis& a) {
  const int64_t position = window_first_position(border, i, a) + j * a.dilation;
  return position >= 0 && position < a.length ? position : -1;
}

// Whether window slot (row_position, col_position) is left out of the softmax: only clamp
// mode masks the slots that read nothing; zeros mode keeps them (they read K = V = 0).
C10_HOST_DEVICE inline bool slot_is_masked(SlideBorder border, int64_t row_position,
                                           int64_t col_position) {
  return border == SlideBorder::kClamp && (row_position < 0 || col_position < 0);
}

// A pixel along the axis that reads a given position, and the slot it reads it through.
struct AxisReader {
  int64_t pixel;  // -1: no such pixel (zeros mode, outside the map)
  int64_t slot;
};

// First sub-axis index of the pixels whose clamped window holds sub-position t; `last` gets
// the last one. Window starts never decrease along a sub-axis (clamp_window_start is monotone),
// so the readers of t form an interval of it.
C10_HOST_DEVICE inline int64_t clamp_readers(int64_t t, int64_t sub_length, const SlideAxis& a,
                                             int64_t* last) {
  const int64_t k = a.kernel_size, r = window_radius(a);
  const int64_t last_start = sub_length > k ? sub_length - k : 0;
  *last = t >= last_start ? sub_length - 1 : t + r;
  return t - k + 1 <= 0 ? 0 : t - r;
}

// Number of candidate readers of position t along the axis, enumerated by axis_reader(e).
C10_HOST_DEVICE inline int64_t reader_count(SlideBorder border, int64_t t, const SlideAxis& a) {
  if (border == SlideBorder::kZeros) return a.kernel_size;
  const int64_t group = t % a.dilation;
  const int64_t sub_length = (a.length - group + a.dilation - 1) / a.dilation;
  int64_t last = 0;
  const int64_t first = clamp_readers(t / a.dilation, sub_length, a, &last);
  return last - first + 1;
}

// Reader e (0 <= e < reader_count) of position t.
C10_HOST_DEVICE inline AxisReader axis_reader(SlideBorder border, int64_t t, int64_t e,
                                              const SlideAxis& a) {
  if (border == SlideBorder::kZeros) {  // slot e reads t from pixel t - offset(e)
    const int64_t pixel = t - (e - window_radius(a)) * a.dilation;
    return {pixel >= 0 && pixel < a.length ? pixel : -1, e};
  }
  const int64_t group = t % a.dilation, sub = t / a.dilation;
  const int64_t sub_length = (a.length - group + a.dilation - 1) / a.dilation;
  int64_t last = 0;
  const int64_t reader_sub = clamp_readers(sub, sub_length, a, &last) + e;
  const int64_t pixel = group + a.dilation * reader_sub;
  return {pixel, sub - clamp_window_start(pixel, a)};
}

// How the mixing reads values of type V from memory holding T: one element by default; a
// vectorised kernel specialises this for its vector type (load = unaligned vector load).
template <typename V>
struct SlideLanes {
  template <typename T>
  C10_HOST_DEVICE static V load(const T* p) {
    return static_cast<V>(*p);
  }
  C10_HOST_DEVICE static V multiply_add(const V& a, const V& b, const V& c) { return a * b + c; }
};

// Where the k*k gathered neighbours of one pixel lie in memory: slot (jy, jx) of the first
// channel at base + jy * row_step + jx * col_step. A kernel points it at a copy in scratch or,
// when every slot reads a position inside the map, straight at the key or value tensor.
template <typename T>
struct WindowSlots {
  const T* base;
  int64_t row_step, col_step;
  C10_HOST_DEVICE const T* slot(int64_t jy, int64_t jx) const {
    return base + jy * row_step + jx * col_step;
  }
  C10_HOST_DEVICE WindowSlots at_channel(int64_t c) const { return {base + c, row_step, col_step}; }
};

// Shifted copy n of kSets gathered windows at once (keys and values share W, so the weight is
// read once for all sets), the deformed shift, for one channel (or vector of channels) c:
//   out[s] += sum_m W[c,n,m] * window_s[c, slot m],  m = jy * k + jx
// out[s] holds the bias on entry: shift_bias[c,n] (+ key_bias[h,n] for keys). `weight` points at
// W[c,n,0] and steps weight_step per m; slots that read nothing hold 0.
template <int kSets, typename V, typename T>
C10_HOST_DEVICE inline void mix_shifted_sets(const T* weight, int64_t weight_step,
                                             const WindowSlots<T>* windows, int64_t kernel_size,
                                             V* out) {
  for (int64_t jy = 0; jy < kernel_size; ++jy) {
    for (int64_t jx = 0; jx < kernel_size; ++jx) {
      const V w = SlideLanes<V>::load(weight + (jy * kernel_size + jx) * weight_step);
      for (int s = 0; s < kSets; ++s) {
        out[s] =
            SlideLanes<V>::multiply_add(w, SlideLanes<V>::load(windows[s].slot(jy, jx)), out[s]);
      }
    }
  }
}

// One set: sum_m W[c,n,m] * window[c, slot m] + bias.
template <typename V, typename T>
C10_HOST_DEVICE inline V mix_shifted(const T* weight, int64_t weight_step,
                                     const WindowSlots<T>& window, int64_t kernel_size, V bias) {
  mix_shifted_sets<1>(weight, weight_step, &window, kernel_size, &bias);
  return bias;
}

// Adjoint of the mixing for kSets coefficient sets at once: what coefficients g_n on the
// shifted copies n send back to gathered[c,m],
//   out[s] = sum_n coeffs[s][n] * W[c,n,m].
// `weight` points at W[c,0,m] and steps weight_step per n; coeffs[s][n] are scalars shared by
// the channels.
template <int kSets, typename V, typename T>
C10_HOST_DEVICE inline void mix_shifted_adjoint_sets(const T* weight, int64_t weight_step,
                                                     const T* const* coeffs, int64_t k2, V* out) {
  for (int s = 0; s < kSets; ++s) out[s] = V(T(0));
  for (int64_t n = 0; n < k2; ++n) {
    const V w = SlideLanes<V>::load(weight + n * weight_step);
    for (int s = 0; s < kSets; ++s) {
      out[s] = SlideLanes<V>::multiply_add(V(coeffs[s][n]), w, out[s]);
    }
  }
}

// One set: sum_n coeffs[n] * W[c,n,m].
template <typename V, typename T>
C10_HOST_DEVICE inline V mix_shifted_adjoint(const T* weight, int64_t weight_step, const T* coeffs,
                                             int64_t k2) {
  V out;
  mix_shifted_adjoint_sets<1>(weight, weight_step, &coeffs, k2, &out);
  return out;
}

}  // namespace slideformer::ops::math
