#pragma once
// Helpers shared by the C++ tests: tensor comparison and a finite-difference gradient check.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace slideformer::testing {

// Asserts that `fn` throws a c10::Error whose message contains `fragment`.
#define EXPECT_THROW_MSG(statement, fragment)                                          \
  do {                                                                                 \
    try {                                                                              \
      (void)(statement);                                                               \
      ADD_FAILURE() << "no exception; expected one containing: " << (fragment);        \
    } catch (const c10::Error& e) {                                                    \
      EXPECT_NE(std::string(e.what_without_backtrace()).find(fragment), std::string::npos) \
          << "message: " << e.what_without_backtrace() << "\nexpected: " << (fragment); \
    }                                                                                  \
  } while (0)

inline void expect_close(const at::Tensor& actual, const at::Tensor& expected, double rtol,
                         double atol, const std::string& what = "") {
  ASSERT_TRUE(actual.defined()) << what << ": actual is undefined";
  ASSERT_TRUE(expected.defined()) << what << ": expected is undefined";
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  const at::Tensor a = actual.to(at::kDouble), e = expected.to(at::kDouble);
  ASSERT_FALSE(a.isnan().any().item<bool>()) << what << ": NaN in result";
  if (a.numel() == 0) return;
  const double err = (a - e).abs().sub(e.abs().mul(rtol)).max().item<double>();
  EXPECT_LE(err, atol) << what << ": max |actual - expected| - rtol*|expected| = " << err;
}

// Unit roundoff of a floating dtype: 2^-24 float32, 2^-11 float16, 2^-8 bfloat16, 2^-53 float64.
inline double unit_roundoff(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return std::ldexp(1.0, -11);
    case at::kBFloat16: return std::ldexp(1.0, -8);
    case at::kFloat: return std::ldexp(1.0, -24);
    default: return std::ldexp(1.0, -53);
  }
}

// Units of roundoff (expect_close_in_dtype) a result may be off by against the float64 result on
// the same rounded inputs (tests/python/precision.py uses the same). The half types: the kernels
// accumulate in float32 and round once (observed: about one unit), so a half-type rounding inside
// the computation (of a softmax sum, a logit) exceeds 8. float32 results carry the kernels' own
// rounding, which grows with the length of the sums.
inline constexpr double kHalfTypeFactor = 8;
inline constexpr double kFloat32Factor = 64;
inline double roundoff_factor(at::ScalarType dtype) {
  return dtype == at::kFloat ? kFloat32Factor : kHalfTypeFactor;
}

// A result computed in `dtype` against the float64 one, element by element:
//   |actual - expected| <= factor * u(dtype) * (|expected| + rms(expected)).
// Rounding errors of a sum scale with its terms, so an entry that cancels to near 0 is allowed
// the error of a typical entry (the rms), never one relative to the largest.
inline void expect_close_in_dtype(const at::Tensor& actual, const at::Tensor& expected,
                                  at::ScalarType dtype, double factor, const std::string& what) {
  ASSERT_EQ(actual.sizes(), expected.sizes()) << what;
  if (expected.numel() == 0) return;
  const at::Tensor a = actual.to(at::kDouble), e = expected.to(at::kDouble);
  const double rms = e.square().mean().sqrt().item<double>();
  const at::Tensor bound = factor * unit_roundoff(dtype) * (e.abs() + rms);
  const at::Tensor excess = (a - e).abs() - bound;
  EXPECT_FALSE(a.isnan().any().item<bool>()) << what << ": NaN in result";
  EXPECT_LE(excess.max().item<double>(), 0.0)
      << what << ": worst |actual - expected| / bound = "
      << ((a - e).abs() / bound).max().item<double>() << " (" << c10::toString(dtype) << ", factor "
      << factor << ")";
}

// Central finite differences of L = sum(f(inputs) * weight) against autograd, in float64, for
// every input that requires grad.
inline void expect_gradients_match_finite_differences(
    const std::function<at::Tensor(const std::vector<at::Tensor>&)>& fn,
    std::vector<at::Tensor> inputs, double eps = 1e-6, double tol = 1e-5) {
  for (auto& t : inputs) ASSERT_EQ(t.scalar_type(), at::kDouble);
  const at::Tensor weight = at::randn_like(fn(inputs).detach());
  auto loss = [&](const std::vector<at::Tensor>& xs) { return (fn(xs) * weight).sum(); };
  std::vector<at::Tensor> leaves;
  for (auto& t : inputs) leaves.push_back(t.detach().requires_grad_(t.requires_grad()));
  std::vector<at::Tensor> wrt;
  for (auto& t : leaves)
    if (t.requires_grad()) wrt.push_back(t);
  const auto analytic = torch::autograd::grad({loss(leaves)}, wrt, {}, false, false, true);
  size_t next = 0;
  for (size_t idx = 0; idx < leaves.size(); ++idx) {
    if (!leaves[idx].requires_grad()) continue;
    const at::Tensor& grad = analytic[next++];
    at::Tensor numeric = at::zeros_like(leaves[idx]);
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> xs;
    for (auto& t : leaves) xs.push_back(t.detach().clone());
    at::Tensor flat = xs[idx].view(-1), num_flat = numeric.view(-1);
    for (int64_t e = 0; e < flat.numel(); ++e) {
      const double saved = flat[e].item<double>();
      flat[e] = saved + eps;
      const double plus = loss(xs).item<double>();
      flat[e] = saved - eps;
      const double minus = loss(xs).item<double>();
      flat[e] = saved;
      num_flat[e] = (plus - minus) / (2 * eps);
    }
    ASSERT_TRUE(grad.defined()) << "input " << idx << " got no gradient";
    expect_close(grad, numeric, tol, tol, "gradient of input " + std::to_string(idx));
  }
}

// Calls the schema `name` through the dispatcher (boxed) with every tensor argument undefined,
// the optional ones included, and the other arguments from `others` by name. With no tensor
// argument the dispatcher has no dispatch key to go by (the fuzz target's regression
// tests/fuzz/ops/regression-every-tensor-undefined).
inline void call_with_every_tensor_undefined(const char* name,
                                             const std::map<std::string, c10::IValue>& others) {
  const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  std::vector<c10::IValue> stack;
  for (const c10::Argument& argument : op.schema().arguments()) {
    const c10::TypePtr& type = argument.type();
    const bool tensor = type->kind() == c10::TypeKind::TensorType ||
                        (type->kind() == c10::TypeKind::OptionalType &&
                         type->castRaw<c10::OptionalType>()->getElementType()->kind() ==
                             c10::TypeKind::TensorType);
    stack.push_back(tensor ? c10::IValue(at::Tensor()) : others.at(argument.name()));
  }
  op.callBoxed(&stack);
}

}  // namespace slideformer::testing
