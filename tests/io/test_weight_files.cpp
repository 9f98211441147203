// The weight-file readers and writer (include/slideformer/io/) against files of torch.save and of
// the safetensors package (tests/io/data/, made by make_fixtures.py: every value is a ramp this
// test recomputes), files made byte by byte here, and damaged files, whose messages are asserted.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "archive_builder.h"
#include "slideformer/io/safetensors.h"
#include "slideformer/io/torch_save.h"
#include "slideformer/io/weight_file.h"
#include "test_paths.h"

namespace {

using namespace slideformer::io;
using slideformer::io::testing::float_ramp_bytes;
using slideformer::io::testing::PickleWriter;
using slideformer::io::testing::torch_archive;

std::string data_file(const std::string& name) { return std::string(slideformer::test_paths::io_test_data) + "/" + name; }

std::string scratch(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "slideformer_io_" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

// make_fixtures.py's ramp: arange(numel) * scale + shift, in float64, then cast.
at::Tensor ramp(at::IntArrayRef shape, at::ScalarType dtype = at::kFloat, double scale = 0.25, double shift = 0.0) {
  return (at::arange(c10::multiply_integers(shape), at::kDouble) * scale + shift).to(dtype).view(shape);
}

std::vector<std::string> names(const NamedTensors& tensors) {
  std::vector<std::string> out;
  for (const auto& item : tensors) out.push_back(item.first);
  return out;
}

const at::Tensor& get(const NamedTensors& tensors, const std::string& name) {
  for (const auto& [key, tensor] : tensors) {
    if (key == name) return tensor;
  }
  throw std::out_of_range(name);
}

void expect_equal(const at::Tensor& actual, const at::Tensor& expected) {
  EXPECT_EQ(actual.scalar_type(), expected.scalar_type());
  EXPECT_EQ(actual.sizes(), expected.sizes());
  EXPECT_TRUE(at::equal(actual, expected)) << actual << "\nexpected\n" << expected;
}

#define EXPECT_FILE_ERROR(statement, expected)                                   \
  do {                                                                           \
    try {                                                                        \
      (void)(statement);                                                         \
      ADD_FAILURE() << "no exception; expected: " << (expected);                 \
    } catch (const WeightFileError& e) {                                         \
      EXPECT_EQ(std::string(e.what()), (expected));                              \
    }                                                                            \
  } while (0)

TEST(TorchSave, ReadsAPlainDictInItsOrder) {
  for (const char* file : {"plain.pt", "protocol4.pt"}) {
    const NamedTensors tensors = read_torch_save(data_file(file));
    EXPECT_EQ(names(tensors), (std::vector<std::string>{"weight", "bias", "steps"})) << file;
    expect_equal(get(tensors, "weight"), ramp({2, 3}));
    expect_equal(get(tensors, "bias"), at::tensor({-1.0f, 0.5f}));
    expect_equal(get(tensors, "steps"), at::scalar_tensor(7, at::kLong));
  }
}

TEST(TorchSave, ViewsShareTheirStorageWithTheirOffsetsAndStrides) {
  const NamedTensors tensors = read_torch_save(data_file("views.pt"));
  const at::Tensor& base = get(tensors, "base");
  expect_equal(base, ramp({4, 6}, at::kFloat, 1.0));
  expect_equal(get(tensors, "rows"), base.slice(0, 1, 3));
  expect_equal(get(tensors, "columns"), base.slice(1, 1, 6, 2));
  expect_equal(get(tensors, "transposed"), base.t());
  EXPECT_EQ(get(tensors, "rows").storage_offset(), 6);
  EXPECT_EQ(get(tensors, "columns").strides(), at::IntArrayRef({6, 2}));
  for (const char* view : {"rows", "columns", "transposed"}) {
    EXPECT_TRUE(get(tensors, view).storage().is_alias_of(base.storage())) << view;
  }
  expect_equal(get(tensors, "half"), ramp({5}, at::kHalf, 0.125));
  expect_equal(get(tensors, "bfloat16"), ramp({5}, at::kBFloat16, 0.125));
  expect_equal(get(tensors, "double"), ramp({3}, at::kDouble, 1.0 / 3));
  expect_equal(get(tensors, "long"), ramp({4}, at::kLong, 1'000'000'007));
  expect_equal(get(tensors, "flag"), at::tensor({1, 0}).to(at::kBool));
}

// As the official Slide-Transformer code saves: the model, its EMA, optimizer and scheduler
// state, numbers and a yacs CfgNode, none of which the reader needs to understand.
TEST(TorchSave, ReadsTheModelOfACheckpointWithoutItsOtherObjects) {
  const std::string file = data_file("checkpoint.pt");
  EXPECT_EQ(torch_save_state_dict_entries(file), (std::vector<std::string>{"model", "state_dict_ema"}));
  for (const auto& [entry, shift] : {std::pair{"", 0.0}, std::pair{"model", 0.0}, std::pair{"state_dict_ema", 10.0}}) {
    const NamedTensors tensors = read_torch_save(file, entry);
    EXPECT_EQ(names(tensors), (std::vector<std::string>{"fc.weight", "fc.bias", "norm.weight", "norm.bias"}));
    expect_equal(get(tensors, "fc.weight"), ramp({2, 3}, at::kFloat, 0.25, shift));
    expect_equal(get(tensors, "norm.bias"), ramp({2}, at::kFloat, 0.25, shift + 3));
  }
  EXPECT_FILE_ERROR(read_torch_save(file, "optimizer"),
                    file + ": has no state dict 'optimizer' (it has 'model', 'state_dict_ema')");
}

TEST(Safetensors, ReadsFilesOfTheSafetensorsPackage) {
  const SafetensorsContents contents = read_safetensors(data_file("weights.safetensors"));
  Metadata metadata = contents.metadata;  // the package writes them in no particular order
  std::sort(metadata.begin(), metadata.end());
  EXPECT_EQ(metadata, (Metadata{{"format", "pt"}, {"source", "tests/io/make_fixtures.py"}}));
  ASSERT_EQ(contents.tensors.size(), 6u);
  expect_equal(get(contents.tensors, "a.weight"), ramp({2, 3}));
  expect_equal(get(contents.tensors, "a.bias"), ramp({3}, at::kHalf, 0.5));
  expect_equal(get(contents.tensors, "b"), ramp({2, 2}, at::kBFloat16, 0.5, -1.0));
  expect_equal(get(contents.tensors, "index"), ramp({3}, at::kLong, 7));
  expect_equal(get(contents.tensors, "mask"), at::tensor({1, 0, 1}).to(at::kBool));
  expect_equal(get(contents.tensors, "empty"), at::zeros({0, 3}));
}

TEST(Safetensors, RoundTripsEveryDtypeAlignedToItsElementSize) {
  NamedTensors tensors;
  for (const auto dtype : {at::kByte, at::kHalf, at::kDouble, at::kBool, at::kBFloat16, at::kInt, at::kFloat, at::kLong,
                           at::kChar, at::kShort, at::kFloat8_e4m3fn, at::kFloat8_e5m2, at::kComplexFloat}) {
    tensors.emplace_back(std::string("t_") + c10::toString(dtype), ramp({3, 2}, at::kFloat, 0.5).t().to(dtype));
  }
  tensors.emplace_back("empty", at::empty({0, 4}));
  tensors.emplace_back("scalar", at::scalar_tensor(2.5));
  const std::string bytes = safetensors_bytes(tensors, {{"format", "pt"}, {"note", "\xc3\xa9t\xc3\xa9"}});
  const SafetensorsContents back = read_safetensors(bytes.data(), bytes.size(), "memory");
  EXPECT_EQ(back.metadata, (Metadata{{"format", "pt"}, {"note", "\xc3\xa9t\xc3\xa9"}}));
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, tensor] : tensors) expect_equal(get(back.tensors, name), tensor);
  // Each tensor's data starts at a multiple of its element size in the file.
  const uint64_t header = 8 + static_cast<uint8_t>(bytes[0]) + 256 * static_cast<uint8_t>(bytes[1]);
  EXPECT_EQ(header % 8, 0u);
  const std::string path = scratch("round_trip.safetensors", "");
  save_safetensors(path, tensors);
  EXPECT_EQ(read_safetensors(path).tensors.size(), tensors.size());
}

TEST(WeightFiles, ReadWeightsTellsTheFormatsApart) {
  EXPECT_EQ(detect_weight_file_format(data_file("plain.pt")), WeightFileFormat::kTorchSave);
  EXPECT_EQ(detect_weight_file_format(data_file("weights.safetensors")), WeightFileFormat::kSafetensors);
  EXPECT_EQ(names(read_weights(data_file("plain.pt"))), (std::vector<std::string>{"weight", "bias", "steps"}));
  EXPECT_EQ(read_weights(data_file("weights.safetensors")).size(), 6u);
  EXPECT_EQ(names(read_weights(data_file("checkpoint.pt"), "state_dict_ema")).size(), 4u);
  const std::string file = data_file("weights.safetensors");
  EXPECT_FILE_ERROR(read_weights(file, "model"),
                    file + ": a safetensors file holds one state dict, so no entry ('model') can be named");
  const std::string legacy = scratch("legacy.pt", std::string("\x80\x02\x8a\x0al\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.", 15));
  EXPECT_FILE_ERROR(read_weights(legacy), legacy + ": a legacy torch.save file (PyTorch before 1.6), which is not "
                                                   "supported: load it with torch.load and save it again with a current PyTorch");
  const std::string text = scratch("text.pt", "hello, weights");
  EXPECT_FILE_ERROR(read_weights(text), text + ": neither a safetensors file nor a torch.save archive (14 bytes)");
  const std::string missing = ::testing::TempDir() + "slideformer_io_absent.pt";
  EXPECT_FILE_ERROR(read_weights(missing), missing + ": cannot open the file (No such file or directory)");
  EXPECT_FILE_ERROR(read_weights(::testing::TempDir()), ::testing::TempDir() + ": is a directory, not a weight file");
}

}  // namespace
