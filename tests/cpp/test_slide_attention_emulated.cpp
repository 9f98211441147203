// slide_attention's CUDA kernels executed on the host (tests/cuda_host): the cases of
// slide_attention_cases.h that test_slide_attention_cuda.cpp runs on a GPU, here with the same
// kernel source compiled by the host compiler, each CUDA thread a fiber, and the launch
// configurations of the CUDA dispatch (an A100's limits). No GPU is involved.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <set>
#include <string>
#include <vector>

#include "cuda_host_test.h"
#include "slide_attention_cases.h"
#include "slideformer/ops.h"
#include "test_helpers.h"

namespace {

using namespace slideformer::testing::slide;
namespace st = slideformer::testing;
using st::expect_close;
const at::Device kCpu(at::kCPU);

class SlideAttentionEmulated : public st::CudaHostExecutionTest {};

class SlideAttentionEmulatedParity : public SlideAttentionEmulated,
                                     public ::testing::WithParamInterface<ParityParam> {};

TEST_P(SlideAttentionEmulatedParity, Float64ForwardAndGradientsMatchReference) {
  const Case& c = std::get<0>(GetParam());
  expect_launches_ = c.b * c.h * c.y * c.x > 0;
  check_parity_float64(GetParam(), kCpu);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SlideAttentionEmulatedParity,
                         ::testing::Combine(::testing::ValuesIn(parity_cases()),
                                            ::testing::Values(std::string("zeros"),
                                                              std::string("clamp")),
                                            ::testing::Bool()),
                         parity_param_name);

TEST_F(SlideAttentionEmulated, EachOptionalInputAloneAndExplicitScale) {
  check_each_optional_input_alone_and_explicit_scale(kCpu);
}

TEST_F(SlideAttentionEmulated, PermutedInputsAsAModulePassesThem) {
  check_permuted_inputs_as_a_module_passes_them(kCpu);
}

TEST_F(SlideAttentionEmulated, HalfTypesCloseToFloat64) { check_half_types_close_to_float64(kCpu); }

TEST_F(SlideAttentionEmulated, FiniteDifferenceGradcheckAllSixInputs) {
  check_finite_difference_gradients_all_six_inputs(kCpu);
}

TEST_F(SlideAttentionEmulated, EmptyMapsGiveEmptyOutputsAndZeroParameterGradients) {
  expect_launches_ = false;
  check_empty_maps(kCpu);
}

TEST_F(SlideAttentionEmulated, ParameterGradientsOnlyWhereAsked) {
  check_parameter_gradients_only_where_asked(kCpu);
}

TEST_F(SlideAttentionEmulated, BackwardIsDeterministic) { check_backward_deterministic(kCpu); }

TEST_F(SlideAttentionEmulated, DoubleBackwardSaysUnsupported) {
  check_double_backward_says_unsupported(kCpu);
}

TEST_F(SlideAttentionEmulated, BackwardChecksGradOutputOutputAndLogsumexp) {
  check_backward_bad_inputs(kCpu, at::Device(at::kMeta));
}

class SlideAttentionEmulatedBadInput : public ::testing::TestWithParam<BadInput> {
 protected:
  st::ScopedCudaHostExecution host_;
};

TEST_P(SlideAttentionEmulatedBadInput, MessageNamesOpArgumentExpectedAndActual) {
  EXPECT_THROW_MSG(GetParam().call(), "slideformer::slide_attention: " + GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(Cases, SlideAttentionEmulatedBadInput,
                         ::testing::ValuesIn(bad_inputs(kCpu, at::Device(at::kMeta))),
                         [](const auto& info) { return info.param.name; });

// A window too wide for a block's shared memory is the one bad input that only the CUDA kernels
// reject. k = 13 at dilation 8 stages a halo of 48 positions: the forward fits a 4 x 8 tile on an
// A100, the float64 backward (two window buffers) fits no tile there, but does on an H100.
TEST_F(SlideAttentionEmulated, WindowBeyondSharedMemorySaysWhy) {
  const Case c{1, 1, 6, 5, 2, 13, 8};
  const Leaves l = make_leaves(c, {true, true, true});
  const at::Tensor out = ours(l, c, "zeros");
  expect_close(out, reference(l, c, "zeros"), 1e-10, 1e-10, "output");
  EXPECT_THROW_MSG(torch::autograd::grad({out.sum()}, {l.q}),
                   "slideformer::slide_attention: kernel_size = 13 with dilation 8 needs more "
                   "shared memory per block than this GPU allows (166912 bytes)");
  const st::ScopedEmulatedGpu h100(st::EmulatedGpu::kH100);
  expect_matches_reference(l, c, "zeros", 1e-10);
}

// The CPU half runs the CPU kernels (host execution off, nothing launched), the other half every
// kernel of the forward and of the backward with all three parameter gradients.
TEST_F(SlideAttentionEmulated, AgreesWithCpuKernelsEveryDtype) {
  const std::vector<Case> cases = {{2, 2, 20, 19, 32, 3, 1},  // several tiles, two chunks
                                   {1, 2, 17, 23, 40, 5, 2},  // ragged tiles, channels past two
                                                              // chunks, dilation
                                   {1, 2, 9, 30, 7, 7, 3},    // short clamp sub-axes
                                   {1, 1, 20, 20, 4, 13, 1}};  // a halo wider than the tile
  auto expect_agrees = [](const Case& c, const std::string& border, at::ScalarType dtype,
                          double tol) {
    const st::RecordedLaunches launches;
    expect_agrees_with_cpu_kernels<st::ScopedCudaHostExecution, st::CpuKernelsOnly>(
        c, border, dtype, tol, kCpu);
    std::set<std::string> expected = st::kernel_instantiations(
        {"slide_forward_kernel", "slide_backward_window_kernel", "slide_backward_key_value_kernel",
         "slide_backward_parameter_partials_kernel"},
        {st::kernel_dtype_args(dtype)});
    expected.insert(dtype == at::kDouble ? "sum_partials_in_order_kernel<double>"
                                         : "sum_partials_in_order_kernel<float>");
    EXPECT_EQ(st::distinct_kernels(launches), expected);
  };
  for (const Case& c : cases) {
    for (const std::string border : {"zeros", "clamp"}) {
      expect_agrees(c, border, at::kDouble, 1e-10);
      expect_agrees(c, border, at::kFloat, 2e-5);
      // Both accumulate in float32; they differ by roundings of the half-type inputs/outputs.
      expect_agrees(c, border, at::kHalf, 1e-2);
      expect_agrees(c, border, at::kBFloat16, 6e-2);
    }
  }
}

// The tiling is the one the CUDA dispatch picks for the GPU: the largest channel chunk, then the
// largest tile, whose shared memory fits. For k = 7 at dilation 3 in float64 an A100 takes
// 8 x 8 pixels per block, an H100 8 x 16; both give the same result.
TEST_F(SlideAttentionEmulated, TilingFollowsTheGpu) {
  const Case c{1, 1, 9, 11, 4, 7, 3};
  const Leaves l = make_leaves(c, {true, true, true});
  auto forward_threads = [&] {
    const st::RecordedLaunches launches;
    const at::Tensor out = ours(l, c, "zeros");
    EXPECT_EQ(launches.launches().size(), 1u);
    return std::make_pair(out, launches.launches().at(0).threads);
  };
  const auto [a100_out, a100_threads] = forward_threads();
  EXPECT_EQ(a100_threads, 64u);
  const st::ScopedEmulatedGpu h100(st::EmulatedGpu::kH100);
  const auto [h100_out, h100_threads] = forward_threads();
  EXPECT_EQ(h100_threads, 128u);
  EXPECT_TRUE(at::equal(a100_out, h100_out));
}

// Each kernel, in each dtype, ran here (the list in docs/cuda.md).
TEST_F(SlideAttentionEmulated, EveryKernelRunsInEveryDtype) {
  const Case c{1, 2, 4, 5, 3, 3, 1};
  for (auto dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16}) {
    const Leaves l = leaves_as(make_leaves(c, {true, true, true}), dtype, kCpu);
    torch::autograd::grad({ours(l, c, "clamp").sum()}, l.all());
  }
  const std::vector<std::string> launched = launches_.kernels();
  std::set<std::string> expected = st::kernel_instantiations(
      {"slide_forward_kernel", "slide_backward_window_kernel", "slide_backward_key_value_kernel",
       "slide_backward_parameter_partials_kernel"},
      st::kEveryDtype);
  expected.merge(st::kernel_instantiations({"sum_partials_in_order_kernel"},
                                           {"<double>", "<float>"}));
  EXPECT_EQ(std::set<std::string>(launched.begin(), launched.end()), expected);
}

}  // namespace
