// slide_attention, CPU kernels (DESIGN 2.2, 2.4).
// Forward, per pixel and head: gather the k*k neighbours of K and V once into scratch
// (k*k x D, zeros where a slot reads nothing), mix them with W on the fly through the shared
// math of ops/common/slide_math.h, softmax over the k*k logits; only out and the log-sum-exp
// are stored. Backward works on bands of rows: pass A recomputes each pixel's window
// probabilities and logit gradients (kept for the band and its halo rows, the pixels whose
// windows reach into the band) and produces dq and the parameter gradients; pass B gathers dK
// and dV of every band position from the pixels that read it (the inverse neighbourhood), so
// no two threads write the same element and no atomics are needed. Vectorised over D
// (at::vec, channels padded to whole vectors in scratch), parallel over (B, H, rows).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "ops/attention.h"
#include "ops/common/online_softmax.h"
#include "ops/common/slide_math.h"
#include "ops/cpu/vec_utils.h"
#include "ops/slide_attention.h"

namespace slideformer::ops {

namespace math {
// The shared mixing math on vectors of channels.
template <typename T>
struct SlideLanes<at::vec::Vectorized<T>> {
  using V = at::vec::Vectorized<T>;
  static V load(const T* p) { return V::loadu(p); }
  static V multiply_add(const V& a, const V& b, const V& c) { return at::vec::fmadd(a, b, c); }
};
}  // namespace math

namespace {

using cpu::Vectorized;

struct Geometry {
  int64_t batch, heads, height, width, head_dim;
  int64_t padded_dim;  // head_dim rounded up to whole vectors: the channel stride of scratch
  int64_t kernel_size, k2;
  math::SlideBorder border;
  math::SlideAxis rows, cols;
  double scale;
  int64_t rows_total() const { return batch * heads * height; }
};

// A (B, H, Y, X, D) tensor with unit channel stride and any other strides.
template <typename T>
struct MapView {
  T* data;
  int64_t stride[4];
  T* pixel(int64_t b, int64_t h, int64_t y, int64_t x) const {
    return data + b * stride[0] + h * stride[1] + y * stride[2] + x * stride[3];
  }
};

template <typename T>
MapView<T> map_view(const at::Tensor& t) {
  return {t.data_ptr<std::remove_const_t<T>>(), {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

// Channels [c, c + vector) of a D-channel row, the part past D read as 0 / not written.
template <typename T>
Vectorized<T> load_channels(const T* row, int64_t c, int64_t head_dim) {
  return Vectorized<T>::loadu(row + c, std::min<int64_t>(Vectorized<T>::size(), head_dim - c));
}
template <typename T>
void store_channels(const Vectorized<T>& v, T* row, int64_t c, int64_t head_dim) {
  v.store(row + c, std::min<int64_t>(Vectorized<T>::size(), head_dim - c));
}

// dst[0, padded) = src[0, head_dim) followed by zeros.
template <typename T>
void copy_padded(const T* src, int64_t head_dim, int64_t padded, T* dst) {
  std::copy_n(src, head_dim, dst);
  std::fill(dst + head_dim, dst + padded, T(0));
}

// The deformed shift with its weight, laid out [n][m][padded D].
template <typename T>
struct WeightedShift {
  const T* weight;
  int64_t k2, padded_dim;
  Vectorized<T> shifted(int64_t n, int64_t c, const T* gathered, const Vectorized<T>& bias) const {
    return math::mix_shifted<Vectorized<T>>(weight + n * k2 * padded_dim + c, padded_dim,
                                            gathered + c, padded_dim, k2, bias);
  }
  Vectorized<T> adjoint(int64_t m, int64_t c, const T* coeffs) const {
    return math::mix_shifted_adjoint<Vectorized<T>>(weight + m * padded_dim + c,
                                                    k2 * padded_dim, coeffs, k2);
  }
};

// No shift_weight: shifted copy n is gathered neighbour n itself (the fast path).
template <typename T>
struct PureShift {
  int64_t padded_dim;
  Vectorized<T> shifted(int64_t n, int64_t c, const T* gathered, const Vectorized<T>& bias) const {
    return Vectorized<T>::loadu(gathered + n * padded_dim + c) + bias;
  }
  Vectorized<T> adjoint(int64_t m, int64_t c, const T* coeffs) const {
    return Vectorized<T>(coeffs[m]);
  }
};

// Bias tables in scratch layout: per head [n][padded D] = shift_bias[c,n] + key_bias[h,n] for
// keys, [n][padded D] = shift_bias[c,n] for values (zeros when absent).
template <typename T>
struct BiasTables {
  const T* key;    // (H, k2, padded D)
  const T* value;  // (k2, padded D)
};

// The window slots of one pixel: the position each row / column slot reads (-1: nothing).
struct Window {
  int64_t* row_positions;  // k entries, per row
  int64_t* col_positions;  // k entries, per pixel
  void set_row(const Geometry& g, int64_t y) {
    for (int64_t j = 0; j < g.kernel_size; ++j)
      row_positions[j] = math::neighbor_position(g.border, y, j, g.rows);
  }
  void set_col(const Geometry& g, int64_t x) {
    for (int64_t j = 0; j < g.kernel_size; ++j)
      col_positions[j] = math::neighbor_position(g.border, x, j, g.cols);
  }
  bool masked(const Geometry& g, int64_t n) const {
    return math::slot_is_masked(g.border, row_positions[n / g.kernel_size],
                                col_positions[n % g.kernel_size]);
  }
};

// gathered[m][padded D] = map[b, h, position of slot m], 0 where the slot reads nothing.
template <typename T>
void gather_window(const Geometry& g, const MapView<const T>& map, int64_t b, int64_t h,
                   const Window& w, T* gathered) {
  for (int64_t m = 0; m < g.k2; ++m) {
    const int64_t y = w.row_positions[m / g.kernel_size], x = w.col_positions[m % g.kernel_size];
    T* dst = gathered + m * g.padded_dim;
    if (y >= 0 && x >= 0) {
      copy_padded(map.pixel(b, h, y, x), g.head_dim, g.padded_dim, dst);
    } else {
      std::fill_n(dst, g.padded_dim, T(0));
    }
  }
}

// logits[n] = scale * <q, Kn> (-inf for masked slots); Kn also lands in shifted_keys when given.
template <typename T, typename Shift>
void window_logits(const Geometry& g, const Shift& shift, const T* key_bias, const Window& w,
                   const T* q, const T* gathered_keys, T* logits, T* shifted_keys) {
  using V = Vectorized<T>;
  for (int64_t n = 0; n < g.k2; ++n) {
    if (w.masked(g, n)) {
      logits[n] = math::neg_inf<T>();
      continue;
    }
    V acc(T(0));
    for (int64_t c = 0; c < g.padded_dim; c += V::size()) {
      const V key = shift.shifted(n, c, gathered_keys, V::loadu(key_bias + n * g.padded_dim + c));
      if (shifted_keys) key.store(shifted_keys + n * g.padded_dim + c);
      acc = at::vec::fmadd(V::loadu(q + c), key, acc);
    }
    logits[n] = T(g.scale) * at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
  }
}

// ---------------------------------------------------------------------------------------------
// Scratch and work split.

// Runs fn(chunk, begin, end) on `chunks` fixed contiguous slices of [0, tasks) in parallel.
// The slicing depends only on the counts, so per-chunk partial sums reduce deterministically.
template <typename Fn>
void for_each_chunk(int64_t tasks, int64_t chunks, const Fn& fn) {
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) fn(c, c * tasks / chunks, (c + 1) * tasks / chunks);
  });
}

int64_t chunk_count(int64_t tasks) { return std::min<int64_t>(at::get_num_threads(), tasks); }

// Carves one chunk's scratch into named buffers.
template <typename T>
class ScratchCursor {
 public:
  explicit ScratchCursor(T* base) : next_(base) {}
  T* take(int64_t n) {
    T* p = next_;
    next_ += n;
    return p;
  }

 private:
  T* next_;
};

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
struct ForwardScratch {
  static int64_t size(const Geometry& g) { return g.padded_dim * (1 + 2 * g.k2) + g.k2; }
  T *q, *keys, *values, *logits;
  explicit ForwardScratch(ScratchCursor<T> cursor, const Geometry& g)
      : q(cursor.take(g.padded_dim)),
        keys(cursor.take(g.k2 * g.padded_dim)),
        values(cursor.take(g.k2 * g.padded_dim)),
        logits(cursor.take(g.k2)) {}
};

template <typename T, typename Shift>
void forward_kernel(const Geometry& g, const Shift& shift, const BiasTables<T>& biases,
                    const MapView<const T>& q_map, const MapView<const T>& k_map,
                    const MapView<const T>& v_map, T* out, T* lse) {
  using V = Vectorized<T>;
  const int64_t tasks = g.rows_total(), chunks = chunk_count(tasks);
  if (chunks == 0) return;
  const int64_t per_chunk = ForwardScratch<T>::size(g);
  at::Tensor scratch = at::empty({chunks, per_chunk}, c10::CppTypeToScalarType<T>::value);
  for_each_chunk(tasks, chunks, [&](int64_t chunk, int64_t begin, int64_t end) {
    ForwardScratch<T> s(ScratchCursor<T>(scratch.data_ptr<T>() + chunk * per_chunk), g);
    std::vector<int64_t> positions(2 * g.kernel_size);
    Window w{positions.data(), positions.data() + g.kernel_size};
    for (int64_t task = begin; task < end; ++task) {  // task = one row of one (b, h)
      const int64_t bh = task / g.height, b = bh / g.heads, h = bh % g.heads;
      const int64_t y = task % g.height;
      const T* key_bias = biases.key + h * g.k2 * g.padded_dim;
      w.set_row(g, y);
      for (int64_t x = 0; x < g.width; ++x) {
        w.set_col(g, x);
        copy_padded(q_map.pixel(b, h, y, x), g.head_dim, g.padded_dim, s.q);
        gather_window(g, k_map, b, h, w, s.keys);
        gather_window(g, v_map, b, h, w, s.values);
        window_logits(g, shift, key_bias, w, s.q, s.keys, s.logits, static_cast<T*>(nullptr));
        const T row_max = cpu::max_of(s.logits, g.k2);
        const T sum = cpu::exp_shifted_sum_inplace(s.logits, g.k2, row_max);
        const T normalizer = math::output_normalizer(sum);
        const int64_t pixel = task * g.width + x;
        lse[pixel] = math::finish_logsumexp(row_max, sum);
        T* o = out + pixel * g.head_dim;
        for (int64_t c = 0; c < g.padded_dim; c += V::size()) {
          V acc(T(0));
          for (int64_t n = 0; n < g.k2; ++n) {
            if (s.logits[n] == T(0)) continue;  // masked or underflowed: contributes nothing
            acc = at::vec::fmadd(
                V(s.logits[n] * normalizer),
                shift.shifted(n, c, s.values, V::loadu(biases.value + n * g.padded_dim + c)), acc);
          }
          store_channels(acc, o, c, g.head_dim);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.

// A band of rows [begin, end) and the pixel rows [reader_begin, reader_end) whose windows read
// into it (the band itself plus its halo).
struct Band {
  int64_t begin, end, reader_begin, reader_end;
  int64_t reader_rows() const { return reader_end - reader_begin; }
};

std::vector<Band> make_bands(const Geometry& g) {
  const int64_t planes = g.batch * g.heads;
  // Enough tasks to keep every thread busy; each extra band recomputes its halo rows.
  const int64_t wanted = (4 * at::get_num_threads() + planes - 1) / std::max<int64_t>(planes, 1);
  const int64_t count = std::clamp<int64_t>(wanted, 1, std::max<int64_t>(g.height, 1));
  std::vector<Band> bands;
  for (int64_t i = 0; i < count; ++i) {
    Band band{i * g.height / count, (i + 1) * g.height / count, g.height, 0};
    for (int64_t t = band.begin; t < band.end; ++t) {
      for (int64_t e = 0; e < math::reader_count(g.border, t, g.rows); ++e) {
        const int64_t pixel = math::axis_reader(g.border, t, e, g.rows).pixel;
        if (pixel < 0) continue;
        band.reader_begin = std::min(band.reader_begin, pixel);
        band.reader_end = std::max(band.reader_end, pixel + 1);
      }
    }
    if (band.begin < band.end) bands.push_back(band);
  }
  return bands;
}

// Where one chunk accumulates the parameter gradients (null: not wanted), scratch layout.
template <typename T>
struct ParamGrads {
  T* key_bias;      // (H, k2)
  T* shift_weight;  // (k2, k2, padded D)
  T* shift_bias;    // (k2, padded D)
  static int64_t size(const Geometry& g) {
    return g.heads * g.k2 + g.k2 * g.k2 * g.padded_dim + g.k2 * g.padded_dim;
  }
};

template <typename T>
struct BackwardScratch {
  // probs and scaled dlogits of every pixel of the band's reader rows, k2 each.
  static int64_t size(const Geometry& g, int64_t reader_rows) {
    return 2 * reader_rows * g.width * g.k2 + g.padded_dim * (4 + 5 * g.k2) + 2 * g.k2;
  }
  T *probs, *dlogits;                        // (reader rows, X, k2)
  T *q, *dout, *grad_key, *grad_value;       // (padded D)
  T *keys, *values, *shifted_keys;           // (k2, padded D)
  T *q_keys, *dout_values;                   // (k2, padded D): q * gathered K, dO * gathered V
  T *logits, *dprobs;                        // (k2)
  BackwardScratch(ScratchCursor<T> cursor, const Geometry& g, int64_t reader_rows)
      : probs(cursor.take(reader_rows * g.width * g.k2)),
        dlogits(cursor.take(reader_rows * g.width * g.k2)),
        q(cursor.take(g.padded_dim)),
        dout(cursor.take(g.padded_dim)),
        grad_key(cursor.take(g.padded_dim)),
        grad_value(cursor.take(g.padded_dim)),
        keys(cursor.take(g.k2 * g.padded_dim)),
        values(cursor.take(g.k2 * g.padded_dim)),
        shifted_keys(cursor.take(g.k2 * g.padded_dim)),
        q_keys(cursor.take(g.k2 * g.padded_dim)),
        dout_values(cursor.take(g.k2 * g.padded_dim)),
        logits(cursor.take(g.k2)),
        dprobs(cursor.take(g.k2)) {}
};

template <typename T>
struct BackwardMaps {
  MapView<const T> q, k, v, dout;
  const T* lse;  // contiguous (B, H, Y, X)
  T *grad_q, *grad_k, *grad_v;  // contiguous (B, H, Y, X, D)
};

// Pass A for one pixel: its window probabilities and scaled logit gradients into probs/dlogits;
// for a pixel of the band itself also dq and the parameter gradients.
template <typename T, typename Shift>
void backward_pixel(const Geometry& g, const Shift& shift, const BiasTables<T>& biases,
                    const BackwardMaps<T>& maps, BackwardScratch<T>& s, const Window& w,
                    int64_t b, int64_t h, int64_t y, int64_t x, T* probs, T* dlogits,
                    bool in_band, const ParamGrads<T>& grads) {
  using V = Vectorized<T>;
  const int64_t dp = g.padded_dim;
  copy_padded(maps.q.pixel(b, h, y, x), g.head_dim, dp, s.q);
  copy_padded(maps.dout.pixel(b, h, y, x), g.head_dim, dp, s.dout);
  gather_window(g, maps.k, b, h, w, s.keys);
  gather_window(g, maps.v, b, h, w, s.values);
  window_logits(g, shift, biases.key + h * g.k2 * dp, w, s.q, s.keys, s.logits,
                in_band ? s.shifted_keys : static_cast<T*>(nullptr));
  const T lse = maps.lse[((b * g.heads + h) * g.height + y) * g.width + x];
  T delta = 0;  // sum_n p_n dp_n = <dO, out>
  for (int64_t n = 0; n < g.k2; ++n) {
    probs[n] = math::probability(s.logits[n], lse);
    s.dprobs[n] = 0;
    if (probs[n] == T(0)) continue;
    V acc(T(0));
    for (int64_t c = 0; c < dp; c += V::size()) {
      const V value = shift.shifted(n, c, s.values, V::loadu(biases.value + n * dp + c));
      acc = at::vec::fmadd(V::loadu(s.dout + c), value, acc);
    }
    s.dprobs[n] = at::vec::vec_reduce_all<T>([](V& a, V& b) { return a + b; }, acc);
    delta += probs[n] * s.dprobs[n];
  }
  for (int64_t n = 0; n < g.k2; ++n) {
    dlogits[n] = T(g.scale) * math::logit_grad(probs[n], s.dprobs[n], delta);
  }
  if (!in_band) return;

  // dq = scale * sum_n dlogit_n Kn
  T* grad_q = maps.grad_q + (((b * g.heads + h) * g.height + y) * g.width + x) * g.head_dim;
  for (int64_t c = 0; c < dp; c += V::size()) {
    V acc(T(0));
    for (int64_t n = 0; n < g.k2; ++n) {
      if (dlogits[n] != T(0)) {
        acc = at::vec::fmadd(V(dlogits[n]), V::loadu(s.shifted_keys + n * dp + c), acc);
      }
    }
    store_channels(acc, grad_q, c, g.head_dim);
  }
  // Kn holds key_bias[h, n] in every channel, Kn and Vn hold shift_bias[c, n].
  if (grads.key_bias) {
    T q_sum = 0;
    for (int64_t c = 0; c < g.head_dim; ++c) q_sum += s.q[c];
    for (int64_t n = 0; n < g.k2; ++n) grads.key_bias[h * g.k2 + n] += dlogits[n] * q_sum;
  }
  if (grads.shift_bias) {
    for (int64_t n = 0; n < g.k2; ++n) {
      T* row = grads.shift_bias + n * dp;
      for (int64_t c = 0; c < dp; c += V::size()) {
        const V update = at::vec::fmadd(V(dlogits[n]), V::loadu(s.q + c),
                                        V(probs[n]) * V::loadu(s.dout + c));
        (V::loadu(row + c) + update).store(row + c);
      }
    }
  }
  // dW[c,n,m] += dlogit_n q[c] K[c, m] + p_n dO[c] V[c, m]
  if (grads.shift_weight) {
    for (int64_t m = 0; m < g.k2; ++m) {
      for (int64_t c = 0; c < dp; c += V::size()) {
        const int64_t i = m * dp + c;
        (V::loadu(s.q + c) * V::loadu(s.keys + i)).store(s.q_keys + i);
        (V::loadu(s.dout + c) * V::loadu(s.values + i)).store(s.dout_values + i);
      }
    }
    for (int64_t n = 0; n < g.k2; ++n) {
      if (probs[n] == T(0)) continue;
      const V dlogit(dlogits[n]), prob(probs[n]);
      T* block = grads.shift_weight + n * g.k2 * dp;
      for (int64_t i = 0; i < g.k2 * dp; i += V::size()) {
        const V updated = at::vec::fmadd(
            dlogit, V::loadu(s.q_keys + i),
            at::vec::fmadd(prob, V::loadu(s.dout_values + i), V::loadu(block + i)));
        updated.store(block + i);
      }
    }
  }
}

// Pass B for one position (y, x) of the band: dK and dV gathered from the pixels that read it.
template <typename T, typename Shift>
void gather_key_value_grads(const Geometry& g, const Shift& shift, const BackwardMaps<T>& maps,
                            BackwardScratch<T>& s, const Band& band, int64_t b, int64_t h,
                            int64_t y, int64_t x) {
  using V = Vectorized<T>;
  const int64_t dp = g.padded_dim;
  std::fill_n(s.grad_key, dp, T(0));
  std::fill_n(s.grad_value, dp, T(0));
  const int64_t row_readers = math::reader_count(g.border, y, g.rows);
  const int64_t col_readers = math::reader_count(g.border, x, g.cols);
  for (int64_t ey = 0; ey < row_readers; ++ey) {
    const math::AxisReader ry = math::axis_reader(g.border, y, ey, g.rows);
    if (ry.pixel < 0) continue;
    for (int64_t ex = 0; ex < col_readers; ++ex) {
      const math::AxisReader rx = math::axis_reader(g.border, x, ex, g.cols);
      if (rx.pixel < 0) continue;
      const int64_t slot = ry.slot * g.kernel_size + rx.slot;
      const int64_t reader = ((ry.pixel - band.reader_begin) * g.width + rx.pixel) * g.k2;
      const T* q = maps.q.pixel(b, h, ry.pixel, rx.pixel);
      const T* dout = maps.dout.pixel(b, h, ry.pixel, rx.pixel);
      for (int64_t c = 0; c < dp; c += V::size()) {
        const V dk = load_channels(q, c, g.head_dim) * shift.adjoint(slot, c, s.dlogits + reader);
        const V dv = load_channels(dout, c, g.head_dim) * shift.adjoint(slot, c, s.probs + reader);
        (V::loadu(s.grad_key + c) + dk).store(s.grad_key + c);
        (V::loadu(s.grad_value + c) + dv).store(s.grad_value + c);
      }
    }
  }
  const int64_t pixel = (((b * g.heads + h) * g.height + y) * g.width + x) * g.head_dim;
  std::copy_n(s.grad_key, g.head_dim, maps.grad_k + pixel);
  std::copy_n(s.grad_value, g.head_dim, maps.grad_v + pixel);
}

template <typename T, typename Shift>
void backward_kernel(const Geometry& g, const Shift& shift, const BiasTables<T>& biases,
                     const BackwardMaps<T>& maps, std::array<bool, 3> want_param_grads,
                     at::Tensor& param_grads) {
  const std::vector<Band> bands = make_bands(g);
  const int64_t num_bands = static_cast<int64_t>(bands.size());
  const int64_t tasks = g.batch * g.heads * num_bands;
  const int64_t chunks = chunk_count(tasks);
  param_grads = at::zeros({std::max<int64_t>(chunks, 1), ParamGrads<T>::size(g)},
                          c10::CppTypeToScalarType<T>::value);
  if (chunks == 0) return;
  int64_t max_reader_rows = 0;
  for (const Band& band : bands) max_reader_rows = std::max(max_reader_rows, band.reader_rows());
  const int64_t per_chunk = BackwardScratch<T>::size(g, max_reader_rows);
  at::Tensor scratch = at::empty({chunks, per_chunk}, c10::CppTypeToScalarType<T>::value);

  for_each_chunk(tasks, chunks, [&](int64_t chunk, int64_t begin, int64_t end) {
    BackwardScratch<T> s(ScratchCursor<T>(scratch.data_ptr<T>() + chunk * per_chunk), g,
                         max_reader_rows);
    ScratchCursor<T> grads_cursor(param_grads.data_ptr<T>() + chunk * ParamGrads<T>::size(g));
    ParamGrads<T> grads{grads_cursor.take(g.heads * g.k2),
                        grads_cursor.take(g.k2 * g.k2 * g.padded_dim),
                        grads_cursor.take(g.k2 * g.padded_dim)};
    if (!want_param_grads[0]) grads.key_bias = nullptr;
    if (!want_param_grads[1]) grads.shift_weight = nullptr;
    if (!want_param_grads[2]) grads.shift_bias = nullptr;
    std::vector<int64_t> positions(2 * g.kernel_size);
    Window w{positions.data(), positions.data() + g.kernel_size};
    for (int64_t task = begin; task < end; ++task) {  // task = one band of one (b, h)
      const Band& band = bands[task % num_bands];
      const int64_t bh = task / num_bands, b = bh / g.heads, h = bh % g.heads;
      for (int64_t y = band.reader_begin; y < band.reader_end; ++y) {
        w.set_row(g, y);
        const bool in_band = y >= band.begin && y < band.end;
        for (int64_t x = 0; x < g.width; ++x) {
          w.set_col(g, x);
          const int64_t pixel = ((y - band.reader_begin) * g.width + x) * g.k2;
          backward_pixel(g, shift, biases, maps, s, w, b, h, y, x, s.probs + pixel,
                         s.dlogits + pixel, in_band, grads);
        }
      }
      for (int64_t y = band.begin; y < band.end; ++y) {
        for (int64_t x = 0; x < g.width; ++x) {
          gather_key_value_grads(g, shift, maps, s, band, b, h, y, x);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Entry points.

// Inputs as the kernels want them: float32 for the half types, unit channel stride.
at::Tensor prepare(const at::Tensor& t) {
  at::Tensor converted = t.to(attention_accumulate_type(t.scalar_type()));
  return converted.size(-1) > 1 && converted.stride(-1) != 1 ? converted.contiguous() : converted;
}

Geometry make_geometry(const at::Tensor& query, int64_t kernel_size, int64_t dilation,
                       c10::string_view border, std::optional<double> scale, int64_t vector_size) {
  Geometry g;
  g.batch = query.size(0);
  g.heads = query.size(1);
  g.height = query.size(2);
  g.width = query.size(3);
  g.head_dim = query.size(4);
  g.padded_dim = (g.head_dim + vector_size - 1) / vector_size * vector_size;
  g.kernel_size = kernel_size;
  g.k2 = kernel_size * kernel_size;
  g.border = parse_slide_border(border);
  g.rows = {g.height, kernel_size, dilation};
  g.cols = {g.width, kernel_size, dilation};
  g.scale = slide_attention_scale(query, scale);
  return g;
}

// (..., D) -> (..., padded D) with zeros, contiguous.
at::Tensor pad_channels(const at::Tensor& t, const Geometry& g) {
  return at::constant_pad_nd(t, {0, g.padded_dim - g.head_dim}).contiguous();
}

// Everything the kernels need from the optional parameters, in scratch layout.
struct PreparedParameters {
  at::Tensor weight;      // (k2, k2, padded D) or undefined (pure shift)
  at::Tensor key_bias;    // (H, k2, padded D)
  at::Tensor value_bias;  // (k2, padded D)
};

PreparedParameters prepare_parameters(const Geometry& g, const at::TensorOptions& options,
                                      const std::optional<at::Tensor>& key_bias,
                                      const std::optional<at::Tensor>& shift_weight,
                                      const std::optional<at::Tensor>& shift_bias) {
  auto given = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  PreparedParameters p;
  at::Tensor bias = given(shift_bias) ? shift_bias->to(options).t()
                                      : at::zeros({g.k2, g.head_dim}, options);  // (k2, D)
  p.value_bias = pad_channels(bias, g);
  at::Tensor keys = bias.unsqueeze(0).expand({g.heads, g.k2, g.head_dim});
  if (given(key_bias)) keys = keys + key_bias->to(options).unsqueeze(-1);
  p.key_bias = pad_channels(keys, g);
  if (given(shift_weight)) p.weight = pad_channels(shift_weight->to(options).permute({1, 2, 0}), g);
  return p;
}

template <typename T>
BiasTables<T> bias_tables(const PreparedParameters& p) {
  return {p.key_bias.data_ptr<T>(), p.value_bias.data_ptr<T>()};
}

// Calls fn with the shift policy the parameters ask for.
template <typename T, typename Fn>
void with_shift(const Geometry& g, const PreparedParameters& p, const Fn& fn) {
  if (p.weight.defined()) {
    fn(WeightedShift<T>{p.weight.data_ptr<T>(), g.k2, g.padded_dim});
  } else {
    fn(PureShift<T>{g.padded_dim});
  }
}

std::tuple<at::Tensor, at::Tensor> slide_attention_forward_cpu(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value, int64_t kernel_size,
    int64_t dilation, const std::optional<at::Tensor>& key_bias,
    const std::optional<at::Tensor>& shift_weight, const std::optional<at::Tensor>& shift_bias,
    c10::string_view border, std::optional<double> scale) {
  check_slide_attention_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                               shift_bias, border);
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty(q.sizes().slice(0, 4), q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_forward_cpu", [&] {
    const Geometry g = make_geometry(q, kernel_size, dilation, border, scale,
                                     Vectorized<scalar_t>::size());
    const PreparedParameters params =
        prepare_parameters(g, q.options(), key_bias, shift_weight, shift_bias);
    with_shift<scalar_t>(g, params, [&](const auto& shift) {
      forward_kernel<scalar_t>(g, shift, bias_tables<scalar_t>(params), map_view<const scalar_t>(q),
                               map_view<const scalar_t>(k), map_view<const scalar_t>(v),
                               out.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    });
  });
  return {out.to(query.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
slide_attention_backward_cpu(const at::Tensor& grad_output, const at::Tensor& query,
                             const at::Tensor& key, const at::Tensor& value,
                             const at::Tensor& output, const at::Tensor& logsumexp,
                             int64_t kernel_size, int64_t dilation,
                             const std::optional<at::Tensor>& key_bias,
                             const std::optional<at::Tensor>& shift_weight,
                             const std::optional<at::Tensor>& shift_bias, c10::string_view border,
                             std::optional<double> scale, std::array<bool, 3> compute_param_grads) {
  check_slide_attention_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                               shift_bias, border);
  auto given = [](const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); };
  const std::array<bool, 3> want = {compute_param_grads[0] && given(key_bias),
                                    compute_param_grads[1] && given(shift_weight),
                                    compute_param_grads[2] && given(shift_bias)};
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  const at::Tensor dout = prepare(grad_output);
  const at::Tensor lse = logsumexp.to(q.scalar_type()).contiguous();
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(q.sizes(), q.options());
  at::Tensor grad_v = at::empty(q.sizes(), q.options());
  at::Tensor grad_key_bias, grad_shift_weight, grad_shift_bias;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_backward_cpu", [&] {
    using T = scalar_t;
    const Geometry g = make_geometry(q, kernel_size, dilation, border, scale,
                                     Vectorized<T>::size());
    const PreparedParameters params =
        prepare_parameters(g, q.options(), key_bias, shift_weight, shift_bias);
    const BackwardMaps<T> maps{map_view<const T>(q),    map_view<const T>(k),
                               map_view<const T>(v),    map_view<const T>(dout),
                               lse.data_ptr<T>(),       grad_q.data_ptr<T>(),
                               grad_k.data_ptr<T>(),    grad_v.data_ptr<T>()};
    at::Tensor partials;  // (chunks, ParamGrads size), summed in chunk order below
    with_shift<T>(g, params, [&](const auto& shift) {
      backward_kernel<T>(g, shift, bias_tables<T>(params), maps, want, partials);
    });
    at::Tensor total = partials[0].clone();
    for (int64_t c = 1; c < partials.size(0); ++c) total += partials[c];
    const int64_t kb_size = g.heads * g.k2, w_size = g.k2 * g.k2 * g.padded_dim;
    if (want[0]) grad_key_bias = total.narrow(0, 0, kb_size).view({g.heads, g.k2});
    if (want[1]) {
      grad_shift_weight = total.narrow(0, kb_size, w_size)
                              .view({g.k2, g.k2, g.padded_dim})
                              .narrow(2, 0, g.head_dim)
                              .permute({2, 0, 1});
    }
    if (want[2]) {
      grad_shift_bias = total.narrow(0, kb_size + w_size, g.k2 * g.padded_dim)
                            .view({g.k2, g.padded_dim})
                            .narrow(1, 0, g.head_dim)
                            .t();
    }
  });
  auto to_input_type = [&](const at::Tensor& grad) {
    return grad.defined() ? grad.to(query.scalar_type()).contiguous() : grad;
  };
  return {to_input_type(grad_q),          to_input_type(grad_k),
          to_input_type(grad_v),          to_input_type(grad_key_bias),
          to_input_type(grad_shift_weight), to_input_type(grad_shift_bias)};
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, CPU, m) {
  m.impl("_slide_attention_forward", &slide_attention_forward_cpu);
  m.impl("_slide_attention_backward", &slide_attention_backward_cpu);
}

}  // namespace slideformer::ops
