// PNG decoding with libpng: palette, low bit depths and 16-bit samples become 8-bit gray or RGB,
// alpha is dropped, every chunk's CRC is checked, the eXIf orientation is applied by the caller.
#include <png.h>

#include <csetjmp>
#include <cstring>
#include <limits>

#include "pixels.h"

namespace slideformer::data::detail {

namespace {

// Ancillary chunks (text, ICC profiles, ...) larger than this are refused, not allocated.
constexpr png_alloc_size_t kMaxChunkBytes = 16 << 20;

struct Reader {
  const uint8_t* data;
  size_t size;
  size_t offset = 0;
  std::string error;  // libpng's message of the failure that longjmp'ed out
};

void read_bytes(png_structp png, png_bytep out, png_size_t count) {
  auto* reader = static_cast<Reader*>(png_get_io_ptr(png));
  if (count > reader->size - reader->offset) png_error(png, "truncated PNG (the data ends before the image does)");
  std::memcpy(out, reader->data + reader->offset, count);
  reader->offset += count;
}

void on_error(png_structp png, png_const_charp message) {
  static_cast<Reader*>(png_get_error_ptr(png))->error = message;
  png_longjmp(png, 1);
}

void on_warning(png_structp, png_const_charp) {}

// Owns libpng's read and info structs.
struct Session {
  png_structp png = nullptr;
  png_infop info = nullptr;
  explicit Session(Reader& reader) {
    png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &reader, on_error, on_warning);
    if (png) info = png_create_info_struct(png);
    if (!png || !info) throw std::runtime_error("slideformer::data: libpng could not start a reader");
    png_set_read_fn(png, &reader, read_bytes);
    // Every bad CRC is an error (libpng's default only warns for ancillary chunks).
    png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
    png_set_chunk_malloc_max(png, kMaxChunkBytes);
    png_set_user_limits(png, 0x7fffffff, 0x7fffffff);  // the pixel limit is ours, checked below
  }
  ~Session() { png_destroy_read_struct(&png, &info, nullptr); }
};

std::string corrupt(const std::string& message) {
  return message.rfind("truncated", 0) == 0 ? message : "corrupt PNG (" + message + ")";
}

int orientation_of(png_structp png, png_infop info) {
  png_uint_32 length = 0;
  png_bytep exif = nullptr;
  if (png_get_eXIf_1(png, info, &length, &exif) == 0 || exif == nullptr) return 1;
  return exif_orientation(exif, length);
}

// Sets up 8-bit gray or RGB rows, and the layout they have.
Layout request_8bit_gray_or_rgb(png_structp png, png_infop info) {
  const int color_type = png_get_color_type(png, info);
  png_set_palette_to_rgb(png);
  png_set_expand_gray_1_2_4_to_8(png);
  png_set_strip_16(png);  // the high byte of each sample
  png_set_strip_alpha(png);
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  return (color_type & PNG_COLOR_MASK_COLOR) ? Layout::kRgb : Layout::kGray;
}

}  // namespace

bool is_png(const uint8_t* data, size_t size) { return size >= 8 && png_sig_cmp(data, 0, 8) == 0; }

ImageInfo probe_png(const uint8_t* data, size_t size, const std::string& name) {
  Reader reader{data, size, 0, {}};
  Session session(reader);
  ImageInfo info;
  info.format = ImageFormat::kPng;
  if (setjmp(png_jmpbuf(session.png))) throw ImageError(name, corrupt(reader.error));
  png_read_info(session.png, session.info);
  const bool color = png_get_color_type(session.png, session.info) & PNG_COLOR_MASK_COLOR;
  info.orientation = orientation_of(session.png, session.info);
  const int64_t w = png_get_image_width(session.png, session.info), h = png_get_image_height(session.png, session.info);
  info.width = swaps_sides(info.orientation) ? h : w;
  info.height = swaps_sides(info.orientation) ? w : h;
  info.channels = color ? 3 : 1;
  return info;
}

Decoded decode_png(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels, Pixels& raw) {
  Reader reader{data, size, 0, {}};
  Session session(reader);
  Decoded decoded;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(session.png))) throw ImageError(name, corrupt(reader.error));
  png_read_info(session.png, session.info);
  const int64_t width = png_get_image_width(session.png, session.info);
  const int64_t height = png_get_image_height(session.png, session.info);
  check_pixel_limit(width, height, max_pixels, name);  // (a longjmp-free throw: nothing of libpng's is mid-call)
  decoded.layout = request_8bit_gray_or_rgb(session.png, session.info);
  const int64_t channels = png_get_channels(session.png, session.info);
  if (channels != layout_channels(decoded.layout) || png_get_bit_depth(session.png, session.info) != 8) {
    throw ImageError(name, "unsupported PNG layout (" + std::to_string(channels) + " channels after conversion)");
  }
  raw.resize(width, height, channels);
  rows.resize(static_cast<size_t>(height));
  for (int64_t y = 0; y < height; ++y) rows[y] = raw.row(y);
  png_read_image(session.png, rows.data());
  png_read_end(session.png, session.info);  // the chunks after the image (their CRCs, a late eXIf)
  decoded.orientation = orientation_of(session.png, session.info);
  const bool swap = swaps_sides(decoded.orientation);
  decoded.full_width = swap ? height : width;
  decoded.full_height = swap ? width : height;
  return decoded;
}

}  // namespace slideformer::data::detail
