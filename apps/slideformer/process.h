#pragma once
// The child processes of the program (gnuplot, the Python exporter), started without a shell:
// user strings (paths, options) only ever travel as elements of the argument vector.
#include <string>
#include <vector>

namespace slideformer::app {

struct ChildProcess {
  std::vector<std::string> argv;  // argv[0]: a path, or a program looked up on PATH
  // "NAME=value" entries that replace or add to this process's environment.
  std::vector<std::string> environment;
  std::string directory;    // where it runs ("": this process's directory)
  std::string stderr_file;  // its stderr, created in `directory` ("": this process's stderr)
  bool quiet = false;       // stdin and stdout on /dev/null
};

struct ChildStatus {
  int error = 0;        // errno when it could not be started (or waited for), else 0
  bool exited = false;  // whether it exited (else it was killed by `signal`)
  int code = 0;         // its exit status
  int signal = 0;

  bool succeeded() const { return error == 0 && exited && code == 0; }
};

// Starts the child and waits for it.
ChildStatus run_child(const ChildProcess& child);

// The first executable file `name` in a directory of PATH, or "".
std::string find_on_path(const std::string& name);

}  // namespace slideformer::app
