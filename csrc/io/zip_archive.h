#pragma once
// The ZIP container of torch.save files and TorchScript archives, read from its central directory
// (ZIP64 included). torch stores tensors and pickles uncompressed and deflates the TorchScript
// code; both methods are read. Every offset and size is checked against the file when the archive
// is opened, before anything is allocated for a record (a deflated record cannot declare more
// bytes than deflate can produce from its compressed ones), and every record read is checked
// against its CRC-32.
#include <cstdint>
#include <string>
#include <vector>

#include "io/byte_source.h"

namespace slideformer::io::detail {

struct ZipRecord {
  std::string name;
  uint64_t data_offset = 0;  // of the record's bytes in the file
  uint64_t size = 0;             // of the data (uncompressed)
  uint64_t compressed_size = 0;  // in the file
  bool deflated = false;
  uint32_t crc32 = 0;
};

class ZipArchive {
 public:
  // Reads and checks the central directory; WeightFileError naming the source if it is damaged.
  explicit ZipArchive(const ByteSource& source);
  const std::vector<ZipRecord>& records() const { return records_; }
  // The record of that name, or nullptr.
  const ZipRecord* find(const std::string& name) const;
  // The record's bytes into `out` (record.size bytes), checked against its CRC-32.
  void read(const ZipRecord& record, void* out) const;
  std::string read(const ZipRecord& record) const;

 private:
  struct Directory {
    uint64_t offset = 0, size = 0, entries = 0;
  };
  Directory find_directory() const;
  void read_directory(const Directory& directory);
  void locate_data(ZipRecord& record, uint64_t local_header, uint64_t directory_offset) const;
  void inflate(const ZipRecord& record, void* out) const;

  const ByteSource& source_;
  std::vector<ZipRecord> records_;
};

}  // namespace slideformer::io::detail
