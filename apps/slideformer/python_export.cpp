#include "python_export.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "slideformer/version.h"

extern char** environ;

namespace slideformer::app {

namespace {

// The file of the op library this process runs (the program links it).
std::string loaded_library_path() {
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&slideformer::build_info), &info) == 0 || info.dli_fname == nullptr) {
    throw std::runtime_error("cannot locate the slideformer library of this program (dladdr)");
  }
  return info.dli_fname;
}

bool is_directory(const char* path) {
  struct stat status {};
  return stat(path, &status) == 0 && S_ISDIR(status.st_mode);
}

// This process's environment with `overrides` ("NAME=value") replacing or adding entries.
std::vector<std::string> environment_with(const std::vector<std::string>& overrides) {
  auto name_of = [](const std::string& entry) { return entry.substr(0, entry.find('=') + 1); };
  std::vector<std::string> result;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string item = *entry;
    if (std::none_of(overrides.begin(), overrides.end(),
                     [&](const std::string& o) { return name_of(o) == name_of(item); })) {
      result.push_back(item);
    }
  }
  result.insert(result.end(), overrides.begin(), overrides.end());
  return result;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> result;
  for (auto& s : strings) result.push_back(s.data());
  result.push_back(nullptr);
  return result;
}

}  // namespace

std::string python_interpreter(const std::string& requested) {
  if (!requested.empty()) return requested;
  if (const char* env = std::getenv("SLIDEFORMER_PYTHON"); env != nullptr && *env != '\0') return env;
#ifdef SLIDEFORMER_DEFAULT_PYTHON
  return SLIDEFORMER_DEFAULT_PYTHON;
#else
  return "python3";
#endif
}

void export_with_python(const std::string& checkpoint, const std::string& out, const std::string& format,
                        const std::string& data_config,
                        const std::string& python) {
  std::vector<std::string> args = {python, "-m", "slideformer", "export", "--checkpoint", checkpoint,
                                   "--out", out, "--format", format, "--data-config", data_config};
  std::vector<std::string> overrides = {"SLIDEFORMER_LIBRARY=" + loaded_library_path()};
#ifdef SLIDEFORMER_SOURCE_PYTHON_DIR
  // A program of a build tree exports with the package of its own source tree.
  if (is_directory(SLIDEFORMER_SOURCE_PYTHON_DIR)) {
    const char* path = std::getenv("PYTHONPATH");
    overrides.push_back(std::string("PYTHONPATH=") + SLIDEFORMER_SOURCE_PYTHON_DIR +
                        (path != nullptr && *path != '\0' ? std::string(":") + path : ""));
  }
#endif
  std::vector<std::string> environment = environment_with(overrides);
  std::vector<char*> argv = pointers(args), envp = pointers(environment);
  pid_t pid = 0;
  if (const int error = posix_spawnp(&pid, python.c_str(), nullptr, nullptr, argv.data(), envp.data())) {
    throw std::runtime_error(fmt::format(
        "cannot run the Python interpreter '{}' ({}): name one with --python or SLIDEFORMER_PYTHON",
        python, std::strerror(error)));
  }
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) throw std::runtime_error(fmt::format("waiting for {}: {}", python, std::strerror(errno)));
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw std::runtime_error(fmt::format(
        "{} -m slideformer export --format {} failed ({} {}): it needs torch 2.11 and the slideformer "
        "Python package{} (docs/python.md); --python or SLIDEFORMER_PYTHON names the interpreter",
        python, format, WIFEXITED(status) ? "exit status" : "signal",
        WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status),
        format == "onnx" ? " with onnx, onnxscript and onnx-ir" : ""));
  }
}

}  // namespace slideformer::app
