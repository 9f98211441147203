// The video MViT presets (docs/modules.md); the image families' are in their family files.
#include "nn/families.h"

namespace slideformer::nn {

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
