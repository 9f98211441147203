// Models at input sizes other than their own (docs/pretrained.md, "Input sizes"): the global
// stages' Swin tables resized bicubically, MViTv2's decomposed tables linearly, both once per size;
// and the models as backbones (forward_features, to_torchscript_features). Logits against timm and
// the official code at 256: tests/python/test_import_weights.py.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "slideformer/nn/export.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"
#include "test_helpers.h"

namespace {

using namespace slideformer::nn;

// What these tests check is the sizes (tables resized, gradients through the resizing, the own
// size unchanged, the stage shapes), not the width: Slide-Swin-T and MViTv2-T with their stages,
// depths, heads, attention kinds and tables, at a quarter of their width (head width 8 and 24):
// these suites take 8 s of CPU instead of 18 s. The presets' own logits at other sizes, against
// timm and the official code: tests/python/test_import_weights.py.
SlideTransformerOptions narrow_slide_swin_tiny() { return preset("slide_swin_tiny").embed_dim(24); }
MViTOptions narrow_mvitv2_tiny() { return mvit_preset("mvitv2_tiny").embed_dim(24); }

// Forward and backward of a model at `size`: (1, classes) logits, and a gradient for every
// trainable parameter, the position tables included (they train through the resizing). In eval
// mode: drop-path would drop whole blocks of a batch of one.
template <typename Model>
void expect_trains_at(Model& model, int64_t size) {
  model->eval();
  model->zero_grad();
  const at::Tensor logits = model(torch::randn({1, 3, size, size}));
  ASSERT_EQ(logits.sizes(), at::IntArrayRef({1, 1000})) << size;
  logits.square().sum().backward();
  for (const auto& item : model->named_parameters()) {
    const at::Tensor& parameter = item.value();
    const std::string& name = item.key();
    if (!parameter.requires_grad()) continue;
    ASSERT_TRUE(parameter.grad().defined()) << name << " at " << size;
    if (name.find("relative_position") != std::string::npos) {
      EXPECT_GT(parameter.grad().abs().sum().item<double>(), 0) << name << " at " << size;
    }
  }
}

// At its own size the model computes what it computed before any other size was run.
template <typename Model>
void expect_other_sizes_leave_own_size_unchanged(Model& model, const std::vector<int64_t>& others) {
  model->eval();
  torch::NoGradGuard no_grad;
  const int64_t channels = model->in_channels(), own = model->image_size();
  const at::Tensor images = torch::randn({2, channels, own, own});
  const at::Tensor before = model(images);
  for (const int64_t size : others) {
    const at::Tensor logits = model(torch::randn({1, channels, size, size}));
    EXPECT_TRUE(logits.isfinite().all().item<bool>()) << size;
  }
  EXPECT_TRUE(torch::equal(model(images), before));
}

TEST(InputSizes, SlideSwinTinyTrainsAt192256And320AndIsUnchangedAt224) {
  torch::manual_seed(0);
  SlideTransformer model(narrow_slide_swin_tiny());
  expect_other_sizes_leave_own_size_unchanged(model, {192, 256, 320});
  for (const int64_t size : {192, 256, 320}) expect_trains_at(model, size);
}

TEST(InputSizes, MViTv2TinyTrainsAt192256And320AndIsUnchangedAt224) {
  torch::manual_seed(0);
  MViT model(narrow_mvitv2_tiny());
  expect_other_sizes_leave_own_size_unchanged(model, {192, 256, 320});
  for (const int64_t size : {192, 256, 320}) expect_trains_at(model, size);
}

// The fashion preset's absolute table (1, 14, 14, 48): the table itself at 28 x 28 (outputs bit
// for bit those of before any other size), resized with antialiased bicubic interpolation
// otherwise (timm's resample_abs_pos_embed; the value against timm's own function:
// tests/python/test_input_sizes.py), once per size, and trained through the resizing.
TEST(InputSizes, FashionAbsoluteTableIsResizedOncePerSizeAndTheSameAt28) {
  torch::manual_seed(5);
  SlideTransformer model(fashion());
  expect_other_sizes_leave_own_size_unchanged(model, {20, 36, 44});
  auto position_layer = [&] {
    for (const auto& [name, layer] : model->layers()) {
      if (name == "absolute_position") return std::dynamic_pointer_cast<AbsolutePositionEmbeddingImpl>(layer);
    }
    return std::shared_ptr<AbsolutePositionEmbeddingImpl>();
  };
  ASSERT_EQ(position_layer(), model->absolute_position.ptr());
  const at::Tensor& weight = model->absolute_position->weight;
  {
    torch::NoGradGuard no_grad;
    const at::Tensor table = position_layer()->table(18, 22);
    const at::Tensor expected = torch::nn::functional::interpolate(
        weight.permute({0, 3, 1, 2}),
        torch::nn::functional::InterpolateFuncOptions()
            .size(std::vector<int64_t>{18, 22})
            .mode(torch::kBicubic)
            .align_corners(false)
            .antialias(true));
    EXPECT_TRUE(torch::equal(table, expected.permute({0, 2, 3, 1})));
    EXPECT_EQ(position_layer()->table(18, 22).data_ptr(), table.data_ptr());  // kept across forwards
    EXPECT_TRUE(torch::equal(position_layer()->table(14, 14), weight));
  }
  model->zero_grad();
  model(torch::randn({2, 1, 36, 36})).square().sum().backward();
  ASSERT_TRUE(weight.grad().defined());
  EXPECT_GT(weight.grad().abs().sum().item<double>(), 0);
  EXPECT_THROW_MSG(position_layer()->forward(torch::randn({1, 14, 14, 47})),
                   "slideformer::AbsolutePositionEmbedding: input must be (B, Y, X, 48) (the table is for 14x14 and "
                   "resized for other maps), got shape [1, 14, 14, 47]");
}

// The bias of a 4 x 6 map from a 3 x 3 table: the table resized bicubically to 7 x 11 (written
// out here with the offsets of each token pair) and gathered.
TEST(InputSizes, SwinTableIsResizedBicubicallyAndGathered) {
  torch::manual_seed(1);
  MultiHeadAttention mha(MultiHeadAttentionOptions(8, 2).relative_position_size(3));
  const at::Tensor grid = mha->relative_position_table.detach().t().reshape({1, 2, 5, 5});
  const at::Tensor resized = torch::nn::functional::interpolate(
      grid, torch::nn::functional::InterpolateFuncOptions().size(std::vector<int64_t>{7, 11}).mode(torch::kBicubic)
                .align_corners(false))[0];
  torch::NoGradGuard no_grad;
  const at::Tensor bias = mha->relative_position_bias(4, 6);
  ASSERT_EQ(bias.sizes(), at::IntArrayRef({1, 2, 24, 24}));
  for (int64_t i = 0; i < 24; ++i) {
    for (int64_t j = 0; j < 24; ++j) {
      const int64_t dy = i / 6 - j / 6 + 3, dx = i % 6 - j % 6 + 5;
      for (int64_t h = 0; h < 2; ++h) {
        ASSERT_EQ(bias[0][h][i][j].item<float>(), resized[h][dy][dx].item<float>()) << i << " " << j;
      }
    }
  }
  // Its own size: the table as it is.
  EXPECT_TRUE(torch::equal(mha->relative_position_bias(3, 3), mha->relative_position_bias()));
  EXPECT_EQ(mha(torch::randn({2, 24, 8}), 4, 6).sizes(), at::IntArrayRef({2, 24, 8}));
  EXPECT_THROW_MSG(mha(torch::randn({2, 8, 8})), "got 8 tokens, not a 3x3 map: give the map's rows and cols");
}

TEST(InputSizes, ResizedTablesAreComputedOncePerSizeWhileTheTableIsUnchanged) {
  torch::manual_seed(2);
  MultiHeadAttention mha(MultiHeadAttentionOptions(8, 2).relative_position_size(3));
  torch::NoGradGuard no_grad;
  const at::Tensor first = mha->relative_position_bias(4, 4);
  EXPECT_EQ(mha->relative_position_bias(4, 4).data_ptr(), first.data_ptr());  // cached
  EXPECT_NE(mha->relative_position_bias(5, 5).data_ptr(), first.data_ptr());
  mha->relative_position_table.add_(1.0);  // a training step, a load: the cache follows
  const at::Tensor after = mha->relative_position_bias(4, 4);
  EXPECT_NE(after.data_ptr(), first.data_ptr());
  slideformer::testing::expect_close(after, first + 1.0, 1e-6, 1e-5, "bias after the table moved by 1");
}

// Copies every parameter of `from` into `to`, the decomposed tables of other lengths resized
// linearly, as the import resizes them (timm's checkpoint_filter_fn, torchvision's _interpolate).
void copy_resizing_tables(const torch::nn::Module& from, torch::nn::Module& to) {
  const auto target = to.named_parameters();
  for (const auto& item : from.named_parameters()) {
    at::Tensor source = item.value();
    if (source.sizes() != target[item.key()].sizes()) {
      source = at::upsample_linear1d(source.t().unsqueeze(0), {target[item.key()].size(0)}, false).squeeze(0).t();
    }
    target[item.key()].copy_(source);
  }
}

// A model built for 256 whose tables are the 224 model's, resized as the import resizes them,
// computes what the 224 model computes at 256: resizing at run time or at import is the same.
TEST(InputSizes, MViTv2RunAtAnotherSizeEqualsOneBuiltForIt) {
  torch::manual_seed(3);
  MViT at224(narrow_mvitv2_tiny());
  MViT at256(narrow_mvitv2_tiny().image_size(256));
  torch::NoGradGuard no_grad;
  copy_resizing_tables(*at224, *at256);
  at224->eval();
  at256->eval();
  const at::Tensor images = torch::randn({1, 3, 256, 256});
  EXPECT_TRUE(torch::equal(at224(images), at256(images)));
}

// Blocks of a (T, Y, X) grid at other grids. With a class token (torchvision's video blocks): one
// built for 4 x 8 x 8 run at 2 x 12 x 12 computes what one built for that grid computes with the
// tables resized linearly, as torchvision's _add_rel_pos resizes them, the time table included; its
// own grid is unchanged after the other ran; its TorchScript form, exported once, computes the same
// at both grids. On clip maps (no class token), the export reads the grid from the map.
TEST(InputSizes, VideoBlocksAtOtherGridsEqualOnesBuiltForThemAndTheirExports) {
  torch::manual_seed(7);
  auto block_for = [](std::vector<int64_t> grid, bool class_token) {
    MViTBlock block(MViTBlockOptions(PoolingAttentionOptions(8, 16, 2, std::move(grid))
                                         .stride_q({1, 2, 2}).stride_kv({1, 4, 4}).class_token(class_token)));
    block->eval();
    return block;
  };
  MViTBlock own = block_for({4, 8, 8}, true), other = block_for({2, 12, 12}, true);
  torch::NoGradGuard no_grad;
  copy_resizing_tables(*own, *other);
  const std::vector<int64_t> own_grid{4, 8, 8}, grid{2, 12, 12};
  const at::Tensor own_tokens = torch::randn({2, 1 + 4 * 8 * 8, 8}), tokens = torch::randn({2, 1 + 2 * 12 * 12, 8});
  const at::Tensor before = own(own_tokens);
  const auto [out, pooled] = own->forward_tokens(tokens, grid);
  EXPECT_EQ(pooled, std::vector<int64_t>({2, 6, 6}));
  EXPECT_TRUE(torch::equal(out, other(tokens)));
  EXPECT_TRUE(torch::equal(own(own_tokens), before));
  torch::jit::Module exported = own->script_form();
  slideformer::testing::expect_close(exported.forward({tokens, grid}).toTensor(), out, 1e-5, 1e-5, "export at 2x12x12");
  slideformer::testing::expect_close(exported.forward({own_tokens, own_grid}).toTensor(), before, 1e-5, 1e-5,
                                     "export at 4x8x8");

  MViTBlock clip_block = block_for({4, 8, 8}, false);
  torch::jit::Module clip_export = clip_block->script_form();
  for (const auto& shape : std::vector<std::vector<int64_t>>{{2, 4, 8, 8, 8}, {1, 3, 10, 6, 8}}) {
    const at::Tensor clips = torch::randn(shape);
    slideformer::testing::expect_close(clip_export.forward({clips}).toTensor(), clip_block(clips), 1e-5, 1e-5,
                                       "clip map export at " + c10::str(clips.sizes()));
  }
}

// The stage outputs (B, C_i, H_i, W_i) at each size: the last is the map the head pools; the
// TorchScript backbone returns the same from [0, 1] images, and the TorchScript classifier the
// logits, at every size (both exported once, from the model's own size).
template <typename Model>
void expect_stage_outputs(Model& model, const std::map<int64_t, std::vector<std::vector<int64_t>>>& shapes_at) {
  model->eval();
  torch::NoGradGuard no_grad;
  torch::jit::Module backbone = to_torchscript_features(*model), classifier = to_torchscript(*model);
  const at::Tensor mean = torch::tensor(model->input_mean(), at::kFloat).view({1, 3, 1, 1});
  const at::Tensor std = torch::tensor(model->input_std(), at::kFloat).view({1, 3, 1, 1});
  for (const auto& [size, shapes] : shapes_at) {
    const at::Tensor unit = torch::rand({2, 3, size, size});
    const at::Tensor images = (unit - mean) / std;
    const std::vector<at::Tensor> features = model->forward_features(images);
    ASSERT_EQ(features.size(), shapes.size());
    for (size_t i = 0; i < shapes.size(); ++i) EXPECT_EQ(features[i].sizes(), at::IntArrayRef(shapes[i])) << i;
    EXPECT_TRUE(torch::equal(features.back(), model->forward_tokens(images).permute({0, 3, 1, 2})));
    const c10::List<at::Tensor> exported = backbone.forward({unit}).toTensorList();
    ASSERT_EQ(exported.size(), features.size());
    for (size_t i = 0; i < features.size(); ++i) {
      slideformer::testing::expect_close(exported.get(i), features[i], 1e-4, 1e-4,
                                         "exported stage " + std::to_string(i) + " at " + std::to_string(size));
    }
    slideformer::testing::expect_close(classifier.forward({unit}).toTensor(), model->forward(images), 1e-4, 1e-4,
                                       "exported logits at " + std::to_string(size));
  }
}

TEST(Backbone, StageOutputsOfSlideSwinTinyAndMViTv2TinyAlsoExported) {
  torch::manual_seed(4);
  SlideTransformer slide(narrow_slide_swin_tiny());
  expect_stage_outputs(slide, {{224, {{2, 24, 56, 56}, {2, 48, 28, 28}, {2, 96, 14, 14}, {2, 192, 7, 7}}},
                               {256, {{2, 24, 64, 64}, {2, 48, 32, 32}, {2, 96, 16, 16}, {2, 192, 8, 8}}}});
  MViT mvit(narrow_mvitv2_tiny());
  expect_stage_outputs(mvit, {{224, {{2, 24, 56, 56}, {2, 48, 28, 28}, {2, 96, 14, 14}, {2, 192, 7, 7}}},
                              {320, {{2, 24, 80, 80}, {2, 48, 40, 40}, {2, 96, 20, 20}, {2, 192, 10, 10}}}});
}

// The fashion presets' exports at other sizes: the absolute tables resized inside the export.
TEST(Backbone, FashionExportsRunAtOtherSizes) {
  torch::manual_seed(6);
  SlideTransformer slide(fashion());
  MViT mvit(mvit_preset("fashion_mvit"));
  slide->eval();
  mvit->eval();
  for (Classifier* model : {static_cast<Classifier*>(slide.get()), static_cast<Classifier*>(mvit.get())}) {
    torch::NoGradGuard no_grad;
    torch::jit::Module exported = to_torchscript(*model);
    for (const int64_t size : {28, 36}) {
      const at::Tensor unit = torch::rand({2, 1, size, size});
      const at::Tensor images = (unit - model->input_mean()[0]) / model->input_std()[0];
      slideformer::testing::expect_close(exported.forward({unit}).toTensor(), model->forward(images), 1e-5, 1e-5,
                                         "fashion export at " + std::to_string(size));
    }
  }
}

}  // namespace
