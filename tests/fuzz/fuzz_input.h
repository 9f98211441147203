#pragma once
// What the fuzz targets (tests/fuzz/*_fuzzer.cpp) share: a reader that decodes the fuzzer's bytes
// into choices and values (missing bytes read as zeros, so every input decodes), and scratch files
// for the readers that take a path.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <string>

namespace slideformer::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  uint8_t byte() { return offset_ < size_ ? data_[offset_++] : 0; }
  bool flag() { return byte() & 1; }
  // 0 .. count - 1.
  size_t index(size_t count) { return count ? byte() % count : 0; }
  template <typename T>
  T pick(std::initializer_list<T> values) {
    return values.begin()[index(values.size())];
  }
  template <typename T>
  T raw() {  // sizeof(T) bytes as they are
    T value{};
    uint8_t bytes[sizeof(T)] = {};
    for (uint8_t& b : bytes) b = byte();
    std::memcpy(&value, bytes, sizeof(T));
    return value;
  }
  // The bytes left, consumed.
  std::string rest() {
    std::string bytes(reinterpret_cast<const char*>(data_) + offset_, size_ - offset_);
    offset_ = size_;
    return bytes;
  }
  // Up to `max` bytes, the first one giving the length.
  std::string text(size_t max) {
    const size_t length = std::min(max, static_cast<size_t>(byte()));
    std::string bytes;
    while (bytes.size() < length && offset_ < size_) bytes.push_back(static_cast<char>(data_[offset_++]));
    return bytes;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t offset_ = 0;
};

// A directory of this process's own: $SLIDEFORMER_FUZZ_SCRATCH if set (kept, to look at the files
// a run wrote), else a fresh one under the temporary directory, removed at exit.
const std::string& scratch_dir();

// Writes `bytes` to scratch_dir()/name; its path.
std::string scratch_file(const std::string& name, const std::string& bytes);

}  // namespace slideformer::fuzz
