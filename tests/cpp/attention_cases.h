#pragma once
// The attention test cases, written once and run per device: test_attention.cpp runs them on
// the CPU, test_attention_cuda.cpp on a GPU, test_attention_emulated.cpp on the host execution
// of the CUDA kernels (docs/operators.md, docs/cuda.md).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "slideformer/ops.h"
#include "test_helpers.h"

namespace slideformer::testing {

// softmax(scale * q k^T + bias, causal mask) v in plain aten ops, fully masked rows giving 0.
inline at::Tensor reference_attention(const at::Tensor& q, const at::Tensor& k,
                                      const at::Tensor& v, const std::optional<at::Tensor>& bias,
                                      bool causal, std::optional<double> scale) {
  const double s = scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(-1))));
  at::Tensor logits = at::matmul(q, k.transpose(-2, -1)) * s;
  if (bias) logits = logits + *bias;
  if (causal) {
    const int64_t nq = q.size(2), nk = k.size(2);
    at::Tensor mask = at::ones({nq, nk}, q.options().dtype(at::kBool)).triu(nk - nq + 1);
    logits = logits.masked_fill(mask, -std::numeric_limits<double>::infinity());
  }
  at::Tensor row_max = std::get<0>(logits.max(-1, true));
  at::Tensor safe_max = at::where(at::isinf(row_max), at::zeros_like(row_max), row_max).detach();
  at::Tensor e = at::exp(logits - safe_max);
  at::Tensor denom = e.sum(-1, true);
  at::Tensor p = e / at::where(denom == 0, at::ones_like(denom), denom);
  return at::matmul(p, v);
}

struct AttentionShape {
  int64_t b, h, nq, nk, d, dv;
};

// Shapes of the parity tests: ragged blocks, Nq != Nk, D != Dv, empty dimensions.
inline std::vector<AttentionShape> attention_parity_shapes() {
  return {{2, 3, 5, 7, 4, 6},       // Nq != Nk, D != Dv
          {1, 2, 9, 3, 8, 8},       // Nq > Nk
          {1, 1, 1, 1, 1, 1},       // smallest
          {1, 2, 131, 600, 16, 5},  // several blocks, ragged
          {1, 1, 70, 40, 40, 72},   // feature dims past one 32-wide chunk, ragged
          {0, 2, 4, 4, 8, 8},       // B = 0
          {1, 2, 0, 5, 8, 8}};      // Nq = 0
}

using AttentionParityParam = std::tuple<AttentionShape, bool>;

// "B2H3Nq5Nk7D4Dv6Causal": readable names for the parameterised parity tests.
inline std::string attention_param_name(
    const ::testing::TestParamInfo<AttentionParityParam>& info) {
  const AttentionShape& s = std::get<0>(info.param);
  return "B" + std::to_string(s.b) + "H" + std::to_string(s.h) + "Nq" + std::to_string(s.nq) +
         "Nk" + std::to_string(s.nk) + "D" + std::to_string(s.d) + "Dv" + std::to_string(s.dv) +
         (std::get<1>(info.param) ? "Causal" : "Full");
}

inline void check_parity_float64(const AttentionShape& shape, bool causal, at::Device device) {
  at::manual_seed(7);
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
  at::Tensor q = at::randn({shape.b, shape.h, shape.nq, shape.d}, opts).requires_grad_();
  at::Tensor k = at::randn({shape.b, shape.h, shape.nk, shape.d}, opts).requires_grad_();
  at::Tensor v = at::randn({shape.b, shape.h, shape.nk, shape.dv}, opts).requires_grad_();
  at::Tensor bias = at::randn({1, shape.h, shape.nq, shape.nk}, opts).requires_grad_();

  at::Tensor out = slideformer::attention(q, k, v, bias, causal);
  EXPECT_EQ(out.device(), device);
  at::Tensor ref = reference_attention(q, k, v, bias, causal, std::nullopt);
  expect_close(out, ref, 1e-10, 1e-10, "output");

  at::Tensor grad = at::randn_like(out);
  auto ours = torch::autograd::grad({out}, {q, k, v, bias}, {grad});
  auto theirs = torch::autograd::grad({ref}, {q, k, v, bias}, {grad});
  const char* names[] = {"grad query", "grad key", "grad value", "grad bias"};
  for (int i = 0; i < 4; ++i) expect_close(ours[i], theirs[i], 1e-9, 1e-9, names[i]);
}

inline void check_bias_broadcast_gradients(at::Device device) {
  at::manual_seed(1);
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
  const int64_t B = 2, H = 3, Nq = 6, Nk = 5, D = 4;
  at::Tensor q = at::randn({B, H, Nq, D}, opts), k = at::randn({B, H, Nk, D}, opts),
             v = at::randn({B, H, Nk, D}, opts);
  const std::vector<std::vector<int64_t>> shapes = {
      {Nk},           {Nq, 1},        {H, 1, Nk},     {1, H, Nq, Nk}, {B, 1, 1, Nk},
      {B, H, Nq, Nk}, {B, 1, Nq, Nk}, {1, 1, 1, 1},   {B, H, 1, 1}};
  for (const auto& shape : shapes) {
    at::Tensor bias = at::randn(shape, opts).requires_grad_();
    at::Tensor out = slideformer::attention(q, k, v, bias);
    at::Tensor ref = reference_attention(q, k, v, bias, false, std::nullopt);
    expect_close(out, ref, 1e-10, 1e-10, "output");
    at::Tensor grad = at::randn_like(out);
    at::Tensor ours = torch::autograd::grad({out}, {bias}, {grad})[0];
    at::Tensor theirs = torch::autograd::grad({ref}, {bias}, {grad})[0];
    EXPECT_EQ(ours.sizes(), bias.sizes());
    expect_close(ours, theirs, 1e-9, 1e-9, "grad bias of shape " + c10::str(bias.sizes()));
  }
}

// Row 1 of head 0 sees no key, head 1 sees none at all: their outputs and every gradient that
// flows only through them (dQ of the row, dK and dV of head 1, dbias of both) are exactly 0; the
// other gradients match the reference.
inline void check_fully_masked_rows(at::Device device) {
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
  at::Tensor q = at::randn({1, 2, 4, 3}, opts).requires_grad_();
  at::Tensor k = at::randn({1, 2, 5, 3}, opts).requires_grad_();
  at::Tensor v = at::randn({1, 2, 5, 3}, opts).requires_grad_();
  at::Tensor bias = at::randn({2, 4, 5}, opts);
  bias[0][1].fill_(-std::numeric_limits<double>::infinity());
  bias[1].fill_(-std::numeric_limits<double>::infinity());
  bias = bias.requires_grad_();
  at::Tensor out = slideformer::attention(q, k, v, bias);
  EXPECT_TRUE(out[0][0][1].eq(0).all().item<bool>());
  EXPECT_TRUE(out[0][1].eq(0).all().item<bool>());
  const at::Tensor grad = at::randn_like(out);
  const auto grads = torch::autograd::grad({out}, {q, k, v, bias}, {grad});
  for (const auto& g : grads) EXPECT_TRUE(g.isfinite().all().item<bool>());
  EXPECT_TRUE(grads[0][0][0][1].eq(0).all().item<bool>()) << "dQ of the masked row";
  EXPECT_TRUE(grads[0][0][1].eq(0).all().item<bool>()) << "dQ of the masked head";
  EXPECT_TRUE(grads[1][0][1].eq(0).all().item<bool>()) << "dK of the masked head";
  EXPECT_TRUE(grads[2][0][1].eq(0).all().item<bool>()) << "dV of the masked head";
  EXPECT_TRUE(grads[3][0][1].eq(0).all().item<bool>()) << "dbias of the masked row";
  EXPECT_TRUE(grads[3][1].eq(0).all().item<bool>()) << "dbias of the masked head";
  const at::Tensor ref = reference_attention(q, k, v, bias, false, std::nullopt);
  const auto ref_grads = torch::autograd::grad({ref}, {q, k, v}, {grad});
  for (int i = 0; i < 3; ++i) expect_close(grads[i], ref_grads[i], 1e-9, 1e-9, "gradient " + std::to_string(i));
  // Causal with Nq > Nk: the first Nq - Nk queries see no key.
  at::Tensor out2 = slideformer::attention(at::randn({1, 1, 6, 3}, opts),
                                           at::randn({1, 1, 2, 3}, opts),
                                           at::randn({1, 1, 2, 3}, opts), std::nullopt, true);
  EXPECT_TRUE(out2.narrow(2, 0, 4).eq(0).all().item<bool>());
  EXPECT_FALSE(out2.narrow(2, 4, 2).eq(0).all().item<bool>());
}

// Logits that rise from one key block to the next exercise the forward's rescaling of the running
// max: a jump of 30 moves it, a jump of 150 would overflow exp in float32 against a stale max,
// and a first block masked with -inf starts the row late. Checked in float64 and float32.
inline void check_logits_rising_across_key_blocks(at::Device device) {
  at::manual_seed(13);
  const int64_t nk = 1300;  // several key blocks of the CPU kernel
  for (auto dtype : {at::kDouble, at::kFloat}) {
    const auto opts = at::TensorOptions().dtype(dtype).device(device);
    at::Tensor q = at::randn({1, 2, 5, 8}, opts), k = at::randn({1, 2, nk, 8}, opts),
               v = at::randn({1, 2, nk, 8}, opts);
    at::Tensor key_bias = at::zeros({nk}, opts);
    key_bias.narrow(0, 512, 512).fill_(30.0);
    key_bias.narrow(0, 1024, nk - 1024).fill_(150.0);
    at::Tensor bias = key_bias.expand({5, nk}).clone();
    bias[0].narrow(0, 0, 512).fill_(-std::numeric_limits<double>::infinity());
    at::Tensor out = slideformer::attention(q, k, v, bias);
    at::Tensor ref = reference_attention(q.to(at::kDouble), k.to(at::kDouble),
                                         v.to(at::kDouble), bias.to(at::kDouble), false,
                                         std::nullopt);
    const double tol = dtype == at::kDouble ? 1e-10 : 1e-4;
    expect_close(out, ref, tol, tol, std::string("rising logits, ") + c10::toString(dtype));
  }
}

inline void check_explicit_scale_non_contiguous(at::Device device) {
  at::manual_seed(3);
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
  // (B, N, H, D) tensors transposed to (B, H, N, D), as a module passes them.
  at::Tensor q = at::randn({2, 7, 3, 4}, opts).transpose(1, 2);
  at::Tensor k = at::randn({2, 9, 3, 4}, opts).transpose(1, 2);
  at::Tensor v = at::randn({2, 9, 3, 5}, opts).transpose(1, 2);
  ASSERT_FALSE(q.is_contiguous());
  for (auto x : {&q, &k, &v}) x->requires_grad_();
  for (bool causal : {false, true}) {
    // No bias, an explicit scale: output and the gradients of the three strided inputs.
    at::Tensor out = slideformer::attention(q, k, v, std::nullopt, causal, 0.3);
    at::Tensor ref = reference_attention(q, k, v, std::nullopt, causal, 0.3);
    expect_close(out, ref, 1e-10, 1e-10, "output");
    const at::Tensor grad = at::randn_like(out).transpose(1, 2).contiguous().transpose(1, 2);
    const auto ours = torch::autograd::grad({out}, {q, k, v}, {grad});
    const auto theirs = torch::autograd::grad({ref}, {q, k, v}, {grad});
    for (int i = 0; i < 3; ++i) expect_close(ours[i], theirs[i], 1e-9, 1e-9, "gradient " + std::to_string(i));
  }
}

// Output and gradients in each reduced dtype against float64 on the same rounded inputs and
// output gradient, element by element (expect_close_in_dtype).
inline void check_reduced_precision(at::Device device) {
  at::manual_seed(5);
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const auto opts = at::TensorOptions().device(device);
    at::Tensor q = at::randn({2, 2, 37, 16}, opts), k = at::randn({2, 2, 45, 16}, opts),
               v = at::randn({2, 2, 45, 16}, opts), bias = at::randn({2, 37, 45}, opts);
    std::vector<at::Tensor> xs = {q, k, v, bias};
    for (auto& x : xs) x = x.to(dtype).requires_grad_();
    at::Tensor out = slideformer::attention(xs[0], xs[1], xs[2], xs[3], true);
    EXPECT_EQ(out.scalar_type(), dtype);
    std::vector<at::Tensor> refs;
    for (auto& x : xs) refs.push_back(x.detach().to(at::kDouble).requires_grad_());
    at::Tensor ref = reference_attention(refs[0], refs[1], refs[2], refs[3], true, std::nullopt);
    expect_close_in_dtype(out, ref, dtype, roundoff_factor(dtype), "output " + std::string(c10::toString(dtype)));
    at::Tensor grad = at::randn_like(ref).to(dtype);
    auto ours = torch::autograd::grad({out}, xs, {grad});
    auto theirs = torch::autograd::grad({ref}, refs, {grad.to(at::kDouble)});
    for (int i = 0; i < 4; ++i) {
      EXPECT_EQ(ours[i].scalar_type(), dtype);
      expect_close_in_dtype(ours[i], theirs[i], dtype, roundoff_factor(dtype),
                            "gradient " + std::to_string(i) + " " + c10::toString(dtype));
    }
  }
}

// Neighbouring query rows whose logits lie 150 apart, in float32: the lower row's exponentials
// underflow against the higher row's maximum, so a reduction that mixed two rows' maxima (the
// four lanes of a row shuffle among themselves only) would zero the lower rows. Rounding a logit
// near 150 costs its probability about 150 roundoffs (measured: up to 310 units against the
// float64 reference on the same inputs), hence 16 times the float32 factor here.
inline void check_rows_far_apart_float32(at::Device device) {
  at::manual_seed(23);
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(device);
  const int64_t nq = 40, nk = 35;
  const at::Tensor q = at::randn({2, 2, nq, 16}, opts).requires_grad_();
  const at::Tensor k = at::randn({2, 2, nk, 16}, opts).requires_grad_();
  const at::Tensor v = at::randn({2, 2, nk, 16}, opts).requires_grad_();
  const at::Tensor bias =
      ((at::arange(nq, opts) % 2 * 150).view({nq, 1}) + 0.5 * at::randn({nq, nk}, opts)).requires_grad_();
  const at::Tensor out = slideformer::attention(q, k, v, bias, false);
  std::vector<at::Tensor> exact;
  for (const at::Tensor& x : {q, k, v, bias}) exact.push_back(x.detach().cpu().to(at::kDouble).requires_grad_());
  const at::Tensor ref = reference_attention(exact[0], exact[1], exact[2], exact[3], false, std::nullopt);
  const double factor = 16 * kFloat32Factor;
  expect_close_in_dtype(out.cpu(), ref, at::kFloat, factor, "output");
  const at::Tensor grad = at::randn_like(ref);
  const auto ours = torch::autograd::grad({out}, {q, k, v, bias}, {grad.to(out.options())});
  const auto theirs = torch::autograd::grad({ref}, exact, {grad});
  for (int i = 0; i < 4; ++i) {
    expect_close_in_dtype(ours[i].cpu(), theirs[i], at::kFloat, factor, "gradient " + std::to_string(i));
  }
}

inline void check_finite_difference_gradients(at::Device device) {
  at::manual_seed(11);
  const auto opts = at::TensorOptions().dtype(at::kDouble).device(device);
  for (bool causal : {false, true}) {
    expect_gradients_match_finite_differences(
        [causal](const std::vector<at::Tensor>& x) {
          return slideformer::attention(x[0], x[1], x[2], x[3], causal);
        },
        {at::randn({1, 2, 4, 3}, opts).requires_grad_(),
         at::randn({1, 2, 5, 3}, opts).requires_grad_(),
         at::randn({1, 2, 5, 2}, opts).requires_grad_(),
         at::randn({2, 1, 5}, opts).requires_grad_()});
  }
}

inline void check_backward_deterministic(at::Device device,
                                         const AttentionShape& s = {2, 4, 300, 700, 32, 32}) {
  at::manual_seed(2);
  const auto opts = at::TensorOptions().device(device);
  at::Tensor q = at::randn({s.b, s.h, s.nq, s.d}, opts).requires_grad_();
  at::Tensor k = at::randn({s.b, s.h, s.nk, s.d}, opts).requires_grad_();
  at::Tensor v = at::randn({s.b, s.h, s.nk, s.dv}, opts);
  at::Tensor bias = at::randn({s.nk}, opts).requires_grad_();
  auto run = [&] {
    at::Tensor out = slideformer::attention(q, k, v, bias);
    return torch::autograd::grad({out.square().sum()}, {q, k, bias});
  };
  auto first = run(), second = run();
  for (size_t i = 0; i < first.size(); ++i) {
    EXPECT_TRUE(at::equal(first[i], second[i])) << "gradient " << i << " differs between runs";
  }
}

// Every bad input names the op, the argument, the expected and the actual value. `other` is a
// device different from `device`.
inline void check_bad_inputs(at::Device device, at::Device other) {
  const auto opts = at::TensorOptions().device(device);
  at::Tensor q = at::randn({2, 3, 5, 4}, opts), k = at::randn({2, 3, 6, 4}, opts),
             v = at::randn({2, 3, 6, 7}, opts);
  using slideformer::attention;
  EXPECT_THROW_MSG(attention(q[0], k, v),
                   "slideformer::attention: query must have 4 dimensions (B, H, Nq, D), got 3");
  EXPECT_THROW_MSG(attention(q, k[0], v), "slideformer::attention: key must have 4 dimensions");
  EXPECT_THROW_MSG(attention(q, k, v[0]), "slideformer::attention: value must have 4 dimensions");
  EXPECT_THROW_MSG(attention(q.to(at::kInt), k, v),
                   "slideformer::attention: query must be float32, float64, float16 or bfloat16, got Int");
  EXPECT_THROW_MSG(attention(q, k.to(at::kDouble), v),
                   "slideformer::attention: key must have the dtype of query (Float), got Double");
  EXPECT_THROW_MSG(attention(q, k, v.to(at::kHalf)),
                   "slideformer::attention: value must have the dtype of query (Float), got Half");
  EXPECT_THROW_MSG(attention(q, at::randn({1, 3, 6, 4}, opts), v),
                   "slideformer::attention: key must have the batch size B of query = 2 in dimension 0, got 1");
  EXPECT_THROW_MSG(attention(q, at::randn({2, 2, 6, 4}, opts), v),
                   "slideformer::attention: key must have the head count H of query = 3 in dimension 1, got 2");
  EXPECT_THROW_MSG(attention(q, at::randn({2, 3, 6, 5}, opts), v),
                   "slideformer::attention: key must have the head dim D of query = 4 in dimension 3, got 5");
  EXPECT_THROW_MSG(attention(q, k, at::randn({2, 3, 5, 7}, opts)),
                   "slideformer::attention: value must have the key count Nk of key = 6 in dimension 2, got 5");
  EXPECT_THROW_MSG(attention(q, k, v, at::randn({5, 5}, opts)),
                   "slideformer::attention: attn_bias must be broadcastable to (B, H, Nq, Nk) = [2, 3, 5, 6], got shape [5, 5]");
  EXPECT_THROW_MSG(attention(q, k, v, at::randn({1, 2, 3, 5, 6}, opts)),
                   "slideformer::attention: attn_bias must have at most 4 dimensions");
  EXPECT_THROW_MSG(attention(q, k, v, at::randn({5, 6}, opts.dtype(at::kDouble))),
                   "slideformer::attention: attn_bias must have the dtype of query (Float), got Double");
  EXPECT_THROW_MSG(attention(q, k, v, at::zeros({5, 6}, opts.dtype(at::kBool))),
                   "slideformer::attention: attn_bias must have the dtype of query (Float), got Bool");
  EXPECT_THROW_MSG(attention(q, k.to(other), v),
                   "slideformer::attention: key must be on the device of query (" + device.str() +
                       "), got " + other.str());
  EXPECT_THROW_MSG(attention(q, k, v, at::randn({5, 6}, opts.device(other))),
                   "slideformer::attention: attn_bias must be on the device of query (" +
                       device.str() + "), got " + other.str());
}

// _attention_backward is a public schema: a grad_output, output or logsumexp that does not fit
// the inputs is refused before a kernel reads it (issue 11: a (1, 1, 2, 4) grad_output or a (1)
// logsumexp used to give three (2, 3, 8, 16) gradients).
inline void check_backward_bad_inputs(at::Device device, at::Device other) {
  using Result = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
  static auto forward = c10::Dispatcher::singleton()
                            .findSchemaOrThrow("slideformer::_attention_forward", "")
                            .typed<std::tuple<at::Tensor, at::Tensor>(
                                const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                const std::optional<at::Tensor>&, bool, std::optional<double>)>();
  static auto backward =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("slideformer::_attention_backward", "")
          .typed<Result(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                        bool, std::optional<double>, bool)>();
  const auto opts = at::TensorOptions().device(device);
  const at::Tensor q = at::randn({2, 3, 8, 16}, opts), k = at::randn({2, 3, 8, 16}, opts),
                   v = at::randn({2, 3, 8, 16}, opts);
  const auto [out, lse] = forward.call(q, k, v, std::nullopt, false, std::nullopt);
  auto call = [&](const at::Tensor& grad, const at::Tensor& o, const at::Tensor& l) {
    return backward.call(grad, q, k, v, std::nullopt, o, l, false, std::nullopt, false);
  };
  const std::string op = "slideformer::attention: ";
  EXPECT_THROW_MSG(call(at::randn({1, 1, 2, 4}, opts), out, lse),
                   op + "grad_output must have shape (B, H, Nq, Dv) = [2, 3, 8, 16], got [1, 1, 2, 4]");
  EXPECT_THROW_MSG(call(at::randn_like(out), out, at::randn({1}, lse.options())),
                   op + "logsumexp must have shape (B, H, Nq) = [2, 3, 8], got [1]");
  EXPECT_THROW_MSG(call(at::randn_like(out), out.narrow(2, 0, 7), lse),
                   op + "output must have shape (B, H, Nq, Dv) = [2, 3, 8, 16], got [2, 3, 7, 16]");
  EXPECT_THROW_MSG(call(at::randn_like(out), out, lse.to(at::kDouble)),
                   op + "logsumexp must have dtype Float (the accumulate type of query");
  EXPECT_THROW_MSG(call(at::randn_like(out).to(at::kHalf), out, lse),
                   op + "grad_output must have the dtype of query (Float), got Half");
  EXPECT_THROW_MSG(call(at::randn_like(out), out, lse.to(other)),
                   op + "logsumexp must be on the device of query (" + device.str() + "), got " +
                       other.str());
  EXPECT_THROW_MSG(call(at::Tensor(), out, lse), op + "grad_output must be a defined tensor, got None");
  const auto [grad_q, grad_k, grad_v, grad_bias] = call(at::randn_like(out), out, lse);
  EXPECT_EQ(grad_q.sizes(), q.sizes());
  EXPECT_FALSE(grad_bias.defined());
}

// Output and every gradient of the CUDA kernels against the CPU kernels on the same inputs: the
// kernels run on `device` while a DeviceScope lives, the CPU kernels while a CpuScope lives (the
// host execution of the CUDA kernels runs on CPU tensors inside ScopedCudaHostExecution, the CPU
// half inside CpuKernelsOnly).
struct AgreementCase {
  AttentionShape shape;
  std::vector<int64_t> bias_shape;  // empty: no bias
  bool causal;
};

struct NoScope {};

template <typename DeviceScope = NoScope, typename CpuScope = NoScope>
void expect_agrees_with_cpu_kernels(const AgreementCase& c, at::ScalarType dtype, double tol,
                                    at::Device device) {
  at::manual_seed(17);
  const auto& s = c.shape;
  std::vector<at::Tensor> cpu_inputs = {at::randn({s.b, s.h, s.nq, s.d}),
                                        at::randn({s.b, s.h, s.nk, s.d}),
                                        at::randn({s.b, s.h, s.nk, s.dv})};
  if (!c.bias_shape.empty()) cpu_inputs.push_back(at::randn(c.bias_shape));
  std::vector<at::Tensor> device_inputs;
  for (auto& x : cpu_inputs) {
    x = x.to(dtype).requires_grad_();
    device_inputs.push_back(x.detach().to(device).requires_grad_());
  }
  auto run = [&](const std::vector<at::Tensor>& xs) {
    std::optional<at::Tensor> bias;
    if (xs.size() == 4) bias = xs[3];
    return slideformer::attention(xs[0], xs[1], xs[2], bias, c.causal);
  };
  at::Tensor cpu_out, grad;
  std::vector<at::Tensor> cpu_grads, device_grads;
  {
    [[maybe_unused]] const CpuScope scope;
    cpu_out = run(cpu_inputs);
    grad = at::randn_like(cpu_out);
    cpu_grads = torch::autograd::grad({cpu_out}, cpu_inputs, {grad});
  }
  {
    [[maybe_unused]] const DeviceScope scope;
    const at::Tensor device_out = run(device_inputs);
    ASSERT_EQ(device_out.device(), device);
    expect_close(device_out.cpu(), cpu_out, tol, tol, "output");
    device_grads = torch::autograd::grad({device_out}, device_inputs, {grad.to(device)});
  }
  for (size_t i = 0; i < cpu_grads.size(); ++i) {
    // Within tol of the gradient's largest entry: both sides round sums in their own order, and a
    // gradient that cancels to 0 in exact arithmetic (a bias broadcast over the keys) holds noise
    // of the size of its terms on either side.
    const double scale = std::max(1.0, cpu_grads[i].abs().max().item<double>());
    expect_close(device_grads[i].cpu(), cpu_grads[i], tol, tol * scale, "gradient " + std::to_string(i));
  }
}

inline std::vector<AgreementCase> agreement_cases() {
  return {{{2, 3, 64, 64, 32, 32}, {}, false},
          {{2, 3, 100, 77, 64, 48}, {1, 3, 100, 77}, true},   // relative-position-like bias
          {{3, 2, 33, 130, 16, 16}, {3, 1, 1, 130}, false},   // key padding mask shape
          {{1, 4, 49, 49, 96, 96}, {49, 49}, true},           // head dim of three chunks
          {{2, 2, 300, 20, 8, 130}, {2, 2, 300, 1}, true}};  // Nq > Nk, wide values
}

}  // namespace slideformer::testing
