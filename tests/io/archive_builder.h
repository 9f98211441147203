#pragma once
// Test helpers that make torch.save-style files byte by byte, independently of the readers under
// test: a pickle writer for the opcodes state dicts use, and ZIP archives written by torch's own
// writer (caffe2::serialize::PyTorchStreamWriter, records under "archive/").
#include <caffe2/serialize/inline_container.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace slideformer::io::testing {

class PickleWriter {
 public:
  PickleWriter() { bytes_ += "\x80\x02"; }  // PROTO 2
  PickleWriter& op(char opcode) { bytes_ += opcode; return *this; }
  PickleWriter& mark() { return op('('); }
  PickleWriter& empty_dict() { return op('}'); }
  PickleWriter& empty_tuple() { return op(')'); }
  PickleWriter& empty_list() { return op(']'); }
  PickleWriter& tuple() { return op('t'); }
  PickleWriter& reduce() { return op('R'); }
  PickleWriter& setitems() { return op('u'); }
  PickleWriter& stop() { return op('.'); }
  PickleWriter& string(const std::string& text) { return op('X').u32(static_cast<uint32_t>(text.size())).raw(text); }
  PickleWriter& integer(int32_t value) { return op('J').u32(static_cast<uint32_t>(value)); }
  PickleWriter& global(const std::string& module, const std::string& name) { return op('c').raw(module + "\n" + name + "\n"); }
  PickleWriter& u32(uint32_t value) {
    for (int i = 0; i < 4; ++i) bytes_ += static_cast<char>((value >> (8 * i)) & 0xff);
    return *this;
  }
  PickleWriter& raw(const std::string& bytes) { bytes_ += bytes; return *this; }
  PickleWriter& ints(const std::vector<int32_t>& values) {
    mark();
    for (int32_t v : values) integer(v);
    return tuple();
  }
  // torch._utils._rebuild_tensor_v2(("storage", torch.<type>, key, "cpu", numel), offset, sizes, strides, False, OrderedDict())
  PickleWriter& tensor(const std::string& type, const std::string& key, int32_t numel, int32_t offset,
                       const std::vector<int32_t>& sizes, const std::vector<int32_t>& strides) {
    global("torch._utils", "_rebuild_tensor_v2").mark();
    mark().string("storage").global("torch", type).string(key).string("cpu").integer(numel).tuple().op('Q');
    integer(offset).ints(sizes).ints(strides).op('\x89');
    global("collections", "OrderedDict").empty_tuple().reduce();
    return tuple().reduce();
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

// A ZIP archive of torch's writer holding `records` (names without the "archive/" folder).
inline std::string torch_archive(const std::vector<std::pair<std::string, std::string>>& records, bool compress = false) {
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t size) {
    out.append(static_cast<const char*>(data), size);
    return size;
  });
  for (const auto& [name, bytes] : records) writer.writeRecord(name, bytes.data(), bytes.size(), compress);
  writer.writeEndOfFile();
  return out;
}

// `count` float32 values 0, 1, 2, ... as bytes.
inline std::string float_ramp_bytes(int count) {
  std::string bytes;
  for (int i = 0; i < count; ++i) {
    const float value = static_cast<float>(i);
    bytes.append(reinterpret_cast<const char*>(&value), sizeof value);
  }
  return bytes;
}

}  // namespace slideformer::io::testing
