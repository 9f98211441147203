#pragma once
// A video task made from a set of small grayscale images (Fashion-MNIST's 28 x 28 garments): each
// clip shows `objects` garments gliding in straight lines over a black canvas. Exactly one of them
// moves to the right; the clip's label is that garment's class. Every frame shows every garment,
// and where a garment is in one frame says nothing about its direction (start positions are drawn
// so that the middle frame's positions are alike for both directions), so a model that sees one
// frame can at best guess among the garments, while one that sees the motion can read the label.
#include <ATen/Tensor.h>
#include <torch/arg.h>

#include <cstdint>

namespace slideformer::data {

struct MovingClipsOptions {
  TORCH_ARG(int64_t, frames) = 16;
  TORCH_ARG(int64_t, canvas) = 64;  // the frames are canvas x canvas
  TORCH_ARG(int64_t, objects) = 2;  // garments per clip: one moves right, the others left
  // Horizontal speeds are 1..max_speed pixels per frame; vertical ones -max_speed..max_speed.
  TORCH_ARG(int64_t, max_speed) = 2;
  TORCH_ARG(uint64_t, seed) = 0;
};

struct MovingClips {
  at::Tensor clips;   // (count, 1, frames, canvas, canvas) uint8; overlapping garments: the max
  at::Tensor labels;  // (count,) int64: the class of the garment that moves right
};

// `count` clips from `images` (N, h, w) uint8 and their `labels` (N,) int64 (each clip's garments
// are distinct images drawn at random). Clip i depends on (seed, i) alone. Throws
// std::invalid_argument naming the argument when the inputs or options cannot make a clip (e.g.
// a garment and its path do not fit on the canvas).
MovingClips make_moving_clips(const at::Tensor& images, const at::Tensor& labels, int64_t count,
                              const MovingClipsOptions& options = {});

}  // namespace slideformer::data
