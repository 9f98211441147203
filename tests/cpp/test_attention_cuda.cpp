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

TEST_F(AttentionCuda, NeighbouringRowsFarApartFloat32) { st::check_rows_far_apart_float32(kCuda); }

TEST_F(AttentionCuda, HalfPrecisionWithinTolerance) { st::check_reduced_precision(kCuda); }

TEST_F(AttentionCuda, FiniteDifferenceGradcheckAllInputs) {
  st::check_finite_difference_gradients(kCuda);
}

TEST_F(AttentionCuda, BackwardIsDeterministic) { st::check_backward_deterministic(kCuda); }

TEST_F(AttentionCuda, BackwardChecksGradOutputOutputAndLogsumexp) {
  st::check_backward_bad_inputs(kCuda, at::Device(at::kCPU));
}

TEST_F(AttentionCuda, BadInputsNameOpArgumentAndValues) {
  st::check_bad_inputs(kCuda, at::Device(at::kCPU));
}

TEST_F(AttentionCuda, AgreesWithCpuFloat64) {
  for (const auto& c : st::agreement_cases()) {
    st::expect_agrees_with_cpu_kernels(c, at::kDouble, 1e-10, kCuda);
  }
}

TEST_F(AttentionCuda, AgreesWithCpuFloat32) {
  for (const auto& c : st::agreement_cases()) {
    st::expect_agrees_with_cpu_kernels(c, at::kFloat, 2e-5, kCuda);
  }
}

TEST_F(AttentionCuda, AgreesWithCpuHalfTypes) {
  // Both devices accumulate in float32; they differ by roundings of the half-type inputs/outputs.
  for (const auto& c : st::agreement_cases()) {
    st::expect_agrees_with_cpu_kernels(c, at::kHalf, 1e-2, kCuda);
    st::expect_agrees_with_cpu_kernels(c, at::kBFloat16, 6e-2, kCuda);
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
        "slideformer::_slide_attention_forward", "slideformer::_slide_attention_backward",
        "slideformer::slide_attention_nd", "slideformer::_slide_attention_nd_forward",
        "slideformer::_slide_attention_nd_backward"}) {
    const auto op = c10::Dispatcher::singleton().findOp({name, ""});
    ASSERT_TRUE(op.has_value()) << name;
    EXPECT_TRUE(op->hasKernelForDispatchKey(c10::DispatchKey::CUDA)) << name;
  }
}

}  // namespace
