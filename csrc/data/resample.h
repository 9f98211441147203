#pragma once
// Resampling with the triangle filter, antialiased when shrinking: the coefficients of PIL's
// resize (BILINEAR) and of torch's interpolate(mode="bilinear", antialias=True), so a region of an
// image resized here matches torchvision's Resize / RandomResizedCrop on the same pixels. Crop,
// resize, flip and normalisation are one pass over the source (vertical, then horizontal).
#include <cstdint>
#include <vector>

#include "pixels.h"

namespace slideformer::data::detail {

// Which part of the source becomes which part of the output: the source region `box` (in source
// pixels, fractional allowed) is resized to a virtual virtual_width x virtual_height image, of which
// the window [left, left + width) x [top, top + height) is produced.
struct Geometry {
  double box_x = 0, box_y = 0, box_width = 0, box_height = 0;
  int64_t virtual_width = 0, virtual_height = 0;
  int64_t left = 0, top = 0, width = 0, height = 0;
};

// Per-output-position filter taps along one axis.
struct Taps {
  std::vector<int64_t> start;   // first source index
  std::vector<int64_t> count;   // number of source samples
  std::vector<float> weights;   // count[i] weights at i * max_count
  int64_t max_count = 0;
};

// Coefficients for outputs [first, first + n) of `out_size` covering source [in0, in0 + in_len)
// of a source of in_size samples (PIL's precompute_coeffs), reading only samples inside the
// region (rounded outwards): the region is resized as if cropped first.
void triangle_taps(double in0, double in_len, int64_t in_size, int64_t out_size, int64_t first, int64_t n, Taps& taps);

// A block of output columns of the horizontal pass: where its source columns start in a row of
// the vertical pass, how many it reads, and where its dense weights start.
struct ColumnBlock {
  int64_t offset = 0, length = 0, weights = 0;
};

// Buffers kept between images.
struct ResampleScratch {
  Taps rows, columns;
  std::vector<float> vertical;       // the vertical pass: height x (needed columns) x channels
  std::vector<ColumnBlock> blocks;   // the horizontal pass's column blocks
  std::vector<float> block_weights;  // their dense weights
  std::vector<float> filtered;       // one output row: channels x (width rounded up to blocks)
};

// Writes the window as planar float (channels, height, width): value * scale[c] + shift[c] with
// value in 0..255; flip mirrors the window left-right.
void resample_planar(const Pixels& source, const Geometry& geometry, bool flip, const float* scale,
                     const float* shift, float* out, ResampleScratch& scratch);

}  // namespace slideformer::data::detail
