// The slide_transformer family (registry.h): its presets, its validate() and its registry entry.
// Parameter counts of the presets are checked by tests/cpp/test_modules.cpp.
#include "nn/families.h"
#include "slideformer/nn/modules.h"

namespace slideformer::nn {

namespace {
const std::vector<AttentionKind> kSwinKinds = {AttentionKind::kSlide, AttentionKind::kSlide, AttentionKind::kGlobal,
                                               AttentionKind::kGlobal};
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

namespace {
const PresetTable<SlideTransformerOptions> kSlideTransformerPresets = {
    {"slide_swin_tiny", slide_swin_tiny}, {"slide_swin_small", slide_swin_small},
    {"slide_swin_base", slide_swin_base}, {"fashion", fashion}};

// Patch embedding (stem, position table), blocks, mergings.
double parameter_estimate(const SlideTransformerOptions& o) {
  const double patches = static_cast<double>(o.image_size() / o.patch_size());
  double mergings = 0, dim = static_cast<double>(o.embed_dim());
  for (size_t s = 0; s + 1 < o.depths().size(); ++s, dim *= 2) mergings += 8 * dim * dim;
  return hierarchical_parameter_estimate(
      o, 9.0 * o.stem_channels() * (o.in_channels() + o.stem_channels()) + patches * patches * o.embed_dim() + mergings);
}
}  // namespace

std::vector<std::string> preset_names() { return table_names(kSlideTransformerPresets); }

SlideTransformerOptions preset(const std::string& name) {
  return find_preset(kSlideTransformerPresets, name, "preset");
}

void validate(const SlideTransformerOptions& o, const OptionCheck& check) {
  check.hierarchical(o);
  if (o.image_size() % o.patch_size() != 0) {
    check.fail("patch_size", "a divisor of image_size " + std::to_string(o.image_size()), OptionCheck::show(o.patch_size()));
  }
  check.range("stem_channels", o.stem_channels(), 0, 1024);
  if (o.sinusoidal_position_encoding() && o.embed_dim() % 4 != 0) {
    check.fail("embed_dim", "a multiple of 4 with sinusoidal_position_encoding", OptionCheck::show(o.embed_dim()));
  }
  if (o.stage_kinds().size() != o.depths().size()) {
    check.fail("stage_kinds", "a list of " + std::to_string(o.depths().size()) + " (one per stage)",
               std::to_string(o.stage_kinds().size()));
  }
  check.range("dilation", o.dilation(), 1, o.image_size());
  if (o.border() != "zeros" && o.border() != "clamp") check.fail("border", "\"zeros\" or \"clamp\"", OptionCheck::quoted(o.border()));
}

ModelFamily slide_transformer_family() {
  return classifier_family<SlideTransformerOptions, SlideTransformer>(
      kSlideTransformerFamily, kSlideTransformerPresets, validate, parameter_estimate,
      R"({"sinusoidal_position_encoding": false})");
}

}  // namespace slideformer::nn
