// Triangle-filter resampling (see resample.h). Compiled for the build's vector ISA: the vertical
// pass is a multiply-add over contiguous rows, which the compiler vectorises.
#include "resample.h"

#include <algorithm>
#include <cmath>

namespace slideformer::data::detail {

void triangle_taps(double in0, double in_len, int64_t in_size, int64_t out_size, int64_t first, int64_t n, Taps& taps) {
  const double scale = in_len / static_cast<double>(out_size);
  const double filter_scale = std::max(scale, 1.0);
  const double support = filter_scale;  // the triangle's support is 1, widened when shrinking
  const double inverse = 1.0 / filter_scale;
  taps.max_count = static_cast<int64_t>(std::ceil(support)) * 2 + 1;
  taps.start.resize(n);
  taps.count.resize(n);
  taps.weights.assign(static_cast<size_t>(n * taps.max_count), 0.0f);
  const int64_t region_low = std::clamp<int64_t>(static_cast<int64_t>(std::floor(in0)), 0, in_size - 1);
  const int64_t region_high = std::clamp<int64_t>(static_cast<int64_t>(std::ceil(in0 + in_len)), region_low + 1, in_size);
  for (int64_t i = 0; i < n; ++i) {
    const double center = in0 + (static_cast<double>(first + i) + 0.5) * scale;
    // C's truncation, as PIL and torch compute the range; only samples inside the region count,
    // as when the region is cropped first (torchvision's resized_crop).
    const int64_t low = std::max<int64_t>(static_cast<int64_t>(center - support + 0.5), region_low);
    const int64_t high = std::min<int64_t>(static_cast<int64_t>(center + support + 0.5), region_high);
    float* w = taps.weights.data() + i * taps.max_count;
    double total = 0;
    int64_t count = std::min(high - low, taps.max_count);
    for (int64_t k = 0; k < count; ++k) {
      const double x = std::abs((static_cast<double>(low + k) - center + 0.5) * inverse);
      const double weight = x < 1.0 ? 1.0 - x : 0.0;
      w[k] = static_cast<float>(weight);
      total += weight;
    }
    if (count <= 0 || total <= 0) {  // a region outside the source: its nearest sample
      taps.start[i] = std::clamp<int64_t>(static_cast<int64_t>(center), 0, in_size - 1);
      taps.count[i] = 1;
      w[0] = 1.0f;
      continue;
    }
    for (int64_t k = 0; k < count; ++k) w[k] = static_cast<float>(w[k] / total);
    taps.start[i] = low;
    taps.count[i] = count;
  }
}

namespace {

// Sets up both axes' taps; returns the source columns [first, last) the window needs.
std::pair<int64_t, int64_t> prepare_taps(const Pixels& source, const Geometry& g, ResampleScratch& scratch) {
  triangle_taps(g.box_y, g.box_height, source.height, g.virtual_height, g.top, g.height, scratch.rows);
  triangle_taps(g.box_x, g.box_width, source.width, g.virtual_width, g.left, g.width, scratch.columns);
  int64_t first = source.width, last = 0;
  for (int64_t x = 0; x < g.width; ++x) {
    first = std::min(first, scratch.columns.start[x]);
    last = std::max(last, scratch.columns.start[x] + scratch.columns.count[x]);
  }
  return {first, last};
}

// scratch.vertical[r] = the output row r's filter over source rows, for columns [first, last).
void vertical_pass(const Pixels& source, int64_t first, int64_t last, ResampleScratch& scratch) {
  const Taps& rows = scratch.rows;
  const int64_t span = (last - first) * source.channels, height = static_cast<int64_t>(rows.start.size());
  scratch.vertical.resize(static_cast<size_t>(height * span));
  for (int64_t r = 0; r < height; ++r) {
    float* __restrict out = scratch.vertical.data() + r * span;
    const float* w = rows.weights.data() + r * rows.max_count;
    const uint8_t* __restrict in = source.row(rows.start[r]) + first * source.channels;
    for (int64_t i = 0; i < span; ++i) out[i] = w[0] * static_cast<float>(in[i]);
    for (int64_t k = 1; k < rows.count[r]; ++k) {
      in = source.row(rows.start[r] + k) + first * source.channels;
      const float wk = w[k];
      for (int64_t i = 0; i < span; ++i) out[i] += wk * static_cast<float>(in[i]);
    }
  }
}

// The horizontal pass over scratch.vertical; write(c, row, column, value) stores each result.
template <int C, typename Write>
void horizontal_pass(const Geometry& g, int64_t first, bool flip, const ResampleScratch& scratch, Write write) {
  const Taps& columns = scratch.columns;
  const int64_t span = static_cast<int64_t>(scratch.vertical.size()) / std::max<int64_t>(g.height, 1);
  for (int64_t r = 0; r < g.height; ++r) {
    const float* row = scratch.vertical.data() + r * span;
    for (int64_t x = 0; x < g.width; ++x) {
      const float* w = columns.weights.data() + x * columns.max_count;
      const float* in = row + (columns.start[x] - first) * C;
      float sum[C] = {};
      for (int64_t k = 0; k < columns.count[x]; ++k, in += C) {
        for (int c = 0; c < C; ++c) sum[c] += w[k] * in[c];
      }
      const int64_t column = flip ? g.width - 1 - x : x;
      for (int c = 0; c < C; ++c) write(c, r, column, sum[c]);
    }
  }
}

template <typename Write>
void resample(const Pixels& source, const Geometry& g, bool flip, ResampleScratch& scratch, Write write) {
  const auto [first, last] = prepare_taps(source, g, scratch);
  vertical_pass(source, first, last, scratch);
  if (source.channels == 3) {
    horizontal_pass<3>(g, first, flip, scratch, write);
  } else {
    horizontal_pass<1>(g, first, flip, scratch, write);
  }
}

}  // namespace

void resample_planar(const Pixels& source, const Geometry& g, bool flip, const float* scale, const float* shift,
                     float* out, ResampleScratch& scratch) {
  const int64_t plane = g.width * g.height;
  resample(source, g, flip, scratch, [&](int c, int64_t r, int64_t x, float value) {
    out[c * plane + r * g.width + x] = value * scale[c] + shift[c];
  });
}

void resample_pixels(const Pixels& source, const Geometry& g, bool flip, Pixels& out, ResampleScratch& scratch) {
  out.resize(g.width, g.height, source.channels);
  const int64_t channels = source.channels;
  resample(source, g, flip, scratch, [&](int c, int64_t r, int64_t x, float value) {
    out.data[(r * g.width + x) * channels + c] = static_cast<uint8_t>(std::clamp(std::nearbyint(value), 0.0f, 255.0f));
  });
}

}  // namespace slideformer::data::detail
