// attention on a GPU: the cases of attention_cases.h on CUDA tensors, and CPU-vs-CUDA agreement.
// Every test skips when no CUDA device is present.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <optional>
#include <tuple>
#include <vector>

#include "attention_cases.h"
#include "slideformer/ops.h"
#include "slideformer/version.h"
#include "test_helpers.h"

namespace {

namespace st = slideformer::testing;
const at::Device kCuda(at::kCUDA, 0);
using slideformer::testing::expect_close;

#define SKIP_WITHOUT_CUDA()                                                          \
  do {                                                                               \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";              \
    if (!slideformer::built_with_cuda()) GTEST_SKIP() << "built without CUDA kernels"; \
  } while (0)

class AttentionCuda : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA(); }
};

class AttentionCudaParity
    : public ::testing::TestWithParam<st::AttentionParityParam> {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA(); }
};

TEST_P(AttentionCudaParity, ForwardAndGradientsMatchReferenceFloat64) {
  const auto [shape, causal] = GetParam();
  st::check_parity_float64(shape, causal, kCuda);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionCudaParity,
                         ::testing::Combine(::testing::ValuesIn(st::attention_parity_shapes()),
                                            ::testing::Bool()),
                         st::attention_param_name);

TEST_F(AttentionCuda, BiasBroadcastGradientHasBiasShape) {
  st::check_bias_broadcast_gradients(kCuda);
}

TEST_F(AttentionCuda, FullyMaskedRowsGiveZeroOutputAndGradients) {
  st::check_fully_masked_rows(kCuda);
}

TEST_F(AttentionCuda, ExplicitScaleAndNonContiguousInputs) {
  st::check_explicit_scale_non_contiguous(kCuda);
}

TEST_F(AttentionCuda, LogitsRisingAcrossKeyBlocks) {
  st::check_logits_rising_across_key_blocks(kCuda);
}

TEST_F(AttentionCuda, HalfPrecisionWithinTolerance) { st::check_reduced_precision(kCuda); }

TEST_F(AttentionCuda, FiniteDifferenceGradcheckAllInputs) {
  st::check_finite_difference_gradients(kCuda);
}

TEST_F(AttentionCuda, BackwardIsDeterministic) { st::check_backward_deterministic(kCuda); }

TEST_F(AttentionCuda, BadInputsNameOpArgumentAndValues) {
  st::check_bad_inputs(kCuda, at::Device(at::kCPU));
}

// Output and every gradient of the CUDA kernels against the CPU kernels on the same inputs.
struct AgreementCase {
  st::AttentionShape shape;
  std::vector<int64_t> bias_shape;  // empty: no bias
  bool causal;
};

void expect_cpu_and_cuda_agree(const AgreementCase& c, at::ScalarType dtype, double tol) {
  at::manual_seed(17);
  const auto& s = c.shape;
  std::vector<at::Tensor> cpu_inputs = {at::randn({s.b, s.h, s.nq, s.d}),
                                        at::randn({s.b, s.h, s.nk, s.d}),
                                        at::randn({s.b, s.h, s.nk, s.dv})};
  if (!c.bias_shape.empty()) cpu_inputs.push_back(at::randn(c.bias_shape));
  std::vector<at::Tensor> cuda_inputs;
  for (auto& x : cpu_inputs) {
    x = x.to(dtype).requires_grad_();
    cuda_inputs.push_back(x.detach().to(kCuda).requires_grad_());
  }
  auto run = [&](const std::vector<at::Tensor>& xs) {
    std::optional<at::Tensor> bias;
    if (xs.size() == 4) bias = xs[3];
    return slideformer::attention(xs[0], xs[1], xs[2], bias, c.causal);
  };
  const at::Tensor cpu_out = run(cpu_inputs), cuda_out = run(cuda_inputs);
  ASSERT_TRUE(cuda_out.is_cuda());
  expect_close(cuda_out.cpu(), cpu_out, tol, tol, "output");
  const at::Tensor grad = at::randn_like(cpu_out);
  auto cpu_grads = torch::autograd::grad({cpu_out}, cpu_inputs, {grad});
  auto cuda_grads = torch::autograd::grad({cuda_out}, cuda_inputs, {grad.to(kCuda)});
  for (size_t i = 0; i < cpu_grads.size(); ++i) {
    expect_close(cuda_grads[i].cpu(), cpu_grads[i], 4 * tol, 4 * tol,
                 "gradient " + std::to_string(i));
  }
}

std::vector<AgreementCase> agreement_cases() {
  return {{{2, 3, 64, 64, 32, 32}, {}, false},
          {{2, 3, 100, 77, 64, 48}, {1, 3, 100, 77}, true},   // relative-position-like bias
          {{3, 2, 33, 130, 16, 16}, {3, 1, 1, 130}, false},   // key padding mask shape
          {{1, 4, 49, 49, 96, 96}, {49, 49}, true},           // head dim of three chunks
          {{2, 2, 300, 20, 8, 130}, {2, 2, 300, 1}, true}};  // Nq > Nk, wide values
}

TEST_F(AttentionCuda, AgreesWithCpuFloat64) {
  for (const auto& c : agreement_cases()) expect_cpu_and_cuda_agree(c, at::kDouble, 1e-10);
}

TEST_F(AttentionCuda, AgreesWithCpuFloat32) {
  for (const auto& c : agreement_cases()) expect_cpu_and_cuda_agree(c, at::kFloat, 2e-5);
}

TEST_F(AttentionCuda, AgreesWithCpuHalfTypes) {
  // Both devices accumulate in float32; they differ by roundings of the half-type inputs/outputs.
  for (const auto& c : agreement_cases()) {
    expect_cpu_and_cuda_agree(c, at::kHalf, 1e-2);
    expect_cpu_and_cuda_agree(c, at::kBFloat16, 6e-2);
  }
}

TEST_F(AttentionCuda, LargeBatchTimesHeadsUsesManyBlocks) {
  // B * H * query tiles well past 65535 (the grid's y/z limit): the 1-d grid must cover all.
  at::manual_seed(23);
  const auto opts = at::TensorOptions().device(kCuda);
  at::Tensor q = at::randn({4096, 20, 33, 8}, opts), k = at::randn({4096, 20, 5, 8}, opts),
             v = at::randn({4096, 20, 5, 8}, opts);
  at::Tensor out = slideformer::attention(q, k, v);
  expect_close(out, st::reference_attention(q, k, v, std::nullopt, false, std::nullopt), 1e-5,
               1e-5);
}

// Runs without a GPU: a CUDA build registers a CUDA kernel for every slideformer operator.
TEST(CudaRegistration, EveryOperatorHasACudaKernel) {
  if (!slideformer::built_with_cuda()) GTEST_SKIP() << "built without CUDA kernels";
  for (const char* name :
       {"slideformer::attention", "slideformer::_attention_forward",
        "slideformer::_attention_backward", "slideformer::slide_attention",
        "slideformer::_slide_attention_forward", "slideformer::_slide_attention_backward"}) {
    const auto op = c10::Dispatcher::singleton().findOp({name, ""});
    ASSERT_TRUE(op.has_value()) << name;
    EXPECT_TRUE(op->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) << name;
  }
}

}  // namespace
