#include "python_export.h"

#include <dlfcn.h>
#include <fmt/format.h>
#include <sys/stat.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "build_paths.h"
#include "slideformer/distributed/process.h"
#include "slideformer/version.h"

namespace slideformer::app {

using distributed::ChildProcess;
using distributed::ChildStatus;
using distributed::run_child;

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

}  // namespace

std::string python_interpreter(const std::string& requested) {
  if (!requested.empty()) return requested;
  if (const char* env = std::getenv("SLIDEFORMER_PYTHON"); env != nullptr && *env != '\0') return env;
  return *build_paths::default_python != '\0' ? build_paths::default_python : "python3";
}

void export_with_python(const std::string& checkpoint, const std::string& out, const std::string& format,
                        const std::string& data_config,
                        const std::string& python) {
  ChildProcess child;
  child.argv = {python, "-m", "slideformer", "export", "--checkpoint", checkpoint,
                "--out", out, "--format", format, "--data-config", data_config};
  child.environment = {"SLIDEFORMER_LIBRARY=" + loaded_library_path()};
  // A program of a build tree exports with the package of its own source tree.
  if (is_directory(build_paths::source_python_dir)) {
    const char* path = std::getenv("PYTHONPATH");
    child.environment.push_back(std::string("PYTHONPATH=") + build_paths::source_python_dir +
                                (path != nullptr && *path != '\0' ? std::string(":") + path : ""));
  }
  const ChildStatus status = run_child(child);
  if (status.error != 0) {
    throw std::runtime_error(fmt::format(
        "cannot run the Python interpreter '{}' ({}): name one with --python or SLIDEFORMER_PYTHON",
        python, std::strerror(status.error)));
  }
  if (!status.succeeded()) {
    throw std::runtime_error(fmt::format(
        "{} -m slideformer export --format {} failed ({} {}): it needs torch 2.11 and the slideformer "
        "Python package{} (docs/python.md); --python or SLIDEFORMER_PYTHON names the interpreter",
        python, format, status.exited ? "exit status" : "signal", status.exited ? status.code : status.signal,
        format == "onnx" ? " with onnx, onnxscript and onnx-ir" : ""));
  }
}

}  // namespace slideformer::app
