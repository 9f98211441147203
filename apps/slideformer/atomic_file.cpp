#include "atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <streambuf>

namespace slideformer::app {

namespace {

// An unbuffered stream buffer onto a file descriptor that keeps the first write error.
class DescriptorBuffer : public std::streambuf {
 public:
  explicit DescriptorBuffer(int fd) : fd_(fd) {}
  int error() const { return error_; }

 protected:
  std::streamsize xsputn(const char* data, std::streamsize size) override {
    for (std::streamsize done = 0; done < size;) {
      const ssize_t n = ::write(fd_, data + done, static_cast<size_t>(size - done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        error_ = n < 0 ? errno : EIO;
        return done;
      }
      done += n;
    }
    return size;
  }
  int_type overflow(int_type c) override {
    if (traits_type::eq_int_type(c, traits_type::eof())) return traits_type::not_eof(c);
    const char byte = traits_type::to_char_type(c);
    return xsputn(&byte, 1) == 1 ? c : traits_type::eof();
  }

 private:
  int fd_;
  int error_ = 0;
};

// Writes the temporary file; returns 0 or the errno of the first failure.
int write_temporary(const std::string& temporary, const std::function<void(std::ostream&)>& write) {
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  DescriptorBuffer buffer(fd);
  std::ostream stream(&buffer);
  try {
    write(stream);
  } catch (...) {
    ::close(fd);
    // A writer that gave up because the stream failed (a full disk, ...): that failure is the cause.
    if (buffer.error() != 0) return buffer.error();
    std::remove(temporary.c_str());
    throw;
  }
  int error = buffer.error();
  if (error == 0 && !stream) error = EIO;
  if (error == 0 && ::fsync(fd) != 0) error = errno;
  if (::close(fd) != 0 && error == 0) error = errno;
  return error;
}

}  // namespace

void write_file_atomically(const std::string& path, const std::string& what,
                           const std::function<void(std::ostream&)>& write) {
  const std::string temporary = path + ".tmp";
  auto fail = [&](int error) {
    std::remove(temporary.c_str());
    throw std::runtime_error(path + ": cannot write " + what + " (" + std::strerror(error) + ")");
  };
  if (const int error = write_temporary(temporary, write)) fail(error);
  if (std::rename(temporary.c_str(), path.c_str()) != 0) fail(errno);
  const size_t slash = path.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash + 1);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  const int error = dir_fd < 0 || ::fsync(dir_fd) != 0 ? errno : 0;
  if (dir_fd >= 0) ::close(dir_fd);
  if (error != 0) throw std::runtime_error(path + ": cannot flush the directory " + dir + " (" + std::strerror(error) + ")");
}

void write_file_atomically(const std::string& path, const std::string& what, const std::string& bytes) {
  write_file_atomically(path, what, [&](std::ostream& out) { out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace slideformer::app
