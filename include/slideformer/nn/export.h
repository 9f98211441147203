#pragma once
// TorchScript export of a trained classifier (SlideTransformer, MViT, VideoMViT).
#include <torch/script.h>

#include "slideformer/nn/modules.h"

namespace slideformer::nn {

// A torch::jit::Module whose forward calls the slideformer operators, holding copies of the
// model's weights with the slide blocks' shift paths merged (the model itself is left as it is).
// Its input is a float batch (N, C, H, W) scaled to [0, 1]; it normalises with the options'
// input_mean / input_std and returns logits. Loading it needs only the slideformer op library.
// It is model.script_form(): every module writes its own part (script_form.h).
torch::jit::Module to_torchscript(const Classifier& model);
// The same for a video MViT: its input is (N, C, T, H, W) clips scaled to [0, 1].
torch::jit::Module to_torchscript(const VideoMViTImpl& model);
template <typename Impl>
torch::jit::Module to_torchscript(const torch::nn::ModuleHolder<Impl>& model) {
  return to_torchscript(*model);
}

// The same input, and forward returns the stage outputs (B, C_i, H_i, W_i) as List[Tensor]
// (Classifier::forward_features): a backbone for a detection or segmentation neck.
torch::jit::Module to_torchscript_features(const Classifier& model);

}  // namespace slideformer::nn
