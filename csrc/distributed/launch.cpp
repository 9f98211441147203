// launch_local: the ranks of a job as child processes of this one, on 127.0.0.1.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <thread>

#include "slideformer/distributed.h"

extern char** environ;

namespace slideformer::distributed {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kWho = "slideformer::distributed::launch_local";

std::atomic<int> interrupts{0};
void on_interrupt(int) { interrupts.fetch_add(1); }

// SIGINT and SIGTERM counted for the launch's duration, the previous handlers restored after.
class InterruptCounter {
 public:
  InterruptCounter() {
    interrupts = 0;
    struct sigaction action {};
    action.sa_handler = on_interrupt;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous_int_);
    sigaction(SIGTERM, &action, &previous_term_);
  }
  ~InterruptCounter() {
    sigaction(SIGINT, &previous_int_, nullptr);
    sigaction(SIGTERM, &previous_term_, nullptr);
  }

 private:
  struct sigaction previous_int_ {}, previous_term_ {};
};

// A socket listening on 127.0.0.1:port (0: a free port), inheritable so that rank 0 adopts it.
std::pair<int, int> listen_on_loopback(int64_t port) {
  if (port < 0 || port > 65535) {
    throw std::invalid_argument(std::string(kWho) + ": master_port must be in [0, 65535], got " + std::to_string(port));
  }
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(std::string(kWho) + ": socket: " + std::strerror(errno));
  const int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));  // a port in TIME_WAIT is free
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<uint16_t>(port));
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 || listen(fd, 128) != 0) {
    const std::string reason = std::strerror(errno);
    close(fd);
    throw std::runtime_error(std::string(kWho) + ": cannot listen on 127.0.0.1:" + std::to_string(port) +
                             " for the rendezvous: " + reason + " (choose another port, or 0 for a free one)");
  }
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  return {fd, ntohs(address.sin_port)};
}

// This process's environment without the job variables, plus this rank's.
std::vector<std::string> rank_environment(int64_t rank, int64_t world_size, int port, int listen_fd) {
  const std::vector<std::string> job{"RANK=", "LOCAL_RANK=", "WORLD_SIZE=", "LOCAL_WORLD_SIZE=",
                                     "MASTER_ADDR=", "MASTER_PORT=", "SLIDEFORMER_LISTEN_FD="};
  std::vector<std::string> environment;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    const std::string variable = *entry;
    bool ours = false;
    for (const std::string& prefix : job) ours = ours || variable.rfind(prefix, 0) == 0;
    if (!ours) environment.push_back(variable);
  }
  for (const std::string& variable :
       {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
        "WORLD_SIZE=" + std::to_string(world_size), "LOCAL_WORLD_SIZE=" + std::to_string(world_size),
        std::string("MASTER_ADDR=127.0.0.1"), "MASTER_PORT=" + std::to_string(port)}) {
    environment.push_back(variable);
  }
  if (rank == 0) environment.push_back("SLIDEFORMER_LISTEN_FD=" + std::to_string(listen_fd));
  return environment;
}

std::vector<char*> c_strings(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  for (std::string& s : strings) pointers.push_back(s.data());
  pointers.push_back(nullptr);
  return pointers;
}

// `program` itself when it names a path, else the first executable of that name on PATH (as
// execvp would find it; resolved here because the child may only make async-signal-safe calls).
std::string find_program(const std::string& program) {
  if (program.find('/') != std::string::npos) return program;
  const char* path = std::getenv("PATH");
  std::istringstream directories(path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin");
  for (std::string directory; std::getline(directories, directory, ':');) {
    const std::string candidate = (directory.empty() ? "." : directory) + "/" + program;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return program;  // execve fails with ENOENT, which start_rank reports
}

// Starts a rank that the kernel kills (SIGKILL) when this thread ends, by any death of the
// launcher included (PR_SET_PDEATHSIG): no rank outlives a launcher killed with kill -9. Returns
// its pid, or -errno when it could not be started (the child reports exec's errno through a
// close-on-exec pipe, which an exec that succeeds closes empty).
pid_t start_rank(const std::string& program, char* const* argv, char* const* envp, int close_fd) {
  int report[2];
  if (pipe2(report, O_CLOEXEC) != 0) return -errno;
  const pid_t launcher = getpid();
  const pid_t pid = fork();
  if (pid == 0) {
    // Async-signal-safe calls only, up to the exec (the launcher may have threads).
    int error = 0;
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) error = errno;
    if (error == 0 && getppid() != launcher) _exit(127);  // the launcher died before the prctl
    if (error == 0 && close_fd >= 0) close(close_fd);
    if (error == 0) execve(program.c_str(), argv, envp);
    if (error == 0) error = errno;
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

int exit_status(int wait_status) {
  return WIFSIGNALED(wait_status) ? 128 + WTERMSIG(wait_status) : WEXITSTATUS(wait_status);
}

void report(int64_t rank, pid_t pid, int wait_status) {
  if (WIFSIGNALED(wait_status)) {
    std::fprintf(stderr, "%s: rank %lld (pid %d) was killed by signal %d (%s)\n", kWho, static_cast<long long>(rank),
                 pid, WTERMSIG(wait_status), strsignal(WTERMSIG(wait_status)));
  } else {
    std::fprintf(stderr, "%s: rank %lld (pid %d) exited with status %d\n", kWho, static_cast<long long>(rank), pid,
                 WEXITSTATUS(wait_status));
  }
  std::fflush(stderr);
}

}  // namespace

LaunchResult launch_local(const std::vector<std::string>& argv, const LaunchOptions& options) {
  if (argv.empty()) throw std::invalid_argument(std::string(kWho) + ": argv is empty (argv[0] is the program)");
  if (options.nproc() < 1) throw std::invalid_argument(std::string(kWho) + ": nproc must be >= 1, got " + std::to_string(options.nproc()));
  const auto [listen_fd, port] = listen_on_loopback(options.master_port());
  InterruptCounter interrupt_counter;

  const int64_t n = options.nproc();
  std::vector<pid_t> pids;
  std::vector<std::string> arguments = argv;
  std::vector<char*> arg_pointers = c_strings(arguments);
  const std::string program = find_program(arguments[0]);
  for (int64_t rank = 0; rank < n; ++rank) {
    std::vector<std::string> environment = rank_environment(rank, n, port, listen_fd);
    std::vector<char*> env_pointers = c_strings(environment);
    // Only rank 0 listens.
    const pid_t pid = start_rank(program, arg_pointers.data(), env_pointers.data(), rank != 0 ? listen_fd : -1);
    if (pid < 0) {
      for (pid_t started : pids) kill(started, SIGKILL);
      for (pid_t started : pids) waitpid(started, nullptr, 0);
      close(listen_fd);
      throw std::runtime_error(std::string(kWho) + ": cannot start " + arguments[0] + ": " + std::strerror(-pid));
    }
    pids.push_back(pid);
  }
  close(listen_fd);  // rank 0 holds it now

  LaunchResult result;
  result.rank_status.assign(n, -1);
  int64_t running = n;
  int forwarded = 0;
  bool failed = false, terminated = false;
  std::optional<Clock::time_point> deadline;
  while (running > 0) {
    if (const int seen = interrupts.load(); seen > forwarded) {
      // The first interrupt asks the ranks to stop at their next step; another one kills them.
      for (int64_t rank = 0; rank < n; ++rank) {
        if (result.rank_status[rank] < 0) kill(pids[rank], seen > 1 ? SIGKILL : SIGINT);
      }
      forwarded = seen;
    }
    for (int64_t rank = 0; rank < n; ++rank) {
      int status = 0;
      if (result.rank_status[rank] >= 0 || waitpid(pids[rank], &status, WNOHANG) != pids[rank]) continue;
      result.rank_status[rank] = exit_status(status);
      --running;
      const bool obeyed_interrupt = forwarded > 0 && result.rank_status[rank] == 130;
      if (result.rank_status[rank] != 0 && !obeyed_interrupt) {
        report(rank, pids[rank], status);
        failed = true;
      }
    }
    if (failed && !deadline) deadline = Clock::now() + options.grace();
    if (deadline && running > 0 && Clock::now() > *deadline) {
      std::fprintf(stderr, "%s: %s the remaining ranks\n", kWho, terminated ? "killing" : "terminating");
      for (int64_t rank = 0; rank < n; ++rank) {
        if (result.rank_status[rank] < 0) kill(pids[rank], terminated ? SIGKILL : SIGTERM);
      }
      deadline = Clock::now() + std::chrono::seconds(5);
      terminated = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  result.exit_code = failed || terminated ? 1 : forwarded > 0 ? 130 : 0;
  return result;
}

}  // namespace slideformer::distributed
