// The mvit family (registry.h): its presets, its validate() and its registry entry.
#include "nn/families.h"
#include "slideformer/nn/modules.h"

namespace slideformer::nn {

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

namespace {
const PresetTable<MViTOptions> kMViTPresets = {{"mvitv2_tiny", mvitv2_tiny},
                                               {"mvitv2_small", mvitv2_small},
                                               {"mvitv2_base", mvitv2_base},
                                               {"fashion_mvit", fashion_mvit}};

// The position table and the blocks.
double parameter_estimate(const MViTOptions& o) {
  const double patches = static_cast<double>((o.image_size() + o.patch_size() - 1) / o.patch_size());
  return hierarchical_parameter_estimate(o, patches * patches * o.embed_dim());
}
}  // namespace

std::vector<std::string> mvit_preset_names() { return table_names(kMViTPresets); }

MViTOptions mvit_preset(const std::string& name) { return find_preset(kMViTPresets, name, "MViT preset"); }

void validate(const MViTOptions& o, const OptionCheck& check) {
  check.hierarchical(o);
  check.range("stride_kv", o.stride_kv(), 1, o.image_size());
  if (o.position_encoding() == PositionEncoding::kSinusoidal && o.embed_dim() % 4 != 0) {
    check.fail("embed_dim", "a multiple of 4 with the sinusoidal position encoding", OptionCheck::show(o.embed_dim()));
  }
  if (!(o.norm_eps() > 0 && o.norm_eps() <= 1)) check.fail("norm_eps", "in (0, 1]", OptionCheck::show(o.norm_eps()));
}

ModelFamily mvit_family() {
  return classifier_family<MViTOptions, MViT>(kMViTFamily, kMViTPresets, validate, parameter_estimate);
}

}  // namespace slideformer::nn
