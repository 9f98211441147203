#pragma once
// What a training step draws from the recipe: its learning rate, its augmentation, its precision.
#include <ATen/Tensor.h>

#include <optional>
#include <string>

#include "recipe.h"

namespace slideformer::app {

// Linear warm-up over the first 5% of steps, then cosine decay to zero.
double learning_rate(const TrainConfig& config, int64_t step, int64_t total_steps);

// Random crop from a 2-pixel zero-padded image and a horizontal flip, one draw per image. The
// images are rows [offset, offset + n) of a global batch of global_size: the draws are made for
// all of it, so each image gets the same crop and flip however the batch is split over processes.
at::Tensor augment(const at::Tensor& images, int64_t offset, int64_t global_size);

// The autocast dtype of --amp ("bf16", "fp16"); none for "none".
std::optional<at::ScalarType> amp_dtype(const std::string& amp);

}  // namespace slideformer::app
