// Fuzz target: the image decoders (slideformer/data/image.h) and the transforms that run them. The
// first byte picks what runs: bit 0 the channels (1 or 3), bits 1-2 full-size decode, a DCT-scaled
// decode (min sizes from the next bytes), the train transform or the eval transform (16 x 16). The
// rest is the file. The contract: read_image_info agrees with the decoded tensor's size, the
// transforms return finite (C, 16, 16) images, or ImageError "<name>: <problem>" is thrown.
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

void expect(bool ok) {
  if (!ok) std::abort();
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
  }
  return 0;
}
