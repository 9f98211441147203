// slide_attention_nd, CPU kernels (docs/operators.md): the per-pixel computations of
// ops/common/slide_nd_math.h, which the CUDA kernels share, dealt out over the threads.
// Forward, per pixel: the window's logits with the deformed shift mixed on the fly, the softmax,
// the output; only out and the log-sum-exp are stored. Backward: pass A recomputes each pixel's
// probabilities and scaled logit gradients (K values per pixel, no D factor), dq, and the
// parameter gradients as per-group partial sums added in group order; pass B gathers dK and dV of
// every position from the pixels that read it. Deterministic for a given thread count, no atomics.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "ops/attention.h"
#include "ops/common/slide_nd_math.h"
#include "ops/common/slide_parameters.h"
#include "ops/cpu/work_split.h"
#include "ops/slide_attention_nd.h"

namespace slideformer::ops {
namespace {

// Inputs as the kernels read them: the accumulate type (float32 for the half types), contiguous.
at::Tensor prepare(const at::Tensor& t) {
  return t.to(attention_accumulate_type(t.scalar_type())).contiguous();
}

// Pixels per parallel_for chunk: enough work to amortise the chunk.
int64_t pixel_grain(const nd::NdGeometry& g) {
  return std::max<int64_t>(1, 4096 / std::max<int64_t>(1, g.window * std::max<int64_t>(1, g.head_dim)));
}

// One thread's scratch: a pixel's slots and a row of D accumulators (two for pass B).
template <typename T>
struct PixelScratch {
  explicit PixelScratch(const nd::NdGeometry& g)
      : slots(g.window), rows(2 * g.head_dim), window(g.window) {}
  std::vector<int64_t> slots;
  std::vector<T> rows;
  std::vector<T> window;
};

std::tuple<at::Tensor, at::Tensor> forward_cpu(
    const at::Tensor& query, const at::Tensor& key, const at::Tensor& value,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale) {
  check_slide_attention_nd_inputs(query, key, value, kernel_size, dilation, key_bias, shift_weight,
                                  shift_bias, border);
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty(q.sizes().slice(0, q.dim() - 1), q.options());
  const SlideNdCall call = slide_nd_call(q, kernel_size, dilation, border, causal, scale, key_bias,
                                         shift_weight, shift_bias, q.options());
  const nd::NdGeometry& g = call.g;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_nd_forward_cpu", [&] {
    using T = scalar_t;
    const auto p = nd_tensors<T, T>(call, q, k, v);
    T* out_data = out.data_ptr<T>();
    T* lse_data = lse.data_ptr<T>();
    at::parallel_for(0, lse.numel(), pixel_grain(g), [&](int64_t begin, int64_t end) {
      PixelScratch<T> s(g);
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        lse_data[pixel] = nd::window_softmax(p, pixel, s.slots.data(), s.window.data());
        nd::combine_window(p, p.value + p.plane(pixel), p.value_bias, s.slots.data(),
                           s.window.data(), 0, g.head_dim, s.rows.data());
        std::copy_n(s.rows.data(), g.head_dim, out_data + pixel * g.head_dim);
      }
    });
  });
  return {out.to(query.scalar_type()), lse};
}

// Pixels whose dW rows (weight_grad_rows, 2 x K x D values each) one matrix product adds.
int64_t weight_block(const nd::NdGeometry& g) {
  return std::clamp<int64_t>((int64_t(1) << 18) / std::max<int64_t>(1, g.window * g.head_dim), 1,
                             32);
}

// dW (K x K*D, [n][m][c]) += dlogits^T key_rows + probs^T value_rows over `count` pixels, whose
// K-value rows of dlogits and probs and K*D-value dW rows are contiguous. Inside a parallel
// region ATen runs the products on the calling thread.
template <typename T>
void add_weight_grads(const nd::NdGeometry& g, int64_t count, T* dlogits, T* probs, T* key_rows,
                      T* value_rows, T* weight_grads) {
  const auto options = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  const int64_t columns = g.window * g.head_dim;
  at::Tensor grads = at::from_blob(weight_grads, {g.window, columns}, options);
  for (const auto& [rows, coeffs] : {std::pair{key_rows, dlogits}, {value_rows, probs}}) {
    grads.addmm_(at::from_blob(coeffs, {count, g.window}, options).t(),
                 at::from_blob(rows, {count, columns}, options));
  }
}

// Pass A over the pixels: probabilities and logit gradients into probs / dlogits (K per pixel),
// dq, and the parameter gradients' partial sums, one row of `partials` per group (dW added per
// block of weight_block pixels).
template <typename T>
void window_pass(const nd::NdTensors<T, T>& p, int64_t pixels, T* probs, T* dlogits, T* grad_q,
                 at::Tensor& partials) {
  const nd::NdGeometry& g = p.g;
  const cpu::WorkSplit split(pixels);
  const SlideParameterLayout& l = p.params;
  const int64_t entries = l.gradient_size(), block = weight_block(g);
  const int64_t row = g.window * g.head_dim;
  partials = at::zeros({std::max<int64_t>(split.groups(), 1), entries},
                       c10::CppTypeToScalarType<T>::value);
  T* partial_data = partials.data_ptr<T>();
  std::vector<PixelScratch<T>> scratch;
  std::vector<std::vector<T>> weight_rows(split.workers());
  for (int64_t w = 0; w < split.workers(); ++w) {
    scratch.emplace_back(g);
    if (l.weight_grads > 0) weight_rows[w].resize(2 * block * row);
  }
  split.run([&](int64_t group, int64_t worker) {
    PixelScratch<T>& s = scratch[worker];
    T* key_rows = weight_rows[worker].data();
    T* value_rows = key_rows + block * row;
    T* grads = partial_data + group * entries;
    for (int64_t first = split.begin(group); first < split.end(group); first += block) {
      const int64_t count = std::min(block, split.end(group) - first);
      for (int64_t pixel = first; pixel < first + count; ++pixel) {
        T* pixel_probs = probs + pixel * g.window;
        T* pixel_dlogits = dlogits + pixel * g.window;
        nd::window_gradients(p, pixel, s.slots.data(), pixel_probs, pixel_dlogits);
        nd::combine_window(p, p.key + p.plane(pixel), p.key_bias_of(pixel), s.slots.data(),
                           pixel_dlogits, 0, g.head_dim, s.rows.data());
        std::copy_n(s.rows.data(), g.head_dim, grad_q + pixel * g.head_dim);
        if (entries > 0) nd::add_bias_grads(p, pixel, pixel_probs, pixel_dlogits, grads);
        if (l.weight_grads > 0) {
          nd::weight_grad_rows(p, pixel, s.slots.data(), key_rows + (pixel - first) * row,
                               value_rows + (pixel - first) * row);
        }
      }
      if (l.weight_grads > 0) {
        add_weight_grads(g, count, dlogits + first * g.window, probs + first * g.window, key_rows,
                         value_rows, grads + l.weight_grad(0, 0, 0));
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& query, const at::Tensor& key,
    const at::Tensor& value, const at::Tensor& output, const at::Tensor& logsumexp,
    c10::IntArrayRef kernel_size, c10::IntArrayRef dilation,
    const std::optional<at::Tensor>& key_bias, const std::optional<at::Tensor>& shift_weight,
    const std::optional<at::Tensor>& shift_bias, c10::string_view border, bool causal,
    std::optional<double> scale, std::array<bool, 3> compute_param_grads) {
  check_slide_attention_nd_backward_inputs(grad_output, query, key, value, output, logsumexp,
                                           kernel_size, dilation, key_bias, shift_weight,
                                           shift_bias, border);
  const at::Tensor q = prepare(query), k = prepare(key), v = prepare(value);
  const at::Tensor dout = prepare(grad_output), lse = prepare(logsumexp);
  const SlideNdCall call = slide_nd_call(q, kernel_size, dilation, border, causal, scale, key_bias,
                                         shift_weight, shift_bias, q.options(),
                                         compute_param_grads);
  const nd::NdGeometry& g = call.g;
  const int64_t pixels = lse.numel();
  at::Tensor grad_q = at::empty(q.sizes(), q.options());
  at::Tensor grad_k = at::empty(q.sizes(), q.options());
  at::Tensor grad_v = at::empty(q.sizes(), q.options());
  const at::Tensor windows = at::empty({2, pixels, g.window}, q.options());
  at::Tensor partials;
  AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "slideformer_slide_attention_nd_backward_cpu", [&] {
    using T = scalar_t;
    auto p = nd_tensors<T, T>(call, q, k, v);
    p.grad_output = dout.const_data_ptr<T>();
    p.logsumexp = lse.const_data_ptr<T>();
    T* probs = windows[0].data_ptr<T>();
    T* dlogits = windows[1].data_ptr<T>();
    window_pass(p, pixels, probs, dlogits, grad_q.data_ptr<T>(), partials);
    T* dk = grad_k.data_ptr<T>();
    T* dv = grad_v.data_ptr<T>();
    at::parallel_for(0, pixels, pixel_grain(g), [&](int64_t begin, int64_t end) {
      PixelScratch<T> s(g);
      T* row_k = s.rows.data();
      T* row_v = row_k + g.head_dim;
      for (int64_t pixel = begin; pixel < end; ++pixel) {
        nd::gather_key_value_grads(p, probs, dlogits, pixel, 0, g.head_dim, row_k, row_v);
        std::copy_n(row_k, g.head_dim, dk + pixel * g.head_dim);
        std::copy_n(row_v, g.head_dim, dv + pixel * g.head_dim);
      }
    });
  });
  at::Tensor total = partials[0].clone();
  for (int64_t group = 1; group < partials.size(0); ++group) total += partials[group];
  const SlideParameterGrads params =
      unpack_slide_parameter_grads(call.layout, total, query.scalar_type());
  auto to_input_type = [&](const at::Tensor& grad) { return grad.to(query.scalar_type()); };
  return {to_input_type(grad_q), to_input_type(grad_k),  to_input_type(grad_v),
          params.key_bias,       params.shift_weight,    params.shift_bias};
}

}  // namespace

TORCH_LIBRARY_IMPL(slideformer, CPU, m) {
  m.impl("_slide_attention_nd_forward", &forward_cpu);
  m.impl("_slide_attention_nd_backward", &backward_cpu);
}

}  // namespace slideformer::ops
