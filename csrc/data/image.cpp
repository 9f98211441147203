// The public decoding API (slideformer/data/image.h): format dispatch, EXIF orientation, colour
// conversion, file reading.
#include <ATen/ATen.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "pixels.h"

namespace slideformer::data::detail {

namespace {

// Pillow's ITU-R 601-2 luma (convert("L")): (19595 R + 38470 G + 7471 B + 2^15) >> 16.
inline uint8_t luma(uint8_t r, uint8_t g, uint8_t b) {
  return static_cast<uint8_t>((19595u * r + 38470u * g + 7471u * b + 0x8000u) >> 16);
}

// Pillow's CMYK -> RGB (convert("RGB")) of Adobe-inverted samples: with k' = 255 - K the stored
// key, each colour is k' - C k' / 255 (rounded as Pillow's MULDIV255).
inline uint8_t cmyk_channel(uint8_t inverted_c, uint8_t inverted_k) {
  const int c = 255 - inverted_c, nk = inverted_k;
  const int t = c * nk + 128;
  return static_cast<uint8_t>(nk - (((t >> 8) + t) >> 8));
}

// Writes one source pixel of `layout` as `channels` channels.
template <Layout L, int C>
inline void convert_pixel(const uint8_t* in, uint8_t* out) {
  if constexpr (L == Layout::kGray) {
    for (int c = 0; c < C; ++c) out[c] = in[0];
  } else if constexpr (L == Layout::kRgb) {
    if constexpr (C == 3) {
      out[0] = in[0], out[1] = in[1], out[2] = in[2];
    } else {
      out[0] = luma(in[0], in[1], in[2]);
    }
  } else {
    const uint8_t r = cmyk_channel(in[0], in[3]), g = cmyk_channel(in[1], in[3]), b = cmyk_channel(in[2], in[3]);
    if constexpr (C == 3) {
      out[0] = r, out[1] = g, out[2] = b;
    } else {
      out[0] = luma(r, g, b);
    }
  }
}

// Output pixel (x, y) of the upright image reads the stored pixel at
// origin + y * row_step + x * column_step (in bytes): one walk for all eight orientations.
struct Walk {
  int64_t origin = 0, row_step = 0, column_step = 0;
};

Walk orientation_walk(int orientation, int64_t stored_width, int64_t stored_height, int64_t pixel_bytes) {
  const int64_t px = pixel_bytes, row = stored_width * pixel_bytes;
  const int64_t last_x = (stored_width - 1) * px, last_y = (stored_height - 1) * row;
  switch (orientation) {
    case 2: return {last_x, row, -px};             // mirrored left-right
    case 3: return {last_x + last_y, -row, -px};   // rotated 180
    case 4: return {last_y, -row, px};             // mirrored top-bottom
    case 5: return {0, px, row};                   // transposed
    case 6: return {last_y, px, -row};             // rotated 90 clockwise to display
    case 7: return {last_x + last_y, -px, -row};   // transversed
    case 8: return {last_x, -px, row};             // rotated 90 counter-clockwise to display
    default: return {0, row, px};
  }
}

template <Layout L, int C>
void convert_walk(const Pixels& raw, const Walk& walk, Pixels& out) {
  const uint8_t* base = raw.data.data();
  for (int64_t y = 0; y < out.height; ++y) {
    const uint8_t* in = base + walk.origin + y * walk.row_step;
    uint8_t* o = out.row(y);
    for (int64_t x = 0; x < out.width; ++x, in += walk.column_step, o += C) convert_pixel<L, C>(in, o);
  }
}

template <Layout L>
void convert_to(const Pixels& raw, const Walk& walk, int64_t channels, Pixels& out) {
  if (channels == 3) {
    convert_walk<L, 3>(raw, walk, out);
  } else {
    convert_walk<L, 1>(raw, walk, out);
  }
}

uint16_t read16(const uint8_t* p, bool little) {
  return little ? static_cast<uint16_t>(p[0] | p[1] << 8) : static_cast<uint16_t>(p[0] << 8 | p[1]);
}

uint32_t read32(const uint8_t* p, bool little) {
  return little ? (uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24)
                : (uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]));
}

}  // namespace

int exif_orientation(const uint8_t* tiff, size_t size) {
  if (size < 8) return 1;
  const bool little = tiff[0] == 'I' && tiff[1] == 'I';
  if (!little && !(tiff[0] == 'M' && tiff[1] == 'M')) return 1;
  if (read16(tiff + 2, little) != 42) return 1;
  const uint32_t ifd = read32(tiff + 4, little);
  if (ifd > size - 2) return 1;
  const uint16_t entries = read16(tiff + ifd, little);
  for (uint32_t i = 0; i < entries; ++i) {
    const size_t entry = size_t{ifd} + 2 + size_t{i} * 12;
    if (entry + 12 > size) return 1;
    if (read16(tiff + entry, little) != 0x0112) continue;
    const uint16_t type = read16(tiff + entry + 2, little);
    const uint16_t value = read16(tiff + entry + 8, little);
    return type == 3 && value >= 1 && value <= 8 ? value : 1;  // SHORT
  }
  return 1;
}

void check_pixel_limit(int64_t width, int64_t height, int64_t max_pixels, const std::string& name) {
  if (width > 0 && height > max_pixels / width) {
    throw ImageError(name, std::to_string(width) + "x" + std::to_string(height) + " = " +
                               std::to_string(width * height) + " pixels is over the limit of " +
                               std::to_string(max_pixels) + " pixels (DecodeOptions::max_pixels; a decompression bomb?)");
  }
}

void convert_upright(const Pixels& raw, Layout layout, int orientation, int64_t channels, Pixels& out) {
  const bool swap = swaps_sides(orientation);
  out.resize(swap ? raw.height : raw.width, swap ? raw.width : raw.height, channels);
  const Walk walk = orientation_walk(orientation, raw.width, raw.height, raw.channels);
  switch (layout) {
    case Layout::kGray: return convert_to<Layout::kGray>(raw, walk, channels, out);
    case Layout::kRgb: return convert_to<Layout::kRgb>(raw, walk, channels, out);
    case Layout::kInvertedCmyk: return convert_to<Layout::kInvertedCmyk>(raw, walk, channels, out);
  }
}

Decoded decode_any(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels,
                   int64_t min_width, int64_t min_height, Pixels& raw, const Region* needed) {
  if (size == 0) throw ImageError(name, "empty file (0 bytes)");
  if (is_jpeg(data, size)) return decode_jpeg(data, size, name, max_pixels, min_width, min_height, raw, needed);
  if (is_png(data, size)) return decode_png(data, size, name, max_pixels, raw);
  throw ImageError(name, "not a JPEG or PNG image (unknown signature)");
}

}  // namespace slideformer::data::detail

namespace slideformer::data {

namespace {

// Files larger than this are not read (no JPEG or PNG under the pixel limit needs more).
constexpr int64_t kMaxFileBytes = int64_t{1} << 30;

void check_channels(int64_t channels) {
  if (channels != 1 && channels != 3) {
    throw std::invalid_argument("slideformer::data: DecodeOptions::channels must be 1 or 3, got " +
                                std::to_string(channels));
  }
}

}  // namespace

ImageInfo read_image_info(const uint8_t* data, size_t size, const std::string& name) {
  if (size == 0) throw ImageError(name, "empty file (0 bytes)");
  if (detail::is_jpeg(data, size)) return detail::probe_jpeg(data, size, name);
  if (detail::is_png(data, size)) return detail::probe_png(data, size, name);
  throw ImageError(name, "not a JPEG or PNG image (unknown signature)");
}

at::Tensor decode_image(const uint8_t* data, size_t size, const std::string& name, const DecodeOptions& options) {
  check_channels(options.channels());
  detail::Pixels raw, upright;
  const detail::Decoded decoded = detail::decode_any(data, size, name, options.max_pixels(), options.min_width(),
                                                     options.min_height(), raw);
  const bool convert = detail::needs_conversion(decoded, options.channels());
  if (convert) detail::convert_upright(raw, decoded.layout, decoded.orientation, options.channels(), upright);
  detail::Pixels& result = convert ? upright : raw;
  auto* buffer = new std::vector<uint8_t>(std::move(result.data));
  return at::from_blob(
      buffer->data(), {result.height, result.width, result.channels},
      [buffer](void*) { delete buffer; }, at::kByte);
}

std::string read_file_bytes(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw ImageError(path, std::string("cannot open (") + std::strerror(errno) + ")");
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat info {};
  if (fstat(fd, &info) != 0) throw ImageError(path, std::string("cannot read (") + std::strerror(errno) + ")");
  if (S_ISDIR(info.st_mode)) throw ImageError(path, "is a directory, not an image file");
  if (info.st_size > kMaxFileBytes) {
    throw ImageError(path, std::to_string(info.st_size) + " bytes is over the limit of " +
                               std::to_string(kMaxFileBytes) + " bytes for an image file");
  }
  std::string bytes(static_cast<size_t>(info.st_size), '\0');
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::read(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw ImageError(path, std::string("cannot read (") + std::strerror(errno) + ")");
    if (n == 0) break;  // the file shrank while being read
    done += static_cast<size_t>(n);
  }
  bytes.resize(done);
  return bytes;
}

at::Tensor read_image(const std::string& path, const DecodeOptions& options) {
  const std::string bytes = read_file_bytes(path);
  return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path, options);
}

}  // namespace slideformer::data
