// JPEG decoding with libjpeg-turbo's TurboJPEG API: header, EXIF orientation (APP1), DCT-domain
// scaling, gray / RGB / CMYK output.
#include <turbojpeg.h>

#include <cstring>
#include <memory>

#include "pixels.h"

namespace slideformer::data::detail {

namespace {

// Progressive JPEGs with more scans than this are refused (TJFLAG_LIMITSCANS: libjpeg-turbo's
// guard against files made of thousands of tiny scans, each costing a pass over the image).
constexpr int kFlags = TJFLAG_LIMITSCANS;

struct HandleDeleter {
  void operator()(void* handle) const { tjDestroy(handle); }
};

// One decompressor per thread, kept for the thread's life.
tjhandle thread_decompressor() {
  thread_local std::unique_ptr<void, HandleDeleter> handle(tjInitDecompress());
  if (!handle) throw std::runtime_error("slideformer::data: TurboJPEG could not create a decompressor");
  return handle.get();
}

uint16_t big_endian16(const uint8_t* p) { return static_cast<uint16_t>(p[0] << 8 | p[1]); }

// The EXIF orientation of the APP1 "Exif" segment before the first scan; 1 without one.
int jpeg_orientation(const uint8_t* data, size_t size) {
  size_t pos = 2;  // after SOI
  while (pos + 4 <= size) {
    if (data[pos] != 0xFF) return 1;
    const uint8_t marker = data[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xDA || marker == 0xD9) return 1;  // start of scan, end of image
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {
      pos += 2;
      continue;
    }
    const size_t length = big_endian16(data + pos + 2);
    if (length < 2 || pos + 2 + length > size) return 1;
    const uint8_t* segment = data + pos + 4;
    const size_t segment_size = length - 2;
    if (marker == 0xE1 && segment_size > 6 && std::memcmp(segment, "Exif\0\0", 6) == 0) {
      return exif_orientation(segment + 6, segment_size - 6);
    }
    pos += 2 + length;
  }
  return 1;
}

struct Header {
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
};

Header read_header(tjhandle handle, const uint8_t* data, size_t size, const std::string& name) {
  Header header;
  if (tjDecompressHeader3(handle, data, static_cast<unsigned long>(size), &header.width, &header.height,
                          &header.subsampling, &header.colorspace) != 0) {
    throw ImageError(name, std::string("not a readable JPEG (") + tjGetErrorStr2(handle) + ")");
  }
  if (header.width < 1 || header.height < 1) {
    throw ImageError(name, "not a readable JPEG (its header gives no image size)");
  }
  return header;
}

Layout layout_of(int colorspace) {
  if (colorspace == TJCS_GRAY) return Layout::kGray;
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) return Layout::kInvertedCmyk;
  return Layout::kRgb;
}

int pixel_format(Layout layout) {
  return layout == Layout::kGray ? TJPF_GRAY : layout == Layout::kRgb ? TJPF_RGB : TJPF_CMYK;
}

// The strongest DCT scaling (1/8, 1/4, 1/2) that keeps the upright image at least min_w x min_h.
tjscalingfactor choose_scale(const Header& header, int orientation, int64_t min_width, int64_t min_height) {
  const int w = swaps_sides(orientation) ? header.height : header.width;
  const int h = swaps_sides(orientation) ? header.width : header.height;
  for (const int denominator : {8, 4, 2}) {
    const tjscalingfactor factor{1, denominator};
    if (min_width > 0 && min_height > 0 && TJSCALED(w, factor) >= min_width && TJSCALED(h, factor) >= min_height) {
      return factor;
    }
  }
  return tjscalingfactor{1, 1};
}

}  // namespace

bool is_jpeg(const uint8_t* data, size_t size) {
  return size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF;
}

ImageInfo probe_jpeg(const uint8_t* data, size_t size, const std::string& name) {
  const Header header = read_header(thread_decompressor(), data, size, name);
  ImageInfo info;
  info.format = ImageFormat::kJpeg;
  info.orientation = jpeg_orientation(data, size);
  const bool swap = swaps_sides(info.orientation);
  info.width = swap ? header.height : header.width;
  info.height = swap ? header.width : header.height;
  info.channels = layout_channels(layout_of(header.colorspace));
  return info;
}

Decoded decode_jpeg(const uint8_t* data, size_t size, const std::string& name, int64_t max_pixels,
                    int64_t min_width, int64_t min_height, Pixels& raw) {
  tjhandle handle = thread_decompressor();
  const Header header = read_header(handle, data, size, name);
  check_pixel_limit(header.width, header.height, max_pixels, name);
  Decoded decoded;
  decoded.layout = layout_of(header.colorspace);
  decoded.orientation = jpeg_orientation(data, size);
  const bool swap = swaps_sides(decoded.orientation);
  decoded.full_width = swap ? header.height : header.width;
  decoded.full_height = swap ? header.width : header.height;
  const tjscalingfactor factor = choose_scale(header, decoded.orientation, min_width, min_height);
  decoded.scale = static_cast<double>(factor.num) / factor.denom;
  const int width = TJSCALED(header.width, factor), height = TJSCALED(header.height, factor);
  raw.resize(width, height, layout_channels(decoded.layout));
  if (tjDecompress2(handle, data, static_cast<unsigned long>(size), raw.data.data(), width, 0, height,
                    pixel_format(decoded.layout), kFlags) != 0) {
    const std::string message = tjGetErrorStr2(handle);
    // libjpeg's warnings leave a complete image (as Pillow, which ignores them, reads it), except
    // a premature end: the missing part would be filled with gray.
    const bool truncated = message.find("Premature end") != std::string::npos;
    if (tjGetErrorCode(handle) == TJERR_FATAL || truncated) {
      throw ImageError(name, truncated ? "truncated JPEG (the data ends before the image does)"
                                       : "corrupt JPEG (" + message + ")");
    }
  }
  return decoded;
}

}  // namespace slideformer::data::detail
