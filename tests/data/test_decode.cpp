// Decoders: colour conversion, orientation, DCT scaling, and every bad file refused with one
// message that names it. (Pixel parity with Pillow: tests/python/test_data.py.)
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <zlib.h>

#include "image_files.h"
#include "scratch_dir.h"
#include "slideformer/data/image.h"
#include "slideformer/data/transforms.h"

namespace slideformer::data {
namespace {

using testing::encode_jpeg;
using testing::encode_png;
using testing::write_file;

class Decode : public slideformer::testing::ScratchDirTest {
 protected:
  // Expects read_image(file) to throw ImageError "<file>: <problem...>" starting with `problem`.
  void expect_refused(const std::string& file, const std::string& problem, const DecodeOptions& options = {}) {
    try {
      read_image(file, options);
      ADD_FAILURE() << file << ": decoded; expected " << problem;
    } catch (const ImageError& error) {
      EXPECT_EQ(error.file(), file);
      EXPECT_EQ(std::string(error.what()).rfind(file + ": " + problem, 0), 0u) << error.what();
    }
  }
};

at::Tensor gradient(int64_t h, int64_t w, int64_t c) {
  return (at::arange(h * w * c, at::kLong) * 7 % 251).to(at::kByte).view({h, w, c});
}

TEST_F(Decode, PngIsExactInGrayAndRgbAndConvertsBetweenThem) {
  const at::Tensor rgb = gradient(13, 17, 3), gray = gradient(13, 17, 1);
  write_file(path("rgb.png"), encode_png(rgb));
  write_file(path("gray.png"), encode_png(gray));
  EXPECT_TRUE(at::equal(read_image(path("rgb.png")), rgb));
  EXPECT_TRUE(at::equal(read_image(path("gray.png"), DecodeOptions().channels(1)), gray));
  EXPECT_TRUE(at::equal(read_image(path("gray.png")), gray.expand({13, 17, 3})));
  // Pillow's convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16.
  const at::Tensor w = rgb.to(at::kLong);
  const at::Tensor luma = (w.select(2, 0) * 19595 + w.select(2, 1) * 38470 + w.select(2, 2) * 7471 + 32768)
                              .div(65536, "floor").to(at::kByte).unsqueeze(2);
  EXPECT_TRUE(at::equal(read_image(path("rgb.png"), DecodeOptions().channels(1)), luma));
}

TEST_F(Decode, JpegIsCloseToItsSourceAndDctScalingHalvesTheSize) {
  const at::Tensor smooth = (at::arange(64, at::kFloat).view({64, 1, 1}) * 2).expand({64, 96, 3});
  const at::Tensor pixels = (smooth + at::arange(96, at::kFloat).view({1, 96, 1})).to(at::kByte).contiguous();
  write_file(path("a.jpg"), encode_jpeg(pixels, 95));
  const at::Tensor full = read_image(path("a.jpg"));
  ASSERT_EQ(full.sizes(), pixels.sizes());
  EXPECT_LT((full.to(at::kFloat) - pixels.to(at::kFloat)).abs().mean().item<float>(), 2.0f);
  const at::Tensor half = read_image(path("a.jpg"), DecodeOptions().min_width(40).min_height(30));
  EXPECT_EQ(half.sizes(), at::IntArrayRef({32, 48, 3}));
  const at::Tensor eighth = read_image(path("a.jpg"), DecodeOptions().min_width(12).min_height(8));
  EXPECT_EQ(eighth.sizes(), at::IntArrayRef({8, 12, 3}));
}

TEST_F(Decode, OneByOneImagesAreValidAndResizedLikeAnyOther) {
  const at::Tensor pixel = at::tensor({200, 100, 50}, at::kByte).view({1, 1, 3});
  write_file(path("one.png"), encode_png(pixel));
  write_file(path("one.jpg"), encode_jpeg(pixel, 100));
  EXPECT_TRUE(at::equal(read_image(path("one.png")), pixel));
  EXPECT_EQ(read_image(path("one.jpg")).sizes(), at::IntArrayRef({1, 1, 3}));
  DataConfig config;
  config.image_size = 8;
  const at::Tensor out = ImageTransform::eval(config)(path("one.png"));
  const at::Tensor expected = (at::tensor({200.0, 100.0, 50.0}) / 255 - at::tensor(config.mean)) / at::tensor(config.std);
  EXPECT_TRUE(at::allclose(out, expected.to(at::kFloat).view({3, 1, 1}).expand({3, 8, 8}), 1e-5, 1e-5));
  EXPECT_EQ(ImageTransform::train(config)(path("one.jpg"), 7).sizes(), at::IntArrayRef({3, 8, 8}));
}

TEST_F(Decode, BadFilesAreRefusedWithAMessageNamingThem) {
  const at::Tensor pixels = gradient(32, 40, 3);
  const std::string jpeg = encode_jpeg(pixels), png = encode_png(pixels);
  write_file(path("empty.jpg"), "");
  expect_refused(path("empty.jpg"), "empty file (0 bytes)");
  write_file(path("text.jpg"), "this is not an image, whatever its name says\n");
  expect_refused(path("text.jpg"), "not a JPEG or PNG image");
  write_file(path("truncated.jpg"), jpeg.substr(0, jpeg.size() / 2));
  expect_refused(path("truncated.jpg"), "truncated JPEG");
  write_file(path("header_only.jpg"), jpeg.substr(0, 20));
  expect_refused(path("header_only.jpg"), "not a readable JPEG");
  write_file(path("truncated.png"), png.substr(0, png.size() / 2));
  expect_refused(path("truncated.png"), "truncated PNG");
  // The CRC of the first IDAT chunk, flipped.
  std::string bad_crc = png;
  const size_t idat = bad_crc.find("IDAT");
  const uint32_t length = (uint8_t(bad_crc[idat - 4]) << 24) | (uint8_t(bad_crc[idat - 3]) << 16) |
                          (uint8_t(bad_crc[idat - 2]) << 8) | uint8_t(bad_crc[idat - 1]);
  bad_crc[idat + 4 + length] ^= 0x55;
  write_file(path("bad_crc.png"), bad_crc);
  expect_refused(path("bad_crc.png"), "corrupt PNG (IDAT: CRC error)");
  expect_refused(path("missing.png"), "cannot open (No such file or directory)");
  expect_refused(dir(), "is a directory");
}

// Found by the image fuzzer: each thread keeps one TurboJPEG decompressor, and libjpeg-turbo 2.1
// leaves a failed header's marker in it, so before the fix every JPEG read after this one on the
// thread was refused with its message ("Unsupported marker type 0x51"), as a loader's worker
// would refuse the rest of a dataset after one bad file.
TEST_F(Decode, AJpegWithABadHeaderLeavesTheNextJpegsReadable) {
  const at::Tensor pixels = gradient(32, 40, 3);
  const std::string jpeg = encode_jpeg(pixels);
  write_file(path("good.jpg"), jpeg);
  const at::Tensor before = read_image(path("good.jpg"));
  write_file(path("bad_marker.jpg"), std::string("\xFF\xD8\xFF\x51\x15\xB7\x54\x09\x71\xB3\xC6\x49\xE2\x8A\xFF\xD9", 16));
  expect_refused(path("bad_marker.jpg"), "not a readable JPEG (Unsupported marker type 0x51)");
  EXPECT_TRUE(at::equal(read_image(path("good.jpg")), before));
  EXPECT_EQ(read_image_info(reinterpret_cast<const uint8_t*>(jpeg.data()), jpeg.size(), "good.jpg").width, 40);
  // The train transform decodes a region with libjpeg's own API, the eval transform with TurboJPEG.
  DataConfig config;
  config.image_size = 16;
  const ImageTransform eval = ImageTransform::eval(config), train = ImageTransform::train(config);
  expect_refused(path("bad_marker.jpg"), "not a readable JPEG");
  EXPECT_EQ(eval(path("good.jpg"), 0).sizes(), at::IntArrayRef({3, 16, 16}));
  expect_refused(path("bad_marker.jpg"), "not a readable JPEG");
  EXPECT_EQ(train(path("good.jpg"), 0).sizes(), at::IntArrayRef({3, 16, 16}));
}

// A JPEG whose frame header claims width x height (its scan is that of a small image).
std::string jpeg_claiming(int width, int height) {
  std::string jpeg = encode_jpeg(gradient(16, 16, 3));
  const size_t sof = jpeg.find("\xFF\xC0");
  jpeg[sof + 5] = static_cast<char>(height >> 8), jpeg[sof + 6] = static_cast<char>(height & 0xFF);
  jpeg[sof + 7] = static_cast<char>(width >> 8), jpeg[sof + 8] = static_cast<char>(width & 0xFF);
  return jpeg;
}

// A PNG whose IHDR claims width x height, with a valid CRC.
std::string png_claiming(uint32_t width, uint32_t height) {
  std::string png = encode_png(gradient(16, 16, 3));
  for (int i = 0; i < 4; ++i) {
    png[16 + i] = static_cast<char>(width >> (24 - 8 * i));
    png[20 + i] = static_cast<char>(height >> (24 - 8 * i));
  }
  const uint32_t crc = static_cast<uint32_t>(crc32(0, reinterpret_cast<const Bytef*>(png.data() + 12), 17));
  for (int i = 0; i < 4; ++i) png[29 + i] = static_cast<char>(crc >> (24 - 8 * i));
  return png;
}

long peak_resident_kib() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss;
}

TEST_F(Decode, DecompressionBombsAreRefusedFromTheHeaderBeforeAnyLargeAllocation) {
  write_file(path("bomb.jpg"), jpeg_claiming(60000, 60000));
  write_file(path("bomb.png"), png_claiming(60000, 60000));
  const long before = peak_resident_kib();
  for (const char* name : {"bomb.jpg", "bomb.png"}) {
    expect_refused(path(name), "60000x60000 = 3600000000 pixels is over the limit of 178956970 pixels");
    try {
      ImageTransform::train(DataConfig{})(path(name), 1);
      ADD_FAILURE() << "the train transform decoded " << name;
    } catch (const ImageError& error) {
      EXPECT_NE(std::string(error.what()).find("over the limit"), std::string::npos) << error.what();
    }
  }
  // 60000 x 60000 RGB would be 10.8 GB: nothing near it (not even 1%) was touched.
  EXPECT_LT(peak_resident_kib() - before, 100 * 1024);
  // The limit is an option: a 4096 x 4096 header is refused under a 16 Mpx limit minus one.
  write_file(path("big.jpg"), jpeg_claiming(4096, 4096));
  expect_refused(path("big.jpg"), "4096x4096 = 16777216 pixels is over the limit of 16777215 pixels",
                 DecodeOptions().max_pixels(4096 * 4096 - 1));
}

// A JPEG with an EXIF APP1 segment carrying `orientation`.
std::string with_orientation(const std::string& jpeg, int orientation) {
  const std::string tiff = std::string("II*\0\x08\0\0\0", 8) + std::string("\x01\0", 2) +
                           std::string("\x12\x01\x03\0\x01\0\0\0", 8) + static_cast<char>(orientation) +
                           std::string("\0\0\0\0\0\0\0", 7);
  const std::string payload = std::string("Exif\0\0", 6) + tiff;
  const size_t length = payload.size() + 2;
  const std::string segment = std::string("\xFF\xE1", 2) + static_cast<char>(length >> 8) +
                              static_cast<char>(length & 0xFF) + payload;
  return jpeg.substr(0, 2) + segment + jpeg.substr(2);
}

TEST_F(Decode, ExifOrientationGivesTheUprightImage) {
  const at::Tensor pixels = gradient(16, 24, 1);
  const std::string jpeg = encode_jpeg(pixels, 100);
  write_file(path("plain.jpg"), jpeg);
  const at::Tensor stored = read_image(path("plain.jpg"), DecodeOptions().channels(1));
  // Each orientation's upright image, from the stored one (EXIF 2.3, as Pillow's exif_transpose).
  const std::vector<at::Tensor> upright = {
      stored, stored.flip(1), stored.flip({0, 1}), stored.flip(0), stored.transpose(0, 1),
      stored.transpose(0, 1).flip(1), stored.transpose(0, 1).flip({0, 1}), stored.transpose(0, 1).flip(0)};
  for (int orientation = 1; orientation <= 8; ++orientation) {
    const std::string file = path("o" + std::to_string(orientation) + ".jpg");
    write_file(file, with_orientation(jpeg, orientation));
    EXPECT_TRUE(at::equal(read_image(file, DecodeOptions().channels(1)), upright[orientation - 1]))
        << "orientation " << orientation;
    const std::string bytes = read_file_bytes(file);
    const ImageInfo info = read_image_info(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), file);
    EXPECT_EQ(info.orientation, orientation);
    EXPECT_EQ(info.width, orientation >= 5 ? 16 : 24);
  }
}

}  // namespace
}  // namespace slideformer::data
