// launch_local: the ranks of a job as child processes of this one, on 127.0.0.1.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "slideformer/distributed.h"
#include "slideformer/distributed/process.h"

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

// Rank `rank` of the job: this process's environment with the job variables replaced by the
// rank's. Only rank 0 inherits the listening socket. It dies with the launcher: no rank outlives
// a launcher killed with kill -9.
ChildProcess rank_process(const std::vector<std::string>& argv, int64_t rank, int64_t world_size, int port,
                          int listen_fd) {
  ChildProcess child;
  child.argv = argv;
  child.environment = {"RANK=" + std::to_string(rank), "LOCAL_RANK=" + std::to_string(rank),
                       "WORLD_SIZE=" + std::to_string(world_size), "LOCAL_WORLD_SIZE=" + std::to_string(world_size),
                       "MASTER_ADDR=127.0.0.1", "MASTER_PORT=" + std::to_string(port)};
  if (rank == 0) {
    child.environment.push_back("SLIDEFORMER_LISTEN_FD=" + std::to_string(listen_fd));
  } else {
    child.unset_environment = {"SLIDEFORMER_LISTEN_FD"};
    child.close_descriptors = {listen_fd};
  }
  child.die_with_parent = true;
  return child;
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
  for (int64_t rank = 0; rank < n; ++rank) {
    const pid_t pid = start_child(rank_process(argv, rank, n, port, listen_fd));
    if (pid < 0) {
      for (pid_t started : pids) kill(started, SIGKILL);
      for (pid_t started : pids) waitpid(started, nullptr, 0);
      close(listen_fd);
      throw std::runtime_error(std::string(kWho) + ": cannot start " + argv[0] + ": " + std::strerror(-pid));
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
