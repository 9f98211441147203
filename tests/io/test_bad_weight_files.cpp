// Damaged and foreign weight files: each is refused with one WeightFileError naming the file and
// what is wrong, before anything the file declares is allocated.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

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

std::string scratch(const std::string& name, const std::string& bytes) {
  const std::string path = ::testing::TempDir() + "slideformer_io_bad_" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
  return path;
}

std::string contents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// The problem a WeightFileError reports for `statement`, after checking that it names `file`.
template <typename Statement>
std::string problem_of(Statement statement, const std::string& file) {
  try {
    statement();
  } catch (const WeightFileError& e) {
    EXPECT_EQ(e.file(), file);
    EXPECT_EQ(std::string(e.what()), file + ": " + e.problem());
    return e.problem();
  }
  ADD_FAILURE() << "no WeightFileError for " << file;
  return "";
}

std::string safetensors_file(const std::string& header, const std::string& data) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return scratch("bad.safetensors", bytes + header + data);
}

std::string safetensors_problem(const std::string& header, const std::string& data) {
  const std::string file = safetensors_file(header, data);
  return problem_of([&] { read_safetensors(file); }, file);
}

TEST(BadSafetensors, EachDamageIsNamed) {
  const std::string eight(8, 'x'), twelve(12, 'x'), twenty(20, 'x');
  const std::string two_floats = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]})";
  EXPECT_EQ(read_safetensors(safetensors_file(two_floats + "}", eight)).tensors.size(), 1u);  // the baseline
  EXPECT_EQ(safetensors_problem(two_floats + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", twelve),
            "tensors 'a' and 'b' overlap (data bytes 0 to 8 and 4 to 12)");
  EXPECT_EQ(safetensors_problem(two_floats + R"(,"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})", twenty),
            "data bytes 8 to 12 belong to no tensor");
  EXPECT_EQ(safetensors_problem(two_floats + "}", twelve), "data bytes 8 to 12 belong to no tensor");
  EXPECT_EQ(safetensors_problem(two_floats + "}", "1234"),
            "truncated: tensor 'a' (bytes 0 to 8 of the data) goes beyond the end of the file (the data has 4 bytes)");
  EXPECT_EQ(safetensors_problem(R"({"a":{"dtype":"F7","shape":[2],"data_offsets":[0,8]}})", eight),
            "tensor 'a' has an unknown dtype \"F7\"");
  EXPECT_EQ(safetensors_problem(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", eight),
            "tensor 'a': data_offsets [0, 8] hold 8 bytes, its dtype F32 and shape [3] need 12");
  EXPECT_EQ(safetensors_problem(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", eight),
            "tensor 'a': a size must be a non-negative integer, got -2");
  EXPECT_EQ(safetensors_problem(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", eight),
            "tensor 'a': its shape holds more than 2^63 bytes");
  EXPECT_EQ(safetensors_problem(R"({"a":{"dtype":"F32","data_offsets":[0,8]}})", eight),
            "tensor 'a': a tensor's header entry must have dtype, shape and data_offsets");
  EXPECT_EQ(safetensors_problem(two_floats + "," + two_floats.substr(1) + "}", eight), "the header names 'a' twice");
  EXPECT_EQ(safetensors_problem(R"({"a":{"dtype":"F32","shape":[[2]],"data_offsets":[0,8]}})", eight),
            "the header nests deeper than a safetensors header does");
  EXPECT_EQ(safetensors_problem(R"({"__metadata__":{"k":1}})", ""), "__metadata__ 'k' is not a string");
  EXPECT_EQ(safetensors_problem("[1, 2]", ""), "the header is not a JSON object");
  EXPECT_EQ(safetensors_problem("{\"a\": ", "").rfind("the header is not valid JSON (", 0), 0u);
}

TEST(BadSafetensors, HeaderLengthsBeyondTheFileAreRefusedBeforeReading) {
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(0xe8), bytes[1] = 0x03;  // 1000
  const std::string file = scratch("long_header.safetensors", bytes + "{}");
  EXPECT_EQ(problem_of([&] { read_safetensors(file); }, file),
            "the header length 1000 goes beyond the end of the file (10 bytes)");
  std::string huge(8, '\xff');
  const std::string file2 = scratch("huge_header.safetensors", huge + "{}");
  EXPECT_EQ(problem_of([&] { read_safetensors(file2); }, file2),
            "the header length 18446744073709551615 goes beyond the end of the file (10 bytes)");
  const std::string short_file = scratch("short.safetensors", "abc");
  EXPECT_EQ(problem_of([&] { read_safetensors(short_file); }, short_file),
            "truncated: 3 bytes, not even the 8-byte header length");
}

std::string torch_save_problem(const std::vector<std::pair<std::string, std::string>>& records, const std::string& entry = "") {
  const std::string file = scratch("bad.pt", torch_archive(records));
  return problem_of([&] { read_torch_save(file, entry); }, file);
}

// A pickled {"w": tensor} over storage "0".
std::string one_tensor(int numel, int offset, std::vector<int32_t> sizes, std::vector<int32_t> strides,
                       const std::string& type = "FloatStorage") {
  PickleWriter p;
  p.empty_dict().mark().string("w").tensor(type, "0", numel, offset, sizes, strides).setitems().stop();
  return p.bytes();
}

TEST(BadTorchSave, PicklesThatAreNoStateDict) {
  EXPECT_EQ(torch_save_problem({{"data.pkl", PickleWriter().empty_list().stop().bytes()}}),
            "holds no state dict (a dict of tensors, at the top level or under one key): it holds a list");
  EXPECT_EQ(torch_save_problem({{"data.pkl", PickleWriter().empty_dict().string("epoch").integer(3).op('s').stop().bytes()}}),
            "holds no state dict (a dict of tensors, at the top level or under one key): it holds a dict with keys 'epoch'");
  PickleWriter objects;
  objects.global("yacs.config", "CfgNode").empty_tuple().op('\x81').stop();
  EXPECT_EQ(torch_save_problem({{"data.pkl", objects.bytes()}}),
            "holds no state dict (a dict of tensors, at the top level or under one key): it holds a yacs.config.CfgNode object");
  const std::string tensor = one_tensor(6, 0, {6}, {1});
  const std::string pair = tensor.substr(2, tensor.size() - 3);  // the dict, without PROTO and STOP
  PickleWriter two;
  two.empty_dict().mark().string("a").raw(pair).string("b").raw(pair).setitems().stop();
  EXPECT_EQ(torch_save_problem({{"data.pkl", two.bytes()}, {"data/0", float_ramp_bytes(6)}}),
            "holds several state dicts ('a', 'b'): name the one to read");
  EXPECT_EQ(torch_save_problem({{"other", "x"}}), "a ZIP archive without a data.pkl record: not a torch.save file");
}

TEST(BadTorchSave, DeclaredLengthsAreCheckedAgainstTheRecord) {
  const std::string long_string = std::string("\x80\x02X\xff\xff\xff\x0f" "abc", 10);
  EXPECT_EQ(torch_save_problem({{"data.pkl", long_string}}),
            "archive/data.pkl byte 2: a string declares 268435455 bytes, but only 3 are left in the pickle");
  const std::string file = scratch("long_string.pt", torch_archive({{"data.pkl", long_string}}));
  EXPECT_EQ(problem_of([&] { check_torch_archive(file); }, file),
            "archive/data.pkl byte 2: a string declares 268435455 bytes, but only 3 are left in the pickle");
  EXPECT_EQ(torch_save_problem({{"data.pkl", std::string("\x80\x02\x95\x00\x00\x00\x01\x00\x00\x00\x00.", 12)}}),
            "archive/data.pkl byte 2: a frame declares 16777216 bytes, but only 1 are left in the pickle");
  EXPECT_EQ(torch_save_problem({{"data.pkl", "\x80\x02\xff"}}), "archive/data.pkl byte 2: unknown opcode 0xff");
  EXPECT_EQ(torch_save_problem({{"data.pkl", "\x80\x02}"}}),
            "archive/data.pkl byte 3: truncated: the pickle ends without its STOP opcode");
  EXPECT_EQ(torch_save_problem({{"data.pkl", "\x80\x02."}}), "archive/data.pkl byte 2: stack underflow (0x2e)");
  EXPECT_EQ(torch_save_problem({{"data.pkl", "\x80\x02h\x05."}}), "archive/data.pkl byte 2: memo entry 5 was never stored");
  EXPECT_EQ(torch_save_problem({{"data.pkl", "\x80\x06."}}), "archive/data.pkl byte 0: pickle protocol 6 is newer than 5");
}

TEST(BadTorchSave, StoragesMustHoldTheirTensors) {
  EXPECT_EQ(torch_save_problem({{"data.pkl", one_tensor(6, 0, {2, 3}, {3, 1})}}),
            "record 'archive/data/0' of tensor 'w' is missing");
  EXPECT_EQ(torch_save_problem({{"data.pkl", one_tensor(6, 0, {2, 3}, {3, 1})}, {"data/0", float_ramp_bytes(5)}}),
            "record 'archive/data/0' of tensor 'w' holds 20 bytes, its 6 Float elements need 24");
  const std::string beyond = torch_save_problem({{"data.pkl", one_tensor(6, 1, {2, 3}, {3, 1})}, {"data/0", float_ramp_bytes(6)}});
  EXPECT_NE(beyond.find("a tensor of size [2, 3], stride [3, 1] at offset 1 reaches beyond its storage '0' of 6 elements"),
            std::string::npos) << beyond;
  const std::string negative = torch_save_problem({{"data.pkl", one_tensor(6, 0, {2, 3}, {-3, 1})}, {"data/0", float_ramp_bytes(6)}});
  EXPECT_NE(negative.find("negative tensor stride -3"), std::string::npos) << negative;
  const std::string quantized = torch_save_problem({{"data.pkl", one_tensor(6, 0, {6}, {1}, "QInt8Storage")}});
  EXPECT_NE(quantized.find("storage type torch.QInt8Storage is not supported"), std::string::npos) << quantized;
  // The well-formed baseline of the cases above.
  const std::string file = scratch("good.pt", torch_archive({{"data.pkl", one_tensor(6, 0, {2, 3}, {3, 1})}, {"data/0", float_ramp_bytes(6)}}));
  EXPECT_TRUE(at::equal(read_torch_save(file).at(0).second, at::arange(6, at::kFloat).view({2, 3})));
}

TEST(BadTorchSave, DamagedArchivesAreNamed) {
  const std::string good = contents(std::string(slideformer::test_paths::io_test_data) + "/plain.pt");
  const std::string truncated = scratch("truncated.pt", good.substr(0, good.size() / 2));
  EXPECT_EQ(problem_of([&] { read_torch_save(truncated); }, truncated),
            "truncated or not a ZIP archive (no end-of-archive record)");
  std::string flipped = good;
  const float quarter = 0.25f;  // weight[0][1]: its storage's second value
  const size_t at = flipped.find(std::string(reinterpret_cast<const char*>(&quarter), 4));
  ASSERT_NE(at, std::string::npos);
  flipped[at] ^= 1;
  const std::string corrupt = scratch("corrupt.pt", flipped);
  EXPECT_EQ(problem_of([&] { read_torch_save(corrupt); }, corrupt), "corrupt: record 'plain/data/0' fails its CRC-32 check");
  // Deflated records (TorchScript archives deflate their code) inflate, and must inflate whole.
  const std::string pickle = PickleWriter().empty_list().stop().bytes() + std::string(200, ' ');
  const std::string deflated = torch_archive({{"data.pkl", pickle}}, true);
  const std::string compressed = scratch("compressed.pt", deflated);
  EXPECT_EQ(problem_of([&] { read_torch_save(compressed); }, compressed),
            "holds no state dict (a dict of tensors, at the top level or under one key): it holds a list");
  std::string damaged = deflated;  // the first record is data.pkl: its local header, name, extra field, data
  ASSERT_EQ(damaged.compare(0, 4, "PK\x03\x04"), 0);
  const auto u16 = [&](size_t at) { return static_cast<uint8_t>(damaged[at]) | static_cast<uint8_t>(damaged[at + 1]) << 8; };
  damaged[30 + u16(26) + u16(28) + 2] ^= 0x55;
  const std::string bad_deflate = scratch("bad_deflate.pt", damaged);
  const std::string problem = problem_of([&] { read_torch_save(bad_deflate); }, bad_deflate);
  EXPECT_TRUE(problem == "corrupt: record 'archive/data.pkl' does not inflate to its 204 bytes" ||
              problem == "corrupt: record 'archive/data.pkl' fails its CRC-32 check") << problem;
}

}  // namespace
