#include "idx.h"

#include <ATen/ATen.h>
#include <zlib.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <vector>

namespace slideformer::app {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

// The whole (decompressed) file; gzread passes plain files through unchanged.
std::vector<uint8_t> read_all(const std::string& path) {
  std::unique_ptr<gzFile_s, int (*)(gzFile)> file(gzopen(path.c_str(), "rb"), gzclose);
  if (!file) fail(path, "cannot open the file");
  std::vector<uint8_t> bytes;
  uint8_t chunk[1 << 16];
  while (true) {
    const int n = gzread(file.get(), chunk, sizeof(chunk));
    if (n < 0) {
      int code = 0;
      fail(path, std::string("corrupt gzip data (") + gzerror(file.get(), &code) + ")");
    }
    if (n == 0) break;
    bytes.insert(bytes.end(), chunk, chunk + n);
  }
  int code = 0;
  const char* message = gzerror(file.get(), &code);
  if (code != Z_OK && code != Z_STREAM_END) fail(path, std::string("corrupt gzip data (") + message + ")");
  return bytes;
}

uint32_t big_endian(const uint8_t* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

}  // namespace

at::Tensor read_idx(const std::string& path, int expected_dims) {
  const std::vector<uint8_t> bytes = read_all(path);
  if (bytes.size() < 4) fail(path, "truncated: no IDX header");
  // Magic: two zero bytes, type 0x08 (unsigned byte), then the number of dimensions.
  if (bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] != expected_dims) {
    fail(path, "not an IDX file of " + std::to_string(expected_dims) +
                   "-d unsigned bytes (bad magic number)");
  }
  const size_t header = 4 + 4 * static_cast<size_t>(expected_dims);
  if (bytes.size() < header) fail(path, "truncated: incomplete IDX header");
  std::vector<int64_t> shape;
  const size_t found = bytes.size() - header;
  size_t expected = 1;
  bool overflow = false;  // a product past 2^64 could wrap to a size that matches
  for (int d = 0; d < expected_dims; ++d) {
    shape.push_back(big_endian(bytes.data() + 4 + 4 * d));
    overflow = overflow || __builtin_mul_overflow(expected, static_cast<size_t>(shape.back()), &expected);
  }
  if (overflow) fail(path, "corrupt: the IDX header's dimensions describe more than 2^64 bytes");
  // An empty tensor's strides still multiply its other sizes: (0, 2^32 - 1, 2^32 - 1) matches an
  // empty payload but has no strides that fit (found by the IDX fuzzer).
  int64_t nonzero = 1;
  for (const int64_t size : shape) overflow = overflow || (size != 0 && __builtin_mul_overflow(nonzero, size, &nonzero));
  if (overflow) fail(path, "corrupt: the IDX header's nonzero dimensions multiply past 2^63");
  if (found < expected) {
    fail(path, "truncated: expected " + std::to_string(expected) + " data bytes, found " +
                   std::to_string(found));
  }
  if (found > expected) {
    fail(path, "corrupt: " + std::to_string(found - expected) + " bytes after the data");
  }
  return at::from_blob(const_cast<uint8_t*>(bytes.data()) + header, shape, at::kByte).clone();
}

Dataset load_fashion_mnist(const std::string& dir, bool train, int64_t limit) {
  const std::string prefix = dir + "/" + (train ? "train" : "t10k");
  const std::string images_path = prefix + "-images-idx3-ubyte.gz";
  const std::string labels_path = prefix + "-labels-idx1-ubyte.gz";
  at::Tensor images = read_idx(images_path, 3);
  at::Tensor labels = read_idx(labels_path, 1).to(at::kLong);
  if (images.size(0) == 0) fail(images_path, "holds no images");
  if (images.size(0) != labels.size(0)) {
    fail(labels_path, "has " + std::to_string(labels.size(0)) + " labels for " +
                          std::to_string(images.size(0)) + " images in " + images_path);
  }
  if (labels.numel() > 0 && labels.max().item<int64_t>() > 9) {
    fail(labels_path, "corrupt: label " + std::to_string(labels.max().item<int64_t>()) +
                          " outside 0..9");
  }
  if (limit > 0 && limit < images.size(0)) {
    images = images.narrow(0, 0, limit);
    labels = labels.narrow(0, 0, limit);
  }
  return {images.unsqueeze(1).contiguous(), labels.contiguous()};
}

}  // namespace slideformer::app
