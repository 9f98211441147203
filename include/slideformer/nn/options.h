#pragma once
// Options of the slideformer modules, in the style of torch::nn::*Options (TORCH_ARG setters).
#include <torch/arg.h>

#include <cstdint>
#include <string>
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
