// JPEG decoding with libjpeg-turbo: header, EXIF orientation (APP1), DCT-domain scaling, gray /
// RGB / CMYK output. Whole images through the TurboJPEG API; a region (the train transform's crop)
// through the libjpeg API of the same library, which can skip rows and columns.
#include <turbojpeg.h>

#include <algorithm>
#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <memory>

#include <jpeglib.h>

#include "pixels.h"

namespace slideformer::data::detail {

namespace {

// Progressive JPEGs with more scans than this are refused (TJFLAG_LIMITSCANS: libjpeg-turbo's
// guard against files made of thousands of tiny scans, each costing a pass over the image).
constexpr int kFlags = TJFLAG_LIMITSCANS;
constexpr int kMaxScans = 500;  // TurboJPEG's limit, applied to the region decoder too

// Pixels decoded around a region on each side: the "fancy" chroma upsampling treats the edges of
// a partial decode as image edges, so the pixels next to them may differ from a full decode.
constexpr int64_t kRegionMargin = 16;

struct HandleDeleter {
  void operator()(void* handle) const { tjDestroy(handle); }
};

std::unique_ptr<void, HandleDeleter>& thread_handle() {
  thread_local std::unique_ptr<void, HandleDeleter> handle;
  return handle;
}

// One decompressor per thread, kept for the thread's life but for a failure (forget_decompressor).
tjhandle thread_decompressor() {
  auto& handle = thread_handle();
  if (!handle) handle.reset(tjInitDecompress());
  if (!handle) throw std::runtime_error("slideformer::data: TurboJPEG could not create a decompressor");
  return handle.get();
}

// After a failed call the thread's next JPEG gets a new decompressor: libjpeg-turbo 2.1's
// tjDecompressHeader3 returns from an error without resetting libjpeg's state, so the marker
// it failed on is read again at the start of every later header, and every later JPEG of the
// thread would be refused with the same message.
void forget_decompressor() { thread_handle().reset(); }

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
    const std::string message = tjGetErrorStr2(handle);
    forget_decompressor();
    throw ImageError(name, "not a readable JPEG (" + message + ")");
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


// libjpeg's warnings leave a complete image (as Pillow, which ignores them, reads it), except a
// premature end: the missing part would be filled with gray. `fatal` is TurboJPEG's meaning: an
// error with no warning before it.
void refuse_if_failed(bool fatal, const std::string& message, const std::string& name) {
  const bool truncated = message.find("Premature end") != std::string::npos;
  if (fatal || truncated) {
    throw ImageError(name, truncated ? "truncated JPEG (the data ends before the image does)"
                                     : "corrupt JPEG (" + message + ")");
  }
}

// libjpeg's error manager as TurboJPEG sets it up: errors jump back to the decoder with their
// message; of the warnings, the first one's message is kept (jpeg_error_mgr counts them).
struct RegionErrors {
  jpeg_error_mgr manager;  // first: libjpeg hands &manager back as cinfo->err
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
  bool failed;
};

RegionErrors& errors_of(j_common_ptr cinfo) { return *reinterpret_cast<RegionErrors*>(cinfo->err); }

void keep_message(j_common_ptr cinfo) { cinfo->err->format_message(cinfo, errors_of(cinfo).message); }

[[noreturn]] void jump_on_error(j_common_ptr cinfo) {
  keep_message(cinfo);
  errors_of(cinfo).failed = true;
  std::longjmp(errors_of(cinfo).jump, 1);
}

// TJFLAG_LIMITSCANS for the libjpeg API (an error even after warnings, as in TurboJPEG).
void limit_scans(j_common_ptr cinfo) {
  if (reinterpret_cast<j_decompress_ptr>(cinfo)->input_scan_number <= kMaxScans) return;
  RegionErrors& errors = errors_of(cinfo);
  std::snprintf(errors.message, sizeof errors.message, "Progressive JPEG image has more than %d scans", kMaxScans);
  errors.manager.num_warnings = 0;
  errors.failed = true;
  std::longjmp(errors.jump, 1);
}

// One libjpeg decompressor per thread, kept for the thread's life.
struct RegionDecompressor {
  jpeg_decompress_struct cinfo{};
  RegionErrors errors{};
  jpeg_progress_mgr progress{};
  std::vector<uint8_t> last_row;

  RegionDecompressor() {
    cinfo.err = jpeg_std_error(&errors.manager);
    errors.manager.error_exit = jump_on_error;
    errors.manager.output_message = keep_message;
    progress.progress_monitor = limit_scans;
    if (setjmp(errors.jump)) throw std::runtime_error("slideformer::data: libjpeg could not create a decompressor");
    jpeg_create_decompress(&cinfo);
    cinfo.progress = &progress;
  }
  ~RegionDecompressor() { jpeg_destroy_decompress(&cinfo); }
};

J_COLOR_SPACE color_space(Layout layout) {
  return layout == Layout::kGray ? JCS_GRAYSCALE : layout == Layout::kRgb ? JCS_EXT_RGB : JCS_CMYK;
}

// Integer pixel bounds [x0, x1) x [y0, y1) in the scaled image.
struct Bounds {
  int64_t x0, y0, x1, y1;
};

// Decodes rows [y0, y1) of columns from x0 (moved left to an iMCU boundary) to x1 of the image
// scaled by 1/denominator into raw; origin_x receives the first column. Returns false after a
// libjpeg error (d.errors says which). Nothing here has a destructor: errors longjmp back into it.
bool read_region(RegionDecompressor& d, const uint8_t* data, size_t size, int denominator, Layout layout,
                 const Bounds& bounds, Pixels& raw, int64_t& origin_x) {
  jpeg_decompress_struct& c = d.cinfo;
  d.errors.failed = false;
  d.errors.message[0] = '\0';
  if (setjmp(d.errors.jump)) {
    jpeg_abort_decompress(&c);
    return false;
  }
  jpeg_mem_src(&c, data, static_cast<unsigned long>(size));
  jpeg_read_header(&c, TRUE);
  c.out_color_space = color_space(layout);
  c.scale_num = 1;
  c.scale_denom = static_cast<unsigned int>(denominator);
  jpeg_start_decompress(&c);
  auto x = static_cast<JDIMENSION>(bounds.x0), width = static_cast<JDIMENSION>(bounds.x1 - bounds.x0);
  jpeg_crop_scanline(&c, &x, &width);
  origin_x = x;
  raw.resize(c.output_width, bounds.y1 - bounds.y0, c.output_components);
  if (bounds.y0 > 0) jpeg_skip_scanlines(&c, static_cast<JDIMENSION>(bounds.y0));
  while (c.output_scanline < bounds.y1) {
    JSAMPROW row = raw.row(c.output_scanline - bounds.y0);
    jpeg_read_scanlines(&c, &row, 1);
  }
  // The rows below are entropy-decoded all the same, so that a truncated or corrupt file is
  // refused whatever the region: skipping up to the last row reads their data, and the last row
  // is decoded (skipping to the very end would stop reading).
  if (c.output_scanline + 1 < c.output_height) jpeg_skip_scanlines(&c, c.output_height - 1 - c.output_scanline);
  d.last_row.resize(static_cast<size_t>(c.output_width) * c.output_components);
  while (c.output_scanline < c.output_height) {
    JSAMPROW row = d.last_row.data();
    jpeg_read_scanlines(&c, &row, 1);
  }
  jpeg_finish_decompress(&c);
  return true;
}

// The region around `needed` (upright = stored orientation here) of the image scaled by
// 1/denominator, decoded into raw; sets decoded.origin_x / origin_y. Returns false, with raw
// unusable, after a libjpeg error that followed a warning: TurboJPEG keeps such an image (as a
// warning), so the caller decodes it whole as before.
bool decode_region(const uint8_t* data, size_t size, const std::string& name, const Header& header,
                   int denominator, const Region& needed, Decoded& decoded, Pixels& raw) {
  thread_local RegionDecompressor decompressor;
  const double scale = 1.0 / denominator;
  const tjscalingfactor factor{1, denominator};
  const int64_t width = TJSCALED(header.width, factor), height = TJSCALED(header.height, factor);
  const auto low = [](double v, int64_t size) {
    return std::clamp<int64_t>(static_cast<int64_t>(std::floor(v)) - kRegionMargin, 0, size - 1);
  };
  const auto high = [](double v, int64_t first, int64_t size) {
    return std::clamp<int64_t>(static_cast<int64_t>(std::ceil(v)) + kRegionMargin, first + 1, size);
  };
  Bounds bounds{low(needed.x * scale, width), low(needed.y * scale, height), 0, 0};
  bounds.x1 = high((needed.x + needed.width) * scale, bounds.x0, width);
  bounds.y1 = high((needed.y + needed.height) * scale, bounds.y0, height);
  int64_t origin_x = 0;
  const bool complete = read_region(decompressor, data, size, denominator, decoded.layout, bounds, raw, origin_x);
  const bool warned = decompressor.errors.manager.num_warnings > 0;
  if (!complete || warned) refuse_if_failed(!complete && !warned, decompressor.errors.message, name);
  if (!complete) return false;
  decoded.origin_x = origin_x, decoded.origin_y = bounds.y0;
  return true;
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
                    int64_t min_width, int64_t min_height, Pixels& raw, const Region* needed) {
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
  if (needed != nullptr && decoded.orientation == 1 &&
      decode_region(data, size, name, header, factor.denom, *needed, decoded, raw)) {
    return decoded;
  }
  const int width = TJSCALED(header.width, factor), height = TJSCALED(header.height, factor);
  raw.resize(width, height, layout_channels(decoded.layout));
  if (tjDecompress2(handle, data, static_cast<unsigned long>(size), raw.data.data(), width, 0, height,
                    pixel_format(decoded.layout), kFlags) != 0) {
    const bool fatal = tjGetErrorCode(handle) == TJERR_FATAL;
    const std::string message = tjGetErrorStr2(handle);
    forget_decompressor();
    refuse_if_failed(fatal, message, name);
  }
  return decoded;
}

}  // namespace slideformer::data::detail
