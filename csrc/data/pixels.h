#pragma once
// What the decoders and transforms share inside the data library: a reusable interleaved uint8
// image buffer, the colour layouts the decoders produce, and the conversion that turns a decoded
// image into the caller's channels and upright orientation in one pass.
#include <cstdint>
#include <string>
#include <vector>

#include "slideformer/data/image.h"

namespace slideformer::data::detail {

// An interleaved (height, width, channels) uint8 image whose buffer is kept between images.
struct Pixels {
  std::vector<uint8_t> data;
  int64_t width = 0, height = 0, channels = 0;

  void resize(int64_t w, int64_t h, int64_t c) {
    width = w, height = h, channels = c;
    data.resize(static_cast<size_t>(w * h * c));
  }
  const uint8_t* row(int64_t y) const { return data.data() + y * width * channels; }
  uint8_t* row(int64_t y) { return data.data() + y * width * channels; }
};

// The decoders' raw output, before conversion.
enum class Layout { kGray, kRgb, kInvertedCmyk };

inline int64_t layout_channels(Layout layout) {
  return layout == Layout::kGray ? 1 : layout == Layout::kRgb ? 3 : 4;
}

// Per-thread buffers of the decoders (a thread's are reused by each image it decodes).
struct DecodeScratch {
  Pixels raw;
};

// Where the decoders put their result: raw pixels in some layout, plus the EXIF orientation.
struct Decoded {
  Layout layout = Layout::kRgb;
  int orientation = 1;
  // Full-size upright width and height (before any DCT scaling), and the scale the decoder used.
  int64_t full_width = 0, full_height = 0;
  double scale = 1.0;
  // Where the decoded pixels start in the (scaled) image: not 0 when only a region was decoded.
  int64_t origin_x = 0, origin_y = 0;
};

// The part of the upright full-size image a caller needs (fractional pixels): a decoder may decode
// only the rows and columns around it.
struct Region {
  double x = 0, y = 0, width = 0, height = 0;
};

// Header-only look at an encoded image.
ImageInfo probe_jpeg(const uint8_t* data, size_t size, const std::string& name);
ImageInfo probe_png(const uint8_t* data, size_t size, const std::string& name);

// Decode into raw (stored orientation, Layout channels). min_width / min_height are upright
// sizes the JPEG decoder may scale down to (DCT scaling), 0 for full size. With `needed`, an
// upright JPEG is decoded only around that region (Decoded::origin_x / origin_y say where).
Decoded decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels,
                    int64_t min_width, int64_t min_height, Pixels& raw, const Region* needed = nullptr);
Decoded decode_png(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels, Pixels& raw);

bool is_jpeg(const uint8_t* data, size_t size);
bool is_png(const uint8_t* data, size_t size);

// Decodes any supported image into `raw` (dispatching on the signature).
Decoded decode_any(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels,
                   int64_t min_width, int64_t min_height, Pixels& raw, const Region* needed = nullptr);

// `raw` (stored orientation, `layout`) into `out`: `channels` (1 or 3) channels, upright.
void convert_upright(const Pixels& raw, Layout layout, int orientation, int64_t channels, Pixels& out);

// Whether the decoded pixels need convert_upright to become `channels` channels, upright.
inline bool needs_conversion(const Decoded& decoded, int64_t channels) {
  const bool same_channels = (decoded.layout == Layout::kRgb && channels == 3) ||
                             (decoded.layout == Layout::kGray && channels == 1);
  return decoded.orientation != 1 || !same_channels;
}

// EXIF orientation (1..8) of a TIFF-structured EXIF block (after the "Exif\0\0" header); 1 when
// absent or unreadable.
int exif_orientation(const uint8_t* tiff, size_t size);

// Refuses an image of more than max_pixels pixels: ImageError naming the file.
void check_pixel_limit(int64_t width, int64_t height, int64_t max_pixels, const std::string& name);

inline bool swaps_sides(int orientation) { return orientation >= 5 && orientation <= 8; }

}  // namespace slideformer::data::detail
