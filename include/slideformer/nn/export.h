#pragma once
// TorchScript export of a trained SlideTransformer.
#include <torch/script.h>

#include "slideformer/nn/modules.h"

namespace slideformer::nn {

// A torch::jit::Module whose forward calls the slideformer operators, holding copies of the
// model's weights with the slide blocks' shift paths merged (the model itself is left as it is).
// Its input is a float batch (N, C, H, W) scaled to [0, 1]; it normalises with the options'
// input_mean / input_std and returns logits. Loading it needs only the slideformer op library.
torch::jit::Module to_torchscript(const SlideTransformer& model);

}  // namespace slideformer::nn
