// The video MViT presets (docs/modules.md); the image families' are in their family files.
#include "nn/families.h"

namespace slideformer::nn {

// torchvision 0.26's mvit_v1_b and mvit_v2_s: the VideoMViTOptions defaults (16 x 224 x 224 clips,
// Kinetics-400's 400 classes, embed 96, depths 1, 2, 11, 2) in the two generations.
VideoMViTOptions mvit_v1_b() { return VideoMViTOptions().v2(false); }

VideoMViTOptions mvit_v2_s() { return VideoMViTOptions(); }

// A small MViTv2 for 8 x 48 x 48 grayscale clips and 10 classes (the moving Fashion-MNIST task of
// `slideformer video-demo`): 4 x 12 x 12 tokens, widths 32 to 256, one block per stage.
static VideoMViTOptions moving_mvit() {
  return VideoMViTOptions()
      .frames(8)
      .image_size(48)
      .in_channels(1)
      .num_classes(10)
      .embed_dim(32)
      .depths({1, 1, 1, 1})
      .stride_kv({1, 4, 4})
      .drop_path_rate(0.0)
      .head_dropout(0.0)
      .input_mean({0.2860})
      .input_std({0.3530});
}

const PresetTable<VideoMViTOptions> kVideoMViTPresets = {
    {"mvit_v1_b", mvit_v1_b}, {"mvit_v2_s", mvit_v2_s}, {"moving_mvit", moving_mvit}};

std::vector<std::string> video_mvit_preset_names() { return table_names(kVideoMViTPresets); }

VideoMViTOptions video_mvit_preset(const std::string& name) {
  return find_preset(kVideoMViTPresets, name, "video MViT preset");
}

}  // namespace slideformer::nn
