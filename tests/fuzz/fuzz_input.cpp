#include "fuzz_input.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <set>
#include <stdexcept>

namespace slideformer::fuzz {

namespace {

// The files are removed one by one at exit (std::filesystem::remove_all may bind to a copy inside
// libtorch whose state is gone by then).
struct ScratchDir {
  std::string path;
  bool keep = false;
  std::set<std::string> files;
  ScratchDir() {
    if (const char* given = std::getenv("SLIDEFORMER_FUZZ_SCRATCH"); given && *given) {
      path = given;
      keep = true;
      ::mkdir(path.c_str(), 0755);
      return;
    }
    const char* tmp = std::getenv("TMPDIR");
    path = std::string(tmp && *tmp ? tmp : "/tmp") + "/slideformer-fuzz-XXXXXX";
    if (!::mkdtemp(path.data())) throw std::runtime_error("cannot create a scratch directory in " + path);
  }
  ~ScratchDir() {
    if (keep) return;
    for (const std::string& file : files) ::unlink((path + "/" + file).c_str());
    ::rmdir(path.c_str());
  }
};

ScratchDir& scratch() {
  static ScratchDir dir;
  return dir;
}

}  // namespace

const std::string& scratch_dir() { return scratch().path; }

std::string scratch_file(const std::string& name, const std::string& bytes) {
  ScratchDir& dir = scratch();
  dir.files.insert(name);
  const std::string path = dir.path + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

}  // namespace slideformer::fuzz
