// attention, CPU kernels: flash-style forward with an online softmax over key blocks, and a
// backward that recomputes the probabilities block by block from the saved log-sum-exp. Only
// (key block x query block) scratch is ever allocated, per thread.
//
// Queries lie in the vector lanes: a block of up to kMaxTileVectors vectors of queries is packed
// transposed (D x queries), and every block product keeps queries in the lanes: S^T = K Q^T,
// O^T += V^T P^T, dP^T = V dO^T, dV += P dO, dK += dS^T Q, dQ^T += K^T dS^T. K, V, Q and dO
// are then read in place (broadcast_product.h broadcasts their elements), the running max and
// sum of the softmax are per lane, and no step needs a horizontal sum.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "ops/attention.h"
#include "ops/common/attention_math.h"
#include "ops/common/online_softmax.h"
#include "ops/cpu/broadcast_product.h"
#include "ops/cpu/vec_utils.h"
#include "ops/cpu/work_split.h"

namespace slideformer::ops {
namespace {

using cpu::broadcast_product;
using cpu::Layout;
using cpu::Vectorized;

constexpr int64_t kKeyBlock = 256;

// Problem geometry and the strides of the inputs (last dimension contiguous).
struct Geometry {
  int64_t batch, heads, num_queries, num_keys, head_dim, value_dim;
  bool causal;
  double scale;
  // Number of keys query i may see (keys [0, n)).
  int64_t visible_keys(int64_t i) const {
    return math::visible_keys(i, num_queries, num_keys, causal);
  }
};

// A (B, H, N, D) tensor with a contiguous last dimension, seen per (b, h) as N rows. An empty
// tensor (N = 0 with B, H > 0 is legal) may have no storage: its strides are zeroed so head()
// never offsets a null pointer.
template <typename T>
struct Rows {
  T* data = nullptr;
  int64_t stride_b = 0, stride_h = 0, stride_n = 0;
  explicit Rows(const at::Tensor& t) {
    if (t.numel() == 0) return;
    data = t.data_ptr<T>();
    stride_b = t.stride(0);
    stride_h = t.stride(1);
    stride_n = t.stride(2);
  }
  T* head(int64_t b, int64_t h) const { return data + b * stride_b + h * stride_h; }
};

// Queries [begin, end) of one block; `width` lanes (whole vectors) hold them, padded.
struct QueryBlock {
  int64_t begin, end, width;
  int64_t rows() const { return end - begin; }
  int64_t vectors(int64_t lanes) const { return width / lanes; }
};

// The queries split into blocks of whole vectors, as even as possible, each at most
// kMaxTileVectors vectors wide (196 queries in 16 lanes: 64, 48, 48, 36 padded to 48).
template <typename T>
class QueryBlocks {
 public:
  static constexpr int64_t kLanes = Vectorized<T>::size();
  static constexpr int64_t kMaxWidth = cpu::kMaxTileVectors * kLanes;
  explicit QueryBlocks(int64_t num_queries)
      : num_queries_(num_queries),
        vectors_((num_queries + kLanes - 1) / kLanes),
        count_((vectors_ + cpu::kMaxTileVectors - 1) / cpu::kMaxTileVectors) {}
  int64_t count() const { return count_; }
  QueryBlock operator[](int64_t i) const {
    const int64_t first = i * vectors_ / count_, last = (i + 1) * vectors_ / count_;
    return {first * kLanes, std::min(last * kLanes, num_queries_), (last - first) * kLanes};
  }

 private:
  int64_t num_queries_, vectors_, count_;
};

// Uninitialised per-thread scratch, allocated once per call outside the parallel region and
// indexed by at::get_thread_num().
template <typename T>
class ThreadScratch {
 public:
  explicit ThreadScratch(int64_t per_thread)
      : per_thread_(per_thread),
        buffer_(at::empty({at::get_num_threads(), per_thread},
                          at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value))) {}
  T* local() const { return buffer_.data_ptr<T>() + at::get_thread_num() * per_thread_; }

 private:
  int64_t per_thread_;
  at::Tensor buffer_;
};

// The additive bias expanded to (B, H, Nq, Nk), stored with queries contiguous (stride 1, or 0
// when broadcast over queries), so a key's row of the transposed logits adds one vector load.
template <typename T>
struct BiasView {
  const T* data = nullptr;
  int64_t stride[4] = {0, 0, 0, 0};
};

template <typename T>
BiasView<T> make_bias_view(const at::Tensor& expanded_bias) {
  BiasView<T> view;
  if (expanded_bias.defined()) {
    view.data = expanded_bias.data_ptr<T>();
    for (int d = 0; d < 4; ++d) view.stride[d] = expanded_bias.stride(d);
  }
  return view;
}

// Block-transposes `rows` rows of `src` (row stride ld, `cols` contiguous columns) into
// dst[c * width + i], times `scale`, zero-filling lanes rows..width.
template <typename T>
void pack_transposed(const T* src, int64_t ld, int64_t rows, int64_t cols, int64_t width, T scale,
                     T* dst) {
  for (int64_t c = 0; c < cols; ++c) {
    T* d = dst + c * width;
    for (int64_t i = 0; i < rows; ++i) d[i] = scale * src[i * ld + c];
    std::fill(d + rows, d + width, T(0));
  }
}

// The logits of one (key block x query block), queries in lanes: scale * K Q^T (the scale is
// in the packed Q^T), plus the bias, -inf past the causal limit.
template <typename T>
void block_logits(const Geometry& g, const BiasView<T>& bias, int64_t b, int64_t h,
                  const QueryBlock& qb, const T* q_packed, const T* k_head, int64_t k_stride,
                  int64_t j0, int64_t cols, T* logits) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  const int64_t width = qb.width, rows = qb.rows();
  broadcast_product<T, Layout::kRowMajor>(cols, width, g.head_dim, T(1), k_head + j0 * k_stride,
                                          k_stride, q_packed, width, false, logits, width);
  if (bias.data) {
    const T* block = bias.data + b * bias.stride[0] + h * bias.stride[1] +
                     qb.begin * bias.stride[2] + j0 * bias.stride[3];
    for (int64_t jj = 0; jj < cols; ++jj) {
      T* s = logits + jj * width;
      const T* row = block + jj * bias.stride[3];
      for (int64_t i = 0; i < width; i += L) {
        const V add = bias.stride[2] == 0 ? V(row[0]) : V::loadu(row + i, std::clamp<int64_t>(rows - i, 0, L));
        (V::loadu(s + i) + add).store(s + i);
      }
    }
  }
  if (g.causal) {
    const V lane = V::arange(T(qb.begin), T(1));
    constexpr T kInf = std::numeric_limits<T>::infinity();
    for (int64_t jj = 0; jj < cols; ++jj) {
      const int64_t first = math::first_query_seeing(j0 + jj, g.num_queries, g.num_keys, true);
      if (first <= qb.begin) continue;
      T* s = logits + jj * width;
      const V first_v(static_cast<T>(first));
      for (int64_t i = 0; i < width; i += L) {
        const V x = V::loadu(s + i);
        V::blendv(x, V(-kInf), (lane + V(T(i))) < first_v).store(s + i);
      }
    }
  }
}

template <typename T>
void forward_kernel(const Geometry& g, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const BiasView<T>& bias, at::Tensor& out,
                    at::Tensor& lse) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const Rows<T> qs(q), ks(k), vs(v), os(out);
  T* lse_data = lse.data_ptr<T>();
  const int64_t D = g.head_dim, Dv = g.value_dim, Nq = g.num_queries;
  const int64_t key_block = std::max<int64_t>(1, std::min(kKeyBlock, g.num_keys));
  const QueryBlocks<T> blocks(Nq);
  constexpr int64_t W = QueryBlocks<T>::kMaxWidth;

  const ThreadScratch<T> scratch(W * (D + key_block + Dv + 3));
  at::parallel_for(0, g.batch * g.heads * blocks.count(), 1, [&](int64_t begin, int64_t end) {
    cpu::ScratchCursor<T> cursor(scratch.local());
    T* const q_packed = cursor.take(W * D);
    T* const probs = cursor.take(W * key_block);
    T* const acc = cursor.take(W * Dv);  // O^T, unnormalised
    T* const row_max = cursor.take(W);
    T* const row_sum = cursor.take(W);
    T* const shift = cursor.take(W);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / blocks.count(), b = bh / g.heads, h = bh % g.heads;
      const QueryBlock qb = blocks[task % blocks.count()];
      const int64_t width = qb.width, rows = qb.rows();
      const T* k_head = ks.head(b, h);
      const T* v_head = vs.head(b, h);
      pack_transposed(qs.head(b, h) + qb.begin * qs.stride_n, qs.stride_n, rows, D, width,
                      T(g.scale), q_packed);
      std::fill_n(acc, width * Dv, T(0));
      std::fill_n(row_max, width, -kInf);
      std::fill_n(row_sum, width, T(0));
      const int64_t keys_end = g.visible_keys(qb.end - 1);
      for (int64_t j0 = 0; j0 < keys_end; j0 += key_block) {
        const int64_t cols = std::min(key_block, keys_end - j0);
        block_logits<T>(g, bias, b, h, qb, q_packed, k_head, ks.stride_n, j0, cols, probs);
        // Per lane: the new running max; exp against it (0 where no logit was finite yet);
        // rescale the sum and the accumulator by exp(old max - new max).
        for (int64_t i = 0; i < width; i += L) {
          V block_max(-kInf);
          for (int64_t jj = 0; jj < cols; ++jj) {
            block_max = at::vec::maximum(block_max, V::loadu(probs + jj * width + i));
          }
          const V old_max = V::loadu(row_max + i);
          const V new_max = at::vec::maximum(old_max, block_max);
          const V zero(T(0)), neg_inf(-kInf);
          const V lane_shift = V::blendv(new_max, zero, new_max == neg_inf);
          const V correction =
              V::blendv(cpu::fast_exp(old_max - lane_shift), zero, old_max == neg_inf);
          new_max.store(row_max + i);
          lane_shift.store(shift + i);
          (V::loadu(row_sum + i) * correction).store(row_sum + i);
          for (int64_t c = 0; c < Dv; ++c) (V::loadu(acc + c * width + i) * correction).store(acc + c * width + i);
        }
        for (int64_t i = 0; i < width; i += L) {
          const V lane_shift = V::loadu(shift + i);
          V sum(T(0));
          for (int64_t jj = 0; jj < cols; ++jj) {
            T* p = probs + jj * width + i;
            const V e = cpu::fast_exp(V::loadu(p) - lane_shift);
            e.store(p);
            sum = sum + e;
          }
          (V::loadu(row_sum + i) + sum).store(row_sum + i);
        }
        // O^T += V^T P^T
        broadcast_product<T, Layout::kColMajor>(Dv, width, cols, T(1),
                                                v_head + j0 * vs.stride_n, vs.stride_n, probs,
                                                width, true, acc, width);
      }
      T* o_block = os.head(b, h) + qb.begin * os.stride_n;
      T* lse_block = lse_data + bh * Nq + qb.begin;
      for (int64_t i = 0; i < rows; ++i) {
        const T inv = math::output_normalizer(row_sum[i]);
        for (int64_t c = 0; c < Dv; ++c) o_block[i * os.stride_n + c] = acc[c * width + i] * inv;
        lse_block[i] = math::finish_logsumexp(row_max[i], row_sum[i]);
      }
    }
  });
}

// Where dS of (b, h, i, j) accumulates: a buffer of the bias's own 4-d shape, queries
// contiguous, with zero strides on its broadcast dimensions.
template <typename T>
struct BiasGradTarget {
  T* data = nullptr;
  int64_t stride[4] = {0, 0, 0, 0};
};

template <typename T>
void accumulate_bias_grad(const BiasGradTarget<T>& target, int64_t b, int64_t h,
                          const QueryBlock& qb, int64_t j0, int64_t cols, const T* ds) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  T* const block = target.data + b * target.stride[0] + h * target.stride[1] +
                   qb.begin * target.stride[2] + j0 * target.stride[3];
  const int64_t rows = qb.rows();
  for (int64_t jj = 0; jj < cols; ++jj) {
    T* dst = block + jj * target.stride[3];
    const T* src = ds + jj * qb.width;
    if (target.stride[2] == 0) {  // bias broadcast over queries: the lanes sum into one entry
      T sum = 0;
      for (int64_t i = 0; i < rows; ++i) sum += src[i];
      *dst += sum;
    } else {
      for (int64_t i = 0; i < rows; i += L) {
        const int64_t lanes = std::min(L, rows - i);
        (V::loadu(dst + i, lanes) + V::loadu(src + i, lanes)).store(dst + i, lanes);
      }
    }
  }
}

template <typename T>
void backward_kernel(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& q,
                     const at::Tensor& k, const at::Tensor& v, const BiasView<T>& bias,
                     const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_q,
                     at::Tensor& grad_k, at::Tensor& grad_v, at::Tensor& grad_bias4,
                     bool bias_shared_across_heads) {
  using V = Vectorized<T>;
  constexpr int64_t L = V::size();
  constexpr T kInf = std::numeric_limits<T>::infinity();
  const Rows<T> qs(q), ks(k), vs(v), dos(grad_out), os(out), gqs(grad_q), gks(grad_k), gvs(grad_v);
  const T* lse_data = lse.data_ptr<T>();
  const int64_t D = g.head_dim, Dv = g.value_dim, Nq = g.num_queries;
  const int64_t key_block = std::max<int64_t>(1, std::min(kKeyBlock, g.num_keys));
  const int64_t num_bh = g.batch * g.heads;
  if (num_bh == 0) return;
  const QueryBlocks<T> blocks(Nq);
  constexpr int64_t W = QueryBlocks<T>::kMaxWidth;

  // Work is split into a fixed number of chunks of (b, h) pairs. When several pairs share one
  // bias slice, each chunk accumulates into its own copy, summed in chunk order afterwards:
  // deterministic for a fixed thread count, no atomics.
  const int64_t num_chunks = std::min<int64_t>(at::get_num_threads(), num_bh);
  std::vector<at::Tensor> chunk_bias_grads;
  const bool want_bias_grad = grad_bias4.defined();
  if (want_bias_grad && bias_shared_across_heads) {
    for (int64_t c = 0; c < num_chunks; ++c) chunk_bias_grads.push_back(at::zeros_like(grad_bias4));
  }
  auto target_for_chunk = [&](int64_t chunk) {
    BiasGradTarget<T> target;
    if (!want_bias_grad) return target;
    const at::Tensor& buf = bias_shared_across_heads ? chunk_bias_grads[chunk] : grad_bias4;
    target.data = buf.data_ptr<T>();
    for (int d = 0; d < 4; ++d) target.stride[d] = buf.size(d) == 1 ? 0 : buf.stride(d);
    return target;
  };

  const ThreadScratch<T> scratch(W * (2 * D + Dv + 2 * key_block + 2));
  at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    cpu::ScratchCursor<T> cursor(scratch.local());
    T* const q_packed = cursor.take(W * D);
    T* const do_packed = cursor.take(W * Dv);
    T* const grad_q_acc = cursor.take(W * D);  // dQ^T
    T* const probs = cursor.take(W * key_block);
    T* const dscores = cursor.take(W * key_block);
    T* const lse_lanes = cursor.take(W);
    T* const delta = cursor.take(W);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const BiasGradTarget<T> bias_target = target_for_chunk(chunk);
      const int64_t bh_begin = chunk * num_bh / num_chunks;
      const int64_t bh_end = (chunk + 1) * num_bh / num_chunks;
      for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
        const int64_t b = bh / g.heads, h = bh % g.heads;
        const T *q_head = qs.head(b, h), *k_head = ks.head(b, h), *v_head = vs.head(b, h);
        const T *do_head = dos.head(b, h), *o_head = os.head(b, h);
        T *gk_head = gks.head(b, h), *gv_head = gvs.head(b, h);
        for (int64_t block = 0; block < blocks.count(); ++block) {
          const QueryBlock qb = blocks[block];
          const int64_t width = qb.width, rows = qb.rows();
          const T* q_rows = q_head + qb.begin * qs.stride_n;
          const T* do_rows = do_head + qb.begin * dos.stride_n;
          pack_transposed(q_rows, qs.stride_n, rows, D, width, T(g.scale), q_packed);
          pack_transposed(do_rows, dos.stride_n, rows, Dv, width, T(1), do_packed);
          std::fill_n(grad_q_acc, width * D, T(0));
          // Padding lanes get lse = +inf: probabilities and gradients 0.
          std::fill_n(lse_lanes, width, kInf);
          std::fill_n(delta, width, T(0));
          for (int64_t i = 0; i < rows; ++i) {  // delta_i = rowsum(dO * O)
            lse_lanes[i] = lse_data[bh * Nq + qb.begin + i];
            delta[i] = cpu::dot(do_rows + i * dos.stride_n,
                                o_head + (qb.begin + i) * os.stride_n, Dv);
          }
          const int64_t keys_end = g.visible_keys(qb.end - 1);
          for (int64_t j0 = 0; j0 < keys_end; j0 += key_block) {
            const int64_t cols = std::min(key_block, keys_end - j0);
            block_logits<T>(g, bias, b, h, qb, q_packed, k_head, ks.stride_n, j0, cols, probs);
            // dP^T = V dO^T; then P = exp(S - lse) and dS = P * (dP - delta) in one pass.
            broadcast_product<T, Layout::kRowMajor>(cols, width, Dv, T(1),
                                                    v_head + j0 * vs.stride_n, vs.stride_n,
                                                    do_packed, width, false, dscores, width);
            for (int64_t i = 0; i < width; i += L) {
              const V lane_lse = V::loadu(lse_lanes + i), lane_delta = V::loadu(delta + i);
              for (int64_t jj = 0; jj < cols; ++jj) {
                T* p = probs + jj * width + i;
                T* ds = dscores + jj * width + i;
                const V pv = cpu::fast_exp(V::loadu(p) - lane_lse);
                pv.store(p);
                math::logit_grad(pv, V::loadu(ds), lane_delta).store(ds);
              }
            }
            // dV += P dO;  dK += scale dS^T Q;  dQ^T += scale K^T dS^T
            broadcast_product<T, Layout::kRowMajor>(cols, Dv, rows, T(1), probs, width, do_rows,
                                                    dos.stride_n, true,
                                                    gv_head + j0 * gvs.stride_n, gvs.stride_n);
            broadcast_product<T, Layout::kRowMajor>(cols, D, rows, T(g.scale), dscores, width,
                                                    q_rows, qs.stride_n, true,
                                                    gk_head + j0 * gks.stride_n, gks.stride_n);
            broadcast_product<T, Layout::kColMajor>(D, width, cols, T(g.scale),
                                                    k_head + j0 * ks.stride_n, ks.stride_n,
                                                    dscores, width, true, grad_q_acc, width);
            if (want_bias_grad) accumulate_bias_grad(bias_target, b, h, qb, j0, cols, dscores);
          }
          T* gq_rows = gqs.head(b, h) + qb.begin * gqs.stride_n;
          for (int64_t i = 0; i < rows; ++i) {
            for (int64_t c = 0; c < D; ++c) gq_rows[i * gqs.stride_n + c] = grad_q_acc[c * width + i];
          }
        }
      }
    }
  });
  for (const auto& partial : chunk_bias_grads) grad_bias4.add_(partial);
}

// Inputs as the kernels want them: float32 for the half types, last dimension contiguous (any
// other strides are read in place).
at::Tensor prepare(const at::Tensor& t) {
  at::Tensor x = t.to(attention_accumulate_type(t.scalar_type()));
  return x.stride(-1) == 1 ? x : x.contiguous();
}

Geometry make_geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       bool is_causal, std::optional<double> scale) {
  return Geometry{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3), is_causal,
                  attention_scale(q, scale)};
}

// The bias's own shape, padded to 4 dimensions with leading 1s.
std::vector<int64_t> bias_shape4(const at::Tensor& bias) {
  std::vector<int64_t> shape(4 - bias.dim(), 1);
  for (int64_t s : bias.sizes()) shape.push_back(s);
  return shape;
}

// The bias expanded to (B, H, Nq, Nk) over storage with queries contiguous (a bias that is a
// transposed view already, as the modules pass it, is not copied).
at::Tensor expanded_bias(const std::optional<at::Tensor>& attn_bias, const Geometry& g) {
  if (!attn_bias.has_value() || !attn_bias->defined()) return {};
  return attn_bias->to(attention_accumulate_type(attn_bias->scalar_type()))
      .reshape(bias_shape4(*attn_bias))
      .transpose(2, 3)
      .contiguous()
      .transpose(2, 3)
      .expand({g.batch, g.heads, g.num_queries, g.num_keys});
}

std::tuple<at::Tensor, at::Tensor> attention_forward_cpu(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    const std::optional<at::Tensor>& attn_bias, bool is_causal, std::optional<double> scale) {
  check_attention_inputs(query, key, value, attn_bias);
  const Geometry g = make_geometry(query, key, value, is_causal, scale);
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  const at::Tensor bias = expanded_bias(attn_bias, g);
  at::Tensor out = at::empty({g.batch, g.heads, g.num_queries, g.value_dim}, q.options());
  at::Tensor lse = at::empty({g.batch, g.heads, g.num_queries}, q.options());
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_attention_forward_cpu", [&] {
    forward_kernel<scalar_t>(g, q, k, v, make_bias_view<scalar_t>(bias), out, lse);
  });
  return {out.to(query.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const std::optional<at::Tensor>& attn_bias, const at::Tensor& output,
    const at::Tensor& logsumexp, bool is_causal, std::optional<double> scale,
    bool compute_bias_grad) {
  check_attention_backward_inputs(grad_output, query, key, value, attn_bias, output, logsumexp);
  const Geometry g = make_geometry(query, key, value, is_causal, scale);
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  const at::Tensor dout = prepare(grad_output), out = prepare(output);
  const at::Tensor lse = logsumexp.to(q.scalar_type()).contiguous();
  const at::Tensor bias = expanded_bias(attn_bias, g);
  const auto layout = q.options().memory_format(at::MemoryFormat::Contiguous);
  at::Tensor grad_q = at::empty(q.sizes(), layout);
  at::Tensor grad_k = at::zeros(k.sizes(), layout), grad_v = at::zeros(v.sizes(), layout);

  // The bias gradient accumulates in the bias's own shape, padded to 4 dimensions, with
  // queries contiguous like the logits of the kernel.
  at::Tensor grad_bias4;
  bool shared_across_heads = false;
  if (compute_bias_grad && bias.defined()) {
    const std::vector<int64_t> shape = bias_shape4(*attn_bias);
    grad_bias4 = at::zeros({shape[0], shape[1], shape[3], shape[2]}, q.options()).transpose(2, 3);
    shared_across_heads = (shape[0] == 1 && g.batch > 1) || (shape[1] == 1 && g.heads > 1);
  }
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_attention_backward_cpu", [&] {
    backward_kernel<scalar_t>(g, dout, q, k, v, make_bias_view<scalar_t>(bias), out, lse, grad_q,
                              grad_k, grad_v, grad_bias4, shared_across_heads);
  });
  at::Tensor grad_bias;
  if (grad_bias4.defined()) {
    grad_bias = grad_bias4.reshape(attn_bias->sizes()).to(attn_bias->scalar_type());
  }
  return {grad_q.to(query.scalar_type()), grad_k.to(key.scalar_type()),
          grad_v.to(value.scalar_type()), grad_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, CPU, m) {
  m.impl("_attention_forward", &attention_forward_cpu);
  m.impl("_attention_backward", &attention_backward_cpu);
}

}  // namespace slideformer::ops
