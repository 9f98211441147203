#pragma once
// slide_attention's optional parameters as its kernels read them, and the partial sums of their
// gradients as the kernels write them: one layout for the general CPU kernel, the CPU zeros-border
// fast path and the CUDA kernels (docs/operators.md, docs/cuda.md).
//
// Tables, built once per call (slide_parameter_tables), in the kernels' accumulate type:
//   weight     W[c, n, m] = shift_weight[c, n, m]      (none without shift_weight: the pure shift)
//   value bias B[c, n]    = shift_bias[c, n]           (0 without shift_bias)
//   key bias   one bias table per head h: shift_bias[c, n] + key_bias[h, n]
// Gradients, one flat vector of three sections in this order, each empty when its gradient is
// not wanted (unpack_slide_parameter_grads turns it into the parameters' shapes):
//   d key_bias (H, k2) | d shift_weight (as the weight table) | d shift_bias (as a bias table)
// Channels are laid out one of two ways, as the kernel vectorises:
//   channels innermost, [n][m][channel] and [n][channel], channels padded to a whole number of
//     vectors: the general CPU kernel, whose vector lanes are channels of one pixel;
//   channels outermost, [channel][m][n] and [channel][n]: the CPU fast path, whose lanes are
//     pixels, and the CUDA kernels, whose threads are pixels; both read a channel's weights for
//     all n of one slot m together.
// The kernels index the tables and the gradients only through this type (offsets and steps).
#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <array>
#include <cstdint>
#include <optional>

namespace slideformer::ops {

struct SlideParameterLayout {
  int64_t heads, head_dim, k2;
  // Steps of W[c, n, m] in the weight table and of B[c, n] in a bias table.
  int64_t weight_channel_step, weight_shift_step, weight_slot_step;
  int64_t bias_channel_step, bias_shift_step;
  int64_t weight_size, bias_size;  // entries of the weight table and of one bias table
  // Entries of each gradient section: 0 until with_gradients asks for it.
  int64_t key_bias_grads, weight_grads, shift_bias_grads;
  // Which gradients with_gradients asked for (a section of 0 entries may be wanted: H or D = 0).
  std::array<bool, 3> gradients_wanted;

  // [n][m][channel] and [n][channel], channel_stride >= head_dim channels (the rest are zeros).
  static SlideParameterLayout channels_innermost(int64_t heads, int64_t head_dim, int64_t k2,
                                                 int64_t channel_stride) {
    SlideParameterLayout l{heads, head_dim, k2};
    l.weight_channel_step = 1;
    l.weight_slot_step = channel_stride;
    l.weight_shift_step = k2 * channel_stride;
    l.bias_channel_step = 1;
    l.bias_shift_step = channel_stride;
    l.weight_size = k2 * k2 * channel_stride;
    l.bias_size = k2 * channel_stride;
    return l;
  }
  // [channel][m][n] and [channel][n].
  static SlideParameterLayout channels_outermost(int64_t heads, int64_t head_dim, int64_t k2) {
    SlideParameterLayout l{heads, head_dim, k2};
    l.weight_channel_step = k2 * k2;
    l.weight_slot_step = k2;
    l.weight_shift_step = 1;
    l.bias_channel_step = k2;
    l.bias_shift_step = 1;
    l.weight_size = head_dim * k2 * k2;
    l.bias_size = head_dim * k2;
    return l;
  }
  // The same layout with gradient sections for want = (key_bias, shift_weight, shift_bias).
  SlideParameterLayout with_gradients(std::array<bool, 3> want) const {
    SlideParameterLayout l = *this;
    l.key_bias_grads = want[0] ? heads * k2 : 0;
    l.weight_grads = want[1] ? weight_size : 0;
    l.shift_bias_grads = want[2] ? bias_size : 0;
    l.gradients_wanted = want;
    return l;
  }

  C10_HOST_DEVICE int64_t weight(int64_t c, int64_t n, int64_t m) const {
    return c * weight_channel_step + n * weight_shift_step + m * weight_slot_step;
  }
  C10_HOST_DEVICE int64_t bias(int64_t c, int64_t n) const {
    return c * bias_channel_step + n * bias_shift_step;
  }
  // Where head h's table starts in the key bias tables.
  C10_HOST_DEVICE int64_t key_bias_table(int64_t h) const { return h * bias_size; }

  C10_HOST_DEVICE int64_t key_bias_grad(int64_t h, int64_t n) const { return h * k2 + n; }
  C10_HOST_DEVICE int64_t weight_grad(int64_t c, int64_t n, int64_t m) const {
    return key_bias_grads + weight(c, n, m);
  }
  C10_HOST_DEVICE int64_t shift_bias_grad(int64_t c, int64_t n) const {
    return key_bias_grads + weight_grads + bias(c, n);
  }
  C10_HOST_DEVICE int64_t gradient_size() const {
    return key_bias_grads + weight_grads + shift_bias_grads;
  }
};

// The tables of one call, each a flat contiguous tensor.
struct SlideParameterTables {
  at::Tensor weight;      // weight_size entries, undefined without shift_weight
  at::Tensor key_bias;    // heads * bias_size entries
  at::Tensor value_bias;  // bias_size entries
};

SlideParameterTables slide_parameter_tables(const SlideParameterLayout& layout,
                                            const at::TensorOptions& options,
                                            const std::optional<at::Tensor>& key_bias,
                                            const std::optional<at::Tensor>& shift_weight,
                                            const std::optional<at::Tensor>& shift_bias);

// The parameter gradients in the parameters' shapes and `dtype`, contiguous; undefined when
// their section is empty.
struct SlideParameterGrads {
  at::Tensor key_bias;      // (H, k2)
  at::Tensor shift_weight;  // (D, k2, k2)
  at::Tensor shift_bias;    // (D, k2)
};

// `total`: the summed gradient vector, gradient_size() contiguous entries.
SlideParameterGrads unpack_slide_parameter_grads(const SlideParameterLayout& layout,
                                                 const at::Tensor& total, at::ScalarType dtype);

// Whether an optional tensor argument was given: present and defined.
inline bool given(const std::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

}  // namespace slideformer::ops
