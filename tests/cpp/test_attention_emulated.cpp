// attention's CUDA kernels executed on the host (tests/cuda_host): the cases of
// attention_cases.h that test_attention_cuda.cpp runs on a GPU, here with the same kernel source
// compiled by the host compiler, each CUDA thread a fiber, and the launch configurations of the
// CUDA dispatch (an A100's limits). No GPU is involved.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "attention_cases.h"
#include "cuda_host_test.h"
#include "slideformer/ops.h"
#include "test_helpers.h"

namespace {

namespace st = slideformer::testing;
using st::expect_close;
const at::Device kCpu(at::kCPU);

class AttentionEmulated : public st::CudaHostExecutionTest {};

class AttentionEmulatedParity : public AttentionEmulated,
                                public ::testing::WithParamInterface<st::AttentionParityParam> {};

TEST_P(AttentionEmulatedParity, ForwardAndGradientsMatchReferenceFloat64) {
  const auto [shape, causal] = GetParam();
  expect_launches_ = shape.b * shape.h * shape.nq > 0;
  st::check_parity_float64(shape, causal, kCpu);
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionEmulatedParity,
                         ::testing::Combine(::testing::ValuesIn(st::attention_parity_shapes()),
                                            ::testing::Bool()),
                         st::attention_param_name);

TEST_F(AttentionEmulated, BiasBroadcastGradientHasBiasShape) {
  st::check_bias_broadcast_gradients(kCpu);
}

TEST_F(AttentionEmulated, FullyMaskedRowsGiveZeroOutputAndGradients) {
  st::check_fully_masked_rows(kCpu);
}

TEST_F(AttentionEmulated, ExplicitScaleAndNonContiguousInputs) {
  st::check_explicit_scale_non_contiguous(kCpu);
}

TEST_F(AttentionEmulated, LogitsRisingAcrossKeyBlocks) {
  st::check_logits_rising_across_key_blocks(kCpu);
}

TEST_F(AttentionEmulated, NeighbouringRowsFarApartFloat32) { st::check_rows_far_apart_float32(kCpu); }

TEST_F(AttentionEmulated, HalfPrecisionWithinTolerance) { st::check_reduced_precision(kCpu); }

TEST_F(AttentionEmulated, FiniteDifferenceGradcheckAllInputs) {
  st::check_finite_difference_gradients(kCpu);
}

TEST_F(AttentionEmulated, BackwardIsDeterministic) {
  st::check_backward_deterministic(kCpu, {2, 2, 70, 90, 40, 24});
}

TEST_F(AttentionEmulated, BadInputsNameOpArgumentAndValues) {
  expect_launches_ = false;
  st::check_bad_inputs(kCpu, at::Device(at::kMeta));
}

TEST_F(AttentionEmulated, BackwardChecksGradOutputOutputAndLogsumexp) {
  st::check_backward_bad_inputs(kCpu, at::Device(at::kMeta));
}

// Bad inputs that only the CUDA kernels reject: head dims whose per-row accumulators do not fit
// in a block's shared memory. In float32 the same call needs half of it and runs, past the
// default 48 KiB (the kernels opt in to more).
TEST_F(AttentionEmulated, HeadDimsBeyondSharedMemorySayWhy) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = at::randn({1, 1, 3, 8}, opts), v = at::randn({1, 1, 3, 600}, opts);
  EXPECT_THROW_MSG(slideformer::attention(q, q, v),
                   "slideformer::attention: head dims D = 8 and Dv = 600 need 182016 bytes of "
                   "shared memory per block, more than the 166912 this GPU allows");
  const at::Tensor q32 = q.to(at::kFloat), v32 = v.to(at::kFloat);
  expect_close(slideformer::attention(q32, q32, v32),
               st::reference_attention(q, q, v, std::nullopt, false, std::nullopt), 1e-5, 1e-5);
}

// The CPU half runs the CPU kernels (host execution off, nothing launched), the other half every
// kernel of the case: forward, both backward kernels, and the bias gradient's when there is a
// bias.
TEST_F(AttentionEmulated, AgreesWithCpuKernelsEveryDtype) {
  const std::vector<st::AgreementCase> cases = {
      {{2, 3, 40, 33, 32, 32}, {}, false},
      {{2, 3, 45, 37, 64, 48}, {1, 3, 45, 37}, true},  // relative-position-like bias
      {{3, 2, 33, 70, 16, 16}, {3, 1, 1, 70}, false},  // key padding mask shape
      {{1, 2, 20, 20, 96, 96}, {20, 20}, true},        // head dim of three chunks
      {{2, 2, 70, 20, 8, 70}, {2, 2, 70, 1}, true}};   // Nq > Nk, wide values
  auto expect_agrees = [](const st::AgreementCase& c, at::ScalarType dtype, double tol) {
    SCOPED_TRACE(c10::toString(dtype));
    const st::RecordedLaunches launches;
    st::expect_agrees_with_cpu_kernels<st::ScopedCudaHostExecution, st::CpuKernelsOnly>(
        c, dtype, tol, kCpu);
    std::set<std::string> expected = st::kernel_instantiations(
        {"attention_forward_kernel", "attention_backward_query_kernel",
         "attention_backward_key_value_kernel"},
        {st::kernel_dtype_args(dtype)});
    if (!c.bias_shape.empty()) {
      expected.insert(std::string("attention_backward_bias_kernel") + st::kernel_dtype_args(dtype));
    }
    EXPECT_EQ(st::distinct_kernels(launches), expected);
  };
  for (const auto& c : cases) {
    expect_agrees(c, at::kDouble, 1e-10);
    expect_agrees(c, at::kFloat, 2e-5);
    // Both accumulate in float32; they differ by roundings of the half-type inputs/outputs.
    expect_agrees(c, at::kHalf, 1e-2);
    expect_agrees(c, at::kBFloat16, 6e-2);
  }
}

// The shared memory limit is the GPU's: an H100 runs the float64 case above, forward and
// backward.
TEST_F(AttentionEmulated, LargerSharedMemoryOfAnH100) {
  const st::ScopedEmulatedGpu h100(st::EmulatedGpu::kH100);
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = at::randn({1, 1, 3, 8}, opts).requires_grad_();
  const at::Tensor v = at::randn({1, 1, 3, 600}, opts).requires_grad_();
  const at::Tensor out = slideformer::attention(q, q, v);
  const at::Tensor ref = st::reference_attention(q, q, v, std::nullopt, false, std::nullopt);
  expect_close(out, ref, 1e-10, 1e-10, "output");
  const at::Tensor grad = at::randn_like(out);
  const auto ours = torch::autograd::grad({out}, {q, v}, {grad});
  const auto theirs = torch::autograd::grad({ref}, {q, v}, {grad});
  expect_close(ours[0], theirs[0], 1e-9, 1e-9, "grad query");
  expect_close(ours[1], theirs[1], 1e-9, 1e-9, "grad value");
}

// Each of the four kernels, in each of the four dtypes, ran here (the list in docs/cuda.md).
TEST_F(AttentionEmulated, EveryKernelRunsInEveryDtype) {
  for (auto dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16}) {
    const auto opts = at::TensorOptions().dtype(dtype);
    const at::Tensor q = at::randn({1, 2, 5, 8}, opts).requires_grad_();
    const at::Tensor bias = at::randn({5, 5}, opts).requires_grad_();
    const at::Tensor out = slideformer::attention(q, q, q, bias, true);
    torch::autograd::grad({out.sum()}, {q, bias});
  }
  const std::vector<std::string> launched = launches_.kernels();
  EXPECT_EQ(std::set<std::string>(launched.begin(), launched.end()),
            st::kernel_instantiations(
                {"attention_forward_kernel", "attention_backward_query_kernel",
                 "attention_backward_key_value_kernel", "attention_backward_bias_kernel"},
                st::kEveryDtype));
}

}  // namespace
