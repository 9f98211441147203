#include "io/zip_archive.h"

#include <zlib.h>

#include <algorithm>
#include <limits>
#include <unordered_set>

namespace slideformer::io::detail {

namespace {

constexpr uint32_t kEndSignature = 0x06054b50;
constexpr uint32_t kZip64EndSignature = 0x06064b50;
constexpr uint32_t kZip64LocatorSignature = 0x07064b50;
constexpr uint32_t kCentralSignature = 0x02014b50;
constexpr uint32_t kLocalSignature = 0x04034b50;
constexpr uint64_t kEndSize = 22, kZip64EndSize = 56, kZip64LocatorSize = 20;
constexpr uint64_t kCentralSize = 46, kLocalSize = 30;
constexpr uint64_t kMaxComment = 0xffff;
constexpr uint64_t kMaxDeflateRatio = 1032;

uint64_t field(const uint8_t* record, int offset, int bytes) { return little_endian(record + offset, bytes); }

std::string at_offset(uint64_t offset) { return " at byte " + std::to_string(offset); }

}  // namespace

ZipArchive::ZipArchive(const ByteSource& source) : source_(source) { read_directory(find_directory()); }

// The end-of-central-directory record is the last 22 bytes but for a comment of up to 64 KiB;
// with ZIP64 a locator just before it points to the 64-bit record.
ZipArchive::Directory ZipArchive::find_directory() const {
  const uint64_t size = source_.size();
  if (size < kEndSize) source_.fail("truncated or not a ZIP archive (" + std::to_string(size) + " bytes)");
  const uint64_t tail_size = std::min(size, kEndSize + kMaxComment);
  std::string tail(tail_size, '\0');
  source_.read(size - tail_size, tail.data(), tail_size, "the end of the archive");
  const auto* bytes = reinterpret_cast<const uint8_t*>(tail.data());
  uint64_t end = tail_size;  // position in tail of the end record
  for (uint64_t at = tail_size - kEndSize + 1; at-- > 0;) {
    if (field(bytes + at, 0, 4) == kEndSignature && at + kEndSize + field(bytes + at, 20, 2) == tail_size) {
      end = at;
      break;
    }
  }
  if (end == tail_size) source_.fail("truncated or not a ZIP archive (no end-of-archive record)");
  const uint8_t* record = bytes + end;
  if (field(record, 4, 2) != 0 || field(record, 6, 2) != 0) source_.fail("multi-part ZIP archives are not supported");
  Directory directory{field(record, 16, 4), field(record, 12, 4), field(record, 10, 2)};
  uint64_t directory_end = size - tail_size + end;  // where the central directory must stop
  if (end >= kZip64LocatorSize && field(bytes + end - kZip64LocatorSize, 0, 4) == kZip64LocatorSignature) {
    const uint64_t zip64_end = field(bytes + end - kZip64LocatorSize, 8, 8);
    if (zip64_end > directory_end - kZip64LocatorSize || directory_end - kZip64LocatorSize - zip64_end < kZip64EndSize) {
      source_.fail("corrupt ZIP64 end record offset " + std::to_string(zip64_end));
    }
    uint8_t zip64[kZip64EndSize];
    source_.read(zip64_end, zip64, kZip64EndSize, "the ZIP64 end record");
    if (field(zip64, 0, 4) != kZip64EndSignature) source_.fail("corrupt ZIP64 end record" + at_offset(zip64_end));
    directory = {field(zip64, 48, 8), field(zip64, 40, 8), field(zip64, 32, 8)};
    directory_end = zip64_end;
  }
  if (directory.offset > directory_end || directory.size > directory_end - directory.offset) {
    source_.fail("corrupt ZIP directory: " + std::to_string(directory.size) + " bytes at byte " +
                 std::to_string(directory.offset) + " go beyond its end at byte " + std::to_string(directory_end));
  }
  if (directory.entries > directory.size / kCentralSize) {
    source_.fail("corrupt ZIP directory: " + std::to_string(directory.entries) + " records cannot fit in " +
                 std::to_string(directory.size) + " bytes");
  }
  return directory;
}

void ZipArchive::read_directory(const Directory& directory) {
  std::string bytes(directory.size, '\0');
  source_.read(directory.offset, bytes.data(), bytes.size(), "the ZIP directory");
  const auto* data = reinterpret_cast<const uint8_t*>(bytes.data());
  std::unordered_set<std::string> names;
  records_.reserve(directory.entries);
  uint64_t at = 0;
  for (uint64_t i = 0; i < directory.entries; ++i) {
    const uint8_t* entry = data + at;
    if (directory.size - at < kCentralSize || field(entry, 0, 4) != kCentralSignature) {
      source_.fail("corrupt ZIP directory: record " + std::to_string(i) + at_offset(directory.offset + at));
    }
    const uint64_t name_size = field(entry, 28, 2), extra_size = field(entry, 30, 2), comment = field(entry, 32, 2);
    if (directory.size - at - kCentralSize < name_size + extra_size + comment) {
      source_.fail("corrupt ZIP directory: record " + std::to_string(i) + " runs past the directory");
    }
    ZipRecord record;
    record.name.assign(reinterpret_cast<const char*>(entry + kCentralSize), name_size);
    if (field(entry, 8, 2) & 1) source_.fail("record '" + record.name + "' is encrypted");
    const uint64_t method = field(entry, 10, 2);
    if (method != 0 && method != 8) {
      source_.fail("record '" + record.name + "' is compressed with method " + std::to_string(method) +
                   " (only stored and deflated records are read)");
    }
    record.deflated = method == 8;
    record.crc32 = static_cast<uint32_t>(field(entry, 16, 4));
    uint64_t compressed = field(entry, 20, 4), size = field(entry, 24, 4), local_header = field(entry, 42, 4);
    // ZIP64 extra field: the 64-bit values of the fields saturated above, in this order.
    const uint8_t* extra = entry + kCentralSize + name_size;
    for (uint64_t e = 0; e + 4 <= extra_size;) {
      const uint64_t id = field(extra + e, 0, 2), length = field(extra + e, 2, 2);
      if (e + 4 + length > extra_size) break;
      if (id == 1) {
        uint64_t used = 0;
        for (uint64_t* value : {&size, &compressed, &local_header}) {
          if (*value != 0xffffffff) continue;
          if (used + 8 > length) source_.fail("record '" + record.name + "' has a short ZIP64 field");
          *value = field(extra + e + 4 + used, 0, 8);
          used += 8;
        }
      }
      e += 4 + length;
    }
    // Deflate turns a byte into at most 1032 (a 258-byte match per 2 bits, plus block headers).
    if (record.deflated ? size / kMaxDeflateRatio > compressed : compressed != size) {
      source_.fail("record '" + record.name + "' declares " + std::to_string(size) + " bytes of data in " +
                   std::to_string(compressed) + (record.deflated ? " deflated bytes" : " stored bytes"));
    }
    record.size = size, record.compressed_size = compressed;
    locate_data(record, local_header, directory.offset);
    if (!names.insert(record.name).second) source_.fail("record '" + record.name + "' appears twice");
    records_.push_back(std::move(record));
    at += kCentralSize + name_size + extra_size + comment;
  }
}

// The data follows the record's local header (whose name and extra field may differ in size from
// the directory's); it must end before the central directory.
void ZipArchive::locate_data(ZipRecord& record, uint64_t local_header, uint64_t directory_offset) const {
  if (local_header > directory_offset || directory_offset - local_header < kLocalSize) {
    source_.fail("record '" + record.name + "' has its header at byte " + std::to_string(local_header) +
                 ", outside the archive's data");
  }
  uint8_t header[kLocalSize];
  source_.read(local_header, header, kLocalSize, "a record header");
  if (field(header, 0, 4) != kLocalSignature) {
    source_.fail("record '" + record.name + "': corrupt header" + at_offset(local_header));
  }
  const uint64_t start = local_header + kLocalSize + field(header, 26, 2) + field(header, 28, 2);
  if (start > directory_offset || record.compressed_size > directory_offset - start) {
    source_.fail("truncated or corrupt: record '" + record.name + "' (" + std::to_string(record.compressed_size) +
                 " bytes at byte " + std::to_string(start) + ") runs past the archive's data (" +
                 std::to_string(directory_offset) + " bytes)");
  }
  record.data_offset = start;
}

const ZipRecord* ZipArchive::find(const std::string& name) const {
  for (const ZipRecord& record : records_) {
    if (record.name == name) return &record;
  }
  return nullptr;
}

void ZipArchive::inflate(const ZipRecord& record, void* out) const {
  std::string compressed(record.compressed_size, '\0');
  source_.read(record.data_offset, compressed.data(), compressed.size(), ("record '" + record.name + "'").c_str());
  z_stream stream{};
  if (inflateInit2(&stream, -MAX_WBITS) != Z_OK) source_.fail("cannot inflate record '" + record.name + "'");
  stream.next_in = reinterpret_cast<Bytef*>(compressed.data());
  stream.next_out = static_cast<Bytef*>(out);
  int status = Z_OK;
  // zlib counts in 32 bits: feed and drain at most 1 GiB at a time.
  while (status == Z_OK) {
    const uint64_t in_left = compressed.size() - stream.total_in, out_left = record.size - stream.total_out;
    stream.avail_in = static_cast<uInt>(std::min<uint64_t>(in_left, 1u << 30));
    stream.avail_out = static_cast<uInt>(std::min<uint64_t>(out_left, 1u << 30));
    status = ::inflate(&stream, Z_NO_FLUSH);
  }
  const bool whole = status == Z_STREAM_END && stream.total_out == record.size && stream.total_in == compressed.size();
  inflateEnd(&stream);
  if (!whole) source_.fail("corrupt: record '" + record.name + "' does not inflate to its " + std::to_string(record.size) + " bytes");
}

void ZipArchive::read(const ZipRecord& record, void* out) const {
  if (record.deflated) {
    inflate(record, out);
  } else {
    source_.read(record.data_offset, out, record.size, ("record '" + record.name + "'").c_str());
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto* bytes = static_cast<const Bytef*>(out);
  for (uint64_t done = 0; done < record.size;) {  // zlib takes 32-bit lengths
    const uInt chunk = static_cast<uInt>(std::min<uint64_t>(record.size - done, 1u << 30));
    crc = crc32(crc, bytes + done, chunk);
    done += chunk;
  }
  if (crc != record.crc32) source_.fail("corrupt: record '" + record.name + "' fails its CRC-32 check");
}

std::string ZipArchive::read(const ZipRecord& record) const {
  std::string bytes(record.size, '\0');
  read(record, bytes.data());
  return bytes;
}

}  // namespace slideformer::io::detail
