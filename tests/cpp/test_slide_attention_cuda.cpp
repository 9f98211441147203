// slide_attention on a GPU: the cases of slide_attention_cases.h on CUDA tensors, and
// CPU-vs-CUDA agreement of the output and all six gradients. Every test skips when no CUDA
// device is present (or the library was built without the CUDA kernels).
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <array>
#include <string>
#include <vector>

#include "slide_attention_cases.h"
#include "slideformer/ops.h"
#include "slideformer/version.h"
#include "test_helpers.h"

namespace {

using namespace slideformer::testing::slide;
using slideformer::testing::expect_close;
const at::Device kCuda(at::kCUDA, 0);

#define SKIP_WITHOUT_CUDA()                                                            \
  do {                                                                                 \
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";                \
    if (!slideformer::built_with_cuda()) GTEST_SKIP() << "built without CUDA kernels"; \
  } while (0)

class SlideAttentionCuda : public ::testing::Test {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA(); }
};

class SlideAttentionCudaParity : public ::testing::TestWithParam<ParityParam> {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA(); }
};

TEST_P(SlideAttentionCudaParity, Float64ForwardAndGradientsMatchReference) {
  check_parity_float64(GetParam(), kCuda);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SlideAttentionCudaParity,
                         ::testing::Combine(::testing::ValuesIn(parity_cases()),
                                            ::testing::Values(std::string("zeros"),
                                                              std::string("clamp")),
                                            ::testing::Bool()),
                         parity_param_name);

TEST_F(SlideAttentionCuda, EachOptionalInputAloneAndExplicitScale) {
  check_each_optional_input_alone_and_explicit_scale(kCuda);
}

TEST_F(SlideAttentionCuda, PermutedInputsAsAModulePassesThem) {
  check_permuted_inputs_as_a_module_passes_them(kCuda);
}

TEST_F(SlideAttentionCuda, HalfTypesCloseToFloat64) { check_half_types_close_to_float64(kCuda); }

TEST_F(SlideAttentionCuda, FiniteDifferenceGradcheckAllSixInputs) {
  check_finite_difference_gradients_all_six_inputs(kCuda);
}

TEST_F(SlideAttentionCuda, EmptyMapsGiveEmptyOutputsAndZeroParameterGradients) {
  check_empty_maps(kCuda);
}

TEST_F(SlideAttentionCuda, ParameterGradientsOnlyWhereAsked) {
  check_parameter_gradients_only_where_asked(kCuda);
}

TEST_F(SlideAttentionCuda, BackwardIsDeterministic) { check_backward_deterministic(kCuda); }

TEST_F(SlideAttentionCuda, DoubleBackwardSaysUnsupported) {
  check_double_backward_says_unsupported(kCuda);
}

TEST_F(SlideAttentionCuda, BackwardChecksGradOutputOutputAndLogsumexp) {
  check_backward_bad_inputs(kCuda, at::Device(at::kCPU));
}

class SlideAttentionCudaBadInput : public ::testing::TestWithParam<BadInput> {
 protected:
  void SetUp() override { SKIP_WITHOUT_CUDA(); }
};

TEST_P(SlideAttentionCudaBadInput, MessageNamesOpArgumentExpectedAndActual) {
  EXPECT_THROW_MSG(GetParam().call(), "slideformer::slide_attention: " + GetParam().message);
}

// The cases are listed without touching the GPU; each makes its CUDA tensors when it runs.
INSTANTIATE_TEST_SUITE_P(Cases, SlideAttentionCudaBadInput,
                         ::testing::ValuesIn(bad_inputs(kCuda, at::Device(at::kCPU))),
                         [](const auto& info) { return info.param.name; });

std::vector<Case> agreement_cases() {
  return {{2, 3, 56, 56, 32, 3, 1},   // Slide-Swin-T stage 1, several tiles per map
          {1, 6, 28, 28, 32, 3, 1},   // stage 2
          {2, 2, 17, 23, 40, 5, 2},   // ragged tiles, channels past two chunks, dilation
          {1, 2, 9, 30, 7, 7, 3},     // short clamp sub-axes
          {1, 1, 20, 20, 4, 13, 1}};  // a halo wider than the tile
}

TEST_F(SlideAttentionCuda, AgreesWithCpuFloat64) {
  for (const Case& c : agreement_cases()) {
    for (const std::string border : {"zeros", "clamp"}) {
      expect_agrees_with_cpu_kernels(c, border, at::kDouble, 1e-10, kCuda);
    }
  }
}

TEST_F(SlideAttentionCuda, AgreesWithCpuFloat32) {
  for (const Case& c : agreement_cases()) {
    for (const std::string border : {"zeros", "clamp"}) {
      expect_agrees_with_cpu_kernels(c, border, at::kFloat, 2e-5, kCuda);
    }
  }
}

TEST_F(SlideAttentionCuda, AgreesWithCpuHalfTypes) {
  // Both devices accumulate in float32; they differ by roundings of the half-type inputs/outputs.
  for (const Case& c : agreement_cases()) {
    for (const std::string border : {"zeros", "clamp"}) {
      expect_agrees_with_cpu_kernels(c, border, at::kHalf, 1e-2, kCuda);
      expect_agrees_with_cpu_kernels(c, border, at::kBFloat16, 6e-2, kCuda);
    }
  }
}

}  // namespace
