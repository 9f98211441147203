// slide_attention, CPU kernels (docs/operators.md).
// Forward, per pixel and head: gather the k*k neighbours of K and V once into scratch
// (k*k x D, zeros where a slot reads nothing; read in place when the whole window lies inside
// the map), mix them with W on the fly through the shared math of ops/common/slide_math.h,
// softmax over the k*k logits; only out and the log-sum-exp are stored. Backward works on bands of
// rows: pass A recomputes each pixel's window probabilities and logit gradients (kept for the band
// and its halo rows, the pixels whose windows reach into the band) and produces dq and the
// parameter gradients; pass B gathers dK and dV of every band position from the pixels that read it
// (the inverse neighbourhood), so no two threads write the same element and no atomics are needed.
// Vectorised over D (at::vec, in chunks of up to four vectors so that the mixing chains overlap,
// as wide as D needs: one AVX-512 vector for D = 16; channels padded to whole chunks in scratch),
// parallel over (B, H, rows).
// The Slide-Transformer configuration (zeros border, 3x3, learnable shift) takes the faster
// kernels of ops/cpu/slide_zeros_kernel.cpp instead; these serve every other configuration.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "ops/attention.h"
#include "ops/common/online_softmax.h"
#include "ops/common/slide_parameters.h"
#include "ops/common/slide_math.h"
#include "ops/cpu/channel_chunk.h"
#include "ops/cpu/slide_zeros_kernel.h"
#include "ops/cpu/vec_utils.h"
#include "ops/cpu/work_split.h"
#include "ops/slide_attention.h"

namespace slideformer::ops {

namespace math {
// The shared mixing math on chunks of channels.
template <typename T, int kVectors>
struct SlideLanes<cpu::ChannelChunk<T, kVectors>> {
  using V = cpu::ChannelChunk<T, kVectors>;
  static V load(const T* p) { return V::loadu(p); }
  static V multiply_add(const V& a, const V& b, const V& c) { return V::fmadd(a, b, c); }
};
}  // namespace math

namespace {

struct Geometry {
  int64_t batch, heads, height, width, head_dim;
  // Vectors per chunk: the fewest that cover head_dim, at most four (enough FMAs in flight).
  int chunk_vectors;
  int64_t padded_dim;  // head_dim rounded up to whole chunks: the channel stride of scratch
  int64_t kernel_size, k2;
  math::SlideBorder border;
  math::SlideAxis rows, cols;
  double scale;
  // The parameter tables and gradient partials: channels innermost, padded_dim apart.
  SlideParameterLayout params;
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

// A map without elements (D = 0) has no data pointer: its pixels all sit at that null pointer
// (offsetting null is undefined behaviour even when nothing is read).
template <typename T>
MapView<T> map_view(const at::Tensor& t) {
  if (t.numel() == 0) return {nullptr, {0, 0, 0, 0}};
  return {t.data_ptr<std::remove_const_t<T>>(),
          {t.stride(0), t.stride(1), t.stride(2), t.stride(3)}};
}

// Channels [c, c + chunk) of a D-channel row; those past D read as 0 / are not written.
template <typename V, typename T>
V load_channels(const T* row, int64_t c, int64_t head_dim) {
  return V::load_partial(row + c, head_dim - c);
}
template <typename V, typename T>
void store_channels(const V& v, T* row, int64_t c, int64_t head_dim) {
  v.store_partial(row + c, head_dim - c);
}

// dst[0, padded) = src[0, head_dim) followed by zeros.
template <typename T>
void copy_padded(const T* src, int64_t head_dim, int64_t padded, T* dst) {
  std::copy_n(src, head_dim, dst);
  std::fill(dst + head_dim, dst + padded, T(0));
}

template <typename T>
using Slots = math::WindowSlots<T>;

// Window slot n = (row, col) = (n / k, n % k).
struct Slot {
  int64_t n, row, col;
};

// The deformed shift with its weight table (laid out by `params`, channels innermost). Both
// operations run on kSets windows or coefficient sets at once, reading the weight once for all
// of them.
template <typename T, int kVectors>
struct WeightedShift {
  using Chunk = cpu::ChannelChunk<T, kVectors>;
  const T* weight;
  int64_t kernel_size;
  SlideParameterLayout params;
  // out[s] += shifted copy n of window s, channels [c, c + chunk) (out holds the bias on entry).
  template <int kSets>
  void shifted(const Slot& slot, int64_t c, const Slots<T>* windows, Chunk* out) const {
    Slots<T> at_channel[kSets];
    for (int s = 0; s < kSets; ++s) at_channel[s] = windows[s].at_channel(c);
    math::mix_shifted_sets<kSets>(weight + params.weight(c, slot.n, 0), params.weight_slot_step,
                                  at_channel, kernel_size, out);
  }
  // out[s] = sum_n coeffs[s][n] * W[c, n, m] for the channels [c, c + chunk).
  template <int kSets>
  void adjoint(int64_t m, int64_t c, const T* const* coeffs, Chunk* out) const {
    math::mix_shifted_adjoint_sets<kSets>(weight + params.weight(c, 0, m), params.weight_shift_step,
                                          coeffs, params.k2, out);
  }
};

// No shift_weight: shifted copy n is gathered neighbour n itself (the fast path).
template <typename T, int kVectors>
struct PureShift {
  using Chunk = cpu::ChannelChunk<T, kVectors>;
  template <int kSets>
  void shifted(const Slot& slot, int64_t c, const Slots<T>* windows, Chunk* out) const {
    for (int s = 0; s < kSets; ++s) {
      out[s] = out[s] + Chunk::loadu(windows[s].slot(slot.row, slot.col) + c);
    }
  }
  template <int kSets>
  void adjoint(int64_t m, int64_t c, const T* const* coeffs, Chunk* out) const {
    for (int s = 0; s < kSets; ++s) out[s] = Chunk(coeffs[s][m]);
  }
};

// The bias tables of ops/common/slide_parameters.h, laid out by Geometry::params.
template <typename T>
struct BiasTables {
  const T* key;    // one table per head
  const T* value;
};

// The window of one pixel: the position each row / column slot reads (-1: nothing) and which
// of the k*k slots are masked, refreshed per row and per pixel.
class Window {
 public:
  explicit Window(const Geometry& g)
      : g_(g), rows_(g.kernel_size), cols_(g.kernel_size), masked_(g.k2) {}
  void set_row(int64_t y) {
    rows_inside_ = true;
    for (int64_t j = 0; j < g_.kernel_size; ++j) {
      rows_[j] = math::neighbor_position(g_.border, y, j, g_.rows);
      rows_inside_ &= rows_[j] >= 0;
    }
  }
  void set_col(int64_t x) {
    cols_inside_ = true;
    for (int64_t j = 0; j < g_.kernel_size; ++j) {
      cols_[j] = math::neighbor_position(g_.border, x, j, g_.cols);
      cols_inside_ &= cols_[j] >= 0;
    }
    for (int64_t jy = 0; jy < g_.kernel_size; ++jy) {
      for (int64_t jx = 0; jx < g_.kernel_size; ++jx) {
        masked_[jy * g_.kernel_size + jx] = math::slot_is_masked(g_.border, rows_[jy], cols_[jx]);
      }
    }
  }
  int64_t row(int64_t jy) const { return rows_[jy]; }
  int64_t col(int64_t jx) const { return cols_[jx]; }
  bool masked(int64_t n) const { return masked_[n]; }
  // Every slot reads a position of the map: then slot (jy, jx) sits at (row(0) + jy * dilation,
  // col(0) + jx * dilation) in both border modes.
  bool inside() const { return rows_inside_ && cols_inside_; }

 private:
  const Geometry& g_;
  std::vector<int64_t> rows_, cols_;
  std::vector<char> masked_;
  bool rows_inside_ = false, cols_inside_ = false;
};

// The window of map[b, h] around the pixel: straight into the map when every slot is inside
// it and no channel needs padding, else copied into `scratch` ([m][padded D], 0 where a slot
// reads nothing).
template <typename T>
Slots<T> gather_window(const Geometry& g, const MapView<const T>& map, int64_t b, int64_t h,
                       const Window& w, T* scratch) {
  if (w.inside() && g.head_dim == g.padded_dim) {
    return {map.pixel(b, h, w.row(0), w.col(0)), g.rows.dilation * map.stride[2],
            g.cols.dilation * map.stride[3]};
  }
  for (int64_t jy = 0; jy < g.kernel_size; ++jy) {
    for (int64_t jx = 0; jx < g.kernel_size; ++jx) {
      const int64_t y = w.row(jy), x = w.col(jx);
      T* dst = scratch + (jy * g.kernel_size + jx) * g.padded_dim;
      if (y >= 0 && x >= 0) {
        copy_padded(map.pixel(b, h, y, x), g.head_dim, g.padded_dim, dst);
      } else {
        std::fill_n(dst, g.padded_dim, T(0));
      }
    }
  }
  return {scratch, g.kernel_size * g.padded_dim, g.padded_dim};
}

// One window to contract: contracted[n] = <u, shifted copy n + bias[n]> for every slot n (0 for
// masked slots); the copies (0 for masked slots) also land in `shifted` when it is given. Logits
// contract the keys with u = q, backward's dp the values with u = dO.
template <typename T>
struct Contraction {
  const T* bias;    // a bias table
  const T* u;       // (padded D)
  Slots<T> window;  // the gathered neighbours
  T* contracted;    // (k2)
  T* shifted;       // (k2, padded D) or null
};

// Runs kSets contractions together, so the keys and values of one pixel share the weight reads.
template <typename T, typename Shift, size_t kSets>
void contract_shifted(const Geometry& g, const Shift& shift, const Window& w,
                      const std::array<Contraction<T>, kSets>& sets) {
  using V = typename Shift::Chunk;
  Slots<T> windows[kSets];
  for (size_t i = 0; i < kSets; ++i) windows[i] = sets[i].window;
  for (int64_t row = 0; row < g.kernel_size; ++row) {
    for (int64_t col = 0; col < g.kernel_size; ++col) {
      const Slot slot{row * g.kernel_size + col, row, col};
      if (w.masked(slot.n)) {  // left out of the softmax: contributes 0 everywhere
        for (const auto& set : sets) {
          set.contracted[slot.n] = T(0);
          if (set.shifted) std::fill_n(set.shifted + slot.n * g.padded_dim, g.padded_dim, T(0));
        }
        continue;
      }
      V acc[kSets], copy[kSets];
      for (auto& a : acc) a = V(T(0));
      for (int64_t c = 0; c < g.padded_dim; c += V::size()) {
        for (size_t i = 0; i < kSets; ++i) {
          copy[i] = V::loadu(sets[i].bias + g.params.bias(c, slot.n));
        }
        shift.template shifted<kSets>(slot, c, windows, copy);
        for (size_t i = 0; i < kSets; ++i) {
          if (sets[i].shifted) copy[i].store(sets[i].shifted + slot.n * g.padded_dim + c);
          acc[i] = V::fmadd(V::loadu(sets[i].u + c), copy[i], acc[i]);
        }
      }
      for (size_t i = 0; i < kSets; ++i) sets[i].contracted[slot.n] = acc[i].sum();
    }
  }
}

// <q, Kn> into logits: scale it, -inf for masked slots.
template <typename T>
void finish_logits(const Geometry& g, const Window& w, T* logits) {
  for (int64_t n = 0; n < g.k2; ++n) {
    logits[n] = w.masked(n) ? math::neg_inf<T>() : T(g.scale) * logits[n];
  }
}

// sum_n coeffs[n] * (shifted value n) for the channels [c, c + chunk), through the adjoint of
// the mixing: sum_m gathered[m] * (sum_n coeffs[n] W[c,n,m]) + sum_n coeffs[n] shift_bias[c,n].
template <typename T, typename Shift>
typename Shift::Chunk combine_shifted(const Geometry& g, const Shift& shift, const T* bias,
                                      const Slots<T>& window, const T* coeffs, int64_t c) {
  using V = typename Shift::Chunk;
  V acc = math::mix_shifted_adjoint<V>(bias + g.params.bias(c, 0), g.params.bias_shift_step,
                                       coeffs, g.k2);
  for (int64_t row = 0; row < g.kernel_size; ++row) {
    for (int64_t col = 0; col < g.kernel_size; ++col) {
      V adjoint;
      shift.template adjoint<1>(row * g.kernel_size + col, c, &coeffs, &adjoint);
      acc = V::fmadd(V::loadu(window.slot(row, col) + c), adjoint, acc);
    }
  }
  return acc;
}

// ---------------------------------------------------------------------------------------------
// Scratch and work split.

using cpu::ScratchCursor;
using cpu::WorkSplit;

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
struct ForwardScratch {
  static int64_t size(const Geometry& g) { return g.padded_dim * (1 + 2 * g.k2) + g.k2; }
  T *q, *keys, *values, *probs;
  explicit ForwardScratch(ScratchCursor<T> cursor, const Geometry& g)
      : q(cursor.take(g.padded_dim)),
        keys(cursor.take(g.k2 * g.padded_dim)),
        values(cursor.take(g.k2 * g.padded_dim)),
        probs(cursor.take(g.k2)) {}
};

template <typename T, typename Shift>
void forward_kernel(const Geometry& g, const Shift& shift, const BiasTables<T>& biases,
                    const MapView<const T>& q_map, const MapView<const T>& k_map,
                    const MapView<const T>& v_map, T* out, T* lse) {
  const WorkSplit split(g.rows_total());
  if (split.groups() == 0) return;
  const int64_t per_worker = ForwardScratch<T>::size(g);
  at::Tensor scratch = at::empty({split.workers(), per_worker}, c10::CppTypeToScalarType<T>::value);
  split.run([&](int64_t group, int64_t worker) {
    ForwardScratch<T> s(ScratchCursor<T>(scratch.data_ptr<T>() + worker * per_worker), g);
    Window w(g);
    // A task is one row of one (b, h).
    for (int64_t task = split.begin(group); task < split.end(group); ++task) {
      const int64_t bh = task / g.height, b = bh / g.heads, h = bh % g.heads;
      const int64_t y = task % g.height;
      const T* key_bias = biases.key + g.params.key_bias_table(h);
      w.set_row(y);
      for (int64_t x = 0; x < g.width; ++x) {
        w.set_col(x);
        copy_padded(q_map.pixel(b, h, y, x), g.head_dim, g.padded_dim, s.q);
        const Slots<T> keys = gather_window(g, k_map, b, h, w, s.keys);
        const Slots<T> values = gather_window(g, v_map, b, h, w, s.values);
        contract_shifted(g, shift, w,
                         std::array<Contraction<T>, 1>{{{key_bias, s.q, keys, s.probs, nullptr}}});
        finish_logits(g, w, s.probs);
        const T row_max = cpu::max_of(s.probs, g.k2);
        const T sum = cpu::exp_shifted_sum_inplace(s.probs, g.k2, row_max);
        cpu::scale_inplace(s.probs, math::output_normalizer(sum), g.k2);
        const int64_t pixel = task * g.width + x;
        lse[pixel] = math::finish_logsumexp(row_max, sum);
        for (int64_t c = 0; c < g.padded_dim; c += Shift::Chunk::size()) {
          store_channels(combine_shifted(g, shift, biases.value, values, s.probs, c),
                         out + pixel * g.head_dim, c, g.head_dim);
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------------------------
// Backward.

// For every position along one axis, the pixels that read it and through which slot, with the
// pixels that do not exist left out: readers of t are entries [first[t], first[t + 1]).
struct AxisReaderTable {
  std::vector<math::AxisReader> entries;
  std::vector<int64_t> first;
  AxisReaderTable(math::SlideBorder border, const math::SlideAxis& axis) {
    for (int64_t t = 0; t < axis.length; ++t) {
      first.push_back(static_cast<int64_t>(entries.size()));
      for (int64_t e = 0; e < math::reader_count(border, t, axis); ++e) {
        const math::AxisReader reader = math::axis_reader(border, t, e, axis);
        if (reader.pixel >= 0) entries.push_back(reader);
      }
    }
    first.push_back(static_cast<int64_t>(entries.size()));
  }
  const math::AxisReader* begin(int64_t t) const { return entries.data() + first[t]; }
  const math::AxisReader* end(int64_t t) const { return entries.data() + first[t + 1]; }
};

// A band of rows [begin, end) and the pixel rows [reader_begin, reader_end) whose windows read
// into it (the band itself plus its halo).
struct Band {
  int64_t begin, end, reader_begin, reader_end;
  int64_t reader_rows() const { return reader_end - reader_begin; }
};

// Per-worker budget for the probabilities and logit gradients of a band (4 MiB in float32).
constexpr int64_t kBandScratchElements = int64_t(1) << 20;

std::vector<Band> make_bands(const Geometry& g, const AxisReaderTable& row_readers) {
  const int64_t planes = std::max<int64_t>(g.batch * g.heads, 1);
  // Enough tasks to keep every thread busy, and bands short enough for the scratch budget;
  // each extra band recomputes its halo rows.
  const int64_t for_threads = (4 * at::get_num_threads() + planes - 1) / planes;
  const int64_t row_elements = std::max<int64_t>(2 * g.width * g.k2, 1);
  const int64_t rows_in_budget = std::max<int64_t>(1, kBandScratchElements / row_elements);
  const int64_t for_memory = (g.height + rows_in_budget - 1) / rows_in_budget;
  const int64_t count =
      std::clamp<int64_t>(std::max(for_threads, for_memory), 1, std::max<int64_t>(g.height, 1));
  std::vector<Band> bands;
  for (int64_t i = 0; i < count; ++i) {
    Band band{i * g.height / count, (i + 1) * g.height / count, g.height, 0};
    for (int64_t t = band.begin; t < band.end; ++t) {
      for (const math::AxisReader* r = row_readers.begin(t); r != row_readers.end(t); ++r) {
        band.reader_begin = std::min(band.reader_begin, r->pixel);
        band.reader_end = std::max(band.reader_end, r->pixel + 1);
      }
    }
    if (band.begin < band.end) bands.push_back(band);
  }
  return bands;
}

template <typename T>
struct BackwardScratch {
  // probs and scaled dlogits of every pixel of the band's reader rows, k2 each.
  static int64_t size(const Geometry& g, int64_t reader_rows) {
    return 2 * reader_rows * g.width * g.k2 + g.padded_dim * (2 + 3 * g.k2) + 2 * g.k2;
  }
  T *probs, *dlogits;               // (reader rows, X, k2)
  T *q, *dout;                      // (padded D)
  T *keys, *values, *shifted_keys;  // (k2, padded D)
  T *logits, *dprobs;               // (k2)
  BackwardScratch(ScratchCursor<T> cursor, const Geometry& g, int64_t reader_rows)
      : probs(cursor.take(reader_rows * g.width * g.k2)),
        dlogits(cursor.take(reader_rows * g.width * g.k2)),
        q(cursor.take(g.padded_dim)),
        dout(cursor.take(g.padded_dim)),
        keys(cursor.take(g.k2 * g.padded_dim)),
        values(cursor.take(g.k2 * g.padded_dim)),
        shifted_keys(cursor.take(g.k2 * g.padded_dim)),
        logits(cursor.take(g.k2)),
        dprobs(cursor.take(g.k2)) {}
};

template <typename T>
struct BackwardMaps {
  MapView<const T> q, k, v, dout;
  const T* lse;                 // contiguous (B, H, Y, X)
  T *grad_q, *grad_k, *grad_v;  // contiguous (B, H, Y, X, D)
};

// Pass A for one pixel: its window probabilities and scaled logit gradients into probs/dlogits;
// for a pixel of the band itself also dq and the parameter gradients.
template <typename T, typename Shift>
void backward_pixel(const Geometry& g, const Shift& shift, const BiasTables<T>& biases,
                    const BackwardMaps<T>& maps, BackwardScratch<T>& s, const Window& w, int64_t b,
                    int64_t h, int64_t y, int64_t x, T* probs, T* dlogits, bool in_band,
                    T* grads) {
  using V = typename Shift::Chunk;
  const int64_t dp = g.padded_dim;
  copy_padded(maps.q.pixel(b, h, y, x), g.head_dim, dp, s.q);
  copy_padded(maps.dout.pixel(b, h, y, x), g.head_dim, dp, s.dout);
  const Slots<T> keys = gather_window(g, maps.k, b, h, w, s.keys);
  const Slots<T> values = gather_window(g, maps.v, b, h, w, s.values);
  contract_shifted(
      g, shift, w,
      std::array<Contraction<T>, 2>{
          {{biases.key + g.params.key_bias_table(h), s.q, keys, s.logits,
            in_band ? s.shifted_keys : nullptr},
           {biases.value, s.dout, values, s.dprobs, nullptr}}});
  finish_logits(g, w, s.logits);
  // p_n = exp(logit_n - lse), with the exp the forward summed for lse (0 for masked slots).
  std::copy_n(s.logits, g.k2, probs);
  cpu::exp_shifted_sum_inplace(probs, g.k2,
                               maps.lse[((b * g.heads + h) * g.height + y) * g.width + x]);
  const T delta = cpu::dot(probs, s.dprobs, g.k2);  // sum_n p_n dp_n = <dO, out>
  for (int64_t n = 0; n < g.k2; ++n) {
    dlogits[n] = T(g.scale) * math::logit_grad(probs[n], s.dprobs[n], delta);
  }
  if (!in_band) return;

  // dq = sum_n dlogit_n Kn (dlogits carry the scale)
  T* grad_q = maps.grad_q + (((b * g.heads + h) * g.height + y) * g.width + x) * g.head_dim;
  for (int64_t c = 0; c < dp; c += V::size()) {
    V acc(T(0));
    for (int64_t n = 0; n < g.k2; ++n) {
      acc = V::fmadd(V(dlogits[n]), V::loadu(s.shifted_keys + n * dp + c), acc);
    }
    store_channels(acc, grad_q, c, g.head_dim);
  }
  // Kn holds key_bias[h, n] in every channel, Kn and Vn hold shift_bias[c, n].
  const SlideParameterLayout& params = g.params;
  if (params.key_bias_grads > 0) {
    T q_sum = 0;
    for (int64_t c = 0; c < g.head_dim; ++c) q_sum += s.q[c];
    for (int64_t n = 0; n < g.k2; ++n) grads[params.key_bias_grad(h, n)] += dlogits[n] * q_sum;
  }
  if (params.shift_bias_grads > 0) {
    for (int64_t n = 0; n < g.k2; ++n) {
      for (int64_t c = 0; c < dp; c += V::size()) {
        T* entry = grads + params.shift_bias_grad(c, n);
        const V update = V::fmadd(V(dlogits[n]), V::loadu(s.q + c),
                                  V::fmadd(V(probs[n]), V::loadu(s.dout + c), V::loadu(entry)));
        update.store(entry);
      }
    }
  }
  // dW[c,n,m] += dlogit_n q[c] K[c, m] + p_n dO[c] V[c, m]
  if (params.weight_grads > 0) {
    for (int64_t row = 0; row < g.kernel_size; ++row) {
      for (int64_t col = 0; col < g.kernel_size; ++col) {
        const int64_t m = row * g.kernel_size + col;
        for (int64_t c = 0; c < dp; c += V::size()) {
          const V q_key = V::loadu(s.q + c) * V::loadu(keys.slot(row, col) + c);
          const V dout_value = V::loadu(s.dout + c) * V::loadu(values.slot(row, col) + c);
          for (int64_t n = 0; n < g.k2; ++n) {
            T* block = grads + params.weight_grad(c, n, m);
            V::fmadd(V(dlogits[n]), q_key, V::fmadd(V(probs[n]), dout_value, V::loadu(block)))
                .store(block);
          }
        }
      }
    }
  }
}

// Pass B for one position (y, x) of the band: dK and dV gathered from the pixels that read it,
// dK[c] = sum_readers q[c] * sum_n dlogit_n W[c,n,m], dV[c] = sum_readers dO[c] * sum_n p_n
// W[c,n,m] with m the slot through which the reader reads (y, x). Fixed reader order:
// deterministic.
template <typename T, typename Shift>
void gather_key_value_grads(const Geometry& g, const Shift& shift, const BackwardMaps<T>& maps,
                            const BackwardScratch<T>& s, const AxisReaderTable& row_readers,
                            const AxisReaderTable& col_readers, const Band& band, int64_t b,
                            int64_t h, int64_t y, int64_t x) {
  using V = typename Shift::Chunk;
  const int64_t pixel = (((b * g.heads + h) * g.height + y) * g.width + x) * g.head_dim;
  for (int64_t c = 0; c < g.padded_dim; c += V::size()) {
    V grad_key(T(0)), grad_value(T(0));
    for (const math::AxisReader* ry = row_readers.begin(y); ry != row_readers.end(y); ++ry) {
      for (const math::AxisReader* rx = col_readers.begin(x); rx != col_readers.end(x); ++rx) {
        const int64_t slot = ry->slot * g.kernel_size + rx->slot;
        const int64_t reader = ((ry->pixel - band.reader_begin) * g.width + rx->pixel) * g.k2;
        const T* coeffs[2] = {s.dlogits + reader, s.probs + reader};
        V adjoints[2];
        shift.template adjoint<2>(slot, c, coeffs, adjoints);
        grad_key = V::fmadd(load_channels<V>(maps.q.pixel(b, h, ry->pixel, rx->pixel), c, g.head_dim),
                            adjoints[0], grad_key);
        grad_value =
            V::fmadd(load_channels<V>(maps.dout.pixel(b, h, ry->pixel, rx->pixel), c, g.head_dim),
                     adjoints[1], grad_value);
      }
    }
    store_channels(grad_key, maps.grad_k + pixel, c, g.head_dim);
    store_channels(grad_value, maps.grad_v + pixel, c, g.head_dim);
  }
}

template <typename T, typename Shift>
void backward_kernel(const Geometry& g, const Shift& shift, const BiasTables<T>& biases,
                     const BackwardMaps<T>& maps, at::Tensor& param_grads) {
  const AxisReaderTable row_readers(g.border, g.rows), col_readers(g.border, g.cols);
  const std::vector<Band> bands = make_bands(g, row_readers);
  const int64_t num_bands = static_cast<int64_t>(bands.size());
  const WorkSplit split(g.batch * g.heads * num_bands);
  param_grads = at::zeros({std::max<int64_t>(split.groups(), 1), g.params.gradient_size()},
                          c10::CppTypeToScalarType<T>::value);
  if (split.groups() == 0) return;
  int64_t max_reader_rows = 0;
  for (const Band& band : bands) max_reader_rows = std::max(max_reader_rows, band.reader_rows());
  const int64_t per_worker = BackwardScratch<T>::size(g, max_reader_rows);
  at::Tensor scratch = at::empty({split.workers(), per_worker}, c10::CppTypeToScalarType<T>::value);

  split.run([&](int64_t group, int64_t worker) {
    BackwardScratch<T> s(ScratchCursor<T>(scratch.data_ptr<T>() + worker * per_worker), g,
                         max_reader_rows);
    // The group's partial sums of the parameter gradients.
    T* grads = param_grads.data_ptr<T>() + group * g.params.gradient_size();
    Window w(g);
    // A task is one band of rows of one (b, h).
    for (int64_t task = split.begin(group); task < split.end(group); ++task) {
      const Band& band = bands[task % num_bands];
      const int64_t bh = task / num_bands, b = bh / g.heads, h = bh % g.heads;
      for (int64_t y = band.reader_begin; y < band.reader_end; ++y) {
        w.set_row(y);
        const bool in_band = y >= band.begin && y < band.end;
        for (int64_t x = 0; x < g.width; ++x) {
          w.set_col(x);
          const int64_t pixel = ((y - band.reader_begin) * g.width + x) * g.k2;
          backward_pixel(g, shift, biases, maps, s, w, b, h, y, x, s.probs + pixel,
                         s.dlogits + pixel, in_band, grads);
        }
      }
      for (int64_t y = band.begin; y < band.end; ++y) {
        for (int64_t x = 0; x < g.width; ++x) {
          gather_key_value_grads(g, shift, maps, s, row_readers, col_readers, band, b, h, y, x);
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
                       c10::string_view border, std::optional<double> scale, int64_t lanes) {
  Geometry g;
  g.batch = query.size(0);
  g.heads = query.size(1);
  g.height = query.size(2);
  g.width = query.size(3);
  g.head_dim = query.size(4);
  g.chunk_vectors = g.head_dim <= lanes ? 1 : g.head_dim <= 2 * lanes ? 2 : 4;
  const int64_t chunk_size = g.chunk_vectors * lanes;
  g.padded_dim = (g.head_dim + chunk_size - 1) / chunk_size * chunk_size;
  g.kernel_size = kernel_size;
  g.k2 = kernel_size * kernel_size;
  g.border = parse_slide_border(border);
  g.rows = {g.height, kernel_size, dilation};
  g.cols = {g.width, kernel_size, dilation};
  g.scale = slide_attention_scale(query, scale);
  g.params = SlideParameterLayout::channels_innermost(g.heads, g.head_dim, g.k2, g.padded_dim);
  return g;
}

bool takes_zeros_path(const at::Tensor& query, int64_t kernel_size, c10::string_view border,
                      const std::optional<at::Tensor>& shift_weight) {
  return cpu::slide_zeros_kernel_applies(kernel_size, parse_slide_border(border),
                                         given(shift_weight), query.numel());
}

// The parameters as the zeros-border fast path reads them (ops/cpu/slide_zeros_kernel.h), with
// gradient sections for `want`.
cpu::SlideZerosParameters zeros_path_parameters(const at::Tensor& q, int64_t dilation,
                                                std::optional<double> scale,
                                                const std::optional<at::Tensor>& key_bias,
                                                const std::optional<at::Tensor>& shift_weight,
                                                const std::optional<at::Tensor>& shift_bias,
                                                std::array<bool, 3> want = {}) {
  const SlideParameterLayout layout =
      SlideParameterLayout::channels_outermost(q.size(1), q.size(4), shift_weight->size(1))
          .with_gradients(want);
  return {dilation, slide_attention_scale(q, scale), layout,
          slide_parameter_tables(layout, q.options(), key_bias, shift_weight, shift_bias)};
}

template <typename T>
BiasTables<T> bias_tables(const SlideParameterTables& p) {
  return {p.key_bias.data_ptr<T>(), p.value_bias.data_ptr<T>()};
}

// Calls fn with the shift policy the parameters ask for, at the geometry's chunk width.
template <typename T, int kVectors, typename Fn>
void with_shift_of_width(const Geometry& g, const SlideParameterTables& p, const Fn& fn) {
  if (p.weight.defined()) {
    fn(WeightedShift<T, kVectors>{p.weight.data_ptr<T>(), g.kernel_size, g.params});
  } else {
    fn(PureShift<T, kVectors>{});
  }
}
template <typename T, typename Fn>
void with_shift(const Geometry& g, const SlideParameterTables& p, const Fn& fn) {
  switch (g.chunk_vectors) {
    case 1: return with_shift_of_width<T, 1>(g, p, fn);
    case 2: return with_shift_of_width<T, 2>(g, p, fn);
    default: return with_shift_of_width<T, 4>(g, p, fn);
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
  if (takes_zeros_path(query, kernel_size, border, shift_weight)) {
    cpu::slide_zeros_forward(
        q, k, v, zeros_path_parameters(q, dilation, scale, key_bias, shift_weight, shift_bias), out,
        lse);
    return {out.to(query.scalar_type()), lse};
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_forward_cpu", [&] {
    const Geometry g =
        make_geometry(q, kernel_size, dilation, border, scale, at::vec::Vectorized<scalar_t>::size());
    const SlideParameterTables params =
        slide_parameter_tables(g.params, q.options(), key_bias, shift_weight, shift_bias);
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
  check_slide_attention_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                        kernel_size, dilation, key_bias, shift_weight, shift_bias,
                                        border);
  const std::array<bool, 3> want = {compute_param_grads[0] && given(key_bias),
                                    compute_param_grads[1] && given(shift_weight),
                                    compute_param_grads[2] && given(shift_bias)};
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  const at::Tensor dout = prepare(grad_output);
  auto to_input_type = [&](const at::Tensor& grad) {
    return grad.defined() ? grad.to(query.scalar_type()).contiguous() : grad;
  };
  if (takes_zeros_path(query, kernel_size, border, shift_weight)) {
    const cpu::SlideZerosGrads grads = cpu::slide_zeros_backward(
        dout, q, k, v, logsumexp,
        zeros_path_parameters(q, dilation, scale, key_bias, shift_weight, shift_bias, want));
    return {to_input_type(grads.query),               to_input_type(grads.key),
            to_input_type(grads.value),               to_input_type(grads.params.key_bias),
            to_input_type(grads.params.shift_weight), to_input_type(grads.params.shift_bias)};
  }
  const at::Tensor lse = logsumexp.to(q.scalar_type()).contiguous();
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(q.sizes(), q.options());
  at::Tensor grad_v = at::empty(q.sizes(), q.options());
  SlideParameterGrads param_grads;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_backward_cpu", [&] {
    using T = scalar_t;
    Geometry g =
        make_geometry(q, kernel_size, dilation, border, scale, at::vec::Vectorized<T>::size());
    g.params = g.params.with_gradients(want);
    const SlideParameterTables params =
        slide_parameter_tables(g.params, q.options(), key_bias, shift_weight, shift_bias);
    const BackwardMaps<T> maps{map_view<const T>(q),    map_view<const T>(k), map_view<const T>(v),
                               map_view<const T>(dout), lse.data_ptr<T>(),    grad_q.data_ptr<T>(),
                               grad_k.data_ptr<T>(),    grad_v.data_ptr<T>()};
    at::Tensor partials;  // (groups, gradient size), summed in group order below
    with_shift<T>(g, params, [&](const auto& shift) {
      backward_kernel<T>(g, shift, bias_tables<T>(params), maps, partials);
    });
    at::Tensor total = partials[0].clone();
    for (int64_t c = 1; c < partials.size(0); ++c) total += partials[c];
    param_grads = unpack_slide_parameter_grads(g.params, total, query.scalar_type());
  });
  return {to_input_type(grad_q),       to_input_type(grad_k),
          to_input_type(grad_v),       param_grads.key_bias,
          param_grads.shift_weight,    param_grads.shift_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, CPU, m) {
  m.impl("_slide_attention_forward", &slide_attention_forward_cpu);
  m.impl("_slide_attention_backward", &slide_attention_backward_cpu);
}

}  // namespace slideformer::ops
