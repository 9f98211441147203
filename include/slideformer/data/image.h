#pragma once
// Decoding JPEG and PNG files into uint8 (H, W, C) tensors (libjpeg-turbo's TurboJPEG, libpng).
//
//   auto image = slideformer::data::read_image("photo.jpg");          // (H, W, 3) uint8 RGB
//   auto gray = slideformer::data::read_image("scan.png", slideformer::data::DecodeOptions().channels(1));
//
// What every decoder does, so that a file gives the pixels Pillow gives:
//   - EXIF orientation (JPEG APP1, PNG eXIf) is applied: the tensor is the upright image.
//   - Colour: grayscale, RGB, CMYK / YCCK (Adobe-inverted when an Adobe marker says so) and
//     palette images become `channels` channels: 3 (RGB; gray is replicated, CMYK converted as
//     Pillow's convert("RGB") does) or 1 (gray; colour becomes ITU-R 601 luma as Pillow's
//     convert("L")). Alpha is dropped, not composited (as convert("RGB")).
//   - 16-bit PNG samples keep their high byte; palette and low-bit-depth PNGs are expanded.
//   - Sizes come from the header first: an image of more than `max_pixels` pixels is refused
//     before anything of its size is allocated.
//   - A corrupt, truncated or unsupported file throws ImageError "<name>: <problem>".
#include <ATen/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace slideformer::data {

// Pillow's limit (its DecompressionBombError threshold): about 13,400 x 13,400 pixels.
inline constexpr int64_t kDefaultMaxPixels = 178956970;

// Every problem with an image file. what() is "<file>: <problem>".
class ImageError : public std::runtime_error {
 public:
  ImageError(const std::string& file, const std::string& problem)
      : std::runtime_error(file + ": " + problem), file_(file) {}
  const std::string& file() const { return file_; }

 private:
  std::string file_;
};

enum class ImageFormat { kJpeg, kPng };

// What the header says, after EXIF orientation (width and height swapped for a quarter turn).
struct ImageInfo {
  ImageFormat format = ImageFormat::kJpeg;
  int64_t width = 0, height = 0;
  int64_t channels = 0;  // stored colour channels: 1 gray, 3 colour, 4 CMYK (alpha not counted)
  int orientation = 1;   // EXIF orientation 1..8 (1 = as stored)
};

struct DecodeOptions {
  // Channels of the result: 1 (gray) or 3 (RGB).
  TORCH_ARG(int64_t, channels) = 3;
  // Larger images are refused (ImageError) before any allocation of their size.
  TORCH_ARG(int64_t, max_pixels) = kDefaultMaxPixels;
  // JPEG only: decode at the smallest DCT scale (1/2, 1/4, 1/8) at which the image stays at least
  // min_width x min_height (upright); 0 = full size. PNG is always decoded at full size.
  TORCH_ARG(int64_t, min_width) = 0;
  TORCH_ARG(int64_t, min_height) = 0;
};

// The header of an encoded image (nothing decoded). `name` names it in errors.
ImageInfo read_image_info(const uint8_t* data, size_t size, const std::string& name);

// Decodes an encoded JPEG or PNG (recognised by its signature, not its name) into a contiguous
// uint8 (H, W, channels) tensor, upright.
at::Tensor decode_image(const uint8_t* data, size_t size, const std::string& name,
                        const DecodeOptions& options = {});

// Reads and decodes a file. Errors name the file.
at::Tensor read_image(const std::string& path, const DecodeOptions& options = {});

// The whole file (ImageError naming it when it cannot be read, is empty or is over 1 GiB).
std::string read_file_bytes(const std::string& path);

}  // namespace slideformer::data
