#pragma once
// Options of the slideformer modules, in the style of torch::nn::*Options (TORCH_ARG setters).
#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace slideformer::nn {

// Global multi-head attention over a token sequence, with an optional Swin relative-position bias
// table for a fixed R x R map.
struct MultiHeadAttentionOptions {
  MultiHeadAttentionOptions(int64_t dim, int64_t heads) : dim_(dim), heads_(heads) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, heads);
  // R of the R x R token map the bias table is for; 0 = no relative-position bias.
  TORCH_ARG(int64_t, relative_position_size) = 0;
  TORCH_ARG(bool, qkv_bias) = true;
};

// Slide attention (Slide-Transformer) over a (B, Y, X, C) map.
struct SlideAttentionOptions {
  SlideAttentionOptions(int64_t dim, int64_t heads) : dim_(dim), heads_(heads) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(int64_t, kernel_size) = 3;
  TORCH_ARG(int64_t, dilation) = 1;
  // "zeros" (Slide-Transformer) or "clamp" (neighbourhood attention).
  TORCH_ARG(std::string, border) = "zeros";
  TORCH_ARG(bool, qkv_bias) = true;
};

struct MlpOptions {
  MlpOptions(int64_t dim, int64_t hidden_dim) : dim_(dim), hidden_dim_(hidden_dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, hidden_dim);
  // Width of the output; 0 = dim (MViTv1 blocks widen in their MLP).
  TORCH_ARG(int64_t, out_dim) = 0;
};

enum class AttentionKind { kSlide, kGlobal };

// Pre-norm block: x + drop_path(attn(norm(x))), then x + drop_path(mlp(norm(x))).
struct TransformerBlockOptions {
  TransformerBlockOptions(int64_t dim, int64_t heads, AttentionKind kind)
      : dim_(dim), heads_(heads), kind_(kind) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(AttentionKind, kind);
  TORCH_ARG(double, mlp_ratio) = 4.0;
  TORCH_ARG(double, drop_path) = 0.0;
  // Slide blocks: window and border.
  TORCH_ARG(int64_t, kernel_size) = 3;
  TORCH_ARG(int64_t, dilation) = 1;
  TORCH_ARG(std::string, border) = "zeros";
  // Global blocks: side R of the map the relative-position table is for (0 = none).
  TORCH_ARG(int64_t, relative_position_size) = 0;
};

// Conv2d(in, dim, patch, stride patch) then LayerNorm(dim); output (B, Y, X, dim).
struct PatchEmbedOptions {
  PatchEmbedOptions(int64_t in_channels, int64_t dim, int64_t patch_size)
      : in_channels_(in_channels), dim_(dim), patch_size_(patch_size) {}
  TORCH_ARG(int64_t, in_channels);
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, patch_size);
  // > 0: a convolutional stem first, two Conv2d(3x3, padding 1) + GELU to stem_channels at full
  // resolution (small images and short trainings learn much faster with it); 0: none.
  TORCH_ARG(int64_t, stem_channels) = 0;
  // Overlapping patches: the projection's kernel is 2 * patch - 1 (padding patch - 1), still
  // with stride patch.
  TORCH_ARG(bool, overlapping) = false;
  // LayerNorm after the projection (MViTv2 has none).
  TORCH_ARG(bool, norm) = true;
  TORCH_ARG(double, norm_eps) = 1e-5;
};

// 2x2 neighbours concatenated, LayerNorm(4C), Linear(4C, 2C, no bias). Odd maps are padded.
struct PatchMergingOptions {
  explicit PatchMergingOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
};

// The hierarchical vision Transformer: patch embedding, stages of blocks separated by patch
// merging, LayerNorm, global average pool, linear head.
struct SlideTransformerOptions {
  TORCH_ARG(int64_t, image_size) = 224;
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, num_classes) = 1000;
  TORCH_ARG(int64_t, patch_size) = 4;
  TORCH_ARG(int64_t, stem_channels) = 0;  // see PatchEmbedOptions
  TORCH_ARG(bool, overlapping_patches) = false;  // PatchEmbedOptions::overlapping
  TORCH_ARG(int64_t, embed_dim) = 96;
  // A learned (Y, X, embed_dim) table added to the patch embedding (Swin's "ape"): where a
  // patch lies, which the relative-position tables and slide windows do not see.
  TORCH_ARG(bool, absolute_position_embedding) = false;
  // The fixed 2-D sinusoidal encoding (SinusoidalPositionEncoding) added to the patch embedding.
  TORCH_ARG(bool, sinusoidal_position_encoding) = false;
  TORCH_ARG(std::vector<int64_t>, depths) = std::vector<int64_t>{2, 2, 6, 2};
  TORCH_ARG(std::vector<int64_t>, heads) = std::vector<int64_t>{3, 6, 12, 24};
  TORCH_ARG(std::vector<AttentionKind>, stage_kinds) = std::vector<AttentionKind>{
      AttentionKind::kSlide, AttentionKind::kSlide, AttentionKind::kGlobal, AttentionKind::kGlobal};
  TORCH_ARG(int64_t, kernel_size) = 3;
  TORCH_ARG(int64_t, dilation) = 1;
  TORCH_ARG(std::string, border) = "zeros";
  TORCH_ARG(double, mlp_ratio) = 4.0;
  // Stochastic depth rises linearly over all blocks from 0 to this.
  TORCH_ARG(double, drop_path_rate) = 0.2;
  // Per-channel normalisation the exported model applies to [0, 1] inputs.
  TORCH_ARG(std::vector<double>, input_mean) = std::vector<double>{0.485, 0.456, 0.406};
  TORCH_ARG(std::vector<double>, input_std) = std::vector<double>{0.229, 0.224, 0.225};
};

// Learned absolute position embedding: a (1, rows, cols, dim) table added to a (B, rows, cols, dim)
// map (Swin's "ape", ViT's position embedding).
struct AbsolutePositionEmbeddingOptions {
  AbsolutePositionEmbeddingOptions(int64_t rows, int64_t cols, int64_t dim)
      : rows_(rows), cols_(cols), dim_(dim) {}
  TORCH_ARG(int64_t, rows);
  TORCH_ARG(int64_t, cols);
  TORCH_ARG(int64_t, dim);
};

// The fixed sinusoidal encoding of "Attention Is All You Need" over rows and columns: channels
// [0, dim/4) are sin(row * w_i), [dim/4, dim/2) cos(row * w_i), then the same for the column,
// with w_i = temperature^(-i / (dim/4)). dim must be a multiple of 4; any map size.
struct SinusoidalPositionEncodingOptions {
  explicit SinusoidalPositionEncodingOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(double, temperature) = 10000.0;
};

// MViTv2's decomposed relative position between a query_size^2 map of queries and a key_size^2
// map of keys: for a query at (i, j) and a key at (k, l) the logit gets q . R_h[d(i, k)] +
// q . R_w[d(j, l)], where d scales both sides to the larger map (d = i * max(key_size /
// query_size, 1) - k * max(query_size / key_size, 1) + (key_size - 1) * max(query_size /
// key_size, 1), truncated). Tables of 2 * max(query_size, key_size) - 1 rows of head_dim.
// With query_frames and key_frames > 0 the grids are (frames, size, size) and a third table adds
// q . R_t[d(frame of the query, frame of the key)] (video MViTv2).
struct DecomposedRelativePositionOptions {
  DecomposedRelativePositionOptions(int64_t query_size, int64_t key_size, int64_t head_dim)
      : query_size_(query_size), key_size_(key_size), head_dim_(head_dim) {}
  TORCH_ARG(int64_t, query_size);
  TORCH_ARG(int64_t, key_size);
  TORCH_ARG(int64_t, head_dim);
  TORCH_ARG(int64_t, query_frames) = 0;
  TORCH_ARG(int64_t, key_frames) = 0;
};

// How PoolingAttention pools: a strided depthwise convolution per head followed by LayerNorm
// (MViTv2), or max / average pooling.
enum class PoolMode { kConv, kMax, kAvg };

// Multi-head pooling attention (MViT / MViTv2) over a grid of tokens, (Y, X) for images or
// (T, Y, X) for clips, of size input_size: queries, keys and values are pooled (kernel, stride,
// padding kernel / 2 along each axis) before attention, so the output grid is ceil(size /
// stride_q) along each axis and the keys are the ceil(size / stride_kv) grid. Kernels and strides
// have one entry per axis; empty means 3 (kernels) or 1 (strides) along every axis.
struct PoolingAttentionOptions {
  PoolingAttentionOptions(int64_t dim, int64_t dim_out, int64_t heads, std::vector<int64_t> input_size)
      : dim_(dim), dim_out_(dim_out), heads_(heads), input_size_(std::move(input_size)) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(int64_t, dim_out);
  TORCH_ARG(int64_t, heads);
  TORCH_ARG(std::vector<int64_t>, input_size);
  TORCH_ARG(std::vector<int64_t>, kernel_q);
  TORCH_ARG(std::vector<int64_t>, kernel_kv);
  TORCH_ARG(std::vector<int64_t>, stride_q);
  TORCH_ARG(std::vector<int64_t>, stride_kv);
  TORCH_ARG(PoolMode, mode) = PoolMode::kConv;
  // The decomposed relative position term (DecomposedRelativePosition) as the attention bias.
  TORCH_ARG(bool, relative_position) = true;
  // Adds the pooled queries to the attention output (MViTv2).
  TORCH_ARG(bool, residual_pooling) = true;
  // The sequence starts with a class token: it is attended to and attends, but is not pooled,
  // gets no relative position term and no residual pooling (torchvision's video MViT).
  TORCH_ARG(bool, class_token) = false;
  TORCH_ARG(bool, qkv_bias) = true;
  TORCH_ARG(double, norm_eps) = 1e-6;
};

// MViT block: x' = pool(shortcut) + drop_path(attn(norm1(x))), then x'' = x' + drop_path(mlp(norm2(x'))).
// With widen_in_attention (MViTv2) the attention maps dim to dim_out and the first shortcut is x,
// or Linear(dim, dim_out)(norm1(x)) when the width changes. Without it (MViTv1) the attention
// keeps dim, the MLP widens to dim_out, and the second shortcut is Linear(dim, dim_out)(norm2(x'))
// when the width changes. With stride_q > 1 along an axis the first shortcut is max-pooled
// (kernel stride + 1) to the queries' grid.
struct MViTBlockOptions {
  MViTBlockOptions(PoolingAttentionOptions attention) : attention_(std::move(attention)) {}
  TORCH_ARG(PoolingAttentionOptions, attention);
  TORCH_ARG(double, mlp_ratio) = 4.0;
  TORCH_ARG(double, drop_path) = 0.0;
  TORCH_ARG(bool, widen_in_attention) = true;
};

// Which absolute position encoding a model adds to its patch embedding.
enum class PositionEncoding { kNone, kLearned, kSinusoidal };

// Multiscale vision Transformer v2 (MViTv2, Li et al. 2022): patch embedding (overlapping
// convolution, no norm), stages of pooling-attention blocks (the first block of every stage but
// the first halves the map and doubles the width and heads), LayerNorm, mean pool, linear head.
struct MViTOptions {
  TORCH_ARG(int64_t, image_size) = 224;
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, num_classes) = 1000;
  // Patch embedding: kernel 2 * patch_size - 1, stride patch_size.
  TORCH_ARG(int64_t, patch_size) = 4;
  TORCH_ARG(int64_t, embed_dim) = 96;
  TORCH_ARG(std::vector<int64_t>, depths) = std::vector<int64_t>{1, 2, 5, 2};
  TORCH_ARG(std::vector<int64_t>, heads) = std::vector<int64_t>{1, 2, 4, 8};
  TORCH_ARG(int64_t, kernel_size) = 3;
  // Key / value pooling stride of the first stage; later stages divide it by 2 (down to 1).
  TORCH_ARG(int64_t, stride_kv) = 4;
  TORCH_ARG(PoolMode, pool_mode) = PoolMode::kConv;
  TORCH_ARG(PositionEncoding, position_encoding) = PositionEncoding::kNone;
  TORCH_ARG(bool, relative_position) = true;
  TORCH_ARG(bool, residual_pooling) = true;
  TORCH_ARG(double, mlp_ratio) = 4.0;
  // Stochastic depth rises linearly over all blocks from 0 to this.
  TORCH_ARG(double, drop_path_rate) = 0.1;
  TORCH_ARG(double, norm_eps) = 1e-6;
  TORCH_ARG(std::vector<double>, input_mean) = std::vector<double>{0.485, 0.456, 0.406};
  TORCH_ARG(std::vector<double>, input_std) = std::vector<double>{0.229, 0.224, 0.225};
};

// MViTv2 presets: timm's mvitv2_tiny / small / base (224x224, 1000 classes, same parameters),
// and fashion_mvit, a small pooling-attention model for 28x28x1 images and 10 classes.
MViTOptions mvitv2_tiny();
MViTOptions mvitv2_small();
MViTOptions mvitv2_base();
MViTOptions fashion_mvit();
// By name ("mvitv2_tiny", "mvitv2_small", "mvitv2_base", "fashion_mvit"); throws on others.
MViTOptions mvit_preset(const std::string& name);
std::vector<std::string> mvit_preset_names();

// The video MViT of torchvision (torchvision.models.video.MViT): a Conv3d patch embedding, a class
// token, four stages of pooling-attention blocks over the (T, Y, X) token grid (the first block of
// every stage but the first halves Y and X and doubles the heads; stride_kv halves per stage down to
// 1), LayerNorm, the class token's features, dropout, linear head. The same blocks as the image
// MViT (MViTBlock, PoolingAttention) with a third grid axis.
struct VideoMViTOptions {
  TORCH_ARG(int64_t, frames) = 16;
  TORCH_ARG(int64_t, image_size) = 224;
  TORCH_ARG(int64_t, in_channels) = 3;
  TORCH_ARG(int64_t, num_classes) = 400;
  // Patch embedding Conv3d kernel and stride, (T, Y, X); padding kernel / 2.
  TORCH_ARG(std::vector<int64_t>, patch_kernel) = std::vector<int64_t>{3, 7, 7};
  TORCH_ARG(std::vector<int64_t>, patch_stride) = std::vector<int64_t>{2, 4, 4};
  TORCH_ARG(int64_t, embed_dim) = 96;
  TORCH_ARG(std::vector<int64_t>, depths) = std::vector<int64_t>{1, 2, 11, 2};
  TORCH_ARG(std::vector<int64_t>, heads) = std::vector<int64_t>{1, 2, 4, 8};
  // Pooling kernel along (T, Y, X).
  TORCH_ARG(std::vector<int64_t>, kernel) = std::vector<int64_t>{3, 3, 3};
  // Key / value pooling stride of the first stage along (T, Y, X); later stages halve Y and X.
  TORCH_ARG(std::vector<int64_t>, stride_kv) = std::vector<int64_t>{1, 8, 8};
  // MViTv2 (true): decomposed relative positions along T, Y and X, residual pooling, queries
  // pooled in every block, widening in the attention of a stage's first block. MViTv1 (false):
  // learned absolute positions (spatial + temporal + class), queries pooled where strided only,
  // widening in the MLP of a stage's last block.
  TORCH_ARG(bool, v2) = true;
  TORCH_ARG(double, mlp_ratio) = 4.0;
  TORCH_ARG(double, drop_path_rate) = 0.2;
  TORCH_ARG(double, head_dropout) = 0.5;
  TORCH_ARG(double, norm_eps) = 1e-6;
  TORCH_ARG(std::vector<double>, input_mean) = std::vector<double>{0.45, 0.45, 0.45};
  TORCH_ARG(std::vector<double>, input_std) = std::vector<double>{0.225, 0.225, 0.225};
};

// torchvision's mvit_v1_b (36,610,672 parameters) and mvit_v2_s (34,537,744): 16 x 224 x 224
// clips, 400 classes.
VideoMViTOptions mvit_v1_b();
VideoMViTOptions mvit_v2_s();
// By name ("mvit_v1_b", "mvit_v2_s"); throws on others.
VideoMViTOptions video_mvit_preset(const std::string& name);
std::vector<std::string> video_mvit_preset_names();

// Presets. The three Slide-Swin ones reproduce the reference code's parameter counts at 224x224
// and 1000 classes; "fashion" is a small model for 28x28x1 images and 10 classes.
SlideTransformerOptions slide_swin_tiny();
SlideTransformerOptions slide_swin_small();
SlideTransformerOptions slide_swin_base();
SlideTransformerOptions fashion();
// By name ("slide_swin_tiny", "slide_swin_small", "slide_swin_base", "fashion"); throws on others.
SlideTransformerOptions preset(const std::string& name);
std::vector<std::string> preset_names();

}  // namespace slideformer::nn
