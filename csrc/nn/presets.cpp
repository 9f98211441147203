// Model presets (docs/modules.md). Parameter counts are checked by tests/cpp/test_modules.cpp.
#include <c10/util/Exception.h>

#include "slideformer/nn/options.h"

namespace slideformer::nn {

namespace {
using Kinds = std::vector<AttentionKind>;
const Kinds kSwinKinds = {AttentionKind::kSlide, AttentionKind::kSlide, AttentionKind::kGlobal,
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

std::vector<std::string> preset_names() {
  return {"slide_swin_tiny", "slide_swin_small", "slide_swin_base", "fashion"};
}

SlideTransformerOptions preset(const std::string& name) {
  if (name == "slide_swin_tiny") return slide_swin_tiny();
  if (name == "slide_swin_small") return slide_swin_small();
  if (name == "slide_swin_base") return slide_swin_base();
  if (name == "fashion") return fashion();
  TORCH_CHECK(false, "slideformer: unknown preset '", name,
              "', expected one of slide_swin_tiny, slide_swin_small, slide_swin_base, fashion");
}

}  // namespace slideformer::nn
