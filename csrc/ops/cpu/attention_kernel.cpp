// attention, CPU kernels (docs/operators.md): flash-style forward with an online softmax over key
// blocks, and a backward that recomputes the probabilities block by block from the saved
// log-sum-exp. Only (query block x key block) scratch is ever allocated, per thread.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "ops/attention.h"
#include "ops/common/attention_math.h"
#include "ops/common/online_softmax.h"
#include "ops/cpu/blas.h"
#include "ops/cpu/vec_utils.h"

namespace slideformer::ops {
namespace {

using cpu::gemm;
using cpu::Vectorized;

constexpr int64_t kQueryBlock = 256;
constexpr int64_t kKeyBlock = 512;
// Lazy rescaling of the online softmax (forward): the running max moves only when a block's
// logits exceed it by more than this, so exp(logit - max) <= e^16 and the accumulators stay far
// from overflow. Beyond kExpOverflowGuard an exp may have overflowed and the row is recomputed.
constexpr double kLazyRescaleMargin = 16.0;
constexpr double kExpOverflowGuard = 80.0;

// Problem geometry plus the additive bias seen as a (B, H, Nq, Nk) strided view.
struct Geometry {
  int64_t batch, heads, num_queries, num_keys, head_dim, value_dim;
  bool causal;
  double scale;
  // Number of keys query i may see (keys [0, n)).
  int64_t visible_keys(int64_t i) const {
    return math::visible_keys(i, num_queries, num_keys, causal);
  }
  int64_t query_blocks() const { return (num_queries + kQueryBlock - 1) / kQueryBlock; }
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

template <typename T>
struct BiasView {
  const T* data = nullptr;
  int64_t stride[4] = {0, 0, 0, 0};  // strides of the bias expanded to (B, H, Nq, Nk)
  const T* row(int64_t b, int64_t h, int64_t i) const {
    return data + b * stride[0] + h * stride[1] + i * stride[2];
  }
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

// scores[r][jj] for one (query block, key block): scale * q k^T + bias, then -inf past the causal
// limit. Returns nothing; `visible[r]` receives the count of keys of this block row r may see.
template <typename T>
void block_logits(const Geometry& g, const BiasView<T>& bias, int64_t b, int64_t h,
                  const T* q_block, const T* k_block, int64_t i0, int64_t rows, int64_t j0,
                  int64_t cols, T* scores, int64_t* visible) {
  gemm<T>(false, true, rows, cols, g.head_dim, T(g.scale), q_block, g.head_dim, k_block, g.head_dim,
          T(0), scores, cols);
  for (int64_t r = 0; r < rows; ++r) {
    T* s = scores + r * cols;
    if (bias.data) {
      const T* bias_row = bias.row(b, h, i0 + r) + j0 * bias.stride[3];
      const int64_t sj = bias.stride[3];
      if (sj == 1) {
        for (int64_t jj = 0; jj < cols; ++jj) s[jj] += bias_row[jj];
      } else {
        for (int64_t jj = 0; jj < cols; ++jj) s[jj] += bias_row[jj * sj];
      }
    }
    visible[r] = std::clamp<int64_t>(g.visible_keys(i0 + r) - j0, 0, cols);
  }
}

template <typename T>
void forward_kernel(const Geometry& g, const at::Tensor& q, const at::Tensor& k,
                    const at::Tensor& v, const BiasView<T>& bias, at::Tensor& out,
                    at::Tensor& lse) {
  const T* q_data = q.data_ptr<T>();
  const T* k_data = k.data_ptr<T>();
  const T* v_data = v.data_ptr<T>();
  T* out_data = out.data_ptr<T>();
  T* lse_data = lse.data_ptr<T>();
  const int64_t D = g.head_dim, Dv = g.value_dim, Nq = g.num_queries, Nk = g.num_keys;
  const int64_t key_block = std::max<int64_t>(1, std::min(kKeyBlock, Nk));
  const int64_t num_qb = g.query_blocks();
  constexpr T kInf = std::numeric_limits<T>::infinity();

  const ThreadScratch<T> scratch(kQueryBlock * (key_block + Dv + 2));
  at::parallel_for(0, g.batch * g.heads * num_qb, 1, [&](int64_t begin, int64_t end) {
    T* const scores = scratch.local();
    T* const acc = scores + kQueryBlock * key_block;
    T* const row_max = acc + kQueryBlock * Dv;
    T* const row_sum = row_max + kQueryBlock;
    int64_t visible[kQueryBlock];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bh = task / num_qb, b = bh / g.heads, h = bh % g.heads;
      const int64_t i0 = (task % num_qb) * kQueryBlock;
      const int64_t rows = std::min(kQueryBlock, Nq - i0);
      const T* q_block = q_data + (bh * Nq + i0) * D;
      std::fill_n(acc, rows * Dv, T(0));
      std::fill_n(row_max, rows, -kInf);
      std::fill_n(row_sum, rows, T(0));
      const int64_t keys_end = g.visible_keys(i0 + rows - 1);
      for (int64_t j0 = 0; j0 < keys_end; j0 += key_block) {
        const int64_t cols = std::min(key_block, keys_end - j0);
        const T* k_block = k_data + (bh * Nk + j0) * D;
        block_logits<T>(g, bias, b, h, q_block, k_block, i0, rows, j0, cols, scores, visible);
        for (int64_t r = 0; r < rows; ++r) {
          T* s = scores + r * cols;
          const int64_t n = visible[r];
          T block_sum = 0;
          if (row_max[r] == -kInf) {  // nothing seen yet: exact max, then exp against it
            row_max[r] = cpu::max_of(s, n);
            if (row_max[r] != -kInf) block_sum = cpu::exp_shifted_sum_inplace(s, n, row_max[r]);
            else std::fill_n(s, n, T(0));  // every visible logit is -inf
          } else {
            // Lazy rescaling: exponentiate against the running max in the pass that finds this
            // block's max; move the max only when the block exceeds it by more than
            // kLazyRescaleMargin (so every exp stays below e^margin and saves a pass).
            T block_max;
            std::tie(block_sum, block_max) =
                cpu::exp_shifted_sum_and_max_inplace(s, n, row_max[r]);
            if (block_max > row_max[r] + kLazyRescaleMargin) {
              const T correction = math::rescale_factor(row_max[r], block_max);
              if (block_max - row_max[r] > kExpOverflowGuard) {  // an exp overflowed: redo row
                block_logits<T>(g, bias, b, h, q_block + r * D, k_block, i0 + r, 1, j0, cols, s,
                                &visible[r]);
                block_sum = cpu::exp_shifted_sum_inplace(s, n, block_max);
              } else {  // e^(s - old) * e^(old - new) = e^(s - new)
                cpu::scale_inplace(s, correction, n);
                block_sum *= correction;
              }
              cpu::scale_inplace(acc + r * Dv, correction, Dv);
              row_sum[r] *= correction;
              row_max[r] = block_max;
            }
          }
          std::fill(s + n, s + cols, T(0));
          row_sum[r] += block_sum;
        }
        gemm<T>(false, false, rows, Dv, cols, 1.0, scores, cols,
                v_data + (bh * Nk + j0) * Dv, Dv, 1.0, acc, Dv);
      }
      for (int64_t r = 0; r < rows; ++r) {
        T* o = out_data + (bh * Nq + i0 + r) * Dv;
        const T inv = math::output_normalizer(row_sum[r]);
        for (int64_t c = 0; c < Dv; ++c) o[c] = acc[r * Dv + c] * inv;
        lse_data[bh * Nq + i0 + r] = math::finish_logsumexp(row_max[r], row_sum[r]);
      }
    }
  });
}

// Where dS of (b, h, i, j) accumulates: a contiguous buffer of the bias's own 4-d shape with
// zero strides on its broadcast dimensions.
template <typename T>
struct BiasGradTarget {
  T* data = nullptr;
  int64_t stride[4] = {0, 0, 0, 0};
};

template <typename T>
void accumulate_bias_grad(const BiasGradTarget<T>& target, int64_t b, int64_t h, int64_t i0,
                          int64_t rows, int64_t j0, int64_t cols, const T* ds) {
  for (int64_t r = 0; r < rows; ++r) {
    T* dst = target.data + b * target.stride[0] + h * target.stride[1] +
             (i0 + r) * target.stride[2] + j0 * target.stride[3];
    const T* src = ds + r * cols;
    if (target.stride[3] == 1) {
      cpu::axpy(T(1), src, dst, cols);
    } else {  // bias broadcast over keys: the row sums into one entry
      T sum = 0;
      for (int64_t jj = 0; jj < cols; ++jj) sum += src[jj];
      *dst += sum;
    }
  }
}

template <typename T>
void backward_kernel(const Geometry& g, const at::Tensor& grad_out, const at::Tensor& q,
                     const at::Tensor& k, const at::Tensor& v, const BiasView<T>& bias,
                     const at::Tensor& out, const at::Tensor& lse, at::Tensor& grad_q,
                     at::Tensor& grad_k, at::Tensor& grad_v, at::Tensor& grad_bias4,
                     bool bias_shared_across_heads) {
  const T *q_data = q.data_ptr<T>(), *k_data = k.data_ptr<T>(), *v_data = v.data_ptr<T>();
  const T *do_data = grad_out.data_ptr<T>(), *out_data = out.data_ptr<T>();
  const T* lse_data = lse.data_ptr<T>();
  T *gq = grad_q.data_ptr<T>(), *gk = grad_k.data_ptr<T>(), *gv = grad_v.data_ptr<T>();
  const int64_t D = g.head_dim, Dv = g.value_dim, Nq = g.num_queries, Nk = g.num_keys;
  const int64_t key_block = std::max<int64_t>(1, std::min(kKeyBlock, Nk));
  const int64_t num_bh = g.batch * g.heads;
  if (num_bh == 0) return;

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

  const ThreadScratch<T> scratch(kQueryBlock * (2 * key_block + 1));
  at::parallel_for(0, num_chunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    T* const probs = scratch.local();
    T* const dscores = probs + kQueryBlock * key_block;
    T* const delta = dscores + kQueryBlock * key_block;
    int64_t visible[kQueryBlock];
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      const BiasGradTarget<T> bias_target = target_for_chunk(chunk);
      const int64_t bh_begin = chunk * num_bh / num_chunks;
      const int64_t bh_end = (chunk + 1) * num_bh / num_chunks;
      for (int64_t bh = bh_begin; bh < bh_end; ++bh) {
        const int64_t b = bh / g.heads, h = bh % g.heads;
        for (int64_t i0 = 0; i0 < Nq; i0 += kQueryBlock) {
          const int64_t rows = std::min(kQueryBlock, Nq - i0);
          const T* q_block = q_data + (bh * Nq + i0) * D;
          const T* do_block = do_data + (bh * Nq + i0) * Dv;
          T* gq_block = gq + (bh * Nq + i0) * D;
          for (int64_t r = 0; r < rows; ++r) {  // delta_i = rowsum(dO * O)
            delta[r] = cpu::dot(do_block + r * Dv, out_data + (bh * Nq + i0 + r) * Dv, Dv);
          }
          const int64_t keys_end = g.visible_keys(i0 + rows - 1);
          for (int64_t j0 = 0; j0 < keys_end; j0 += key_block) {
            const int64_t cols = std::min(key_block, keys_end - j0);
            const T* k_block = k_data + (bh * Nk + j0) * D;
            const T* v_block = v_data + (bh * Nk + j0) * Dv;
            block_logits<T>(g, bias, b, h, q_block, k_block, i0, rows, j0, cols, probs,
                            visible);
            // dP = dO V^T; then P = exp(S - lse) and dS = P * (dP - delta) in one pass per row
            // (both 0 past the causal limit); then dV += P^T dO.
            gemm<T>(false, true, rows, cols, Dv, 1.0, do_block, Dv, v_block, Dv, 0.0, dscores,
                    cols);
            for (int64_t r = 0; r < rows; ++r) {
              T* p = probs + r * cols;
              T* ds = dscores + r * cols;
              cpu::probabilities_and_logit_grads_inplace(p, ds, visible[r],
                                                         lse_data[bh * Nq + i0 + r], delta[r]);
              std::fill(p + visible[r], p + cols, T(0));
              std::fill(ds + visible[r], ds + cols, T(0));
            }
            gemm<T>(true, false, cols, Dv, rows, 1.0, probs, cols, do_block, Dv, 1.0,
                    gv + (bh * Nk + j0) * Dv, Dv);
            if (want_bias_grad) {
              accumulate_bias_grad(bias_target, b, h, i0, rows, j0, cols, dscores);
            }
            // dQ += scale dS K ; dK += scale dS^T Q
            gemm<T>(false, false, rows, D, cols, g.scale, dscores, cols, k_block, D, 1.0,
                    gq_block, D);
            gemm<T>(true, false, cols, D, rows, g.scale, dscores, cols, q_block, D, 1.0,
                    gk + (bh * Nk + j0) * D, D);
          }
        }
      }
    }
  });
  for (const auto& partial : chunk_bias_grads) grad_bias4.add_(partial);
}

// Inputs as the kernels want them: contiguous, float32 for the half types.
at::Tensor prepare(const at::Tensor& t) {
  const auto type = attention_accumulate_type(t.scalar_type());
  return t.to(type).contiguous();
}

Geometry make_geometry(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       bool is_causal, std::optional<double> scale) {
  return Geometry{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3), is_causal,
                  attention_scale(q, scale)};
}

at::Tensor expanded_bias(const std::optional<at::Tensor>& attn_bias, const Geometry& g) {
  if (!attn_bias.has_value() || !attn_bias->defined()) return {};
  return attn_bias->to(attention_accumulate_type(attn_bias->scalar_type()))
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
  check_attention_inputs(query, key, value, attn_bias);
  const Geometry g = make_geometry(query, key, value, is_causal, scale);
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  const at::Tensor dout = prepare(grad_output), out = prepare(output);
  const at::Tensor lse = logsumexp.to(q.scalar_type()).contiguous();
  const at::Tensor bias = expanded_bias(attn_bias, g);
  at::Tensor grad_q = at::zeros_like(q), grad_k = at::zeros_like(k), grad_v = at::zeros_like(v);

  // The bias gradient accumulates in the bias's own shape, padded to 4 dimensions.
  at::Tensor grad_bias4;
  bool shared_across_heads = false;
  if (compute_bias_grad && bias.defined()) {
    std::vector<int64_t> shape(4 - attn_bias->dim(), 1);
    for (int64_t s : attn_bias->sizes()) shape.push_back(s);
    grad_bias4 = at::zeros(shape, q.options());
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
