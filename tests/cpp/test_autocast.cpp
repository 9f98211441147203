// The Autocast kernels of both operators (csrc/ops/autocast) and the models of both families
// under at::autocast (slideformer::AutocastGuard), on the CPU kernels and on the host-executed
// CUDA kernels (tests/cuda_host), in float16 and bfloat16.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ATen/autocast_mode.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "cuda_host_test.h"
#include "slideformer/autocast.h"
#include "slideformer/nn/modules.h"
#include "slideformer/nn/options.h"
#include "slideformer/ops.h"
#include "test_helpers.h"

namespace {

namespace st = slideformer::testing;
using slideformer::AutocastGuard;
using namespace slideformer::nn;

std::vector<at::Tensor> float32_leaves(const std::vector<std::vector<int64_t>>& shapes) {
  std::vector<at::Tensor> leaves;
  for (const auto& shape : shapes) leaves.push_back(torch::randn(shape).requires_grad_());
  return leaves;
}

// Runs `op` on float32 leaves under autocast to `dtype` and on copies of them cast by hand, outside
// autocast: the outputs are equal (every input was cast, none kept in float32), and so is each
// gradient, cast back to float32 (the backward is the op's own on the cast inputs, and the cast's).
void expect_autocast_casts_every_input(
    at::ScalarType dtype, const std::vector<at::Tensor>& leaves,
    const std::function<at::Tensor(const std::vector<at::Tensor>&)>& op) {
  at::Tensor out;
  {
    AutocastGuard autocast(at::kCPU, dtype);
    out = op(leaves);
  }
  ASSERT_EQ(out.scalar_type(), dtype);
  std::vector<at::Tensor> cast;
  for (const auto& t : leaves) cast.push_back(t.detach().to(dtype).requires_grad_());
  const at::Tensor expected = op(cast);
  EXPECT_TRUE(at::equal(out, expected)) << "autocast output differs from the cast inputs' output";

  const at::Tensor grad = torch::randn(out.sizes()).to(dtype);
  const auto ours = torch::autograd::grad({out}, leaves, {grad});
  const auto theirs = torch::autograd::grad({expected}, cast, {grad});
  for (size_t i = 0; i < leaves.size(); ++i) {
    EXPECT_EQ(ours[i].scalar_type(), at::kFloat) << "gradient " << i;
    EXPECT_TRUE(at::equal(ours[i], theirs[i].to(at::kFloat))) << "gradient " << i;
  }
}

at::Tensor slide_with_every_parameter(const std::vector<at::Tensor>& t) {
  return slideformer::slide_attention(
      t[0], t[1], t[2],
      slideformer::SlideAttentionFuncOptions(3).key_bias(t[3]).shift_weight(t[4]).shift_bias(t[5]));
}

at::Tensor attention_with_bias(const std::vector<at::Tensor>& t) {
  return slideformer::attention(t[0], t[1], t[2], t[3]);
}

const std::vector<std::vector<int64_t>> kSlideShapes = {{2, 2, 5, 6, 4}, {2, 2, 5, 6, 4},
                                                        {2, 2, 5, 6, 4}, {2, 9},
                                                        {4, 9, 9},       {4, 9}};
const std::vector<std::vector<int64_t>> kAttentionShapes = {
    {2, 3, 7, 8}, {2, 3, 9, 8}, {2, 3, 9, 5}, {1, 3, 7, 9}};

class AutocastOps : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(AutocastOps, SlideAttentionCastsEveryInput) {
  torch::manual_seed(0);
  expect_autocast_casts_every_input(GetParam(), float32_leaves(kSlideShapes),
                                    slide_with_every_parameter);
}

TEST_P(AutocastOps, AttentionCastsEveryInput) {
  torch::manual_seed(0);
  expect_autocast_casts_every_input(GetParam(), float32_leaves(kAttentionShapes),
                                    attention_with_bias);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AutocastOps, ::testing::Values(at::kBFloat16, at::kHalf),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

// The host-executed CUDA kernels behind the same Autocast kernels.
class AutocastOpsEmulated : public st::CudaHostExecutionTest,
                            public ::testing::WithParamInterface<at::ScalarType> {};

TEST_P(AutocastOpsEmulated, BothOpsCastEveryInput) {
  torch::manual_seed(0);
  expect_autocast_casts_every_input(GetParam(), float32_leaves(kSlideShapes),
                                    slide_with_every_parameter);
  expect_autocast_casts_every_input(GetParam(), float32_leaves(kAttentionShapes),
                                    attention_with_bias);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AutocastOpsEmulated, ::testing::Values(at::kBFloat16, at::kHalf),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST(AutocastOpsPolicy, Float64QueryIsLeftInFloat64) {
  const auto t = float32_leaves(kSlideShapes);
  std::vector<at::Tensor> doubles;
  for (const auto& x : t) doubles.push_back(x.detach().to(at::kDouble));
  AutocastGuard autocast(at::kCPU, at::kBFloat16);
  EXPECT_EQ(slide_with_every_parameter(doubles).scalar_type(), at::kDouble);
  // A float32 argument beside a float64 query is not cast: the op names it.
  doubles[3] = t[3].detach();
  EXPECT_THROW_MSG(slide_with_every_parameter(doubles),
                   "slideformer::slide_attention: key_bias must have the dtype of query (Double), "
                   "got Float");
}

TEST(AutocastOpsPolicy, AnAutocastDtypeOtherThanTheHalfTypesIsAnError) {
  const auto slide = float32_leaves(kSlideShapes);
  const auto attention = float32_leaves(kAttentionShapes);
  AutocastGuard autocast(at::kCPU, at::kBFloat16);
  at::autocast::set_autocast_dtype(at::kCPU, at::kFloat);  // what a caller of at::autocast may do
  EXPECT_THROW_MSG(slide_with_every_parameter(slide),
                   "slideformer::slide_attention: autocast on cpu must cast to float16 or "
                   "bfloat16, got Float");
  EXPECT_THROW_MSG(attention_with_bias(attention),
                   "slideformer::attention: autocast on cpu must cast to float16 or bfloat16, "
                   "got Float");
}

TEST(AutocastOpsPolicy, GuardTakesOnlyTheHalfTypesAndRestoresTheState) {
  EXPECT_THROW_MSG(AutocastGuard(at::kCPU, at::kDouble),
                   "slideformer::AutocastGuard: dtype must be float16 or bfloat16, got Double");
  {
    AutocastGuard autocast(at::kCPU, at::kHalf);
    EXPECT_TRUE(at::autocast::is_autocast_enabled(at::kCPU));
    EXPECT_EQ(at::autocast::get_autocast_dtype(at::kCPU), at::kHalf);
  }
  EXPECT_FALSE(at::autocast::is_autocast_enabled(at::kCPU));
  EXPECT_EQ(at::autocast::get_autocast_dtype(at::kCPU), at::kBFloat16);
}

// --- models -----------------------------------------------------------------------------------
//
// The bound. Under autocast each matrix product (linear, convolution, either attention op) rounds
// its inputs and its output to the half type, a relative error of at most u per element (unit
// roundoff: 2^-8 bfloat16, 2^-11 float16), and accumulates in float32. Rounding errors are
// independent and of mean zero, so a layer's product errs by about u relative to its output, and
// the errors of the L reduced-precision layers of a model add in quadrature: the logits err by
// about u * sqrt(L) relative to their norm. A parameter's gradient passes each layer three times
// (forward, and the two products of its backward): about u * sqrt(3 L). Each bound allows four
// times that (LayerNorm and the float32 residual stream keep the layers' gains near 1), per
// tensor, in the 2-norm:
//   ||logits - logits_32|| <= 4 u sqrt(L) ||logits_32||,  ||g - g_32|| <= 4 u sqrt(3 L) ||g_32||.
// A bug in the autocast path (an input dropped or left unscaled) errs by O(1) instead: every
// parameter is moved off its neutral initial value first, so that each one matters.

// The layers that run in the reduced dtype: linear, convolution and attention modules.
int64_t reduced_precision_layers(torch::nn::Module& model) {
  int64_t count = 0;
  for (const auto& m : model.modules(/*include_self=*/false)) {
    count += m->as<torch::nn::Linear>() || m->as<torch::nn::Conv2d>() ||
             m->as<SlideAttention>() || m->as<MultiHeadAttention>() ||
             m->as<PoolingAttention>();
  }
  return count;
}

void nudge_parameters(torch::nn::Module& model) {
  torch::NoGradGuard no_grad;
  for (auto& p : model.parameters()) {
    if (p.requires_grad()) p.add_(torch::rand_like(p).sub(0.5).mul(0.2));
  }
}

// ||actual - expected|| <= bound * (||expected|| + floor).
void expect_within(const at::Tensor& actual, const at::Tensor& expected, double bound,
                   double floor, const std::string& what) {
  ASSERT_TRUE(actual.defined()) << what << ": no result";
  const double error = (actual.to(at::kDouble) - expected.to(at::kDouble)).norm().item<double>();
  const double scale = expected.to(at::kDouble).norm().item<double>() + floor;
  EXPECT_LE(error, bound * scale) << what << ": error / scale " << error / scale << ", bound "
                                  << bound;
}

// Over all the entries of `tensors`.
double root_mean_square(const std::vector<at::Tensor>& tensors) {
  double square_sum = 0, count = 0;
  for (const auto& t : tensors) {
    square_sum += t.to(at::kDouble).square().sum().item<double>();
    count += static_cast<double>(t.numel());
  }
  return std::sqrt(square_sum / count);
}

// Logits and every parameter gradient of `model` (eval mode, no dropout) under autocast to
// `dtype` against float32, within the bounds above.
template <typename Model>
void expect_model_within_autocast_error(Model model, at::ScalarType dtype,
                                        const at::Tensor& images) {
  torch::manual_seed(3);
  nudge_parameters(*model);
  model->eval();
  const double u = st::unit_roundoff(dtype);
  const double layers = static_cast<double>(reduced_precision_layers(*model));
  const at::Tensor weight = torch::randn({images.size(0), model->num_classes()});
  auto run = [&](bool autocast) {
    model->zero_grad();
    at::Tensor logits;
    if (autocast) {
      AutocastGuard guard(at::kCPU, dtype);
      logits = model->forward(images);
    } else {
      logits = model->forward(images);
    }
    (logits.to(at::kFloat) * weight).sum().backward();
    std::vector<at::Tensor> result = {logits.detach()};
    for (const auto& p : model->parameters()) {
      if (p.requires_grad()) result.push_back(p.grad().clone());
    }
    return result;
  };
  const auto float32 = run(false);
  const auto reduced = run(true);
  ASSERT_EQ(reduced[0].scalar_type(), dtype) << "the logits were not computed in the half type";
  expect_within(reduced[0], float32[0], 4 * u * std::sqrt(layers), 0.0, "logits");
  const double rms = root_mean_square({float32.begin() + 1, float32.end()});
  size_t next = 1;
  for (const auto& p : model->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    EXPECT_EQ(reduced[next].scalar_type(), at::kFloat) << p.key();
    expect_within(reduced[next], float32[next], 4 * u * std::sqrt(3 * layers),
                  rms * std::sqrt(static_cast<double>(float32[next].numel())),
                  "gradient of " + p.key());
    ++next;
  }
}

at::Tensor images(int64_t batch, int64_t channels, int64_t size) {
  torch::manual_seed(4);
  return torch::rand({batch, channels, size, size});
}

class AutocastModels : public ::testing::TestWithParam<at::ScalarType> {};

TEST_P(AutocastModels, Fashion) {
  expect_model_within_autocast_error(SlideTransformer(fashion()), GetParam(), images(4, 1, 28));
}

TEST_P(AutocastModels, FashionMViT) {
  expect_model_within_autocast_error(MViT(fashion_mvit()), GetParam(), images(4, 1, 28));
}

TEST_P(AutocastModels, SlideSwinTiny) {
  expect_model_within_autocast_error(SlideTransformer(slide_swin_tiny()), GetParam(),
                                     images(1, 3, 224));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AutocastModels, ::testing::Values(at::kBFloat16),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

// The same models on the host-executed CUDA kernels, in both half types. Slide-Swin-T at 32 x 32
// (maps of 8, 4, 2 and 1 pixels): the fibers of the host execution are slow.
class AutocastModelsEmulated : public st::CudaHostExecutionTest,
                               public ::testing::WithParamInterface<at::ScalarType> {};

TEST_P(AutocastModelsEmulated, Fashion) {
  expect_model_within_autocast_error(SlideTransformer(fashion()), GetParam(), images(2, 1, 28));
}

TEST_P(AutocastModelsEmulated, FashionMViT) {
  expect_model_within_autocast_error(MViT(fashion_mvit()), GetParam(), images(2, 1, 28));
}

TEST_P(AutocastModelsEmulated, SlideSwinTiny) {
  expect_model_within_autocast_error(SlideTransformer(slide_swin_tiny().image_size(32)), GetParam(),
                                     images(1, 3, 32));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AutocastModelsEmulated,
                         ::testing::Values(at::kBFloat16, at::kHalf),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

}  // namespace
