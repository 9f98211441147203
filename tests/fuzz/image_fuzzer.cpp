// Fuzz target: the image decoders (slideformer/data/image.h) and the transforms that run them. The
// first byte picks what runs: bit 0 the channels (1 or 3), bits 1-2 full-size decode, a DCT-scaled
// decode (min sizes from the next bytes), the train transform or the eval transform (16 x 16). The
// rest is the file. The contract: read_image_info agrees with the decoded tensor's size, the
// transforms return finite (C, 16, 16) images, or ImageError "<name>: <problem>" is thrown, after
// which a valid JPEG still decodes on the thread (a refusal leaves no state behind).
#include <ATen/ATen.h>

#include <cstdlib>
#include <string>

#include "fuzz_input.h"
#include "slideformer/data/image.h"
#include "slideformer/data/transforms.h"

namespace {

using namespace slideformer::data;

constexpr const char* kName = "fuzz-image";
// A small pixel limit keeps each input fast (a large header is refused like a bomb).
constexpr int64_t kMaxPixels = 1 << 22;

// An 8 x 8 gray JPEG (baseline, optimised Huffman tables).
const std::string kValidJpeg(
    "\xFF\xD8\xFF\xDB\x00\x43\x00\x10\x0B\x0C\x0E\x0C\x0A\x10\x0E\x0D\x0E\x12\x11\x10\x13\x18\x28\x1A"
    "\x18\x16\x16\x18\x31\x23\x25\x1D\x28\x3A\x33\x3D\x3C\x39\x33\x38\x37\x40\x48\x5C\x4E\x40\x44\x57"
    "\x45\x37\x38\x50\x6D\x51\x57\x5F\x62\x67\x68\x67\x3E\x4D\x71\x79\x70\x64\x78\x5C\x65\x67\x63\xFF"
    "\xC0\x00\x0B\x08\x00\x08\x00\x08\x01\x01\x11\x00\xFF\xC4\x00\x14\x00\x01\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x00\x01\xFF\xC4\x00\x18\x10\x00\x02\x03\x00\x00\x00\x00\x00\x00"
    "\x00\x00\x00\x00\x00\x00\x00\x00\x03\x06\x63\xA1\xFF\xDA\x00\x08\x01\x01\x00\x00\x3F\x00\x11\x0E"
    "\xAF\x0F\xFF\xD9",
    148);

void expect(bool ok) {
  if (!ok) std::abort();
}

// The decoders of this thread still read a valid JPEG whole (TurboJPEG) and as a crop's region
// (the libjpeg API of the train transform).
bool still_decodes() {
  const auto* data = reinterpret_cast<const uint8_t*>(kValidJpeg.data());
  DataConfig config;
  config.image_size = 16;
  try {
    return decode_image(data, kValidJpeg.size(), "valid").size(0) == 8 &&
           ImageTransform::train(config)(data, kValidJpeg.size(), "valid").size(1) == 16;
  } catch (const ImageError&) {
    return false;
  }
}

void run(slideformer::fuzz::FuzzInput& in) {
  const uint8_t mode = in.byte();
  const int64_t channels = mode & 1 ? 1 : 3;
  const int what = (mode >> 1) & 3;
  const int64_t min_width = in.byte(), min_height = in.byte();
  const std::string file = in.rest();
  const auto* data = reinterpret_cast<const uint8_t*>(file.data());
  const DecodeOptions decode = DecodeOptions().channels(channels).max_pixels(kMaxPixels);
  if (what < 2) {
    const ImageInfo info = read_image_info(data, file.size(), kName);
    const at::Tensor image = decode_image(data, file.size(), kName,
                                          what == 0 ? decode : DecodeOptions(decode).min_width(min_width).min_height(min_height));
    expect(image.dim() == 3 && image.size(2) == channels && image.scalar_type() == at::kByte && image.is_contiguous());
    if (what == 0) expect(image.size(0) == info.height && image.size(1) == info.width);
    expect(image.size(0) <= info.height && image.size(1) <= info.width && image.numel() > 0);
    return;
  }
  DataConfig config;
  config.image_size = 16;
  config.channels = channels;
  config.mean.assign(channels, 0.5);
  config.std.assign(channels, 0.25);
  const ImageTransform transform = what == 2 ? ImageTransform::train(config, TrainTransformOptions().decode(decode))
                                             : ImageTransform::eval(config, EvalTransformOptions().decode(decode));
  const at::Tensor out = transform(data, file.size(), kName, min_width * 256 + min_height);
  expect(out.sizes() == at::IntArrayRef({channels, 16, 16}) && out.isfinite().all().item<bool>());
  // Normalised 0..255 values stay within (0 - 0.5) / 0.25 .. (1 - 0.5) / 0.25, up to rounding.
  expect(out.min().item<float>() >= -2.001f && out.max().item<float>() <= 2.001f);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  slideformer::fuzz::FuzzInput in(data, size);
  try {
    run(in);
  } catch (const ImageError& error) {
    expect(error.file() == kName && std::string(error.what()).rfind(std::string(kName) + ": ", 0) == 0);
    expect(still_decodes());
  }
  return 0;
}
