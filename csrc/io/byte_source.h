#pragma once
// What the weight-file readers read from: a file (read with pread, never mapped, so a file that
// shrinks under the reader gives a short read, not a crash) or bytes in memory (the fuzz targets).
// Every read is checked against the size; failures are WeightFileErrors naming the source.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>

#include "slideformer/io/weight_file.h"

namespace slideformer::io::detail {

class ByteSource {
 public:
  explicit ByteSource(std::string name) : name_(std::move(name)) {}
  virtual ~ByteSource() = default;
  const std::string& name() const { return name_; }
  virtual uint64_t size() const = 0;
  // Exactly `count` bytes from `offset`, or a WeightFileError ("... ends before ...").
  void read(uint64_t offset, void* out, size_t count, const char* what) const;
  [[noreturn]] void fail(const std::string& problem) const { throw WeightFileError(name_, problem); }

 protected:
  // Returns false on a short read (the file changed or failed under us).
  virtual bool read_at(uint64_t offset, void* out, size_t count) const = 0;

 private:
  std::string name_;
};

// A regular file; WeightFileError if it is missing, a directory or unreadable.
std::unique_ptr<ByteSource> open_file(const std::string& path);
// `size` bytes at `data`, borrowed (they must outlive the source), named `name` in messages.
std::unique_ptr<ByteSource> memory_source(const void* data, size_t size, const std::string& name);

// Little-endian integers of a byte buffer.
inline uint64_t little_endian(const uint8_t* bytes, int count) {
  uint64_t value = 0;
  for (int i = count - 1; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

// Writes a file whole or not at all: `write` fills `path`.tmp through the sink it is given, which
// is flushed to the disk and renamed over `path`. WeightFileError naming `path` on any failure.
using ByteSink = std::function<void(const void* data, size_t count)>;
void write_file_atomically(const std::string& path, const std::function<void(const ByteSink&)>& write);

}  // namespace slideformer::io::detail
