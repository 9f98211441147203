// Model presets (docs/modules.md). Parameter counts are checked by tests/cpp/test_modules.cpp.
#include <c10/util/Exception.h>

#include <string>
#include <utility>
#include <vector>

#include "slideformer/nn/options.h"

namespace slideformer::nn {

namespace {
using Kinds = std::vector<AttentionKind>;
const Kinds kSwinKinds = {AttentionKind::kSlide, AttentionKind::kSlide, AttentionKind::kGlobal,
                          AttentionKind::kGlobal};

// A family's presets by name, in the order names are listed: one table serves the list, the
// lookup and the error message.
template <typename Options>
using PresetTable = std::vector<std::pair<std::string, Options (*)()>>;

template <typename Options>
std::vector<std::string> table_names(const PresetTable<Options>& table) {
  std::vector<std::string> names;
  for (const auto& entry : table) names.push_back(entry.first);
  return names;
}

template <typename Options>
Options find_preset(const PresetTable<Options>& table, const std::string& name, const char* what) {
  for (const auto& entry : table) {
    if (entry.first == name) return entry.second();
  }
  std::string expected;
  for (const auto& entry : table) expected += (expected.empty() ? "" : ", ") + entry.first;
  TORCH_CHECK(false, "slideformer: unknown ", what, " '", name, "', expected one of ", expected);
}
}  // namespace

SlideTransformerOptions slide_swin_tiny() {
  return SlideTransformerOptions().embed_dim(96).depths({2, 2, 6, 2}).heads({3, 6, 12, 24})
      .stage_kinds(kSwinKinds).drop_path_rate(0.2);
}

SlideTransformerOptions slide_swin_small() {
  return SlideTransformerOptions().embed_dim(96).depths({2, 2, 18, 2}).heads({3, 6, 12, 24})
      .stage_kinds(kSwinKinds).drop_path_rate(0.3);
}

SlideTransformerOptions slide_swin_base() {
  return SlideTransformerOptions().embed_dim(128).depths({2, 2, 18, 2}).heads({4, 8, 16, 32})
      .stage_kinds(kSwinKinds).drop_path_rate(0.5);
}

// 28x28 grey images: a small convolutional stem and overlapping 2x2 patches give a 14x14 map for
// slide attention, merged to 7x7 for global attention with a relative-position table. The
// items are centred, so where a patch lies says much: a learned absolute position table is added
// to the patch embedding. Small enough to train for 6 epochs in under 15 minutes on 2 CPU cores.
SlideTransformerOptions fashion() {
  return SlideTransformerOptions()
      .image_size(28).in_channels(1).num_classes(10).stem_channels(24).overlapping_patches(true)
      .patch_size(2).embed_dim(48).absolute_position_embedding(true).depths({2, 2}).heads({3, 6})
      .stage_kinds({AttentionKind::kSlide, AttentionKind::kGlobal})
      .mlp_ratio(2.0).drop_path_rate(0.05)
      .input_mean({0.2860}).input_std({0.3530});  // Fashion-MNIST training-set statistics
}

const PresetTable<SlideTransformerOptions> kSlideTransformerPresets = {
    {"slide_swin_tiny", slide_swin_tiny}, {"slide_swin_small", slide_swin_small},
    {"slide_swin_base", slide_swin_base}, {"fashion", fashion}};

std::vector<std::string> preset_names() { return table_names(kSlideTransformerPresets); }

SlideTransformerOptions preset(const std::string& name) {
  return find_preset(kSlideTransformerPresets, name, "preset");
}


// timm's mvitv2_* (MultiScaleVitCfg defaults): embed 96, heads 1 doubling per stage, 3x3 conv
// pooling, key / value stride 4 then 2, 1, 1, decomposed relative position, residual pooling.
MViTOptions mvitv2_tiny() { return MViTOptions().depths({1, 2, 5, 2}).drop_path_rate(0.1); }

MViTOptions mvitv2_small() { return MViTOptions().depths({1, 2, 11, 2}).drop_path_rate(0.1); }

MViTOptions mvitv2_base() { return MViTOptions().depths({2, 3, 16, 3}).drop_path_rate(0.3); }

// 28x28 grey images: overlapping 2x2 patches (a 14x14 map), keys and values pooled to 7x7 in the
// first stage, then 7x7 and 4x4 maps; a learned absolute position table (the items are centred).
MViTOptions fashion_mvit() {
  return MViTOptions()
      .image_size(28).in_channels(1).num_classes(10).patch_size(2).embed_dim(32)
      .depths({1, 2, 2}).heads({1, 2, 4}).stride_kv(2)
      .position_encoding(PositionEncoding::kLearned)
      .mlp_ratio(2.0).drop_path_rate(0.05)
      .input_mean({0.2860}).input_std({0.3530});  // Fashion-MNIST training-set statistics
}

const PresetTable<MViTOptions> kMViTPresets = {{"mvitv2_tiny", mvitv2_tiny},
                                               {"mvitv2_small", mvitv2_small},
                                               {"mvitv2_base", mvitv2_base},
                                               {"fashion_mvit", fashion_mvit}};

std::vector<std::string> mvit_preset_names() { return table_names(kMViTPresets); }

MViTOptions mvit_preset(const std::string& name) {
  return find_preset(kMViTPresets, name, "MViT preset");
}

// torchvision 0.26's mvit_v1_b and mvit_v2_s: the VideoMViTOptions defaults (16 x 224 x 224 clips,
// Kinetics-400's 400 classes, embed 96, depths 1, 2, 11, 2) in the two generations.
VideoMViTOptions mvit_v1_b() { return VideoMViTOptions().v2(false); }

VideoMViTOptions mvit_v2_s() { return VideoMViTOptions(); }

const PresetTable<VideoMViTOptions> kVideoMViTPresets = {{"mvit_v1_b", mvit_v1_b}, {"mvit_v2_s", mvit_v2_s}};

std::vector<std::string> video_mvit_preset_names() { return table_names(kVideoMViTPresets); }

VideoMViTOptions video_mvit_preset(const std::string& name) {
  return find_preset(kVideoMViTPresets, name, "video MViT preset");
}

}  // namespace slideformer::nn
