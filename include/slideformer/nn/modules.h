#pragma once
// torch::nn modules built on the slideformer operators, composed into the Slide-Transformer.
#include <torch/nn/cloneable.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include "slideformer/nn/options.h"
#include "slideformer/nn/script_form.h"

namespace slideformer::nn {

class SizeCache;  // csrc/nn/size_cache.h

// Global multi-head attention on slideformer::attention. Input and output (B, N, C). With
// relative_position_size R > 0 a Swin bias table ((2R-1)^2, heads), trained through the
// operator's bias gradient, is added to the logits: as it is for an R x R map, resized
// bicubically for any other rows x cols map (N = rows * cols; rows = cols = sqrt(N) when not
// given), once per size.
class MultiHeadAttentionImpl : public torch::nn::Cloneable<MultiHeadAttentionImpl>, public ScriptForm {
 public:
  explicit MultiHeadAttentionImpl(MultiHeadAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x, int64_t rows = 0, int64_t cols = 0);
  // The relative-position bias is stored gathered for the R x R map (it is constant at inference).
  torch::jit::Module script_form() const override;
  // (1, heads, N, N) bias gathered from the table, or undefined without one.
  at::Tensor relative_position_bias() const;
  // The same for a rows x cols map: the table itself for R x R, else resized to (2 rows - 1) x
  // (2 cols - 1) as timm's resize_rel_pos_bias_table_simple does (bicubic, align_corners false).
  at::Tensor relative_position_bias(int64_t rows, int64_t cols) const;

  MultiHeadAttentionOptions options;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  at::Tensor relative_position_table;  // ((2R-1)^2, heads) parameter, if any
  at::Tensor relative_position_index;  // (R*R, R*R) buffer, if any

 private:
  std::shared_ptr<SizeCache> size_cache_;
};
TORCH_MODULE(MultiHeadAttention);

// Slide attention on slideformer::slide_attention. Input and output (B, Y, X, C).
// qkv's output channels are head-major (head, {q, k, v}, d). The deformed shift has the
// reference's two paths: a frozen identity (one-hot) path with a trainable bias, and a learnable
// (d, k*k, k*k) mixing with its own bias; the operator receives W = I + W_learn and
// b = b_fixed + b_learn. reparameterize() folds them into one weight and bias (inference).
class SlideAttentionImpl : public torch::nn::Cloneable<SlideAttentionImpl>, public Layer {
 public:
  explicit SlideAttentionImpl(SlideAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  // With the two shift paths merged (the operator receives their sums either way).
  torch::jit::Module script_form() const override;
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
class MlpImpl : public torch::nn::Cloneable<MlpImpl>, public Layer {
 public:
  explicit MlpImpl(MlpOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  torch::jit::Module script_form() const override;

  MlpOptions options;
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Mlp);

// Pre-norm Transformer block on a (B, Y, X, C) map with slide or global attention.
class TransformerBlockImpl : public torch::nn::Cloneable<TransformerBlockImpl>, public Layer {
 public:
  explicit TransformerBlockImpl(TransformerBlockOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  torch::jit::Module script_form() const override;

  TransformerBlockOptions options;
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  SlideAttention slide_attention{nullptr};         // kind == kSlide
  MultiHeadAttention global_attention{nullptr};    // kind == kGlobal
  Mlp mlp{nullptr};
};
TORCH_MODULE(TransformerBlock);

// (B, C_in, H, W) -> (B, H/p, W/p, dim): strided convolution then LayerNorm (optional).
class PatchEmbedImpl : public torch::nn::Cloneable<PatchEmbedImpl>, public Layer {
 public:
  explicit PatchEmbedImpl(PatchEmbedOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& images) override;
  torch::jit::Module script_form() const override;

  PatchEmbedOptions options;
  torch::nn::Sequential stem{nullptr};  // only with options.stem_channels() > 0
  torch::nn::Conv2d projection{nullptr};
  torch::nn::LayerNorm norm{nullptr};  // only with options.norm()
};
TORCH_MODULE(PatchEmbed);

// (B, Y, X, C) -> (B, ceil(Y/2), ceil(X/2), 2C).
class PatchMergingImpl : public torch::nn::Cloneable<PatchMergingImpl>, public Layer {
 public:
  explicit PatchMergingImpl(PatchMergingOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  torch::jit::Module script_form() const override;

  PatchMergingOptions options;
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear reduction{nullptr};
};
TORCH_MODULE(PatchMerging);

// Learned absolute position embedding: x + weight, weight (1, rows, cols, dim). Any other map
// gets the table resized to it (bicubic with antialiasing, as timm's resample_abs_pos_embed), once
// per size.
class AbsolutePositionEmbeddingImpl : public torch::nn::Cloneable<AbsolutePositionEmbeddingImpl>,
                                      public Layer {
 public:
  explicit AbsolutePositionEmbeddingImpl(AbsolutePositionEmbeddingOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  torch::jit::Module script_form() const override;
  // (1, rows, cols, dim): the table itself at its own size, else resized.
  at::Tensor table(int64_t rows, int64_t cols) const;

  AbsolutePositionEmbeddingOptions options;
  at::Tensor weight;

 private:
  std::shared_ptr<SizeCache> size_cache_;
};
TORCH_MODULE(AbsolutePositionEmbedding);

// Fixed 2-D sinusoidal position encoding (no parameters): x + encoding of (rows, cols) of x.
class SinusoidalPositionEncodingImpl : public torch::nn::Cloneable<SinusoidalPositionEncodingImpl>,
                                       public Layer {
 public:
  explicit SinusoidalPositionEncodingImpl(SinusoidalPositionEncodingOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  torch::jit::Module script_form() const override;

  SinusoidalPositionEncodingOptions options;
};
TORCH_MODULE(SinusoidalPositionEncoding);

// What the classifiers share: (B, C, H, W) normalised images -> layers() -> LayerNorm, mean
// over the map, Linear -> (B, classes) logits. script_form() is the whole exported model: it
// takes [0, 1] images and normalises them with input_mean() / input_std() itself.
class Classifier : public ScriptForm {
 public:
  // The steps from images to (B, Y, X, C) features, in forward order.
  virtual NamedLayers layers() const = 0;
  virtual int64_t in_channels() const = 0;
  virtual int64_t image_size() const = 0;
  virtual int64_t num_classes() const = 0;
  virtual const std::vector<double>& input_mean() const = 0;
  virtual const std::vector<double>& input_std() const = 0;
  // Parameters (state-dict names) of two or more dimensions that AdamW must not decay; the
  // training program decays the others' ".weight"s, not biases and norms.
  virtual std::vector<std::string> no_weight_decay() const { return {}; }
  // (B, Y, X, C) map of the last layer, before the final norm and pooling; `visit` as in
  // forward_layers.
  at::Tensor forward_tokens(
      const at::Tensor& images,
      const std::function<void(const std::string&, torch::nn::Module&, const at::Tensor&)>& visit = {});
  // The output of each stage (its last block), (B, C_i, H_i, W_i), first stage first: the inputs
  // of a detection or segmentation neck (docs/pretrained.md lists the shapes). No final norm.
  std::vector<at::Tensor> forward_features(const at::Tensor& images);
  at::Tensor forward_head(const at::Tensor& tokens);
  at::Tensor forward(const at::Tensor& images);
  torch::jit::Module script_form() const override;
  // What forward_features computes, from [0, 1] images as script_form() takes them: forward
  // returns List[Tensor].
  torch::jit::Module features_script_form() const;

  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Linear head{nullptr};
};

// Per stage, the stochastic-depth rate of each block: rising linearly over all the blocks of
// `depths` from 0 to `rate`.
std::vector<std::vector<double>> drop_path_schedule(const std::vector<int64_t>& depths, double rate);

// What the hierarchical classifiers (SlideTransformer, MViT) share. Options has in_channels,
// image_size, num_classes, input_mean, input_std (the five queries answer from them), embed_dim,
// depths and drop_path_rate. layers() is patch_embed, absolute_position, sinusoidal_position (those
// that are on), then each stage's blocks ("block_<stage>_<i>") and the module after it in
// between_stages(), if any ("merge_<stage>").
template <typename Derived, typename Options>
class HierarchicalClassifier : public torch::nn::Cloneable<Derived>, public Classifier {
 public:
  explicit HierarchicalClassifier(Options options_) : options(std::move(options_)) {}
  NamedLayers layers() const override {
    NamedLayers out{{"patch_embed", patch_embed.ptr()}};
    if (absolute_position) out.emplace_back("absolute_position", absolute_position.ptr());
    if (sinusoidal_position) out.emplace_back("sinusoidal_position", sinusoidal_position.ptr());
    const torch::nn::ModuleList after = between_stages();
    for (size_t s = 0; s < stages->size(); ++s) {
      const auto& stage = *stages->ptr(s)->as<torch::nn::ModuleList>();
      for (size_t i = 0; i < stage.size(); ++i) {
        out.emplace_back("block_" + std::to_string(s) + "_" + std::to_string(i), stage.ptr(i));
      }
      if (after && s < after->size()) out.emplace_back("merge_" + std::to_string(s), after->ptr(s));
    }
    return out;
  }
  int64_t in_channels() const override { return options.in_channels(); }
  int64_t image_size() const override { return options.image_size(); }
  int64_t num_classes() const override { return options.num_classes(); }
  const std::vector<double>& input_mean() const override { return options.input_mean(); }
  const std::vector<double>& input_std() const override { return options.input_std(); }

  Options options;
  PatchEmbed patch_embed{nullptr};
  AbsolutePositionEmbedding absolute_position{nullptr};     // a learned table, (1, Y, X, embed_dim)
  SinusoidalPositionEncoding sinusoidal_position{nullptr};  // fixed, no parameters
  torch::nn::ModuleList stages{nullptr};                    // ModuleList of ModuleList<block>

 protected:
  // Registers the position encodings that are on (the others stay empty, also in a clone) for a
  // map x map patch grid.
  void reset_position_encodings(bool learned, bool sinusoidal, int64_t map) {
    absolute_position = learned ? this->register_module("absolute_position", AbsolutePositionEmbedding(
                                      AbsolutePositionEmbeddingOptions(map, map, options.embed_dim())))
                                : nullptr;
    sinusoidal_position = sinusoidal ? this->register_module("sinusoidal_position", SinusoidalPositionEncoding(
                                           SinusoidalPositionEncodingOptions(options.embed_dim())))
                                     : nullptr;
  }
  // Per stage, each block's stochastic-depth rate.
  std::vector<std::vector<double>> drop_path_rates() const {
    return drop_path_schedule(options.depths(), options.drop_path_rate());
  }
  // The module after each stage (but the last), if the family has one.
  virtual torch::nn::ModuleList between_stages() const { return nullptr; }
};

// The Slide-Transformer classifier. Its position table is registered before patch_embed, so the
// parameters keep the order they had when the table was the model's own "absolute_position"
// (an optimizer's saved state follows that order).
class SlideTransformerImpl : public HierarchicalClassifier<SlideTransformerImpl, SlideTransformerOptions> {
 public:
  explicit SlideTransformerImpl(SlideTransformerOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  // Folds every slide block's two shift paths (see SlideAttention::reparameterize).
  void reparameterize();
  // The position table, as the reference and this program always trained it.
  std::vector<std::string> no_weight_decay() const override;

  torch::nn::ModuleList mergings{nullptr};  // PatchMerging after every stage but the last

 protected:
  torch::nn::ModuleList between_stages() const override { return mergings; }
};
TORCH_MODULE(SlideTransformer);

// MViTv2's decomposed relative position term. forward(q) takes the (pooled) queries (B, heads,
// query_size^2, head_dim) (or (B, heads, query_frames * query_size^2, head_dim) with a time axis)
// and returns the (B, heads, queries, keys) attention bias; the tables train through the attention
// operator's bias gradient. For other grids, each table is resized linearly to 2 max(queries,
// keys) - 1 rows along its axis (as timm's checkpoint_filter_fn resizes MViTv2's), once per size.
class DecomposedRelativePositionImpl : public torch::nn::Cloneable<DecomposedRelativePositionImpl>,
                                       public ScriptForm {
 public:
  explicit DecomposedRelativePositionImpl(DecomposedRelativePositionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& q);
  // Queries of the query grid over keys of the key grid: (Y, X), or (T, Y, X) with a time table.
  at::Tensor forward(const at::Tensor& q, at::IntArrayRef query_grid, at::IntArrayRef key_grid);
  torch::jit::Module script_form() const override;
  bool has_time() const { return time.defined(); }
  // The grids the options describe, and the tables along their axes, first axis first.
  std::vector<int64_t> query_grid() const;
  std::vector<int64_t> key_grid() const;
  std::vector<at::Tensor> tables() const;

  DecomposedRelativePositionOptions options;
  at::Tensor height, width;  // (2 * max(query_size, key_size) - 1, head_dim) parameters
  at::Tensor index;          // (query_size, key_size) int64 buffer: rows of the tables
  at::Tensor time;           // (2 * max(query_frames, key_frames) - 1, head_dim), with frames
  at::Tensor time_index;     // (query_frames, key_frames) int64 buffer, with frames

 private:
  std::shared_ptr<SizeCache> size_cache_;
};
TORCH_MODULE(DecomposedRelativePosition);

// Depthwise convolution without bias over a grid of 2 or 3 axes, (N, C, *grid) -> (N, C, *pooled):
// Conv2d / Conv3d(C, C, kernel, stride, padding kernel / 2, groups C) in one module for both
// ranks, with their initialisation and their weight (C, 1, *kernel).
struct DepthwiseConvOptions {
  DepthwiseConvOptions(int64_t channels, std::vector<int64_t> kernel, std::vector<int64_t> stride)
      : channels_(channels), kernel_(std::move(kernel)), stride_(std::move(stride)) {}
  TORCH_ARG(int64_t, channels);
  TORCH_ARG(std::vector<int64_t>, kernel);
  TORCH_ARG(std::vector<int64_t>, stride);
};

class DepthwiseConvImpl : public torch::nn::Cloneable<DepthwiseConvImpl> {
 public:
  explicit DepthwiseConvImpl(DepthwiseConvOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x);
  std::vector<int64_t> padding() const;

  DepthwiseConvOptions options;
  at::Tensor weight;
};
TORCH_MODULE(DepthwiseConv);

// Multi-head pooling attention on slideformer::attention over a grid of tokens, (Y, X) or (T, Y, X)
// as options.input_size: forward takes an image map (B, Y, X, dim) or a clip (B, T, Y, X, dim) of
// any grid size and returns (B, *pooled grid, dim_out), pooled = ceil(size / stride_q) per axis.
// With options.class_token() it takes and returns tokens instead, (B, 1 + prod(grid), dim): the
// class token, then the grid of input_size. forward_tokens takes the same for any `grid` and also
// returns the pooled grid. The script form's forward(x) takes a map of any grid, and with a class
// token forward(x, grid) takes the tokens of any `grid` (List[int]). qkv's output channels are
// ({q, k, v}, head, d), d = dim_out / heads; each head's q, k and v are pooled with the same
// depthwise (d-channel) convolution + LayerNorm(d) (or max / average pooling, without norm).
class PoolingAttentionImpl : public torch::nn::Cloneable<PoolingAttentionImpl>, public Layer {
 public:
  explicit PoolingAttentionImpl(PoolingAttentionOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  std::pair<at::Tensor, std::vector<int64_t>> forward_tokens(const at::Tensor& x, at::IntArrayRef grid);
  torch::jit::Module script_form() const override;
  // The pooled query and key grids of the input_size grid, and the options' kernels and strides
  // with the defaults filled in (one entry per axis).
  std::vector<int64_t> query_grid() const;
  std::vector<int64_t> key_grid() const;
  std::vector<int64_t> kernel_q() const;
  std::vector<int64_t> kernel_kv() const;
  std::vector<int64_t> stride_q() const;
  std::vector<int64_t> stride_kv() const;

  PoolingAttentionOptions options;
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  // Convolution mode; a pooling is absent when its kernel and stride are 1 along every axis.
  DepthwiseConv pool_q{nullptr}, pool_k{nullptr}, pool_v{nullptr};
  torch::nn::LayerNorm norm_q{nullptr}, norm_k{nullptr}, norm_v{nullptr};
  DecomposedRelativePosition relative_position{nullptr};  // options.relative_position()
};
TORCH_MODULE(PoolingAttention);

// MViT block on an image map (B, Y, X, dim) or a clip (B, T, Y, X, dim) -> (B, *pooled grid,
// dim_out), or on tokens with a class token; forward and forward_tokens as PoolingAttention's.
class MViTBlockImpl : public torch::nn::Cloneable<MViTBlockImpl>, public Layer {
 public:
  explicit MViTBlockImpl(MViTBlockOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& x) override;
  std::pair<at::Tensor, std::vector<int64_t>> forward_tokens(const at::Tensor& x, at::IntArrayRef grid);
  torch::jit::Module script_form() const override;

  MViTBlockOptions options;
  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  torch::nn::Linear shortcut_proj{nullptr};  // only when dim != dim_out
  PoolingAttention attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(MViTBlock);

// The MViTv2 classifier. (Its learned position table is decayed like a weight, as it always was.)
class MViTImpl : public HierarchicalClassifier<MViTImpl, MViTOptions> {
 public:
  explicit MViTImpl(MViTOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
};
TORCH_MODULE(MViT);

// torchvision's video MViT (VideoMViTOptions): (B, C, T, H, W) normalised clips -> (B, classes)
// logits. The clip size is the options' (the learned positions and the tables are for it).
// script_form() takes [0, 1] clips and normalises them with input_mean / input_std itself.
class VideoMViTImpl : public torch::nn::Cloneable<VideoMViTImpl>, public ScriptForm {
 public:
  explicit VideoMViTImpl(VideoMViTOptions options = {});
  void reset() override;
  void pretty_print(std::ostream& stream) const override;
  at::Tensor forward(const at::Tensor& clips);
  torch::jit::Module script_form() const override;
  // The (T, Y, X) token grid of the patch embedding.
  std::vector<int64_t> token_grid() const;

  VideoMViTOptions options;
  torch::nn::Conv3d patch_embed{nullptr};
  at::Tensor class_token;                                           // (embed_dim)
  at::Tensor spatial_position, temporal_position, class_position;  // MViTv1: (Y*X, C), (T, C), (C)
  torch::nn::ModuleList blocks{nullptr};                            // MViTBlock
  torch::nn::LayerNorm norm{nullptr};
  torch::nn::Dropout head_dropout{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(VideoMViT);

// Parameter counts: all parameters (frozen ones included, as the reference counts them) and the
// trainable ones.
int64_t count_parameters(const torch::nn::Module& module, bool trainable_only);

}  // namespace slideformer::nn
