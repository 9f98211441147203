// Shapes, parameter counts and reparameterisation of the slideformer modules (docs/modules.md).
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "attention_cases.h"
#include "slide_attention_cases.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"
#include "test_helpers.h"

namespace {

using namespace slideformer::nn;

TEST(Presets, ParameterCountsMatchTheReferenceCode) {
  const std::vector<std::tuple<std::string, int64_t, int64_t>> expected = {
      {"slide_swin_tiny", 28348834, 28338466},
      {"slide_swin_small", 49747378, 49737010},
      {"slide_swin_base", 87948704, 87938336}};
  for (const auto& [name, total, trainable] : expected) {
    SlideTransformer model(preset(name));
    EXPECT_EQ(count_parameters(*model, false), total) << name;
    EXPECT_EQ(count_parameters(*model, true), trainable) << name;
  }
  EXPECT_THROW_MSG(preset("swin"), "unknown preset 'swin'");
}

// The layers' names in forward order (the export, the CLI's summary and --freeze-stages use
// them), and the parameters' order (an optimizer's saved state follows it).
std::vector<std::string> layer_names(const Classifier& model) {
  std::vector<std::string> names;
  for (const auto& layer : model.layers()) names.push_back(layer.first);
  return names;
}

TEST(Classifiers, LayersAreNamedByStageAndBlock) {
  SlideTransformer slide(fashion());
  EXPECT_EQ(layer_names(*slide), (std::vector<std::string>{"patch_embed", "absolute_position", "block_0_0", "block_0_1",
                                                           "merge_0", "block_1_0", "block_1_1"}));
  EXPECT_EQ(slide->layers()[1].second, slide->absolute_position.ptr());
  EXPECT_EQ(slide->named_parameters().begin()->key(), "absolute_position.weight");
  EXPECT_EQ(slide->no_weight_decay(), std::vector<std::string>{"absolute_position.weight"});
  MViT mvit(fashion_mvit());
  EXPECT_EQ(layer_names(*mvit), (std::vector<std::string>{"patch_embed", "absolute_position", "block_0_0", "block_1_0",
                                                          "block_1_1", "block_2_0", "block_2_1"}));
  EXPECT_EQ(mvit->named_parameters().begin()->key(), "patch_embed.proj.weight");
  EXPECT_TRUE(mvit->no_weight_decay().empty());
  SlideTransformer sinusoidal(fashion().absolute_position_embedding(false).sinusoidal_position_encoding(true));
  EXPECT_EQ(layer_names(*sinusoidal)[1], "sinusoidal_position");
  EXPECT_FALSE(sinusoidal->absolute_position);
  EXPECT_TRUE(sinusoidal->no_weight_decay().empty());
}

TEST(Modules, OutputShapes) {
  torch::manual_seed(0);
  MultiHeadAttention mha(MultiHeadAttentionOptions(16, 2).relative_position_size(3));
  EXPECT_EQ(mha(torch::randn({2, 9, 16})).sizes(), at::IntArrayRef({2, 9, 16}));
  EXPECT_THROW_MSG(mha(torch::randn({2, 8, 16})), "the relative-position table is for 9 tokens");
  SlideAttention slide(SlideAttentionOptions(16, 2));
  EXPECT_EQ(slide(torch::randn({2, 5, 7, 16})).sizes(), at::IntArrayRef({2, 5, 7, 16}));
  Mlp mlp(MlpOptions(16, 32));
  EXPECT_EQ(mlp(torch::randn({3, 16})).sizes(), at::IntArrayRef({3, 16}));
  TransformerBlock slide_block(TransformerBlockOptions(16, 2, AttentionKind::kSlide));
  EXPECT_EQ(slide_block(torch::randn({2, 5, 7, 16})).sizes(), at::IntArrayRef({2, 5, 7, 16}));
  TransformerBlock global_block(
      TransformerBlockOptions(16, 2, AttentionKind::kGlobal).relative_position_size(4));
  EXPECT_EQ(global_block(torch::randn({2, 4, 4, 16})).sizes(), at::IntArrayRef({2, 4, 4, 16}));
  PatchEmbed embed(PatchEmbedOptions(1, 16, 2));
  EXPECT_EQ(embed(torch::randn({2, 1, 28, 28})).sizes(), at::IntArrayRef({2, 14, 14, 16}));
  PatchEmbed stem_embed(PatchEmbedOptions(3, 16, 4).stem_channels(8).overlapping(true));
  EXPECT_EQ(stem_embed->projection->weight.sizes(), at::IntArrayRef({16, 8, 7, 7}));
  EXPECT_EQ(stem_embed(torch::randn({2, 3, 28, 20})).sizes(), at::IntArrayRef({2, 7, 5, 16}));
  PatchMerging merge(PatchMergingOptions(16));
  EXPECT_EQ(merge(torch::randn({2, 7, 5, 16})).sizes(), at::IntArrayRef({2, 4, 3, 32}));
  SlideTransformer model(fashion());
  EXPECT_EQ(model(torch::rand({3, 1, 28, 28})).sizes(), at::IntArrayRef({3, 10}));
}

TEST(Functional, MergePatchesOrderAndPadding) {
  // Channel 0 holds 10*row + col, so the merged channels reveal which neighbour went where.
  at::Tensor x = (torch::arange(3).view({3, 1}) * 10 + torch::arange(3).view({1, 3}))
                     .to(at::kFloat).view({1, 3, 3, 1});
  at::Tensor merged = functional::merge_patches(x);
  ASSERT_EQ(merged.sizes(), at::IntArrayRef({1, 2, 2, 4}));
  EXPECT_TRUE(at::equal(merged[0][0][0], torch::tensor({0.f, 10.f, 1.f, 11.f})));
  EXPECT_TRUE(at::equal(merged[0][1][1], torch::tensor({22.f, 0.f, 0.f, 0.f})));
}

TEST(Functional, RelativePositionIndexMatchesSwin) {
  at::Tensor index = functional::relative_position_index(2);
  // Swin's table for a 2x2 window.
  EXPECT_TRUE(at::equal(index, torch::tensor({{4, 3, 1, 0}, {5, 4, 2, 1}, {7, 6, 4, 3}, {8, 7, 5, 4}})));
}

TEST(Modules, ReparameterizeKeepsOutputs) {
  torch::manual_seed(1);
  SlideTransformer model(fashion());
  model->eval();
  at::Tensor images = torch::rand({2, 1, 28, 28});
  at::Tensor before = model(images);
  model->reparameterize();
  at::Tensor after = model(images);
  slideformer::testing::expect_close(after, before, 1e-5, 1e-5, "logits after reparameterize");
}

TEST(Modules, EveryTrainableParameterReceivesAGradient) {
  torch::manual_seed(2);
  SlideTransformer model(fashion());
  model(torch::rand({2, 1, 28, 28})).square().sum().backward();
  for (const auto& item : model->named_parameters()) {
    if (!item.value().requires_grad()) {
      EXPECT_FALSE(item.value().grad().defined()) << item.key();
      continue;
    }
    ASSERT_TRUE(item.value().grad().defined()) << item.key() << " got no gradient";
    EXPECT_GT(item.value().grad().abs().sum().item<double>(), 0.0) << item.key();
  }
}

// The attention modules against references written from aten ops (linear, matmul and softmax;
// conv2d or a gather for the window): the projections, each module's head split and the
// relative-position bias, forward and gradients, in float64.
// float64 parameters (Module::to(kDouble) would convert the integer index buffers too).
void parameters_to_double(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) p.set_data(p.data().to(at::kDouble));
}

void expect_module_matches_reference(torch::nn::Module& module, const at::Tensor& x,
                                     const at::Tensor& out, const at::Tensor& ref) {
  slideformer::testing::expect_close(out, ref, 1e-10, 1e-10, "output");
  const at::Tensor grad = torch::randn_like(out);
  std::vector<at::Tensor> leaves = {x};
  for (const auto& p : module.parameters()) {
    if (p.requires_grad()) leaves.push_back(p);
  }
  const auto ours = torch::autograd::grad({out}, leaves, {grad});
  const auto theirs = torch::autograd::grad({ref}, leaves, {grad});
  for (size_t i = 0; i < leaves.size(); ++i) {
    slideformer::testing::expect_close(ours[i], theirs[i], 1e-9, 1e-9, "gradient " + std::to_string(i));
  }
}

TEST(Modules, MultiHeadAttentionMatchesAtenReference) {
  torch::manual_seed(6);
  const int64_t batch = 2, size = 3, tokens = size * size, dim = 12, heads = 3, head_dim = 4;
  MultiHeadAttention mha(MultiHeadAttentionOptions(dim, heads).relative_position_size(size));
  parameters_to_double(*mha);
  const at::Tensor x = torch::randn({batch, tokens, dim}, at::kDouble).requires_grad_();
  // Channels (3, heads, d) of the qkv projection; the table gathered to (heads, N, N).
  const at::Tensor qkv = at::linear(x, mha->qkv->weight, mha->qkv->bias)
                             .view({batch, tokens, 3, heads, head_dim})
                             .permute({2, 0, 3, 1, 4});
  const at::Tensor bias = mha->relative_position_table.index_select(0, mha->relative_position_index.view(-1))
                              .view({tokens, tokens, heads})
                              .permute({2, 0, 1});
  const at::Tensor heads_out =
      slideformer::testing::reference_attention(qkv[0], qkv[1], qkv[2], bias, false, std::nullopt);
  const at::Tensor ref = at::linear(heads_out.transpose(1, 2).reshape({batch, tokens, dim}),
                                    mha->proj->weight, mha->proj->bias);
  expect_module_matches_reference(*mha, x, mha(x), ref);
}

TEST(Modules, SlideAttentionMatchesAtenReference) {
  namespace sl = slideformer::testing::slide;
  const int64_t batch = 2, rows = 5, cols = 6, dim = 8, heads = 2, head_dim = 4, ks = 3, k2 = 9;
  for (const std::string border : {"zeros", "clamp"}) {
    torch::manual_seed(7);
    SlideAttention slide(SlideAttentionOptions(dim, heads).dilation(2).border(border));
    parameters_to_double(*slide);
    const at::Tensor x = torch::randn({batch, rows, cols, dim}, at::kDouble).requires_grad_();
    // Channels (heads, 3, d) of the qkv projection.
    const at::Tensor qkv = at::linear(x, slide->qkv->weight, slide->qkv->bias)
                               .view({batch, rows, cols, heads, 3, head_dim})
                               .permute({4, 0, 3, 1, 2, 5});
    // The fixed path is the one-hot conv of the reference; the learnable one is a depthwise conv.
    ASSERT_TRUE(at::equal(slide->identity_weight, at::eye(k2, at::kDouble).expand({head_dim, k2, k2})));
    const at::Tensor shift_bias = slide->identity_bias + slide->shift_bias;
    const at::Tensor heads_out =
        border == "zeros"
            ? sl::reference_slide_transformer(qkv[0], qkv[1], qkv[2], ks, 2, slide->key_bias,
                                              slide->shift_weight.reshape({head_dim * k2, 1, ks, ks}),
                                              shift_bias.reshape({head_dim * k2}))
            : sl::reference_clamp_gather(qkv[0], qkv[1], qkv[2], ks, 2, slide->key_bias,
                                         slide->identity_weight + slide->shift_weight, shift_bias);
    const at::Tensor ref = at::linear(heads_out.permute({0, 2, 3, 1, 4}).reshape({batch, rows, cols, dim}),
                                      slide->proj->weight, slide->proj->bias);
    SCOPED_TRACE(border);
    expect_module_matches_reference(*slide, x, slide(x), ref);
  }
}

TEST(Modules, PrettyPrintNamesOptions) {
  std::ostringstream out;
  out << *SlideAttention(SlideAttentionOptions(16, 2).border("clamp"));
  EXPECT_NE(out.str().find("border=clamp"), std::string::npos) << out.str();
}

}  // namespace

#include "slideformer/nn/export.h"

namespace {

using namespace slideformer::nn;

// Normalises [0, 1] images the way the exported model does by itself.
at::Tensor normalise(const SlideTransformerOptions& options, const at::Tensor& images) {
  const int64_t c = options.in_channels();
  return (images - torch::tensor(options.input_mean()).view({1, c, 1, 1}).to(at::kFloat)) /
         torch::tensor(options.input_std()).view({1, c, 1, 1}).to(at::kFloat);
}

TEST(Export, TorchScriptModuleReproducesTheModelAfterSaveAndLoad) {
  torch::manual_seed(4);
  // With and without the convolutional stem.
  for (auto options :
       {fashion(), fashion().image_size(30).patch_size(3).stem_channels(0).border("clamp")
                       .overlapping_patches(false)}) {
    SlideTransformer model(options);
    model->eval();
    const at::Tensor images = torch::rand({3, options.in_channels(), options.image_size(), options.image_size()});
    const at::Tensor expected = model(normalise(options, images));
    torch::jit::Module scripted = to_torchscript(model);
    std::stringstream buffer;
    scripted.save(buffer);
    torch::jit::Module loaded = torch::jit::load(buffer);
    const at::Tensor logits = loaded.forward({images}).toTensor();
    slideformer::testing::expect_close(logits, expected, 1e-5, 1e-5, "exported logits");
    // The export copies weights: training the model further does not change it.
    { torch::NoGradGuard no_grad; model->head->bias.add_(1.0); }
    slideformer::testing::expect_close(loaded.forward({images}).toTensor(), expected, 1e-5, 1e-5);
  }
}

// reparameterize() once kept a flag outside the parameters: a clone or a saved and loaded copy
// lost it and computed with I + (I + W). The merged state must travel with the parameters.
TEST(Export, ReparameterizedModelsSurviveCloneSaveLoadAndExport) {
  torch::manual_seed(5);
  SlideAttention slide(SlideAttentionOptions(32, 2));
  slide->reparameterize();
  EXPECT_TRUE(slide->is_reparameterized());
  const at::Tensor x = torch::randn({2, 7, 7, 32});
  const at::Tensor expected = slide(x);
  const auto clone = std::dynamic_pointer_cast<SlideAttentionImpl>(slide->clone());
  EXPECT_TRUE(at::equal(clone->forward(x), expected)) << "clone";
  std::stringstream buffer;
  torch::save(slide, buffer);
  SlideAttention loaded(SlideAttentionOptions(32, 2));
  torch::load(loaded, buffer);
  EXPECT_TRUE(loaded->is_reparameterized());
  EXPECT_TRUE(at::equal(loaded(x), expected)) << "save/load";
  loaded->reparameterize();  // again: no change
  EXPECT_TRUE(at::equal(loaded(x), expected)) << "reparameterized twice";

  SlideTransformer model(fashion());
  model->eval();
  model->reparameterize();
  const at::Tensor images = torch::rand({3, 1, 28, 28});
  const at::Tensor logits = model(normalise(model->options, images));
  const auto model_clone = std::dynamic_pointer_cast<SlideTransformerImpl>(model->clone());
  EXPECT_TRUE(at::equal(model_clone->forward(normalise(model->options, images)), logits)) << "model clone";
  std::stringstream model_buffer;
  torch::save(model, model_buffer);
  SlideTransformer model_loaded(fashion());
  torch::load(model_loaded, model_buffer);
  model_loaded->eval();
  EXPECT_TRUE(at::equal(model_loaded(normalise(model->options, images)), logits)) << "model save/load";
  for (const SlideTransformer& exported : {model, model_loaded}) {
    slideformer::testing::expect_close(to_torchscript(exported).forward({images}).toTensor(), logits,
                                       1e-5, 1e-5, "export after reparameterize");
  }
}

}  // namespace
