// The IDX reader: shapes and bytes of good files, one-line errors naming the file for bad ones.
#include <ATen/ATen.h>
#include <zlib.h>

#include <cstdint>
#include <fstream>
#include <vector>

#include "idx.h"
#include "scratch_dir.h"

namespace slideformer::app {
namespace {

using Bytes = std::vector<uint8_t>;

// IDX header of unsigned bytes with the given dimensions.
Bytes idx_header(const std::vector<uint32_t>& dims) {
  Bytes header{0, 0, 0x08, static_cast<uint8_t>(dims.size())};
  for (uint32_t d : dims) {
    for (int shift = 24; shift >= 0; shift -= 8) header.push_back(static_cast<uint8_t>(d >> shift));
  }
  return header;
}

Bytes concat(Bytes a, const Bytes& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

Bytes counting(size_t n) {
  Bytes bytes(n);
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<uint8_t>(i % 10);
  return bytes;
}

void write_gzip(const std::string& path, const Bytes& bytes) {
  gzFile file = gzopen(path.c_str(), "wb");
  ASSERT_NE(file, nullptr) << path;
  ASSERT_EQ(gzwrite(file, bytes.data(), static_cast<unsigned>(bytes.size())), static_cast<int>(bytes.size()));
  ASSERT_EQ(gzclose(file), Z_OK);
}

Bytes read_raw(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}

void write_raw(const std::string& path, const Bytes& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

using IdxReaderTest = slideformer::testing::ScratchDirTest;

TEST_F(IdxReaderTest, ReadsShapeAndBytes) {
  const std::string file = path("images.gz");
  write_gzip(file, concat(idx_header({2, 3, 4}), counting(24)));
  const at::Tensor images = read_idx(file, 3);
  EXPECT_EQ(images.sizes(), (at::IntArrayRef{2, 3, 4}));
  EXPECT_EQ(images.scalar_type(), at::kByte);
  EXPECT_TRUE(at::equal(images.flatten(), at::arange(24, at::kLong).remainder(10).to(at::kByte)));
}

TEST_F(IdxReaderTest, RejectsTruncatedData) {
  const std::string file = path("images.gz");
  write_gzip(file, concat(idx_header({2, 3, 4}), counting(5)));
  EXPECT_RUNTIME_ERROR(read_idx(file, 3), file + ": truncated: expected 24 data bytes, found 5");
}

// 2^31 * 2^31 * 4 wraps to 0 in 64 bits: without the overflow check, an empty payload "matched"
// and the reader copied 2^64 bytes.
TEST_F(IdxReaderTest, RejectsDimensionsWhoseProductOverflows) {
  const std::string file = path("images.gz");
  write_gzip(file, idx_header({1u << 31, 1u << 31, 4}));
  EXPECT_RUNTIME_ERROR(read_idx(file, 3), file + ": corrupt: the IDX header's dimensions describe more than 2^64 bytes");
}

// Found by the IDX fuzzer (tests/fuzz/idx/regression-empty-with-huge-sizes): the product is 0, so
// an empty payload matched, and the tensor's strides overflowed inside torch (a c10::Error that
// escaped the reader's contract).
TEST_F(IdxReaderTest, RejectsEmptyDimensionsWhoseOtherSizesOverflow) {
  const std::string file = path("images.gz");
  write_gzip(file, idx_header({0, 0xffffffffu, 0xffffffffu}));
  EXPECT_RUNTIME_ERROR(read_idx(file, 3), file + ": corrupt: the IDX header's nonzero dimensions multiply past 2^63");
}

TEST_F(IdxReaderTest, RejectsTruncatedHeader) {
  const std::string file = path("images.gz");
  Bytes header = idx_header({2, 3, 4});
  header.resize(10);
  write_gzip(file, header);
  EXPECT_RUNTIME_ERROR(read_idx(file, 3), file + ": truncated: incomplete IDX header");
}

TEST_F(IdxReaderTest, RejectsBadMagicAndWrongDimensionCount) {
  const std::string file = path("labels.gz");
  Bytes header = idx_header({6});
  header[2] = 0x0D;  // float data, not unsigned bytes
  write_gzip(file, concat(header, counting(6)));
  EXPECT_RUNTIME_ERROR(read_idx(file, 1), file + ": not an IDX file of 1-d unsigned bytes (bad magic number)");
  write_gzip(file, concat(idx_header({6}), counting(6)));
  EXPECT_RUNTIME_ERROR(read_idx(file, 3), file + ": not an IDX file of 3-d unsigned bytes (bad magic number)");
}

TEST_F(IdxReaderTest, RejectsBytesAfterTheData) {
  const std::string file = path("labels.gz");
  write_gzip(file, concat(idx_header({6}), counting(9)));
  EXPECT_RUNTIME_ERROR(read_idx(file, 1), file + ": corrupt: 3 bytes after the data");
}

TEST_F(IdxReaderTest, RejectsCorruptAndCutGzipStreams) {
  const std::string file = path("images.gz");
  write_gzip(file, concat(idx_header({50, 20, 20}), counting(20000)));
  Bytes raw = read_raw(file);
  Bytes cut(raw.begin(), raw.begin() + raw.size() / 2);
  write_raw(file, cut);
  try {
    read_idx(file, 3);
    ADD_FAILURE() << "a gzip stream cut in half was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(file + ": ", 0), 0u) << e.what();
  }
  for (size_t i = 20; i < raw.size() - 8; ++i) raw[i] ^= 0x5A;  // scramble the deflate data
  write_raw(file, raw);
  try {
    read_idx(file, 3);
    ADD_FAILURE() << "a scrambled gzip stream was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_EQ(std::string(e.what()).rfind(file + ": corrupt gzip data", 0), 0u) << e.what();
  }
}

TEST_F(IdxReaderTest, RejectsMissingFile) {
  const std::string file = path("nothing.gz");
  EXPECT_RUNTIME_ERROR(read_idx(file, 3), file + ": cannot open the file");
}

TEST_F(IdxReaderTest, LoadsAMatchingPairAndAppliesTheLimit) {
  write_gzip(path("t10k-images-idx3-ubyte.gz"), concat(idx_header({5, 2, 2}), counting(20)));
  write_gzip(path("t10k-labels-idx1-ubyte.gz"), concat(idx_header({5}), counting(5)));
  const Dataset data = load_fashion_mnist(dir(), false, 3);
  EXPECT_EQ(data.images.sizes(), (at::IntArrayRef{3, 1, 2, 2}));
  EXPECT_TRUE(at::equal(data.labels, at::arange(3, at::kLong)));
}

TEST_F(IdxReaderTest, RejectsLabelsThatDoNotFitTheImages) {
  const std::string labels = path("train-labels-idx1-ubyte.gz");
  write_gzip(path("train-images-idx3-ubyte.gz"), concat(idx_header({5, 2, 2}), counting(20)));
  write_gzip(labels, concat(idx_header({4}), counting(4)));
  EXPECT_RUNTIME_ERROR(load_fashion_mnist(dir(), true),
                       labels + ": has 4 labels for 5 images in " + path("train-images-idx3-ubyte.gz"));
  write_gzip(labels, concat(idx_header({5}), Bytes{0, 1, 2, 10, 3}));
  EXPECT_RUNTIME_ERROR(load_fashion_mnist(dir(), true), labels + ": corrupt: label 10 outside 0..9");
  // Nothing to train on or to evaluate.
  write_gzip(path("train-images-idx3-ubyte.gz"), idx_header({0, 2, 2}));
  write_gzip(labels, idx_header({0}));
  EXPECT_RUNTIME_ERROR(load_fashion_mnist(dir(), true), path("train-images-idx3-ubyte.gz") + ": holds no images");
}

}  // namespace
}  // namespace slideformer::app
