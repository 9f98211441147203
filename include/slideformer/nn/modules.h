#pragma once
// torch::nn modules built on the slideformer operators, composed into the Slide-Transformer.
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "slideformer/nn/options.h"

namespace slideformer::nn {

// Global multi-head attention on slideformer::attention. Input and output (B, N, C). With
// relative_position_size R > 0, N must be R*R and a Swin bias table ((2R-1)^2, heads), trained
// through the operator's bias gradient, is added to the logits.
class MultiHeadAttentionImpl : public torch::nn::Cloneable<MultiHeadAttentionImpl> {
 public:
  explicit MultiHeadAttentionImpl(MultiHeadAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);
  // (1, heads, N, N) bias gathered from the table, or undefined without one.
  at::Tensor relative_position_bias() const;

  MultiHeadAttentionOptions options;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  at::Tensor relative_position_table;  // ((2R-1)^2, heads) parameter, if any
  at::Tensor relative_position_index;  // (R*R, R*R) buffer, if any
};
TORCH_MODULE(MultiHeadAttention);

// Slide attention on slideformer::slide_attention. Input and output (B, Y, X, C).
// qkv's output channels are head-major (head, {q, k, v}, d). The deformed shift has the
// reference's two paths: a frozen identity (one-hot) path with a trainable bias, and a learnable
// (d, k*k, k*k) mixing with its own bias; the operator receives W = I + W_learn and
// b = b_fixed + b_learn. reparameterize() folds them into one weight and bias (inference).
class SlideAttentionImpl : public torch::nn::Cloneable<SlideAttentionImpl> {
 public:
  explicit SlideAttentionImpl(SlideAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);
  // Merges the two shift paths into the learnable one: shift_weight <- I + shift_weight,
  // shift_bias <- sum of the biases, and zeroes the fixed path's weight and bias. The operator
  // still receives their sums (unchanged), and the merged state lives in the parameters alone,
  // so copies (clone, save/load, export) compute the same. Repeating it changes nothing.
  void reparameterize();
  // Whether the fixed path is zero (merged into the learnable one).
  bool is_reparameterized() const;
  // The mixing weight and bias the operator receives.
  at::Tensor effective_shift_weight() const;
  at::Tensor effective_shift_bias() const;

  SlideAttentionOptions options;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  at::Tensor key_bias;            // (heads, k*k)
  at::Tensor identity_weight;     // (d, k*k, k*k) frozen one-hot path (requires_grad = false;
                                  // zero once reparameterized)
  at::Tensor identity_bias;       // (d, k*k) bias of the fixed path (zero once reparameterized)
  at::Tensor shift_weight;        // (d, k*k, k*k) learnable path (merged W once reparameterized)
  at::Tensor shift_bias;          // (d, k*k) learnable path's bias (merged once reparameterized)
};
TORCH_MODULE(SlideAttention);

// Linear(dim, hidden) -> GELU -> Linear(hidden, dim).
class MlpImpl : public torch::nn::Cloneable<MlpImpl> {
 public:
  explicit MlpImpl(MlpOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  MlpOptions options;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Mlp);

// Pre-norm Transformer block on a (B, Y, X, C) map with slide or global attention.
class TransformerBlockImpl : public torch::nn::Cloneable<TransformerBlockImpl> {
 public:
  explicit TransformerBlockImpl(TransformerBlockOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  TransformerBlockOptions options;
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  SlideAttention slide_attention{nullptr};         // kind == kSlide
  MultiHeadAttention global_attention{nullptr};    // kind == kGlobal
  Mlp mlp{nullptr};
};
TORCH_MODULE(TransformerBlock);

// (B, C_in, H, W) -> (B, H/p, W/p, dim): strided convolution then LayerNorm.
class PatchEmbedImpl : public torch::nn::Cloneable<PatchEmbedImpl> {
 public:
  explicit PatchEmbedImpl(PatchEmbedOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& images);

  PatchEmbedOptions options;
  torch::nn::Sequential stem{nullptr};  // only with options.stem_channels() > 0
  torch::nn::Conv2d projection{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(PatchEmbed);

// (B, Y, X, C) -> (B, ceil(Y/2), ceil(X/2), 2C).
class PatchMergingImpl : public torch::nn::Cloneable<PatchMergingImpl> {
 public:
  explicit PatchMergingImpl(PatchMergingOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);

  PatchMergingOptions options;
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear reduction{nullptr};
};
TORCH_MODULE(PatchMerging);

// The whole classifier: (B, C, H, W) normalised images -> (B, classes) logits.
class SlideTransformerImpl : public torch::nn::Cloneable<SlideTransformerImpl> {
 public:
  explicit SlideTransformerImpl(SlideTransformerOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& images);
  // (B, Y, X, C) features before the final norm and pooling.
  at::Tensor forward_features(const at::Tensor& images);
  // Folds every slide block's two shift paths (see SlideAttention::reparameterize).
  void reparameterize();

  SlideTransformerOptions options;
  PatchEmbed patch_embed{nullptr};
  at::Tensor absolute_position;  // (1, Y, X, embed_dim); undefined unless the option is on
  torch::nn::ModuleList stages{nullptr};   // ModuleList of ModuleList<TransformerBlock>
  torch::nn::ModuleList mergings{nullptr}; // PatchMerging after every stage but the last
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(SlideTransformer);

// Parameter counts: all parameters (frozen ones included, as the reference counts them) and the
// trainable ones.
int64_t count_parameters(const torch::nn::Module& module, bool trainable_only);

}  // namespace slideformer::nn
