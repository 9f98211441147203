// start_child: fork and execve (posix_spawn cannot set PR_SET_PDEATHSIG), with everything the
// child needs prepared before the fork.
#include "slideformer/distributed/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>

extern char** environ;

namespace slideformer::distributed {

namespace {

std::string name_of(const std::string& entry) { return entry.substr(0, entry.find('=')); }

// This process's environment less `unset` and the names of `overrides`, plus `overrides`.
std::vector<std::string> environment_of(const ChildProcess& child) {
  const std::vector<std::string>& overrides = child.environment;
  std::vector<std::string> result;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string item = *entry, name = name_of(item);
    const bool unset = std::find(child.unset_environment.begin(), child.unset_environment.end(), name) !=
                       child.unset_environment.end();
    const bool replaced = std::any_of(overrides.begin(), overrides.end(),
                                      [&](const std::string& o) { return name_of(o) == name; });
    if (!unset && !replaced) result.push_back(item);
  }
  result.insert(result.end(), overrides.begin(), overrides.end());
  return result;
}

std::vector<char*> pointers(std::vector<std::string>& strings) {
  std::vector<char*> result;
  for (std::string& s : strings) result.push_back(s.data());
  result.push_back(nullptr);
  return result;
}

// `path` opened on descriptor `target`; false (errno set) when it cannot be.
bool open_as(int target, const char* path, int flags) {
  const int fd = open(path, flags, 0644);
  if (fd < 0) return false;
  if (fd == target) return true;
  const bool duplicated = dup2(fd, target) >= 0;
  close(fd);
  return duplicated;
}

// In the child, up to the exec: async-signal-safe calls only (the parent may have threads).
// Returns the errno of what failed.
int become_child(const ChildProcess& child, pid_t parent, const char* program, char* const* argv,
                 char* const* envp) {
  if (child.die_with_parent) {
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return errno;
    if (getppid() != parent) _exit(127);  // the parent died before the prctl
  }
  if (!child.directory.empty() && chdir(child.directory.c_str()) != 0) return errno;
  if (child.quiet && !(open_as(STDIN_FILENO, "/dev/null", O_RDONLY) && open_as(STDOUT_FILENO, "/dev/null", O_WRONLY))) {
    return errno;
  }
  if (!child.stderr_file.empty() && !open_as(STDERR_FILENO, child.stderr_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC)) {
    return errno;
  }
  for (const int fd : child.close_descriptors) close(fd);
  execve(program, argv, envp);
  return errno;
}

}  // namespace

pid_t start_child(const ChildProcess& child) {
  if (child.argv.empty()) return -EINVAL;
  // Resolved here: the child may only make async-signal-safe calls.
  const std::string program =
      child.argv[0].find('/') != std::string::npos ? child.argv[0] : find_on_path(child.argv[0]);
  if (program.empty()) return -ENOENT;
  std::vector<std::string> args = child.argv, environment = environment_of(child);
  const std::vector<char*> argv = pointers(args), envp = pointers(environment);
  // The child reports a failure before or of the exec through a close-on-exec pipe, which an exec
  // that succeeds closes empty.
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) return -errno;
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    const int error = become_child(child, parent, program.c_str(), argv.data(), envp.data());
    (void)!write(report[1], &error, sizeof(error));
    _exit(127);
  }
  const int fork_error = errno;
  close(report[1]);
  if (pid < 0) {
    close(report[0]);
    return -fork_error;
  }
  int error = 0;
  ssize_t got = 0;
  do {
    got = read(report[0], &error, sizeof(error));
  } while (got < 0 && errno == EINTR);
  close(report[0]);
  if (got == sizeof(error)) {
    waitpid(pid, nullptr, 0);
    return -error;
  }
  return pid;
}

ChildStatus wait_child(pid_t pid) {
  ChildStatus status;
  int wait_status = 0;
  while (waitpid(pid, &wait_status, 0) < 0) {
    if (errno != EINTR) {
      status.error = errno;
      return status;
    }
  }
  status.exited = WIFEXITED(wait_status);
  status.code = status.exited ? WEXITSTATUS(wait_status) : 0;
  status.signal = WIFSIGNALED(wait_status) ? WTERMSIG(wait_status) : 0;
  return status;
}

ChildStatus run_child(const ChildProcess& child) {
  const pid_t pid = start_child(child);
  if (pid < 0) {
    ChildStatus status;
    status.error = -pid;
    return status;
  }
  return wait_child(pid);
}

std::string find_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  const std::string dirs = path ? path : "/usr/bin:/bin";
  for (size_t start = 0; start <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    const std::string dir = end > start ? dirs.substr(start, end - start) : ".";
    const std::string candidate = dir + "/" + name;
    struct stat info {};
    if (stat(candidate.c_str(), &info) == 0 && S_ISREG(info.st_mode) && access(candidate.c_str(), X_OK) == 0) {
      return candidate;
    }
    start = end + 1;
  }
  return "";
}

}  // namespace slideformer::distributed
