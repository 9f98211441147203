// slide_attention_nd's CUDA kernels executed on the host (tests/cuda_host): the output and all six
// gradients against the CPU kernels (checked against the composites of
// tests/python/test_slide_attention_nd.py) on maps of 1, 2 and 3 axes, both borders, causal or
// not, in every dtype, and which kernels ran. No GPU is involved.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <set>
#include <string>
#include <vector>

#include "cuda_host_test.h"
#include "ops/common/dispatch.h"
#include "ops/slide_attention_nd.h"
#include "test_helpers.h"

namespace {

namespace st = slideformer::testing;
using slideformer::ops::SlideNd;

struct NdCase {
  std::vector<int64_t> shape;  // (B, H, map..., D)
  std::vector<int64_t> kernel_size, dilation;
};

// q, k, v, key_bias, shift_weight (I + noise), shift_bias in float64, seeded.
std::vector<at::Tensor> make_inputs(const NdCase& c) {
  at::manual_seed(3);
  int64_t window = 1;
  for (size_t a = 0; a + 3 < c.shape.size(); ++a) {
    window *= c.kernel_size.size() == 1 ? c.kernel_size[0] : c.kernel_size[a];
  }
  const int64_t heads = c.shape[1], head_dim = c.shape.back();
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  return {at::randn(c.shape, f64), at::randn(c.shape, f64), at::randn(c.shape, f64),
          0.5 * at::randn({heads, window}, f64),
          at::eye(window, f64) + 0.3 * at::randn({head_dim, window, window}, f64),
          0.3 * at::randn({head_dim, window}, f64)};
}

// The output and the six gradients of one forward and backward in `dtype`.
std::vector<at::Tensor> run(const NdCase& c, const std::vector<at::Tensor>& inputs,
                            at::ScalarType dtype, const std::string& border, bool causal) {
  static auto op = slideformer::ops::typed_op<SlideNd>("slideformer::slide_attention_nd");
  std::vector<at::Tensor> leaves;
  for (const at::Tensor& t : inputs) leaves.push_back(t.to(dtype).requires_grad_());
  const at::Tensor out = op.call(leaves[0], leaves[1], leaves[2], c.kernel_size, c.dilation,
                                 leaves[3], leaves[4], leaves[5], border, causal, std::nullopt);
  at::manual_seed(7);  // the same output gradient for both halves of a comparison
  const at::Tensor grad = at::randn(out.sizes(), at::TensorOptions().dtype(at::kDouble)).to(dtype);
  std::vector<at::Tensor> results = torch::autograd::grad({out}, leaves, {grad});
  results.insert(results.begin(), out.detach());
  return results;
}

const char* const kResultNames[] = {"output", "dq", "dk", "dv", "dkey_bias", "dshift_weight",
                                    "dshift_bias"};

const std::vector<NdCase>& cases() {
  static const std::vector<NdCase> all = {
      {{2, 2, 37, 20}, {5}, {2}},                // 1-D, two channel chunks and a ragged one
      {{1, 2, 4, 3}, {7}, {1}},                  // 1-D map shorter than the kernel
      {{1, 2, 5, 6, 3}, {3}, {1}},               // 2-D
      {{1, 2, 3, 5, 6, 9}, {3, 1, 3}, {1, 2, 2}},  // 3-D, per-axis kernel sizes and dilations
      {{2, 1, 2, 3, 4, 4}, {3}, {1}}};           // 3-D, axes shorter than the kernel
  return all;
}

class SlideAttentionNdEmulated : public ::testing::Test {};

TEST_F(SlideAttentionNdEmulated, AgreesWithCpuKernelsEveryDtype) {
  const std::vector<std::pair<at::ScalarType, double>> dtypes = {
      {at::kDouble, 1e-10}, {at::kFloat, 2e-5}, {at::kHalf, 1e-2}, {at::kBFloat16, 6e-2}};
  for (const NdCase& c : cases()) {
    const std::vector<at::Tensor> inputs = make_inputs(c);
    for (const std::string border : {"zeros", "clamp"}) {
      for (const bool causal : {false, true}) {
        for (const auto& [dtype, tol] : dtypes) {
          std::vector<at::Tensor> cpu;
          {
            const st::CpuKernelsOnly cpu_only;
            cpu = run(c, inputs, dtype, border, causal);
          }
          const st::ScopedCudaHostExecution host;
          const st::RecordedLaunches launches;
          const std::vector<at::Tensor> emulated = run(c, inputs, dtype, border, causal);
          EXPECT_EQ(launches.kernels().size(), 5u);
          for (size_t i = 0; i < cpu.size(); ++i) {
            const double scale = std::max(1.0, cpu[i].abs().max().item<double>());
            st::expect_close(emulated[i], cpu[i], tol, tol * scale,
                             std::string(kResultNames[i]) + " " + border +
                                 (causal ? " causal " : " ") + c10::toString(dtype) + " rank " +
                                 std::to_string(c.shape.size() - 3));
          }
        }
      }
    }
  }
}

// Each kernel, in each dtype, ran here (the list in docs/cuda.md).
TEST_F(SlideAttentionNdEmulated, EveryKernelRunsInEveryDtype) {
  const NdCase c{{1, 2, 3, 2, 4, 3}, {3}, {1}};
  const std::vector<at::Tensor> inputs = make_inputs(c);
  const st::ScopedCudaHostExecution host;
  const st::RecordedLaunches launches;
  for (auto dtype : {at::kDouble, at::kFloat, at::kHalf, at::kBFloat16}) {
    run(c, inputs, dtype, "clamp", true);
  }
  std::set<std::string> expected = st::kernel_instantiations(
      {"forward_kernel", "window_kernel", "key_value_kernel", "parameter_partials_kernel"},
      st::kEveryDtype);
  expected.merge(
      st::kernel_instantiations({"sum_partials_in_order_kernel"}, {"<double>", "<float>"}));
  EXPECT_EQ(st::distinct_kernels(launches), expected);
}

TEST_F(SlideAttentionNdEmulated, BadInputsNameTheOperator) {
  const st::ScopedCudaHostExecution host;
  static auto op = slideformer::ops::typed_op<SlideNd>("slideformer::slide_attention_nd");
  const at::Tensor q = at::randn({1, 2, 5, 4});
  EXPECT_THROW_MSG(op.call(q, q.to(at::kMeta), q, {3}, {1}, std::nullopt, std::nullopt,
                           std::nullopt, "zeros", true, std::nullopt),
                   "slideformer::slide_attention_nd: key must be on the device of query (cpu), "
                   "got meta");
  EXPECT_THROW_MSG(op.call(q, q, q, {3, 3}, {1}, std::nullopt, std::nullopt, std::nullopt,
                           "zeros", false, std::nullopt),
                   "slideformer::slide_attention_nd: kernel_size must have 1 entry (one per map "
                   "axis), got 2");
}

}  // namespace
