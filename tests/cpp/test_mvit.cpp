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
    PoolingAttention attn(
        PoolingAttentionOptions(8, 12, 2, {6, 6}).stride_q({2, 2}).stride_kv({3, 3}).residual_pooling(residual));
    const at::Tensor x = torch::randn({2, 6, 6, 8});
    const at::Tensor out = attn(x);
    ASSERT_EQ(out.sizes(), at::IntArrayRef({2, 3, 3, 12}));
    EXPECT_EQ(attn->query_grid(), std::vector<int64_t>({3, 3}));
    EXPECT_EQ(attn->key_grid(), std::vector<int64_t>({2, 2}));

    const int64_t d = 6;
    const auto qkv = attn->qkv(x).view({2, 36, 3, 2, d}).permute({2, 0, 3, 1, 4});
    auto pool = [&](const at::Tensor& t, DepthwiseConv conv, int64_t stride, torch::nn::LayerNorm norm) {
      const at::Tensor map =
          torch::conv2d(t.reshape({4, 6, 6, d}).permute({0, 3, 1, 2}).contiguous(), conv->weight, {}, stride, 1, 1, d);
      return norm(map.flatten(2).transpose(1, 2).reshape({2, 2, -1, d}));
    };
    const at::Tensor q = pool(qkv[0], attn->pool_q, 2, attn->norm_q);
    const at::Tensor k = pool(qkv[1], attn->pool_k, 3, attn->norm_k);
    const at::Tensor v = pool(qkv[2], attn->pool_v, 3, attn->norm_v);
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
  PoolingAttention attn(PoolingAttentionOptions(8, 8, 2, {4, 4}).stride_kv({2, 2}));
  attn(torch::randn({2, 4, 4, 8})).pow(2).sum().backward();
  for (const auto& p : attn->named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_GT(p.value().grad().abs().sum().item<double>(), 0) << p.key();
  }
}

TEST(PoolingAttention, MaxAndAveragePoolingAndChecks) {
  torch::manual_seed(3);
  for (const PoolMode mode : {PoolMode::kMax, PoolMode::kAvg}) {
    PoolingAttention attn(PoolingAttentionOptions(8, 8, 2, {7, 7}).stride_q({2, 2}).stride_kv({2, 2}).mode(mode));
    EXPECT_FALSE(attn->pool_q);  // no parameters to pool with
    EXPECT_EQ(attn(torch::randn({1, 7, 7, 8})).sizes(), at::IntArrayRef({1, 4, 4, 8}));
  }
  PoolingAttention attn(PoolingAttentionOptions(8, 8, 2, {4, 4}));
  EXPECT_EQ(attn(torch::randn({1, 5, 3, 8})).sizes(), at::IntArrayRef({1, 5, 3, 8}));  // any map (test_input_sizes)
  EXPECT_THROW_MSG(attn(torch::randn({1, 5, 5, 7})), "slideformer::PoolingAttention: input must be (B, Y, X, 8)");
  EXPECT_THROW_MSG(PoolingAttention(PoolingAttentionOptions(8, 9, 2, {4, 4})),
                   "dim_out must be a positive multiple of heads, got dim_out 9 and heads 2");
  EXPECT_THROW_MSG(PoolingAttention(PoolingAttentionOptions(8, 8, 2, {4, 4}).kernel_q({3, 2})),
                   "kernel_q must be odd and positive along every axis, got [3, 2]");
  EXPECT_THROW_MSG(PoolingAttention(PoolingAttentionOptions(8, 8, 2, {4, 4}).kernel_kv({3, 3, 3})),
                   "kernel_kv must have one entry per axis of input_size (2), got [3, 3, 3]");
  EXPECT_THROW_MSG(PoolingAttention(PoolingAttentionOptions(8, 8, 2, {4, 4}).stride_q({0, 1})),
                   "stride_q must have one entry >= 1 per axis of input_size (2), got [0, 1]");
  EXPECT_THROW_MSG(PoolingAttention(PoolingAttentionOptions(8, 8, 2, {2, 4, 4, 4})),
                   "input_size must be (Y, X) or (T, Y, X), got [2, 4, 4, 4]");
  PoolingAttention clip_attn(PoolingAttentionOptions(8, 8, 2, {2, 4, 4}));
  EXPECT_THROW_MSG(clip_attn(torch::randn({1, 4, 4, 8})), "slideformer::PoolingAttention: input must be (B, T, Y, X, 8)");
  PoolingAttention token_attn(PoolingAttentionOptions(8, 8, 2, {2, 4, 4}).class_token(true));
  EXPECT_THROW_MSG(token_attn(torch::randn({1, 32, 8})),
                   "input must be (B, 33, 8) tokens (the class token, then the [2, 4, 4] grid), got shape [1, 32, 8]");
}

// An image map is the T = 1 clip of the same code: a (1, Y, X) grid with time kernel and strides
// 1 computes what the (Y, X) grid does with the same weights. Its one-row time table adds the
// same q . R_t[0] to every logit of a query, which the softmax cancels (without a class token).
TEST(PoolingAttention, AnImageIsTheOneFrameClip) {
  torch::manual_seed(4);
  for (const bool class_token : {false, true}) {
    const auto image_options = PoolingAttentionOptions(8, 12, 2, {6, 6}).stride_q({2, 2}).stride_kv({3, 3})
                                   .kernel_q({3, 5}).class_token(class_token);
    PoolingAttention image(image_options);
    PoolingAttention clip(PoolingAttentionOptions(image_options).input_size({1, 6, 6}).stride_q({1, 2, 2})
                              .stride_kv({1, 3, 3}).kernel_q({1, 3, 5}).kernel_kv({1, 3, 3}));
    ASSERT_TRUE(clip->relative_position->has_time());
    {
      torch::NoGradGuard no_grad;
      const auto image_parameters = image->named_parameters();
      for (auto& item : clip->named_parameters()) {
        if (item.key() == "relative_position.time") {
          // Shifts the grid's keys against the class token alike, which the softmax does not cancel.
          if (class_token) item.value().zero_();
          continue;
        }
        const at::Tensor* source = image_parameters.find(item.key());
        ASSERT_NE(source, nullptr) << item.key();
        item.value().copy_(source->view_as(item.value()));  // pool weights (d, 1, k, k) -> (d, 1, 1, k, k)
      }
    }
    const at::Tensor x = torch::randn({2, 6, 6, 8});
    if (class_token) {
      const at::Tensor tokens = torch::cat({torch::randn({2, 1, 8}), x.flatten(1, 2)}, 1);
      slideformer::testing::expect_close(clip(tokens), image(tokens), 1e-5, 1e-5, "class token");
    } else {
      slideformer::testing::expect_close(clip(x.unsqueeze(1)).squeeze(1), image(x), 1e-5, 1e-5, "image map");
    }
  }
}

TEST(VideoMViTPresets, ParameterCountsMatchTorchvision) {
  // torchvision 0.26: sum(p.numel() for p in torchvision.models.video.<name>().parameters()).
  for (const auto& [name, total] : std::vector<std::pair<std::string, int64_t>>{{"mvit_v1_b", 36610672},
                                                                                  {"mvit_v2_s", 34537744}}) {
    VideoMViT model(video_mvit_preset(name));
    EXPECT_EQ(count_parameters(*model, false), total) << name;
    EXPECT_EQ(model->token_grid(), std::vector<int64_t>({8, 56, 56})) << name;
  }
  // The same count for torchvision.models.video.mvit.MViT built with moving_mvit's blocks (one per
  // stage: 32 -> 32, 64, 128, 256 channels, heads 1, 2, 4, 8, stride_kv (1, 4, 4) then halved in
  // Y and X, MViTv2 flags as mvit_v2_s, 8 x 48 x 48 clips, 10 classes) and a 1-channel conv_proj.
  VideoMViT moving(video_mvit_preset("moving_mvit"));
  EXPECT_EQ(count_parameters(*moving, false), 987786);
  EXPECT_EQ(moving->token_grid(), std::vector<int64_t>({4, 12, 12}));
  EXPECT_THROW_MSG(video_mvit_preset("mvit_v3"), "unknown video MViT preset 'mvit_v3'");
}

// A small video MViT of each generation: its export computes what it does, and it checks clips.
TEST(VideoMViT, ExportMatchesTheModelAndClipsAreChecked) {
  torch::manual_seed(8);
  for (const bool v2 : {true, false}) {
    VideoMViT model(VideoMViTOptions().frames(4).image_size(32).embed_dim(16).depths({1, 2, 1}).heads({1, 2, 4})
                        .num_classes(5).v2(v2));
    model->eval();
    const at::Tensor clips = torch::rand({2, 3, 4, 32, 32});
    at::Tensor expected;
    {
      torch::NoGradGuard no_grad;
      expected = model((clips - 0.45) / 0.225);
    }
    ASSERT_EQ(expected.sizes(), at::IntArrayRef({2, 5}));
    std::stringstream buffer;
    to_torchscript(model).save(buffer);
    torch::jit::Module loaded = torch::jit::load(buffer);
    slideformer::testing::expect_close(loaded.forward({clips}).toTensor(), expected, 1e-5, 1e-5,
                                       v2 ? "video v2" : "video v1");
    EXPECT_THROW_MSG(model(torch::rand({2, 3, 8, 32, 32})),
                     "slideformer::VideoMViT: clips must be (B, 3, 4, 32, 32), got shape [2, 3, 8, 32, 32]");
  }
  EXPECT_THROW_MSG(VideoMViT(VideoMViTOptions().patch_stride({4, 4})),
                   "patch_stride must be three positive sizes (T, Y, X), got [4, 4]");
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
