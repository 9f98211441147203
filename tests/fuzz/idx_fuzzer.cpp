// Fuzz target: the IDX reader (apps/slideformer/idx.h). The first byte picks what is read: bit 0 a
// 1-d or 3-d file, bit 1 gzip-compresses the rest (else it is read as it is, which covers corrupt
// gzip too), bit 2 loads a dataset directory whose images and labels files split the rest at the
// position the next two bytes give. The reader's contract: a uint8 tensor of the expected rank,
// a dataset of matching images and labels in 0..9, or std::runtime_error "<path>: <problem>".
#include <ATen/ATen.h>
#include <zlib.h>

#include <cstdlib>
#include <stdexcept>
#include <string>

#include "fuzz_input.h"
#include "idx.h"

namespace {

using slideformer::fuzz::FuzzInput;
using slideformer::fuzz::scratch_file;

std::string gzip(const std::string& bytes) {
  z_stream stream{};
  if (deflateInit2(&stream, Z_BEST_SPEED, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) std::abort();
  std::string out(deflateBound(&stream, bytes.size()) + 32, '\0');
  stream.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(bytes.data()));
  stream.avail_in = static_cast<uInt>(bytes.size());
  stream.next_out = reinterpret_cast<Bytef*>(out.data());
  stream.avail_out = static_cast<uInt>(out.size());
  if (deflate(&stream, Z_FINISH) != Z_STREAM_END) std::abort();
  out.resize(stream.total_out);
  deflateEnd(&stream);
  return out;
}

void expect(bool ok) {
  if (!ok) std::abort();
}

// The message of every refusal starts with the path of the file at fault.
void expect_message_names_a_file(const std::runtime_error& error, std::initializer_list<std::string> paths) {
  const std::string message = error.what();
  bool named = false;
  for (const std::string& path : paths) named = named || message.rfind(path + ": ", 0) == 0;
  expect(named);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  const uint8_t mode = in.byte();
  const bool compress = mode & 2;
  if (mode & 4) {
    const size_t split = in.raw<uint16_t>();
    const std::string rest = in.rest();
    const std::string images = rest.substr(0, std::min(split, rest.size()));
    const std::string labels = rest.substr(std::min(split, rest.size()));
    const std::string images_path = scratch_file("train-images-idx3-ubyte.gz", compress ? gzip(images) : images);
    const std::string labels_path = scratch_file("train-labels-idx1-ubyte.gz", compress ? gzip(labels) : labels);
    try {
      const int64_t limit = mode >> 4;
      const auto dataset = slideformer::app::load_fashion_mnist(slideformer::fuzz::scratch_dir(), true, limit);
      const int64_t n = dataset.images.size(0);
      expect(dataset.images.dim() == 4 && dataset.images.size(1) == 1 && dataset.images.scalar_type() == at::kByte);
      expect(dataset.labels.dim() == 1 && dataset.labels.size(0) == n && n > 0 && (limit == 0 || n <= limit));
      expect(dataset.labels.min().item<int64_t>() >= 0 && dataset.labels.max().item<int64_t>() <= 9);
    } catch (const std::runtime_error& error) {
      expect_message_names_a_file(error, {images_path, labels_path});
    }
    return 0;
  }
  const int dims = mode & 1 ? 3 : 1;
  const std::string bytes = in.rest();
  const std::string path = scratch_file("data-idx", compress ? gzip(bytes) : bytes);
  try {
    const at::Tensor tensor = slideformer::app::read_idx(path, dims);
    expect(tensor.scalar_type() == at::kByte && tensor.dim() == dims && tensor.is_contiguous());
  } catch (const std::runtime_error& error) {
    expect_message_names_a_file(error, {path});
  }
  return 0;
}
