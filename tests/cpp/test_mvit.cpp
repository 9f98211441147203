// MViTv2 pooling attention, the position encodings, and the TorchScript forms the modules own
// (docs/modules.md, docs/export.md). Logits parity with timm: tests/python/test_mvit_timm.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>

#include "slideformer/nn/export.h"
#include "test_helpers.h"

namespace {

using namespace slideformer::nn;

TEST(MViTPresets, ParameterCountsMatchTimm) {
  // timm 1.0.31: sum(p.numel() for p in timm.create_model(name).parameters()).
  const std::vector<std::pair<std::string, int64_t>> expected = {
      {"mvitv2_tiny", 24173320}, {"mvitv2_small", 34870216}, {"mvitv2_base", 51472744}};
  for (const auto& [name, total] : expected) {
    MViT model(mvit_preset(name));
    EXPECT_EQ(count_parameters(*model, false), total) << name;
    EXPECT_EQ(count_parameters(*model, true), total) << name;
  }
  EXPECT_THROW_MSG(mvit_preset("mvit_huge"), "unknown MViT preset 'mvit_huge'");
}

// Attention of the pooled queries over the pooled keys written out with matmul and softmax, and
// the decomposed relative position term summed entry by entry.
TEST(PoolingAttention, MatchesAReferenceWrittenOut) {
  torch::manual_seed(1);
  for (const bool residual : {true, false}) {
    PoolingAttention attn(PoolingAttentionOptions(8, 12, 2, 6).stride_q(2).stride_kv(3).residual_pooling(residual));
    const at::Tensor x = torch::randn({2, 6, 6, 8});
    const at::Tensor out = attn(x);
    ASSERT_EQ(out.sizes(), at::IntArrayRef({2, 3, 3, 12}));
    EXPECT_EQ(attn->query_size(), 3);
    EXPECT_EQ(attn->key_size(), 2);

    const int64_t d = 6;
    const auto qkv = attn->qkv(x).view({2, 36, 3, 2, d}).permute({2, 0, 3, 1, 4});
    auto pool = [&](const at::Tensor& t, torch::nn::Conv2d conv, torch::nn::LayerNorm norm) {
      const at::Tensor map = conv(t.reshape({4, 6, 6, d}).permute({0, 3, 1, 2}).contiguous());
      return norm(map.flatten(2).transpose(1, 2).reshape({2, 2, -1, d}));
    };
    const at::Tensor q = pool(qkv[0], attn->pool_q, attn->norm_q);
    const at::Tensor k = pool(qkv[1], attn->pool_k, attn->norm_k);
    const at::Tensor v = pool(qkv[2], attn->pool_v, attn->norm_v);
    at::Tensor logits = at::matmul(q, k.transpose(-2, -1)) / std::sqrt(static_cast<double>(d));
    const auto& rel = attn->relative_position;
    at::Tensor bias = torch::zeros({2, 2, 9, 4});
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 3; ++j)
        for (int64_t kr = 0; kr < 2; ++kr)
          for (int64_t kc = 0; kc < 2; ++kc) {
            // query map 3, key map 2: d(i, k) = i * 1 - k * 1.5 + 1 * 1.5, truncated.
            const auto dh = static_cast<int64_t>(i - kr * 1.5 + 1.5), dw = static_cast<int64_t>(j - kc * 1.5 + 1.5);
            const at::Tensor qv = q.select(2, i * 3 + j);
            bias.select(2, i * 3 + j).select(2, kr * 2 + kc).copy_(
                (qv * rel->height[dh]).sum(-1) + (qv * rel->width[dw]).sum(-1));
          }
    at::Tensor expected = at::matmul(at::softmax(logits + bias, -1), v);
    if (residual) expected = expected + q;
    expected = attn->proj(expected.transpose(1, 2).reshape({2, 3, 3, 12}));
    slideformer::testing::expect_close(out, expected, 1e-5, 1e-5, "pooling attention");
  }
}

TEST(PoolingAttention, TablesTrainThroughTheAttentionBiasGradient) {
  torch::manual_seed(2);
  PoolingAttention attn(PoolingAttentionOptions(8, 8, 2, 4).stride_kv(2));
  attn(torch::randn({2, 4, 4, 8})).pow(2).sum().backward();
  for (const auto& p : attn->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
}

TEST(PoolingAttention, MaxAndAveragePoolingAndChecks) {
  torch::manual_seed(3);
  for (const PoolMode mode : {PoolMode::kMax, PoolMode::kAvg}) {
    PoolingAttention attn(PoolingAttentionOptions(8, 8, 2, 7).stride_q(2).stride_kv(2).mode(mode));
    EXPECT_FALSE(attn->pool_q);  // no parameters to pool with
    EXPECT_EQ(attn(torch::randn({1, 7, 7, 8})).sizes(), at::IntArrayRef({1, 4, 4, 8}));
  }
  PoolingAttention attn(PoolingAttentionOptions(8, 8, 2, 4));
  EXPECT_EQ(attn(torch::randn({1, 5, 3, 8})).sizes(), at::IntArrayRef({1, 5, 3, 8}));  // any map (test_input_sizes)
  EXPECT_THROW_MSG(attn(torch::randn({1, 5, 5, 7})), "slideformer::PoolingAttention: input must be (B, Y, X, 8)");
  EXPECT_THROW_MSG(PoolingAttention(PoolingAttentionOptions(8, 9, 2, 4)),
                   "dim_out must be a positive multiple of heads, got dim_out 9 and heads 2");
  EXPECT_THROW_MSG(PoolingAttention(PoolingAttentionOptions(8, 8, 2, 4).kernel_size(2)),
                   "kernel_size must be odd and positive, got 2");
}

TEST(PositionEncodings, SinusoidalFollowsTheFormula) {
  SinusoidalPositionEncoding encoding(SinusoidalPositionEncodingOptions(8).temperature(100.0));
  const at::Tensor e = encoding(torch::zeros({1, 3, 5, 8}));
  for (int64_t y = 0; y < 3; ++y)
    for (int64_t x = 0; x < 5; ++x)
      for (int64_t i = 0; i < 2; ++i) {
        const double w = std::pow(100.0, -i / 2.0);
        EXPECT_NEAR(e[0][y][x][i].item<double>(), std::sin(y * w), 1e-6);
        EXPECT_NEAR(e[0][y][x][2 + i].item<double>(), std::cos(y * w), 1e-6);
        EXPECT_NEAR(e[0][y][x][4 + i].item<double>(), std::sin(x * w), 1e-6);
        EXPECT_NEAR(e[0][y][x][6 + i].item<double>(), std::cos(x * w), 1e-6);
      }
  EXPECT_THROW_MSG(SinusoidalPositionEncoding(SinusoidalPositionEncodingOptions(6)),
                   "dim must be a positive multiple of 4, got 6");
}

// Saved, loaded, run on [0, 1] images: the export of every module kind computes what the model does.
void expect_export_parity(Classifier& model, torch::nn::Module& module, const std::string& what) {
  module.eval();
  torch::manual_seed(7);
  const int64_t c = model.in_channels(), s = model.image_size();
  const at::Tensor images = torch::rand({2, c, s, s});
  const at::Tensor mean = torch::tensor(model.input_mean(), at::kFloat).view({1, c, 1, 1});
  const at::Tensor std = torch::tensor(model.input_std(), at::kFloat).view({1, c, 1, 1});
  at::Tensor expected;
  {
    torch::NoGradGuard no_grad;
    expected = model.forward((images - mean) / std);
  }
  std::stringstream buffer;
  to_torchscript(model).save(buffer);
  torch::jit::Module loaded = torch::jit::load(buffer);
  slideformer::testing::expect_close(loaded.forward({images}).toTensor(), expected, 1e-5, 1e-5, what);
}

TEST(Export, EveryModuleKindAndEncodingMatchesTheModel) {
  torch::manual_seed(6);
  for (const auto& [what, options] : std::vector<std::pair<std::string, MViTOptions>>{
           {"fashion_mvit", fashion_mvit()},
           {"sinusoidal, max pooling", fashion_mvit().position_encoding(PositionEncoding::kSinusoidal).pool_mode(PoolMode::kMax)},
           {"avg pooling, no relative position, no residual pooling",
            fashion_mvit().position_encoding(PositionEncoding::kNone).pool_mode(PoolMode::kAvg)
                .relative_position(false).residual_pooling(false)},
           {"mvitv2 at 64x64", mvitv2_tiny().image_size(64).depths({1, 1, 1, 1}).num_classes(5)}}) {
    MViT model(options);
    expect_export_parity(*model, *model, what);
  }
  for (const auto& [what, options] : std::vector<std::pair<std::string, SlideTransformerOptions>>{
           {"fashion", fashion()},
           {"fashion, sinusoidal", fashion().absolute_position_embedding(false).sinusoidal_position_encoding(true)},
           {"slide_swin_tiny at 64x64", slide_swin_tiny().image_size(64).depths({1, 1, 1, 1}).num_classes(5)}}) {
    SlideTransformer model(options);
    expect_export_parity(*model, *model, what);
  }
}

TEST(Export, AModuleWithoutATorchScriptFormIsAClearError) {
  torch::nn::Linear linear(3, 4);
  EXPECT_THROW_MSG(as_script_form(*linear), "has no TorchScript form (it does not implement slideformer::nn::ScriptForm)");
  EXPECT_THROW_MSG(as_layer(*linear), "is not a slideformer::nn::Layer");
  // A model whose walk holds such a module fails to export, naming it.
  NamedLayers layers{{"linear", linear.ptr()}};
  EXPECT_THROW_MSG(forward_layers(layers, torch::randn({1, 3})), "torch::nn::LinearImpl");
}

TEST(Export, ConstantsComeFromTheOptions) {
  // A LayerNorm eps far from every default: an export with a literal eps would differ.
  MViT model(fashion_mvit().norm_eps(0.5));
  expect_export_parity(*model, *model, "norm_eps 0.5");
  SinusoidalPositionEncoding encoding(SinusoidalPositionEncodingOptions(8).temperature(3.0));
  const at::Tensor x = torch::randn({2, 3, 4, 8});
  slideformer::testing::expect_close(encoding->script_form().forward({x}).toTensor(), encoding(x), 1e-6, 1e-6,
                                     "temperature 3");
}

}  // namespace
