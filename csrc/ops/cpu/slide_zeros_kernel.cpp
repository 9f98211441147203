// slide_attention CPU fast path (see slide_zeros_kernel.h).
// The general kernels put the channels of one pixel in the vector lanes, so every logit ends in
// a horizontal sum and every pixel tests its window against the border. Here the lanes hold a
// run of pixels of one row (a "tile") instead. Each (b, h) plane is first copied channel-major,
// keys and values inside a zero border of dilation pixels, so that window slot (my, mx) of a
// tile is one unaligned vector load, zeros-mode borders need no tests, and the k*k logits of a
// tile are k*k vector accumulators on which the softmax runs directly.
// Backward, per plane: pass 1 recomputes the probabilities and the logit gradients of every
// tile (k*k per pixel, kept for this plane only); pass 2 runs channel by channel and window
// slot by window slot, scattering dK and dV into the padded planes. One thread owns a plane, so
// there are no atomics; parameter gradients are per-lane partial sums per work group, reduced
// in group order (deterministic for a given thread count).
#include "ops/cpu/slide_zeros_kernel.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>

#include "ops/cpu/vec_utils.h"
#include "ops/cpu/work_split.h"

namespace slideformer::ops::cpu {
namespace {

constexpr int64_t kKernel = 3, kSlots = kKernel * kKernel;

template <typename T>
using Vec = at::vec::Vectorized<T>;

// One (b, h) plane in the channel-major layouts. Pixel-like planes (q, dO, dq): `height` rows
// of `cols` (the width rounded up to whole tiles, zeros past the width). Window-like planes
// (k, v, dk, dv): the same with a border of `pad` zeros on every side.
struct PlaneGeometry {
  int64_t batch, heads, height, width, head_dim, dilation, lanes, cols, pad;
  PlaneGeometry(const at::Tensor& q, int64_t dilation_, int64_t lanes_)
      : batch(q.size(0)),
        heads(q.size(1)),
        height(q.size(2)),
        width(q.size(3)),
        head_dim(q.size(4)),
        dilation(dilation_),
        lanes(lanes_),
        cols((q.size(3) + lanes_ - 1) / lanes_ * lanes_),
        pad(kKernel / 2 * dilation_) {}
  int64_t planes() const { return batch * heads; }
  int64_t tiles() const { return height * cols / lanes; }
  int64_t plane() const { return height * cols; }
  int64_t padded_cols() const { return cols + 2 * pad; }
  int64_t padded_plane() const { return (height + 2 * pad) * padded_cols(); }
  // Tile t covers row t / (cols / lanes), columns [x0, x0 + lanes).
  int64_t row(int64_t t) const { return t / (cols / lanes); }
  int64_t x0(int64_t t) const { return t % (cols / lanes) * lanes; }
  int64_t valid(int64_t t) const { return std::min(lanes, width - x0(t)); }
  // Offset in a window-like plane of window slot (0, 0) of tile t; slot (my, mx) adds
  // slot_offset(my, mx).
  int64_t window(int64_t t) const { return row(t) * padded_cols() + x0(t); }
  int64_t slot_offset(int64_t my, int64_t mx) const { return (my * padded_cols() + mx) * dilation; }
};

// map[b, h] (unit channel stride) into dst[c * channel_stride + (y + pad) * row_stride + x + pad];
// dst must be zeroed before.
template <typename T>
void to_channel_major(const at::Tensor& map, int64_t b, int64_t h, const PlaneGeometry& g,
                      int64_t pad, int64_t row_stride, int64_t channel_stride, T* dst) {
  const T* base = map.data_ptr<T>() + b * map.stride(0) + h * map.stride(1);
  for (int64_t y = 0; y < g.height; ++y) {
    at::vec::transpose_mxn<T>(base + y * map.stride(2), map.stride(3),
                              dst + (y + pad) * row_stride + pad, channel_stride, g.width,
                              g.head_dim);
  }
}

// The inverse into a contiguous (B, H, Y, X, D) tensor.
template <typename T>
void from_channel_major(const T* src, int64_t b, int64_t h, const PlaneGeometry& g, int64_t pad,
                        int64_t row_stride, int64_t channel_stride, T* map) {
  T* base = map + (b * g.heads + h) * g.height * g.width * g.head_dim;
  for (int64_t y = 0; y < g.height; ++y) {
    at::vec::transpose_mxn<T>(src + (y + pad) * row_stride + pad, channel_stride,
                              base + y * g.width * g.head_dim, g.head_dim, g.head_dim, g.width);
  }
}

// The plane buffers of one worker.
template <typename T>
struct PlaneBuffers {
  const PlaneGeometry& g;
  T* scratch;
  // A pixel-like and a window-like plane of every channel, zeroed.
  T* pixel_planes() {
    T* p = take(g.head_dim * g.plane());
    std::fill_n(p, g.head_dim * g.plane(), T(0));
    return p;
  }
  T* window_planes() {
    T* p = take(g.head_dim * g.padded_plane());
    std::fill_n(p, g.head_dim * g.padded_plane(), T(0));
    return p;
  }
  T* take(int64_t n) {
    T* p = scratch;
    scratch += n;
    return p;
  }
  void load_pixels(const at::Tensor& map, int64_t b, int64_t h, T* dst) const {
    to_channel_major(map, b, h, g, 0, g.cols, g.plane(), dst);
  }
  void load_window(const at::Tensor& map, int64_t b, int64_t h, T* dst) const {
    to_channel_major(map, b, h, g, g.pad, g.padded_cols(), g.padded_plane(), dst);
  }
};

// One contraction of a tile: out[n] = sum_c u[c] * (shifted copy n of map, channel c), with
// shifted copy n of channel c = sum_m W[c, n, m] * map[c, slot m] + bias[c, n] (the deformed
// shift). Logits contract q with the keys, backward's dp contracts dO with the values.
template <typename T>
struct TileContraction {
  const T* u;     // pixel-like planes at the tile
  const T* map;   // window-like planes at the tile's window
  const T* bias;  // a bias table
};

// Runs kSets contractions of one tile together, so that they share the weight reads. The
// tables are laid out channels outermost: W[c, n, m] and bias[c, n] at unit steps in n.
template <typename T, size_t kSets>
void contract_tile(const PlaneGeometry& g, const SlideParameterLayout& layout, const T* weight,
                   const std::array<TileContraction<T>, kSets>& sets, Vec<T> (*out)[kSlots]) {
  for (size_t s = 0; s < kSets; ++s) {
    for (int64_t n = 0; n < kSlots; ++n) out[s][n] = Vec<T>(T(0));
  }
  for (int64_t c = 0; c < g.head_dim; ++c) {
    for (size_t s = 0; s < kSets; ++s) {
      const Vec<T> u = Vec<T>::loadu(sets[s].u + c * g.plane());
      const T* bias = sets[s].bias + layout.bias(c, 0);
      for (int64_t n = 0; n < kSlots; ++n) {
        out[s][n] = at::vec::fmadd(u, Vec<T>(bias[n]), out[s][n]);
      }
    }
    for (int64_t my = 0; my < kKernel; ++my) {
      for (int64_t mx = 0; mx < kKernel; ++mx) {
        const T* w_m = weight + layout.weight(c, 0, my * kKernel + mx);
        Vec<T> product[kSets];
        for (size_t s = 0; s < kSets; ++s) {
          product[s] = Vec<T>::loadu(sets[s].u + c * g.plane()) *
                       Vec<T>::loadu(sets[s].map + c * g.padded_plane() + g.slot_offset(my, mx));
        }
        for (int64_t n = 0; n < kSlots; ++n) {
          const Vec<T> w_mn(w_m[n]);
          for (size_t s = 0; s < kSets; ++s)
            out[s][n] = at::vec::fmadd(w_mn, product[s], out[s][n]);
        }
      }
    }
  }
}

// sum_n coeffs[n] * w[n]: the weight a window slot m gets from the k*k shifted copies.
template <typename T>
Vec<T> slot_weight(const Vec<T>* coeffs, const T* w) {
  Vec<T> acc = coeffs[0] * Vec<T>(w[0]);
  for (int64_t n = 1; n < kSlots; ++n) acc = at::vec::fmadd(coeffs[n], Vec<T>(w[n]), acc);
  return acc;
}

template <typename T>
Vec<T> lse_of_tile(const PlaneGeometry& g, const T* lse_plane, int64_t t) {
  return Vec<T>::loadu(lse_plane + g.row(t) * g.width + g.x0(t), g.valid(t));
}

// What both passes read of one (b, h) plane: q, k and v in the plane layouts (in the worker's
// buffers) and the head's parameters.
template <typename T>
struct PlaneInputs {
  T *q, *k, *v;
  const T *weight, *key_bias, *value_bias;
  PlaneInputs(PlaneBuffers<T>& buffers, const SlideZerosParameters& p, const at::Tensor& query,
              const at::Tensor& key, const at::Tensor& value, int64_t b, int64_t h)
      : q(buffers.pixel_planes()),
        k(buffers.window_planes()),
        v(buffers.window_planes()),
        weight(p.tables.weight.data_ptr<T>()),
        key_bias(p.tables.key_bias.data_ptr<T>() + p.layout.key_bias_table(h)),
        value_bias(p.tables.value_bias.data_ptr<T>()) {
    buffers.load_pixels(query, b, h, q);
    buffers.load_window(key, b, h, k);
    buffers.load_window(value, b, h, v);
  }
};

// ---------------------------------------------------------------------------------------------
// Forward.

template <typename T>
void forward_plane(const PlaneGeometry& g, const SlideZerosParameters& p, const at::Tensor& q,
                   const at::Tensor& k, const at::Tensor& v, int64_t b, int64_t h, T* scratch,
                   T* out, T* lse) {
  PlaneBuffers<T> buffers{g, scratch};
  const PlaneInputs<T> in(buffers, p, q, k, v, b, h);
  const T *qt = in.q, *kt = in.k, *vt = in.v;
  const T *weight = in.weight, *key_bias = in.key_bias, *value_bias = in.value_bias;
  T* out_tile = buffers.take(g.head_dim * g.lanes);
  const int64_t plane = b * g.heads + h;
  T* lse_plane = lse + plane * g.height * g.width;
  T* out_plane = out + plane * g.height * g.width * g.head_dim;
  const Vec<T> scale(T(p.scale));
  for (int64_t t = 0; t < g.tiles(); ++t) {
    Vec<T> probs[1][kSlots];
    contract_tile<T, 1>(g, p.layout, weight, {{{qt + t * g.lanes, kt + g.window(t), key_bias}}},
                        probs);
    Vec<T> row_max = probs[0][0] * scale;
    for (int64_t n = 0; n < kSlots; ++n) {
      probs[0][n] = probs[0][n] * scale;
      row_max = at::vec::maximum(row_max, probs[0][n]);
    }
    Vec<T> sum(T(0));
    for (int64_t n = 0; n < kSlots; ++n) {
      probs[0][n] = fast_exp(probs[0][n] - row_max);
      sum = sum + probs[0][n];
    }
    const Vec<T> inverse = Vec<T>(T(1)) / sum;
    for (int64_t n = 0; n < kSlots; ++n) probs[0][n] = probs[0][n] * inverse;
    (row_max + sum.log()).store(lse_plane + g.row(t) * g.width + g.x0(t), g.valid(t));
    // out[c] = sum_m v[c, slot m] * slot_weight_m + sum_n p_n value_bias[c, n]
    for (int64_t c = 0; c < g.head_dim; ++c) {
      const T* values = vt + c * g.padded_plane() + g.window(t);
      Vec<T> acc = slot_weight(probs[0], value_bias + p.layout.bias(c, 0));
      for (int64_t my = 0; my < kKernel; ++my) {
        for (int64_t mx = 0; mx < kKernel; ++mx) {
          const T* w = weight + p.layout.weight(c, 0, my * kKernel + mx);
          acc = at::vec::fmadd(slot_weight(probs[0], w),
                               Vec<T>::loadu(values + g.slot_offset(my, mx)), acc);
        }
      }
      acc.store(out_tile + c * g.lanes);
    }
    at::vec::transpose_mxn<T>(out_tile, g.lanes,
                              out_plane + (g.row(t) * g.width + g.x0(t)) * g.head_dim, g.head_dim,
                              g.head_dim, g.valid(t));
  }
}

int64_t forward_scratch_size(const PlaneGeometry& g) {
  return g.head_dim * (g.plane() + 2 * g.padded_plane() + g.lanes);
}

// ---------------------------------------------------------------------------------------------
// Backward.

template <typename T>
void add_lanes(T* partial, const Vec<T>& v) {
  (Vec<T>::loadu(partial) + v).store(partial);
}

// What pass 2 of the backward reads of tile t in one channel.
template <typename T>
struct ChannelTile {
  const T *probs, *dlogits;  // [n][lane]
  int64_t lanes;
  Vec<T> q, dout;
  ChannelTile(const PlaneGeometry& g, int64_t t, const T* q_c, const T* dout_c,
              const T* plane_probs, const T* plane_dlogits)
      : probs(plane_probs + t * kSlots * g.lanes),
        dlogits(plane_dlogits + t * kSlots * g.lanes),
        lanes(g.lanes),
        q(Vec<T>::loadu(q_c + t * g.lanes)),
        dout(Vec<T>::loadu(dout_c + t * g.lanes)) {}
  Vec<T> prob(int64_t n) const { return Vec<T>::loadu(probs + n * lanes); }
  Vec<T> dlogit(int64_t n) const { return Vec<T>::loadu(dlogits + n * lanes); }
};

template <typename T>
void backward_plane(const PlaneGeometry& g, const SlideZerosParameters& p, const at::Tensor& dout,
                    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const T* lse,
                    int64_t b, int64_t h, T* lane_partials, T* scratch, SlideZerosGrads& grads) {
  // Per-lane partial sums of the parameter gradients: `lanes` values per entry of the layout's
  // gradient vector.
  const SlideParameterLayout& layout = p.layout;
  PlaneBuffers<T> buffers{g, scratch};
  const PlaneInputs<T> in(buffers, p, q, k, v, b, h);
  const T *qt = in.q, *kt = in.k, *vt = in.v;
  const T *weight = in.weight, *key_bias = in.key_bias, *value_bias = in.value_bias;
  T* dot = buffers.pixel_planes();
  T* dqt = buffers.pixel_planes();
  T* dkt = buffers.window_planes();
  T* dvt = buffers.window_planes();
  T* probs = buffers.take(kSlots * g.plane());    // [tile][n][lane]
  T* dlogits = buffers.take(kSlots * g.plane());  // same, scaled by the softmax scale
  buffers.load_pixels(dout, b, h, dot);
  const T* lse_plane = lse + (b * g.heads + h) * g.height * g.width;
  const Vec<T> scale(T(p.scale));

  // Pass 1: p_n = exp(logit_n - lse), dp_n = <dO, shifted value n>, dlogit_n = p_n (dp_n - delta).
  for (int64_t t = 0; t < g.tiles(); ++t) {
    Vec<T> contracted[2][kSlots];
    contract_tile<T, 2>(g, layout, weight,
                        {{{qt + t * g.lanes, kt + g.window(t), key_bias},
                          {dot + t * g.lanes, vt + g.window(t), value_bias}}},
                        contracted);
    const Vec<T> tile_lse = lse_of_tile(g, lse_plane, t);
    Vec<T> delta(T(0));
    for (int64_t n = 0; n < kSlots; ++n) {
      contracted[0][n] = fast_exp(contracted[0][n] * scale - tile_lse);
      delta = at::vec::fmadd(contracted[0][n], contracted[1][n], delta);
    }
    for (int64_t n = 0; n < kSlots; ++n) {
      const int64_t slot = (t * kSlots + n) * g.lanes;
      contracted[0][n].store(probs + slot);
      (scale * contracted[0][n] * (contracted[1][n] - delta)).store(dlogits + slot);
    }
  }

  // Pass 2, channel by channel.
  Vec<T> key_bias_grad[kSlots];
  for (auto& acc : key_bias_grad) acc = Vec<T>(T(0));
  for (int64_t c = 0; c < g.head_dim; ++c) {
    const T* q_c = qt + c * g.plane();
    const T* dout_c = dot + c * g.plane();
    T* dq_c = dqt + c * g.plane();
    // Bias terms: dq[c] = sum_n dlogit_n key_bias[c, n] (the slots add to it below),
    // d shift_bias[c, n] = sum dlogit_n q[c] + p_n dO[c], d key_bias[n] = sum dlogit_n q[c].
    Vec<T> bias_grad[kSlots];
    for (auto& acc : bias_grad) acc = Vec<T>(T(0));
    for (int64_t t = 0; t < g.tiles(); ++t) {
      const ChannelTile<T> tile(g, t, q_c, dout_c, probs, dlogits);
      Vec<T> dq(T(0));
      for (int64_t n = 0; n < kSlots; ++n) {
        const Vec<T> dlogit = tile.dlogit(n), prob = tile.prob(n);
        dq = at::vec::fmadd(dlogit, Vec<T>(key_bias[layout.bias(c, n)]), dq);
        bias_grad[n] =
            at::vec::fmadd(dlogit, tile.q, at::vec::fmadd(prob, tile.dout, bias_grad[n]));
        key_bias_grad[n] = at::vec::fmadd(dlogit, tile.q, key_bias_grad[n]);
      }
      dq.store(dq_c + t * g.lanes);
    }
    if (layout.shift_bias_grads > 0) {
      for (int64_t n = 0; n < kSlots; ++n)
        add_lanes(lane_partials + layout.shift_bias_grad(c, n) * g.lanes, bias_grad[n]);
    }
    // Window slot m: with a_m = sum_n dlogit_n W[c, m, n] and b_m = sum_n p_n W[c, m, n],
    // dq[c] += a_m k[c, slot m], dk[c, slot m] += a_m q[c], dv[c, slot m] += b_m dO[c],
    // dW[c, n, m] += dlogit_n q[c] k[c, slot m] + p_n dO[c] v[c, slot m].
    // Slot by slot over all tiles: the scatter into overlapping windows of one tile would
    // otherwise store and reload overlapping vectors back to back.
    for (int64_t my = 0; my < kKernel; ++my) {
      for (int64_t mx = 0; mx < kKernel; ++mx) {
        const int64_t m = my * kKernel + mx;
        const T* w = weight + layout.weight(c, 0, m);
        const int64_t offset = c * g.padded_plane() + g.slot_offset(my, mx);
        Vec<T> weight_grad[kSlots];
        for (auto& acc : weight_grad) acc = Vec<T>(T(0));
        for (int64_t t = 0; t < g.tiles(); ++t) {
          const ChannelTile<T> tile(g, t, q_c, dout_c, probs, dlogits);
          const int64_t window = offset + g.window(t);
          const Vec<T> key = Vec<T>::loadu(kt + window), value = Vec<T>::loadu(vt + window);
          const Vec<T> q_key = tile.q * key, dout_value = tile.dout * value;
          // One pass over n for a_m, b_m and dW: they share the loads of dlogit_n and p_n. dW is
          // computed even when not wanted (then dropped): cheaper than a second pass.
          Vec<T> a(T(0)), bw(T(0));
          for (int64_t n = 0; n < kSlots; ++n) {
            const Vec<T> dlogit = tile.dlogit(n), prob = tile.prob(n), w_n(w[n]);
            a = at::vec::fmadd(dlogit, w_n, a);
            bw = at::vec::fmadd(prob, w_n, bw);
            weight_grad[n] =
                at::vec::fmadd(dlogit, q_key, at::vec::fmadd(prob, dout_value, weight_grad[n]));
          }
          at::vec::fmadd(a, key, Vec<T>::loadu(dq_c + t * g.lanes)).store(dq_c + t * g.lanes);
          at::vec::fmadd(a, tile.q, Vec<T>::loadu(dkt + window)).store(dkt + window);
          at::vec::fmadd(bw, tile.dout, Vec<T>::loadu(dvt + window)).store(dvt + window);
        }
        if (layout.weight_grads > 0) {
          for (int64_t n = 0; n < kSlots; ++n) {
            add_lanes(lane_partials + layout.weight_grad(c, n, m) * g.lanes, weight_grad[n]);
          }
        }
      }
    }
  }
  if (layout.key_bias_grads > 0) {
    for (int64_t n = 0; n < kSlots; ++n)
      add_lanes(lane_partials + layout.key_bias_grad(h, n) * g.lanes, key_bias_grad[n]);
  }
  from_channel_major(dqt, b, h, g, 0, g.cols, g.plane(), grads.query.data_ptr<T>());
  from_channel_major(dkt, b, h, g, g.pad, g.padded_cols(), g.padded_plane(),
                     grads.key.data_ptr<T>());
  from_channel_major(dvt, b, h, g, g.pad, g.padded_cols(), g.padded_plane(),
                     grads.value.data_ptr<T>());
}

int64_t backward_scratch_size(const PlaneGeometry& g) {
  return g.head_dim * (3 * g.plane() + 4 * g.padded_plane()) + 2 * kSlots * g.plane();
}

}  // namespace

bool slide_zeros_kernel_applies(int64_t kernel_size, math::SlideBorder border,
                                bool has_shift_weight, int64_t query_elements) {
  return kernel_size == kKernel && border == math::SlideBorder::kZeros && has_shift_weight &&
         query_elements > 0;
}

void slide_zeros_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const SlideZerosParameters& p, at::Tensor& out, at::Tensor& lse) {
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_zeros_forward", [&] {
    using T = scalar_t;
    const PlaneGeometry g(q, p.dilation, Vec<T>::size());
    const WorkSplit split(g.planes());
    if (split.groups() == 0) return;
    const int64_t per_worker = forward_scratch_size(g);
    at::Tensor scratch = at::empty({split.workers(), per_worker}, q.options());
    split.run([&](int64_t group, int64_t worker) {
      for (int64_t plane = split.begin(group); plane < split.end(group); ++plane) {
        forward_plane<T>(g, p, q, k, v, plane / g.heads, plane % g.heads,
                         scratch.data_ptr<T>() + worker * per_worker, out.data_ptr<T>(),
                         lse.data_ptr<T>());
      }
    });
  });
}

SlideZerosGrads slide_zeros_backward(const at::Tensor& dout, const at::Tensor& q,
                                     const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& lse, const SlideZerosParameters& p) {
  SlideZerosGrads grads{at::empty(q.sizes(), q.options()), at::empty(q.sizes(), q.options()),
                        at::empty(q.sizes(), q.options())};
  const at::Tensor lse_contiguous = lse.to(q.scalar_type()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_zeros_backward", [&] {
    using T = scalar_t;
    const PlaneGeometry g(q, p.dilation, Vec<T>::size());
    const int64_t entries = p.layout.gradient_size();
    const WorkSplit split(g.planes());
    // Per group: the partial sums, reduced over the lanes at the end of the group.
    at::Tensor partials =
        at::zeros({std::max<int64_t>(split.groups(), 1), entries}, q.options());
    if (split.groups() > 0) {
      const int64_t per_worker = backward_scratch_size(g) + entries * g.lanes;
      at::Tensor scratch = at::empty({split.workers(), per_worker}, q.options());
      split.run([&](int64_t group, int64_t worker) {
        T* lane_partials = scratch.data_ptr<T>() + worker * per_worker;
        std::fill_n(lane_partials, entries * g.lanes, T(0));
        for (int64_t plane = split.begin(group); plane < split.end(group); ++plane) {
          backward_plane<T>(g, p, dout, q, k, v, lse_contiguous.data_ptr<T>(), plane / g.heads,
                            plane % g.heads, lane_partials, lane_partials + entries * g.lanes,
                            grads);
        }
        T* partial = partials.data_ptr<T>() + group * entries;
        for (int64_t i = 0; i < entries; ++i) {
          partial[i] = at::vec::vec_reduce_all<T>([](Vec<T>& x, Vec<T>& y) { return x + y; },
                                                  Vec<T>::loadu(lane_partials + i * g.lanes));
        }
      });
    }
    at::Tensor total = partials[0].clone();
    for (int64_t group = 1; group < partials.size(0); ++group) total += partials[group];
    grads.params = unpack_slide_parameter_grads(p.layout, total, q.scalar_type());
  });
  return grads;
}

}  // namespace slideformer::ops::cpu
