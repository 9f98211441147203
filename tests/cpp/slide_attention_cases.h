#pragma once
// The slide_attention test cases, written once and run per device: test_slide_attention.cpp runs
// them on the CPU, test_slide_attention_cuda.cpp on a GPU, test_slide_attention_emulated.cpp on the
// host execution of the CUDA kernels. References in plain aten ops (docs/operators.md):
// (a) the Slide-Transformer formulation for the "zeros" border: a frozen one-hot depthwise
//     conv2d plus a learnable depthwise conv2d make the k*k shifted copies, then einsum+softmax;
// (b) a brute-force gather of every window slot for the "clamp" border.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <functional>
#include <limits>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "slideformer/ops.h"
#include "test_helpers.h"

namespace slideformer::testing::slide {

inline double default_scale(const at::Tensor& q, std::optional<double> scale) {
  return scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
}

// (a) Output channel c*k2 + n of both convs is shifted copy n of channel c; the learnable conv
// has weight (D*k2, 1, k, k) and bias (D*k2). Undefined tensors are absent terms.
inline at::Tensor reference_slide_transformer(const at::Tensor& q, const at::Tensor& k,
                                       const at::Tensor& v, int64_t ks, int64_t dilation,
                                       const at::Tensor& key_bias, const at::Tensor& learned_weight,
                                       const at::Tensor& learned_bias,
                                       std::optional<double> scale = std::nullopt) {
  const int64_t B = q.size(0), H = q.size(1), Y = q.size(2), X = q.size(3), D = q.size(4);
  const int64_t k2 = ks * ks, pad = dilation * (ks / 2);
  const at::Tensor one_hot = at::eye(k2, q.options()).view({k2, 1, ks, ks}).repeat({D, 1, 1, 1});
  auto copies = [&](const at::Tensor& t) {
    const at::Tensor planes = t.permute({0, 1, 4, 2, 3}).reshape({B * H, D, Y, X});
    at::Tensor out = at::conv2d(planes, one_hot, {}, 1, pad, dilation, D);
    if (learned_weight.defined()) {
      const std::optional<at::Tensor> bias =
          learned_bias.defined() ? std::optional<at::Tensor>(learned_bias) : std::nullopt;
      out = out + at::conv2d(planes, learned_weight, bias, 1, pad, dilation, D);
    } else if (learned_bias.defined()) {
      out = out + learned_bias.view({1, -1, 1, 1});
    }
    return out.view({B, H, D, k2, Y, X});
  };
  at::Tensor keys = copies(k);
  if (key_bias.defined()) keys = keys + key_bias.view({1, H, 1, k2, 1, 1});
  const at::Tensor logits = at::einsum("bhyxc,bhcnyx->bhyxn", {q, keys}) * default_scale(q, scale);
  return at::einsum("bhyxn,bhcnyx->bhyxc", {at::softmax(logits, -1), copies(v)});
}

// Per axis: the position slot j of pixel i reads in clamp mode, -1 past the end of a short axis.
inline std::vector<std::vector<int64_t>> clamp_slot_positions(int64_t length, int64_t ks,
                                                       int64_t dilation) {
  std::vector<std::vector<int64_t>> table(length);
  for (int64_t i = 0; i < length; ++i) {
    const int64_t group = i % dilation, sub = i / dilation;
    int64_t sub_length = 0;  // positions group, group + dilation, ... inside the axis
    for (int64_t p = group; p < length; p += dilation) ++sub_length;
    const int64_t start =
        std::min(std::max<int64_t>(sub - ks / 2, 0), std::max<int64_t>(sub_length - ks, 0));
    for (int64_t j = 0; j < ks; ++j) {
      table[i].push_back(start + j < sub_length ? group + dilation * (start + j) : -1);
    }
  }
  return table;
}

// (b) Gathers slot (jy, jx) of pixel (y, x) from rows[y][jy], cols[x][jx] (-1: reads 0 and is
// masked out of the softmax), mixes the gathered copies with W, adds the biases.
inline at::Tensor reference_clamp_gather(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                  int64_t ks, int64_t dilation, const at::Tensor& key_bias,
                                  const at::Tensor& shift_weight, const at::Tensor& shift_bias,
                                  std::optional<double> scale = std::nullopt) {
  const int64_t B = q.size(0), H = q.size(1), Y = q.size(2), X = q.size(3), D = q.size(4);
  const int64_t k2 = ks * ks, P = Y * X;
  const auto rows = clamp_slot_positions(Y, ks, dilation),
             cols = clamp_slot_positions(X, ks, dilation);
  at::Tensor index = at::empty({P, k2}, at::kLong);
  at::Tensor missing = at::empty({P, k2}, at::kBool);
  for (int64_t y = 0; y < Y; ++y) {
    for (int64_t x = 0; x < X; ++x) {
      for (int64_t n = 0; n < k2; ++n) {
        const int64_t r = rows[y][n / ks], c = cols[x][n % ks];
        missing[y * X + x][n] = r < 0 || c < 0;
        index[y * X + x][n] = (r < 0 || c < 0) ? P : r * X + c;  // row P is all zeros
      }
    }
  }
  index = index.to(q.device());
  missing = missing.to(q.device());
  auto gather = [&](const at::Tensor& t) {
    at::Tensor padded = at::cat({t.reshape({B, H, P, D}), at::zeros({B, H, 1, D}, t.options())}, 2);
    at::Tensor g = padded.index_select(2, index.flatten()).view({B, H, P, k2, D});
    if (shift_weight.defined()) g = at::einsum("cnm,bhpmc->bhpnc", {shift_weight, g});
    if (shift_bias.defined()) g = g + shift_bias.t();
    return g;
  };
  at::Tensor keys = gather(k);
  if (key_bias.defined()) keys = keys + key_bias.view({1, H, 1, k2, 1});
  at::Tensor logits =
      at::einsum("bhpc,bhpnc->bhpn", {q.reshape({B, H, P, D}), keys}) * default_scale(q, scale);
  logits = logits.masked_fill(missing, -std::numeric_limits<double>::infinity());
  return at::einsum("bhpn,bhpnc->bhpc", {at::softmax(logits, -1), gather(v)}).view({B, H, Y, X, D});
}

// The op with undefined tensors left out of the options.
inline at::Tensor slide(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t ks,
                 int64_t dilation, const at::Tensor& key_bias, const at::Tensor& shift_weight,
                 const at::Tensor& shift_bias, const std::string& border,
                 std::optional<double> scale = std::nullopt) {
  auto options =
      slideformer::SlideAttentionFuncOptions(ks).dilation(dilation).border(border).scale(scale);
  if (key_bias.defined()) options.key_bias(key_bias);
  if (shift_weight.defined()) options.shift_weight(shift_weight);
  if (shift_bias.defined()) options.shift_bias(shift_bias);
  return slideformer::slide_attention(q, k, v, options);
}

struct Case {
  int64_t b, h, y, x, d, ks, dilation;
};

inline std::ostream& operator<<(std::ostream& os, const Case& c) {
  return os << "B" << c.b << "_H" << c.h << "_" << c.y << "x" << c.x << "_D" << c.d << "_k" << c.ks
            << "_dil" << c.dilation;
}

// The leaves a test differentiates: q, k, v, key_bias, and the learnable depthwise conv of
// Slide-Transformer (weight (D*k2, 1, k, k), bias (D*k2)), from which the op's
// shift_weight = I + weight and shift_bias = bias are derived.
struct Leaves {
  at::Tensor q, k, v, key_bias, learned_weight, learned_bias;
  std::vector<at::Tensor> all() const {
    std::vector<at::Tensor> out;
    for (const auto& t : {q, k, v, key_bias, learned_weight, learned_bias})
      if (t.defined()) out.push_back(t);
    return out;
  }
  at::Tensor shift_weight(const Case& c) const {
    const int64_t k2 = c.ks * c.ks;
    return learned_weight.defined()
               ? at::eye(k2, learned_weight.options()) + learned_weight.view({c.d, k2, k2})
               : at::Tensor();
  }
  at::Tensor shift_bias(const Case& c) const {
    return learned_bias.defined() ? learned_bias.view({c.d, c.ks * c.ks}) : at::Tensor();
  }
};

// present = which of (key_bias, learned weight, learned bias) exist.
inline Leaves make_leaves(const Case& c, std::array<bool, 3> present, at::ScalarType dtype = at::kDouble,
                   uint64_t seed = 0, at::Device device = at::kCPU) {
  at::manual_seed(seed);
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  const int64_t k2 = c.ks * c.ks;
  Leaves l;
  l.q = at::randn({c.b, c.h, c.y, c.x, c.d}, opts).requires_grad_();
  l.k = at::randn({c.b, c.h, c.y, c.x, c.d}, opts).requires_grad_();
  l.v = at::randn({c.b, c.h, c.y, c.x, c.d}, opts).requires_grad_();
  if (present[0]) l.key_bias = (0.5 * at::randn({c.h, k2}, opts)).requires_grad_();
  if (present[1])
    l.learned_weight = (0.3 * at::randn({c.d * k2, 1, c.ks, c.ks}, opts)).requires_grad_();
  if (present[2]) l.learned_bias = (0.3 * at::randn({c.d * k2}, opts)).requires_grad_();
  return l;
}

// Fresh leaves with the values of `l`, converted to dtype and moved to device.
inline Leaves leaves_as(const Leaves& l, at::ScalarType dtype, at::Device device) {
  auto as = [&](const at::Tensor& t) {
    return t.defined() ? t.detach().to(device, dtype).requires_grad_() : at::Tensor();
  };
  return {as(l.q), as(l.k), as(l.v), as(l.key_bias), as(l.learned_weight), as(l.learned_bias)};
}

inline at::Tensor ours(const Leaves& l, const Case& c, const std::string& border,
                std::optional<double> scale = std::nullopt) {
  return slide(l.q, l.k, l.v, c.ks, c.dilation, l.key_bias, l.shift_weight(c), l.shift_bias(c),
               border, scale);
}

inline at::Tensor reference(const Leaves& l, const Case& c, const std::string& border,
                     std::optional<double> scale = std::nullopt) {
  if (border == "zeros") {
    return reference_slide_transformer(l.q, l.k, l.v, c.ks, c.dilation, l.key_bias,
                                       l.learned_weight, l.learned_bias, scale);
  }
  return reference_clamp_gather(l.q, l.k, l.v, c.ks, c.dilation, l.key_bias, l.shift_weight(c),
                                l.shift_bias(c), scale);
}

// Output and the gradients of every leaf agree with the reference.
inline void expect_matches_reference(const Leaves& l, const Case& c, const std::string& border, double tol,
                              std::optional<double> scale = std::nullopt) {
  const at::Tensor out = ours(l, c, border, scale);
  const at::Tensor ref = reference(l, c, border, scale);
  EXPECT_EQ(out.scalar_type(), l.q.scalar_type());
  expect_close(out, ref.to(out.scalar_type()), tol, tol, "output");
  if (out.numel() == 0) return;
  const at::Tensor grad = at::randn_like(ref);
  const auto theirs_inputs = l.all();
  const auto ours_grads = torch::autograd::grad({out}, theirs_inputs, {grad.to(out.scalar_type())});
  const auto ref_grads = torch::autograd::grad({ref}, theirs_inputs, {grad});
  for (size_t i = 0; i < ours_grads.size(); ++i) {
    expect_close(ours_grads[i], ref_grads[i], 4 * tol, 4 * tol,
                 "gradient of leaf " + std::to_string(i));
  }
}

// Shapes of the parity tests, each run with both borders, with and without the parameters.
inline std::vector<Case> parity_cases() {
  return {Case{2, 2, 5, 7, 4, 3, 1},     // odd, non-square
          Case{1, 3, 1, 1, 5, 3, 1},     // 1x1 map
          Case{1, 2, 2, 3, 3, 5, 1},     // map smaller than kernel
          Case{2, 1, 6, 7, 9, 3, 2},     // dilation 2, odd D
          Case{1, 2, 7, 9, 4, 3, 3},     // dilation 3, short sub-axes
          Case{1, 1, 9, 4, 2, 5, 2},     // k 5 with dilation 2
          Case{1, 2, 4, 6, 3, 1, 1},     // k 1
          Case{1, 1, 8, 9, 3, 7, 1},     // k 7
          Case{1, 1, 9, 10, 2, 7, 2},    // k 7 with dilation 2
          Case{1, 1, 14, 15, 2, 13, 1},  // k 13
          Case{1, 1, 8, 9, 2, 13, 2},    // k 13 with dilation 2: most slots outside the map
          Case{2, 2, 4, 35, 3, 3, 1},    // k 3 past 16-wide rows of the CPU fast path, B, H > 1
          // Chunks of 1, 2 or 4 vectors (AVX-512 float: D <= 16, <= 32, more), padded or not;
          // a window whose channels fill whole chunks is read in place inside the map.
          Case{1, 1, 3, 20, 17, 3, 1},
          Case{1, 2, 9, 8, 16, 3, 2},
          Case{2, 1, 7, 6, 16, 5, 1},
          Case{1, 2, 6, 7, 32, 3, 1},
          Case{1, 1, 5, 6, 40, 3, 1},
          Case{0, 2, 4, 4, 4, 3, 1}};    // B = 0
}

using ParityParam = std::tuple<Case, std::string, bool>;


inline std::string parity_param_name(const ::testing::TestParamInfo<ParityParam>& info) {
  std::ostringstream name;
  name << std::get<0>(info.param) << "_" << std::get<1>(info.param)
       << (std::get<2>(info.param) ? "_params" : "_plain");
  return name.str();
}

inline void check_parity_float64(const ParityParam& param, at::Device device) {
  const auto& [c, border, with_params] = param;
  const Leaves l = make_leaves(c, {with_params, with_params, with_params}, at::kDouble, 0, device);
  EXPECT_EQ(ours(l, c, border).device(), device);
  expect_matches_reference(l, c, border, 1e-10);
}

inline void check_each_optional_input_alone_and_explicit_scale(at::Device device) {
  const Case c{2, 2, 5, 6, 3, 3, 2};
  for (const std::string border : {"zeros", "clamp"}) {
    for (int mask = 0; mask < 8; ++mask) {
      const Leaves l =
          make_leaves(c, {bool(mask & 1), bool(mask & 2), bool(mask & 4)}, at::kDouble, mask, device);
      SCOPED_TRACE(border + " optional-input mask " + std::to_string(mask));
      expect_matches_reference(l, c, border, 1e-10,
                               mask == 5 ? std::optional<double>(-0.7) : std::nullopt);
    }
  }
}

inline void check_permuted_inputs_as_a_module_passes_them(at::Device device) {
  // qkv = Linear output (B, Y, X, 3, H, D), viewed as three (B, H, Y, X, D) tensors.
  const Case c{2, 3, 5, 7, 4, 3, 1};
  at::manual_seed(3);
  const at::Tensor qkv = at::randn({c.b, c.y, c.x, 3, c.h, c.d}, at::TensorOptions(at::kDouble).device(device));
  auto part = [&](int64_t i) { return qkv.select(3, i).permute({0, 3, 1, 2, 4}); };
  Leaves l = make_leaves(c, {true, true, true}, at::kDouble, 0, device);
  l.q = part(0).requires_grad_(false);
  l.k = part(1);
  l.v = part(2);
  ASSERT_FALSE(l.q.is_contiguous());
  // Also a channel stride other than 1.
  const at::Tensor channels_strided =
      at::randn({c.b, c.h, c.y, c.x, 2 * c.d}, at::TensorOptions(at::kDouble).device(device)).slice(4, 0, 2 * c.d, 2);
  for (const std::string border : {"zeros", "clamp"}) {
    expect_close(ours(l, c, border), reference(l, c, border), 1e-10, 1e-10, border);
    Leaves strided = l;
    strided.v = channels_strided;
    expect_close(ours(strided, c, border), reference(strided, c, border), 1e-10, 1e-10, border);
  }
}

// The op in `dtype` against the float64 reference on the same rounded inputs (and the same
// rounded output gradient): output and the gradients of the leaves `present` asks for, element
// by element within `factor` units of roundoff of dtype (expect_close_in_dtype).
inline void expect_dtype_matches_float64(const Case& c, const std::string& border,
                                         std::array<bool, 3> present, at::ScalarType dtype,
                                         double factor, at::Device device = at::kCPU) {
  const Leaves low = leaves_as(make_leaves(c, present, at::kDouble, 9, device), dtype, device);
  const Leaves exact = leaves_as(low, at::kDouble, device);
  const at::Tensor out = ours(low, c, border);
  EXPECT_EQ(out.scalar_type(), dtype);
  const at::Tensor ref = reference(exact, c, border);
  expect_close_in_dtype(out, ref, dtype, factor, std::string("output ") + c10::toString(dtype));
  const at::Tensor grad = at::randn_like(ref).to(dtype);
  const auto low_grads = torch::autograd::grad({out}, low.all(), {grad});
  const auto exact_grads = torch::autograd::grad({ref}, exact.all(), {grad.to(at::kDouble)});
  for (size_t i = 0; i < low_grads.size(); ++i) {
    EXPECT_EQ(low_grads[i].scalar_type(), dtype);
    expect_close_in_dtype(low_grads[i], exact_grads[i], dtype, factor,
                          std::string("gradient ") + std::to_string(i) + " " + c10::toString(dtype));
  }
}

inline void check_half_types_close_to_float64(at::Device device) {
  const Case c{2, 2, 9, 11, 16, 3, 1};
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const std::string border : {"zeros", "clamp"}) {
      SCOPED_TRACE(border);
      expect_dtype_matches_float64(c, border, {true, true, true}, dtype, roundoff_factor(dtype), device);
    }
  }
}

inline void check_finite_difference_gradients_all_six_inputs(at::Device device) {
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
  const int64_t ks = 3, k2 = 9, D = 3, H = 2;
  for (const std::string border : {"zeros", "clamp"}) {
    at::manual_seed(11);
    slideformer::testing::expect_gradients_match_finite_differences(
        [&](const std::vector<at::Tensor>& x) {
          return slide(x[0], x[1], x[2], ks, 2, x[3], x[4], x[5], border);
        },
        {at::randn({1, H, 4, 5, D}, opts).requires_grad_(),
         at::randn({1, H, 4, 5, D}, opts).requires_grad_(),
         at::randn({1, H, 4, 5, D}, opts).requires_grad_(),
         at::randn({H, k2}, opts).requires_grad_(),
         (at::eye(k2, opts) + 0.3 * at::randn({D, k2, k2}, opts)).requires_grad_(),
         at::randn({D, k2}, opts).requires_grad_()});
  }
}

inline void check_empty_maps(at::Device device) {
  for (const Case& c : {Case{1, 2, 0, 5, 4, 3, 1}, Case{2, 2, 3, 0, 4, 3, 2}}) {
    for (const std::string border : {"zeros", "clamp"}) {
      const Leaves l = make_leaves(c, {true, true, true}, at::kDouble, 0, device);
      const at::Tensor out = ours(l, c, border);
      EXPECT_EQ(out.sizes(), l.q.sizes());
      const auto grads = torch::autograd::grad({out.sum()}, l.all(), {}, false, false, true);
      for (size_t i = 0; i < grads.size(); ++i) {
        EXPECT_EQ(grads[i].sizes(), l.all()[i].sizes());
        EXPECT_TRUE(grads[i].eq(0).all().item<bool>());
      }
    }
  }
}

inline void check_parameter_gradients_only_where_asked(at::Device device) {
  const Case c{1, 2, 4, 5, 3, 3, 1};
  Leaves l = make_leaves(c, {true, true, true}, at::kDouble, 0, device);
  const at::Tensor weight = l.shift_weight(c).detach();  // given, but not a leaf
  const at::Tensor out = slide(l.q, l.k, l.v, 3, 1, l.key_bias, weight, l.shift_bias(c), "zeros");
  const auto grads = torch::autograd::grad({out.sum()}, {l.key_bias, l.learned_bias});
  const at::Tensor ref = reference_slide_transformer(l.q, l.k, l.v, 3, 1, l.key_bias,
                                                     l.learned_weight.detach(), l.learned_bias);
  const auto ref_grads = torch::autograd::grad({ref.sum()}, {l.key_bias, l.learned_bias});
  expect_close(grads[0], ref_grads[0], 1e-10, 1e-10, "key_bias");
  expect_close(grads[1], ref_grads[1], 1e-10, 1e-10, "shift_bias");
}

inline void check_backward_deterministic(at::Device device) {
  const Case c{2, 3, 17, 19, 32, 3, 1};
  const Leaves l = make_leaves(c, {true, true, true}, at::kFloat, 4, device);
  auto run = [&] {
    const at::Tensor out = ours(l, c, "zeros");
    return torch::autograd::grad({out.square().sum()}, l.all());
  };
  const auto first = run(), second = run();
  for (size_t i = 0; i < first.size(); ++i) EXPECT_TRUE(at::equal(first[i], second[i])) << i;
}

inline void check_double_backward_says_unsupported(at::Device device) {
  const Leaves l = make_leaves({1, 1, 3, 3, 2, 3, 1}, {false, false, false}, at::kDouble, 0, device);
  const at::Tensor out = ours(l, {1, 1, 3, 3, 2, 3, 1}, "zeros");
  EXPECT_THROW_MSG(torch::autograd::grad({out.sum()}, {l.q}, {}, true, /*create_graph=*/true),
                   "slideformer::slide_attention: double backward is not supported");
}

struct BadInput {
  std::string name;
  std::function<at::Tensor()> call;
  std::string message;
};

inline void PrintTo(const BadInput& bad, std::ostream* os) { *os << bad.name; }

// Valid inputs on `device`: q (2, 3, 5, 6, 4), k = 3; `change` replaces one of them. `other` is
// a device different from `device`.
struct CallArgs {
  CallArgs(at::Device device, at::Device other) : opts(at::TensorOptions().device(device)), other(other) {}
  at::TensorOptions opts;
  at::Device other;
  at::Tensor query = at::randn({2, 3, 5, 6, 4}, opts), key = query, value = query;
  int64_t kernel_size = 3, dilation = 1;
  at::Tensor key_bias, shift_weight, shift_bias;
  std::string border = "zeros";
};

// Makes the BadInput cases of one device.
struct BadInputMaker {
  at::Device device, other;
  BadInput operator()(std::string name, std::function<void(CallArgs&)> change,
                      std::string message) const {
    auto call = [change, device = device, other = other] {
      CallArgs a(device, other);
      change(a);
      return slide(a.query, a.key, a.value, a.kernel_size, a.dilation, a.key_bias, a.shift_weight,
                   a.shift_bias, a.border);
    };
    return {std::move(name), call, std::move(message)};
  }
};

// The message after the op name for every bad input on `device`; `other` is another device.
inline std::vector<BadInput> bad_inputs(at::Device device, at::Device other) {
  const BadInputMaker bad{device, other};
  const std::string on_device_of_query = "must be on the device of query (" + device.str() + "), got " + other.str();
  return {
      bad(
          "EvenKernelSize", [](CallArgs& a) { a.kernel_size = 4; },
          "kernel_size must be odd and >= 1, got 4"),
      bad(
          "ZeroKernelSize", [](CallArgs& a) { a.kernel_size = 0; },
          "kernel_size must be odd and >= 1, got 0"),
      bad(
          "NegativeKernelSize", [](CallArgs& a) { a.kernel_size = -3; },
          "kernel_size must be odd and >= 1, got -3"),
      bad(
          "ZeroDilation", [](CallArgs& a) { a.dilation = 0; }, "dilation must be >= 1, got 0"),
      bad(
          "UnknownBorder", [](CallArgs& a) { a.border = "reflect"; },
          "border must be \"zeros\" or \"clamp\", got \"reflect\""),
      bad(
          "QueryRank", [](CallArgs& a) { a.query = a.query[0]; },
          "query must have 5 dimensions (B, H, Y, X, D), got 4"),
      bad(
          "KeyRank", [](CallArgs& a) { a.key = a.key[0]; },
          "key must have 5 dimensions (B, H, Y, X, D), got 4"),
      bad(
          "ValueRank", [](CallArgs& a) { a.value = a.value.unsqueeze(0); },
          "value must have 5 dimensions (B, H, Y, X, D), got 6"),
      bad(
          "IntegerQuery", [](CallArgs& a) { a.query = a.query.to(at::kInt); },
          "query must be float32, float64, float16 or bfloat16, got Int"),
      bad(
          "KeyDtype", [](CallArgs& a) { a.key = a.key.to(at::kDouble); },
          "key must have the dtype of query (Float), got Double"),
      bad(
          "ValueDtype", [](CallArgs& a) { a.value = a.value.to(at::kHalf); },
          "value must have the dtype of query (Float), got Half"),
      bad(
          "KeyDevice", [](CallArgs& a) { a.key = a.key.to(a.other); },
          "key " + on_device_of_query),
      bad(
          "KeyBatch",
          [](CallArgs& a) {
            a.key = at::randn({1, 3, 5, 6, 4}, a.opts);
          },
          "key must have the batch size B of query = 2 in dimension 0, got 1"),
      bad(
          "KeyHeads",
          [](CallArgs& a) {
            a.key = at::randn({2, 2, 5, 6, 4}, a.opts);
          },
          "key must have the head count H of query = 3 in dimension 1, got 2"),
      bad(
          "KeyHeight",
          [](CallArgs& a) {
            a.key = at::randn({2, 3, 4, 6, 4}, a.opts);
          },
          "key must have the height Y of query = 5 in dimension 2, got 4"),
      bad(
          "ValueWidth",
          [](CallArgs& a) {
            a.value = at::randn({2, 3, 5, 7, 4}, a.opts);
          },
          "value must have the width X of query = 6 in dimension 3, got 7"),
      bad(
          "ValueHeadDim",
          [](CallArgs& a) {
            a.value = at::randn({2, 3, 5, 6, 8}, a.opts);
          },
          "value must have the head dim D of query = 4 in dimension 4, got 8"),
      bad(
          "KeyBiasSlots",
          [](CallArgs& a) {
            a.key_bias = at::randn({3, 8}, a.opts);
          },
          "key_bias must have shape (H, k*k) = [3, 9], got [3, 8]"),
      bad(
          "KeyBiasForOtherKernel",
          [](CallArgs& a) {
            a.kernel_size = 5;
            a.key_bias = at::randn({3, 9}, a.opts);
          },
          "key_bias must have shape (H, k*k) = [3, 25], got [3, 9]"),
      bad(
          "KeyBiasDtype",
          [](CallArgs& a) {
            a.key_bias = at::randn({3, 9}, a.opts.dtype(at::kDouble));
          },
          "key_bias must have the dtype of query (Float), got Double"),
      bad(
          "ShiftWeightShape",
          [](CallArgs& a) {
            a.shift_weight = at::randn({4, 9, 8}, a.opts);
          },
          "shift_weight must have shape (D, k*k, k*k) = [4, 9, 9], got [4, 9, 8]"),
      bad(
          "ShiftWeightRank",
          [](CallArgs& a) {
            a.shift_weight = at::randn({9, 9}, a.opts);
          },
          "shift_weight must have shape (D, k*k, k*k) = [4, 9, 9], got [9, 9]"),
      bad(
          "ShiftWeightDevice",
          [](CallArgs& a) {
            a.shift_weight = at::empty({4, 9, 9}, a.opts.device(a.other));
          },
          "shift_weight " + on_device_of_query),
      bad(
          "ShiftBiasShape",
          [](CallArgs& a) {
            a.shift_bias = at::randn({9, 4}, a.opts);
          },
          "shift_bias must have shape (D, k*k) = [4, 9], got [9, 4]"),
      bad(
          "ShiftBiasDtype",
          [](CallArgs& a) {
            a.shift_bias = at::randn({4, 9}, a.opts.dtype(at::kBFloat16));
          },
          "shift_bias must have the dtype of query (Float), got BFloat16"),
  };
}

// _slide_attention_backward is a public schema: a grad_output, output or logsumexp that does not
// fit the inputs is refused before a kernel reads it (issue 11).
inline void check_backward_bad_inputs(at::Device device, at::Device other) {
  using Optional = const std::optional<at::Tensor>&;
  static auto forward = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("slideformer::_slide_attention_forward", "")
                            .typed<std::tuple<at::Tensor, at::Tensor>(
                                const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t,
                                int64_t, Optional, Optional, Optional, c10::string_view,
                                std::optional<double>)>();
  static auto backward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("slideformer::_slide_attention_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, int64_t, int64_t, Optional, Optional, Optional,
              c10::string_view, std::optional<double>, std::array<bool, 3>)>();
  const auto opts = at::TensorOptions().device(device);
  const at::Tensor q = at::randn({2, 3, 4, 5, 6}, opts);
  const auto [out, lse] =
      forward.call(q, q, q, 3, 1, std::nullopt, std::nullopt, std::nullopt, "zeros", std::nullopt);
  auto call = [&](const at::Tensor& grad, const at::Tensor& o, const at::Tensor& l) {
    return backward.call(grad, q, q, q, o, l, 3, 1, std::nullopt, std::nullopt, std::nullopt,
                         "zeros", std::nullopt, {false, false, false});
  };
  const std::string op = "slideformer::slide_attention: ";
  EXPECT_THROW_MSG(call(at::randn({1, 1, 2, 2, 4}, opts), out, lse),
                   op + "grad_output must have shape (B, H, Y, X, D) = [2, 3, 4, 5, 6], got [1, 1, 2, 2, 4]");
  EXPECT_THROW_MSG(call(at::randn_like(out), out, at::randn({1}, lse.options())),
                   op + "logsumexp must have shape (B, H, Y, X) = [2, 3, 4, 5], got [1]");
  EXPECT_THROW_MSG(call(at::randn_like(out), out.narrow(4, 0, 5), lse),
                   op + "output must have shape (B, H, Y, X, D) = [2, 3, 4, 5, 6], got [2, 3, 4, 5, 5]");
  EXPECT_THROW_MSG(call(at::randn_like(out), out, lse.to(at::kHalf)),
                   op + "logsumexp must have dtype Float (the accumulate type of query");
  EXPECT_THROW_MSG(call(at::randn_like(out), out.to(other), lse),
                   op + "output must be on the device of query (" + device.str() + "), got " +
                       other.str());
  const auto grads = call(at::randn_like(out), out, lse);
  EXPECT_EQ(std::get<0>(grads).sizes(), q.sizes());
}

// The output and the gradients of all six inputs against the CPU kernels, same inputs: the
// kernels run on `device` while a DeviceScope lives, the CPU kernels while a CpuScope lives (the
// host execution of the CUDA kernels runs on CPU tensors inside ScopedCudaHostExecution, the CPU
// half inside CpuKernelsOnly).
struct NoScope {};

template <typename DeviceScope = NoScope, typename CpuScope = NoScope>
void expect_agrees_with_cpu_kernels(const Case& c, const std::string& border,
                                    at::ScalarType dtype, double tol, at::Device device) {
  SCOPED_TRACE(::testing::PrintToString(c) + " " + border + " " + c10::toString(dtype));
  const Leaves exact = make_leaves(c, {true, true, true}, at::kDouble, 17);
  const Leaves cpu = leaves_as(exact, dtype, at::kCPU), dev = leaves_as(exact, dtype, device);
  at::Tensor cpu_out, grad;
  std::vector<at::Tensor> cpu_grads, dev_grads;
  {
    [[maybe_unused]] const CpuScope scope;
    cpu_out = ours(cpu, c, border);
    grad = at::randn_like(cpu_out);
    cpu_grads = torch::autograd::grad({cpu_out}, cpu.all(), {grad});
  }
  {
    [[maybe_unused]] const DeviceScope scope;
    const at::Tensor dev_out = ours(dev, c, border);
    ASSERT_EQ(dev_out.device(), device);
    expect_close(dev_out.cpu(), cpu_out, tol, tol, "output");
    dev_grads = torch::autograd::grad({dev_out}, dev.all(), {grad.to(device)});
  }
  for (size_t i = 0; i < cpu_grads.size(); ++i) {
    // Within tol of the gradient's largest entry: both sides round sums in their own order, and a
    // gradient that cancels to 0 in exact arithmetic (a bias broadcast over the keys) holds noise
    // of the size of its terms on either side.
    const double scale = std::max(1.0, cpu_grads[i].abs().max().item<double>());
    expect_close(dev_grads[i].cpu(), cpu_grads[i], tol, tol * scale, "gradient of leaf " + std::to_string(i));
  }
}

}  // namespace slideformer::testing::slide
