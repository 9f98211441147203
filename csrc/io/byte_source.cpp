#include "io/byte_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

namespace slideformer::io::detail {

namespace {

std::string system_error(const std::string& what) { return what + " (" + std::strerror(errno) + ")"; }

class FileSource final : public ByteSource {
 public:
  FileSource(const std::string& path, int fd, uint64_t size) : ByteSource(path), fd_(fd), size_(size) {}
  ~FileSource() override { ::close(fd_); }
  uint64_t size() const override { return size_; }

 protected:
  bool read_at(uint64_t offset, void* out, size_t count) const override {
    auto* bytes = static_cast<char*>(out);
    while (count > 0) {
      const ssize_t n = ::pread(fd_, bytes, count, static_cast<off_t>(offset));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      bytes += n, offset += static_cast<uint64_t>(n), count -= static_cast<size_t>(n);
    }
    return true;
  }

 private:
  int fd_;
  uint64_t size_;
};

class MemorySource final : public ByteSource {
 public:
  MemorySource(const void* data, size_t size, const std::string& name)
      : ByteSource(name), data_(static_cast<const uint8_t*>(data)), size_(size) {}
  uint64_t size() const override { return size_; }

 protected:
  bool read_at(uint64_t offset, void* out, size_t count) const override {
    if (count) std::memcpy(out, data_ + offset, count);
    return true;
  }

 private:
  const uint8_t* data_;
  size_t size_;
};

}  // namespace

void ByteSource::read(uint64_t offset, void* out, size_t count, const char* what) const {
  if (offset > size() || count > size() - offset) {
    fail(std::string("truncated: ") + what + " (bytes " + std::to_string(offset) + " to " +
         std::to_string(offset + count) + ") goes beyond the end of the file (" + std::to_string(size()) +
         " bytes)");
  }
  if (!read_at(offset, out, count)) fail(system_error(std::string("cannot read ") + what));
}

std::unique_ptr<ByteSource> open_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw WeightFileError(path, system_error("cannot open the file"));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    const bool directory = S_ISDIR(info.st_mode);
    ::close(fd);
    throw WeightFileError(path, directory ? "is a directory, not a weight file" : "is not a regular file");
  }
  return std::make_unique<FileSource>(path, fd, static_cast<uint64_t>(info.st_size));
}

std::unique_ptr<ByteSource> memory_source(const void* data, size_t size, const std::string& name) {
  return std::make_unique<MemorySource>(data, size, name);
}

void write_file_atomically(const std::string& path, const std::function<void(const ByteSink&)>& write) {
  const std::string temporary = path + ".tmp";
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw WeightFileError(path, system_error("cannot create " + temporary));
  int error = 0;
  const ByteSink sink = [&](const void* data, size_t count) {
    for (auto* bytes = static_cast<const char*>(data); count > 0 && error == 0;) {
      const ssize_t n = ::write(fd, bytes, count);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        error = n < 0 ? errno : EIO;
        break;
      }
      bytes += n, count -= static_cast<size_t>(n);
    }
  };
  try {
    write(sink);
  } catch (...) {
    ::close(fd);
    std::remove(temporary.c_str());
    throw;
  }
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  if (error == 0 && std::rename(temporary.c_str(), path.c_str()) != 0) error = errno;
  if (error != 0) {
    std::remove(temporary.c_str());
    errno = error;
    throw WeightFileError(path, system_error("cannot write the file"));
  }
}

}  // namespace slideformer::io::detail
