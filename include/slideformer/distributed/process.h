#pragma once
// Child processes started without a shell: launch_local's ranks, and the slideformer program's
// gnuplot and Python exporter. User strings (paths, options) only ever travel as elements of the
// argument vector or of the environment.
#include <sys/types.h>

#include <string>
#include <vector>

namespace slideformer::distributed {

struct ChildProcess {
  std::vector<std::string> argv;  // argv[0]: a path, or a program looked up on PATH
  // "NAME=value" entries that replace or add to this process's environment.
  std::vector<std::string> environment;
  // Names of variables of this process's environment that the child does not get.
  std::vector<std::string> unset_environment;
  std::string directory;    // where it runs ("": this process's directory)
  std::string stderr_file;  // its stderr, created in `directory` ("": this process's stderr)
  bool quiet = false;       // stdin and stdout on /dev/null
  // Killed (SIGKILL) by the kernel when the thread that started it ends, by any death of this
  // process included, kill -9 too (PR_SET_PDEATHSIG): a child that must not outlive its parent.
  bool die_with_parent = false;
  // Descriptors of this process that the child must not inherit (it inherits every descriptor
  // without close-on-exec).
  std::vector<int> close_descriptors;
};

struct ChildStatus {
  int error = 0;        // errno when it could not be started (or waited for), else 0
  bool exited = false;  // whether it exited (else it was killed by `signal`)
  int code = 0;         // its exit status
  int signal = 0;

  bool succeeded() const { return error == 0 && exited && code == 0; }
};

// Starts the child: its pid, or -errno when it could not be started (fork, exec or a file of
// the child failed; a program not found gives -ENOENT).
pid_t start_child(const ChildProcess& child);

// The status of a started child once it ended (waitpid; an interrupted wait goes on).
ChildStatus wait_child(pid_t pid);

// start_child, then wait_child.
ChildStatus run_child(const ChildProcess& child);

// The first executable file `name` in a directory of PATH, or "".
std::string find_on_path(const std::string& name);

}  // namespace slideformer::distributed
