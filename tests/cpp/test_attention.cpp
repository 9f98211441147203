// attention on the CPU against a composite of plain aten ops (docs/operators.md). The cases live in
// attention_cases.h and also run on a GPU in test_attention_cuda.cpp.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <map>
#include <string>
#include <tuple>

#include "attention_cases.h"
#include "ops/common/attention_math.h"
#include "slideformer/ops.h"
#include "test_helpers.h"

namespace {

namespace st = slideformer::testing;
const at::Device kCpu(at::kCPU);

class AttentionParity : public ::testing::TestWithParam<st::AttentionParityParam> {};

TEST_P(AttentionParity, ForwardAndGradientsMatchReferenceFloat64) {
  const auto [shape, causal] = GetParam();
  st::check_parity_float64(shape, causal, kCpu);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionParity,
                         ::testing::Combine(::testing::ValuesIn(st::attention_parity_shapes()),
                                            ::testing::Bool()),
                         st::attention_param_name);

TEST(Attention, BiasBroadcastGradientHasBiasShape) { st::check_bias_broadcast_gradients(kCpu); }

TEST(Attention, FullyMaskedRowsGiveZeroOutputAndGradients) { st::check_fully_masked_rows(kCpu); }

TEST(Attention, ExplicitScaleAndNonContiguousInputs) {
  st::check_explicit_scale_non_contiguous(kCpu);
}

TEST(Attention, LogitsRisingAcrossKeyBlocks) { st::check_logits_rising_across_key_blocks(kCpu); }

TEST(Attention, NeighbouringRowsFarApartFloat32) { st::check_rows_far_apart_float32(kCpu); }

TEST(Attention, HalfPrecisionWithinTolerance) { st::check_reduced_precision(kCpu); }

TEST(Attention, FiniteDifferenceGradcheckAllInputs) { st::check_finite_difference_gradients(kCpu); }

TEST(Attention, BackwardIsDeterministic) { st::check_backward_deterministic(kCpu); }

TEST(Attention, DoubleBackwardSaysUnsupported) {
  at::Tensor q = at::randn({1, 1, 3, 2}, at::kDouble).requires_grad_();
  at::Tensor out = slideformer::attention(q, q, q);
  EXPECT_THROW_MSG(torch::autograd::grad({out.sum()}, {q}, {}, true, /*create_graph=*/true),
                   "slideformer::attention: double backward is not supported");
}

TEST(AttentionErrors, BadInputsNameOpArgumentAndValues) {
  st::check_bad_inputs(kCpu, at::Device(at::kMeta));
}

TEST(AttentionErrors, BackwardChecksGradOutputOutputAndLogsumexp) {
  st::check_backward_bad_inputs(kCpu, at::Device(at::kMeta));
}

// No tensor argument, so no dispatch key: the refusal is still the op's own, for every schema.
TEST(AttentionErrors, EveryTensorUndefinedNamesTheQuery) {
  const std::map<std::string, c10::IValue> others = {
      {"is_causal", false}, {"scale", c10::IValue()}, {"compute_bias_grad", false}};
  for (const char* name :
       {"slideformer::attention", "slideformer::_attention_forward", "slideformer::_attention_backward"}) {
    SCOPED_TRACE(name);
    EXPECT_THROW_MSG(st::call_with_every_tensor_undefined(name, others),
                     "slideformer::attention: query must be a defined tensor, got None");
  }
}

TEST(AttentionMeta, ShapesWithoutData) {
  at::Tensor q = at::empty({2, 3, 5, 4}, at::kMeta), k = at::empty({2, 3, 6, 4}, at::kMeta),
             v = at::empty({2, 3, 6, 7}, at::kMeta);
  at::Tensor out = slideformer::attention(q, k, v);
  EXPECT_TRUE(out.is_meta());
  EXPECT_EQ(out.sizes(), at::IntArrayRef({2, 3, 5, 7}));
}

// The causal rules shared by the CPU and CUDA kernels (ops/common/attention_math.h) agree with
// each other: key j is visible to query i exactly when i is at or past the first query seeing j.
TEST(AttentionMath, VisibleKeysAndFirstQuerySeeingAgree) {
  namespace m = slideformer::ops::math;
  for (int64_t nq : {0, 1, 3, 7}) {
    for (int64_t nk : {0, 1, 4, 7}) {
      for (bool causal : {false, true}) {
        for (int64_t i = 0; i < nq; ++i) {
          const int64_t visible = m::visible_keys(i, nq, nk, causal);
          EXPECT_GE(visible, 0);
          EXPECT_LE(visible, nk);
          for (int64_t j = 0; j < nk; ++j) {
            EXPECT_EQ(j < visible, i >= m::first_query_seeing(j, nq, nk, causal))
                << "nq " << nq << " nk " << nk << " causal " << causal << " i " << i << " j " << j;
          }
        }
      }
    }
  }
  // Bottom-right alignment: the last query sees every key, the first query of a square problem
  // sees only the first key.
  EXPECT_EQ(m::visible_keys(4, 5, 9, true), 9);
  EXPECT_EQ(m::visible_keys(0, 5, 5, true), 1);
}

}  // namespace
