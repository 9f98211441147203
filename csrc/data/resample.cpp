// Triangle-filter resampling (see resample.h). Compiled for the build's vector ISA: the vertical
// pass is a multiply-add over contiguous rows, which the compiler vectorises; the horizontal pass
// runs on blocks of output columns with at::vec (see prepare_column_blocks).
#include "resample.h"

#include <ATen/cpu/vec/vec.h>

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

using Vec = at::vec::Vectorized<float>;

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
// Returns the floats per row (the columns times the channels).
int64_t vertical_pass(const Pixels& source, int64_t first, int64_t last, ResampleScratch& scratch) {
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
  return span;
}

// The column taps as dense blocks of Vec::size() output columns: block b reads the source columns
// [start, start + length) of its columns' taps, its weights are length x Vec::size() (tap-major,
// zero where a column does not read that source column). The horizontal pass then multiplies
// whole weight vectors with one broadcast sample each: no gathers, which are slow on many x86
// CPUs; the zero weights add nothing.
void prepare_column_blocks(int64_t first, int64_t channels, ResampleScratch& scratch) {
  const Taps& columns = scratch.columns;
  const int64_t width = static_cast<int64_t>(columns.start.size()), lanes = Vec::size();
  const int64_t blocks = (width + lanes - 1) / lanes;
  scratch.blocks.resize(blocks);
  scratch.block_weights.clear();
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t x0 = b * lanes, x1 = std::min(width, x0 + lanes);
    int64_t low = columns.start[x0], high = 0;
    for (int64_t x = x0; x < x1; ++x) {
      low = std::min(low, columns.start[x]);
      high = std::max(high, columns.start[x] + columns.count[x]);
    }
    const size_t at = scratch.block_weights.size();
    scratch.blocks[b] = {(low - first) * channels, high - low, static_cast<int64_t>(at)};
    scratch.block_weights.resize(at + static_cast<size_t>((high - low) * lanes), 0.0f);
    for (int64_t x = x0; x < x1; ++x) {
      for (int64_t k = 0; k < columns.count[x]; ++k) {
        scratch.block_weights[at + (columns.start[x] + k - low) * lanes + (x - x0)] = columns.weights[x * columns.max_count + k];
      }
    }
  }
  scratch.filtered.resize(static_cast<size_t>(channels * blocks * lanes));
}

// Planar (C, height, width) output: each channel's values * scale + shift, mirrored when flip.
struct PlanarOutput {
  float* out;
  int64_t width, plane;
  bool flip;
  const float* scale;
  const float* shift;

  void write_row(int64_t r, int64_t c, const float* __restrict in) const {
    float* __restrict row = out + c * plane + r * width;
    const float a = scale[c], b = shift[c];
    if (flip) {
      for (int64_t x = 0; x < width; ++x) row[width - 1 - x] = in[x] * a + b;
    } else {
      for (int64_t x = 0; x < width; ++x) row[x] = in[x] * a + b;
    }
  }
};

// The horizontal pass over scratch.vertical (rows of `span` floats): each output row's C channel
// rows, in output order, go to the output.
template <int C>
void horizontal_pass(int64_t height, int64_t span, ResampleScratch& scratch, const PlanarOutput& output) {
  const int64_t lanes = Vec::size(), padded = static_cast<int64_t>(scratch.blocks.size()) * lanes;
  float* filtered = scratch.filtered.data();
  for (int64_t r = 0; r < height; ++r) {
    const float* row = scratch.vertical.data() + r * span;
    for (size_t b = 0; b < scratch.blocks.size(); ++b) {
      const ColumnBlock& block = scratch.blocks[b];
      const float* in = row + block.offset;
      const float* w = scratch.block_weights.data() + block.weights;
      // Two sums per channel (even and odd source columns) keep 2 C multiply-adds in flight.
      Vec even[C], odd[C];
      for (int c = 0; c < C; ++c) even[c] = odd[c] = Vec(0.0f);
      int64_t j = 0;
      for (; j + 1 < block.length; j += 2, in += 2 * C, w += 2 * lanes) {
        const Vec weight0 = Vec::loadu(w), weight1 = Vec::loadu(w + lanes);
        for (int c = 0; c < C; ++c) {
          even[c] = at::vec::fmadd(weight0, Vec(in[c]), even[c]);
          odd[c] = at::vec::fmadd(weight1, Vec(in[C + c]), odd[c]);
        }
      }
      if (j < block.length) {
        const Vec weight = Vec::loadu(w);
        for (int c = 0; c < C; ++c) even[c] = at::vec::fmadd(weight, Vec(in[c]), even[c]);
      }
      for (int c = 0; c < C; ++c) (even[c] + odd[c]).store(filtered + c * padded + b * lanes);
    }
    for (int c = 0; c < C; ++c) output.write_row(r, c, filtered + c * padded);
  }
}

}  // namespace

void resample_planar(const Pixels& source, const Geometry& g, bool flip, const float* scale, const float* shift,
                     float* out, ResampleScratch& scratch) {
  const auto [first, last] = prepare_taps(source, g, scratch);
  const int64_t span = vertical_pass(source, first, last, scratch);
  prepare_column_blocks(first, source.channels, scratch);
  const PlanarOutput output{out, g.width, g.width * g.height, flip, scale, shift};
  if (source.channels == 3) {
    horizontal_pass<3>(g.height, span, scratch, output);
  } else {
    horizontal_pass<1>(g.height, span, scratch, output);
  }
}

}  // namespace slideformer::data::detail
