#include "image_files.h"

#include <ATen/ATen.h>
#include <png.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <zlib.h>

#include <fstream>
#include <stdexcept>
#include <vector>

namespace slideformer::testing {

std::string encode_jpeg(const at::Tensor& pixels, int quality) {
  const at::Tensor p = pixels.contiguous();
  const int h = static_cast<int>(p.size(0)), w = static_cast<int>(p.size(1)), c = static_cast<int>(p.size(2));
  tjhandle handle = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  const int status = tjCompress2(handle, p.data_ptr<uint8_t>(), w, 0, h, c == 1 ? TJPF_GRAY : TJPF_RGB, &out, &size,
                                 c == 1 ? TJSAMP_GRAY : TJSAMP_420, quality, 0);
  std::string bytes(reinterpret_cast<const char*>(out), size);
  tjFree(out);
  tjDestroy(handle);
  if (status != 0) throw std::runtime_error("encode_jpeg failed");
  return bytes;
}

std::string encode_png(const at::Tensor& pixels) {
  const at::Tensor p = pixels.contiguous();
  png_image image{};
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(p.size(1));
  image.height = static_cast<png_uint_32>(p.size(0));
  image.format = p.size(2) == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, p.data_ptr<uint8_t>(), 0, nullptr)) {
    throw std::runtime_error("encode_png: size query failed");
  }
  std::string bytes(size, '\0');
  if (!png_image_write_to_memory(&image, bytes.data(), &size, 0, p.data_ptr<uint8_t>(), 0, nullptr)) {
    throw std::runtime_error("encode_png failed");
  }
  bytes.resize(size);
  return bytes;
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

namespace {

std::vector<uint8_t> gunzip_file(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error("cannot open " + path);
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  for (int n; (n = gzread(file, chunk, sizeof(chunk))) > 0;) bytes.insert(bytes.end(), chunk, chunk + n);
  gzclose(file);
  return bytes;
}

}  // namespace

std::pair<at::Tensor, at::Tensor> fashion_mnist(int64_t count) {
  const std::string dir = "/usr/share/datasets/fashion-mnist/";
  const std::vector<uint8_t> images = gunzip_file(dir + "train-images-idx3-ubyte.gz");
  const std::vector<uint8_t> labels = gunzip_file(dir + "train-labels-idx1-ubyte.gz");
  return {at::from_blob(const_cast<uint8_t*>(images.data()) + 16, {count, 28, 28}, at::kByte).clone(),
          at::from_blob(const_cast<uint8_t*>(labels.data()) + 8, {count}, at::kByte).to(at::kLong)};
}

at::Tensor varied_picture(const at::Tensor& picture, int64_t index) {
  const int64_t h = 28 + (index * 7) % 19, w = 28 + (index * 5) % 23;  // odd sizes up to 46x50
  const at::Tensor rows = (at::arange(h, at::kLong) * 28).div(h, "floor");
  const at::Tensor cols = (at::arange(w, at::kLong) * 28).div(w, "floor");
  const at::Tensor resized = picture.index_select(0, rows).index_select(1, cols).unsqueeze(2);
  if (index % 3 == 0) return resized.contiguous();  // gray
  const at::Tensor tint = at::tensor({1.0, 0.8 + 0.05 * (index % 4), 0.6}, at::kDouble);
  return (resized.to(at::kDouble) * tint).round().clamp(0, 255).to(at::kByte).contiguous();
}

int64_t write_fashion_folder(const std::string& root, int64_t count, int64_t classes) {
  const auto [images, labels] = fashion_mnist(count * 12 / classes + 64);
  ::mkdir(root.c_str(), 0755);
  for (int64_t c = 0; c < classes; ++c) ::mkdir((root + "/" + std::to_string(c)).c_str(), 0755);
  int64_t written = 0;
  for (int64_t i = 0; i < images.size(0) && written < count; ++i) {
    const int64_t label = labels[i].item<int64_t>();
    if (label >= classes) continue;
    const at::Tensor picture = varied_picture(images[i], written);
    const bool jpeg = written % 2 == 0;
    char name[32];
    std::snprintf(name, sizeof(name), "%04lld.%s", static_cast<long long>(written), jpeg ? "jpg" : "png");
    write_file(root + "/" + std::to_string(label) + "/" + name, jpeg ? encode_jpeg(picture) : encode_png(picture));
    ++written;
  }
  return written;
}

}  // namespace slideformer::testing
