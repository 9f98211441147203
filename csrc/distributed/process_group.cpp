// Process groups: the TCPStore rendezvous, Gloo (and NCCL) backends, heartbeats, and the
// collectives and metric helpers of slideformer/distributed.h.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/cuda.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>

#include "internal.h"

namespace slideformer::distributed {

namespace {

constexpr const char* kWho = "slideformer::distributed";

std::string key(const char* kind, int64_t rank) {
  return std::string("slideformer/") + kind + "/" + std::to_string(rank);
}

std::string seconds_text(std::chrono::milliseconds duration) {
  std::ostringstream text;
  text << duration.count() / 1000.0 << " s";
  return text.str();
}

std::string rank_list(const std::vector<int64_t>& ranks) {
  std::string text;
  for (size_t i = 0; i < ranks.size(); ++i) text += (i ? ", " : "") + std::to_string(ranks[i]);
  return text;
}

int64_t environment_integer(const char* name, std::optional<int64_t> fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') {
    if (fallback) return *fallback;
    throw std::invalid_argument(std::string(kWho) + ": the environment variable " + name +
                                " is not set (a launcher such as torchrun sets it)");
  }
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') {
    throw std::invalid_argument(std::string(kWho) + ": the environment variable " + name +
                                " must be an integer, got '" + text + "'");
  }
  return value;
}

bool is_loopback(const std::string& address) {
  return address == "localhost" || address.rfind("127.", 0) == 0;
}

// Gloo's network device: loopback for a job on this machine; otherwise the interface named by
// GLOO_SOCKET_IFNAME (as in PyTorch), else the address this machine's hostname resolves to.
std::shared_ptr<::gloo::transport::Device> gloo_device(const std::string& master_addr) {
  if (is_loopback(master_addr)) return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  if (const char* interfaces = std::getenv("GLOO_SOCKET_IFNAME"); interfaces && *interfaces) {
    const std::string names = interfaces;
    return c10d::ProcessGroupGloo::createDeviceForInterface(names.substr(0, names.find(',')));
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}

std::vector<uint8_t> bytes(const std::string& text) { return {text.begin(), text.end()}; }

// `query()` run on a thread of its own, or nullopt when it has not returned within `deadline`
// (its exception is rethrown). A store call over a link that went down waits for a reply that
// never comes (TCPStore's client sets no receive timeout; TCP retransmits for ~15 minutes), so
// such a thread is left behind, holding what the query captured.
template <typename T>
std::optional<T> within(std::chrono::milliseconds deadline, std::function<T()> query) {
  auto result = std::make_shared<std::promise<T>>();
  std::future<T> answer = result->get_future();
  std::thread([result, query = std::move(query)] {
    try {
      result->set_value(query());
    } catch (...) {
      result->set_exception(std::current_exception());
    }
  }).detach();
  if (answer.wait_for(deadline) != std::future_status::ready) return std::nullopt;
  return answer.get();
}

// What the heartbeat thread shares with its group, held by both, so that a group can go while its
// heartbeat is stuck in a store call.
struct Heartbeat {
  c10::intrusive_ptr<c10d::Store> store;  // a connection of its own (also read by lost_ranks)
  std::chrono::milliseconds period{1000};
  std::mutex mutex;
  std::condition_variable wake;
  bool stopping = false, ended = false;
};

// Adds one to this rank's heartbeat every period; when stopped, records that the rank left.
void beat(const std::shared_ptr<Heartbeat>& heartbeat, int64_t rank) {
  std::unique_lock<std::mutex> lock(heartbeat->mutex);
  try {
    while (!heartbeat->stopping) {
      lock.unlock();
      heartbeat->store->add(key("heartbeat", rank), 1);
      lock.lock();
      heartbeat->wake.wait_for(lock, heartbeat->period, [&] { return heartbeat->stopping; });
    }
    lock.unlock();
    heartbeat->store->set(key("left", rank), bytes("left"));
    lock.lock();
  } catch (const std::exception&) {
    if (!lock.owns_lock()) lock.lock();  // the store is gone (rank 0 ended or died): nothing left to tell
  }
  heartbeat->ended = true;
  heartbeat->wake.notify_all();
}

std::string this_process() {
  char host[256] = {};
  gethostname(host, sizeof(host) - 1);
  return "pid " + std::to_string(getpid()) + " on " + host;
}

void check_options(const ProcessGroupOptions& options) {
  auto fail = [](const std::string& what) { throw std::invalid_argument(std::string(kWho) + ": " + what); };
  if (options.world_size() < 1) fail("world_size must be >= 1, got " + std::to_string(options.world_size()));
  if (options.rank() < 0 || options.rank() >= options.world_size()) {
    fail("rank must be in [0, world_size = " + std::to_string(options.world_size()) + "), got " +
         std::to_string(options.rank()));
  }
  if (options.local_rank() < 0) fail("local_rank must be >= 0, got " + std::to_string(options.local_rank()));
  if (options.master_port() < 1 || options.master_port() > 65535) {
    fail("master_port must be in [1, 65535], got " + std::to_string(options.master_port()));
  }
  if (options.timeout().count() <= 0) fail("timeout must be positive, got " + std::to_string(options.timeout().count()) + " ms");
  if (options.listen_fd() >= 0 && (options.rank() != 0 || !options.host_store())) {
    fail("listen_fd is for rank 0 hosting the store only, got it on rank " + std::to_string(options.rank()));
  }
}

c10d::ReduceOp c10d_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum: return c10d::ReduceOp::SUM;
    case ReduceOp::kMax: return c10d::ReduceOp::MAX;
    case ReduceOp::kMin: return c10d::ReduceOp::MIN;
  }
  throw std::invalid_argument(std::string(kWho) + ": unknown ReduceOp");
}

}  // namespace

CommunicationError::CommunicationError(const std::string& message, std::vector<int64_t> lost_ranks)
    : std::runtime_error(message), lost_ranks_(std::move(lost_ranks)) {}

ProcessGroupOptions ProcessGroupOptions::from_environment(std::chrono::milliseconds timeout) {
  const char* addr = std::getenv("MASTER_ADDR");
  const char* agent_store = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  const bool under_agent = agent_store != nullptr && std::string(agent_store) == "True";
  return ProcessGroupOptions()
      .host_store(!under_agent)
      .store_prefix(under_agent ? "/worker/attempt_" + std::to_string(environment_integer("TORCHELASTIC_RESTART_COUNT", 0)) : "")
      .rank(environment_integer("RANK", std::nullopt))
      .world_size(environment_integer("WORLD_SIZE", std::nullopt))
      .local_rank(environment_integer("LOCAL_RANK", 0))
      .master_addr(addr && *addr ? addr : "127.0.0.1")
      .master_port(environment_integer("MASTER_PORT", 29500))
      .listen_fd(static_cast<int>(environment_integer("SLIDEFORMER_LISTEN_FD", -1)))
      .timeout(timeout);
}

bool launched_from_environment() {
  const char* world = std::getenv("WORLD_SIZE");
  return world != nullptr && *world != '\0';
}

struct ProcessGroup::Impl {
  ProcessGroupOptions options;
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  bool nccl = false;
  std::shared_ptr<Heartbeat> heartbeat;
  std::thread heartbeat_thread;
  // Set when a lost-rank check found the store unreachable: later store calls would only wait.
  std::atomic<bool> store_unreachable{false};

  explicit Impl(const ProcessGroupOptions& opts);
  ~Impl();
  void rendezvous();
  std::chrono::milliseconds query_deadline() const;
  std::vector<int64_t> lost_ranks();
  std::string describe(int64_t rank);
};

ProcessGroup::Impl::Impl(const ProcessGroupOptions& opts) : options(opts) {
  check_options(options);
  const std::string address = options.master_addr() + ":" + std::to_string(options.master_port());
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(options.master_port());
  store_options.isServer = options.rank() == 0 && options.host_store();
  store_options.numWorkers = options.world_size();
  store_options.waitWorkers = false;  // the rendezvous below names the ranks that do not come
  store_options.timeout = options.timeout();
  if (options.listen_fd() >= 0) store_options.masterListenFd = options.listen_fd();
  try {
    store = c10::make_intrusive<c10d::TCPStore>(options.master_addr(), store_options);
    if (!options.store_prefix().empty()) store = c10::make_intrusive<c10d::PrefixStore>(options.store_prefix(), store);
  } catch (const std::exception& error) {
    const std::string cause = detail::first_line(error);
    if (store_options.isServer) {
      throw CommunicationError(std::string(kWho) + ": rank 0 cannot host the rendezvous store at " +
                                   address + " (is the port in use? choose another MASTER_PORT): " +
                                   cause,
                               {});
    }
    throw CommunicationError(std::string(kWho) + ": rank " + std::to_string(options.rank()) +
                                 " could not reach the rendezvous store at " + address + " within " +
                                 seconds_text(options.timeout()) + ": " +
                                 (options.host_store() ? "rank 0 never arrived" : "the launcher's store is not there") +
                                 " (" + cause + ")",
                             options.host_store() ? std::vector<int64_t>{0} : std::vector<int64_t>{});
  }
  rendezvous();

  const int rank = static_cast<int>(options.rank()), size = static_cast<int>(options.world_size());
  group = c10::make_intrusive<c10d::ProcessGroup>(store, rank, size);
  try {
    auto gloo_options = c10d::ProcessGroupGloo::Options::create(options.timeout());
    gloo_options->devices.push_back(gloo_device(options.master_addr()));
    auto gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(
        c10::make_intrusive<c10d::PrefixStore>("gloo", store), rank, size, gloo_options);
    group->setBackend(c10::DeviceType::CPU, c10d::ProcessGroup::BackendType::GLOO, gloo);
    group->setDefaultBackend(c10d::ProcessGroup::BackendType::GLOO);
    if (options.nccl() && torch::cuda::is_available()) {
      auto nccl = detail::make_nccl_backend(c10::make_intrusive<c10d::PrefixStore>("nccl", store),
                                            rank, size, options.local_rank(), options.timeout());
      if (nccl) {
        group->setBackend(c10::DeviceType::CUDA, c10d::ProcessGroup::BackendType::NCCL, nccl);
        this->nccl = true;
      }
    }
  } catch (const std::exception& error) {
    throw CommunicationError(std::string(kWho) + ": rank " + std::to_string(rank) +
                                 " could not connect the backends: " + detail::first_line(error),
                             {});
  }
  // Last: a constructor that throws never runs the destructor that would stop the thread.
  heartbeat = std::make_shared<Heartbeat>();
  heartbeat->period = std::min(std::chrono::milliseconds(1000), std::max(options.timeout() / 4, std::chrono::milliseconds(50)));
  heartbeat->store = store->clone();
  heartbeat->store->setTimeout(query_deadline());
  heartbeat_thread = std::thread(beat, heartbeat, options.rank());
}

void ProcessGroup::Impl::rendezvous() {
  store->set(key("arrived", options.rank()), bytes(this_process()));
  std::vector<std::string> keys;
  for (int64_t r = 0; r < options.world_size(); ++r) keys.push_back(key("arrived", r));
  try {
    store->wait(keys, options.timeout());
  } catch (const std::exception& error) {
    std::vector<int64_t> missing;
    try {
      for (int64_t r = 0; r < options.world_size(); ++r) {
        if (!store->check({keys[r]})) missing.push_back(r);
      }
    } catch (const std::exception&) {
      missing = {0};  // the store itself went away with rank 0
    }
    throw CommunicationError(
        std::string(kWho) + ": the rendezvous at " + options.master_addr() + ":" +
            std::to_string(options.master_port()) + " timed out after " +
            seconds_text(options.timeout()) + ": rank" + (missing.size() > 1 ? "s " : " ") +
            rank_list(missing) + " of " + std::to_string(options.world_size()) + " never arrived",
        missing);
  }
}

// ~Impl waits this long at most for the heartbeat to record that the rank left (then leaves the
// thread behind); lost_ranks and describe wait this long for each answer of the store.
std::chrono::milliseconds ProcessGroup::Impl::query_deadline() const {
  return std::min(options.timeout(), std::chrono::milliseconds(5000));
}

ProcessGroup::Impl::~Impl() {
  if (!heartbeat_thread.joinable()) return;
  std::unique_lock<std::mutex> lock(heartbeat->mutex);
  heartbeat->stopping = true;
  heartbeat->wake.notify_all();
  if (!store_unreachable) heartbeat->wake.wait_for(lock, query_deadline(), [this] { return heartbeat->ended; });
  const bool ended = heartbeat->ended;
  lock.unlock();
  if (ended) {
    heartbeat_thread.join();
  } else {
    heartbeat_thread.detach();  // stuck in a store call: it holds what it uses
  }
}

std::string ProcessGroup::Impl::describe(int64_t rank) {
  const std::string name = "rank " + std::to_string(rank);
  if (store_unreachable) return name;
  const auto store = heartbeat->store;
  try {
    const auto who = within<std::vector<uint8_t>>(query_deadline(), [store, rank] { return store->get(key("arrived", rank)); });
    return who ? name + " (" + std::string(who->begin(), who->end()) + ")" : name;
  } catch (const std::exception&) {
    return name;
  }
}

std::vector<int64_t> ProcessGroup::Impl::lost_ranks() {
  const auto store = heartbeat->store;
  const int64_t size = options.world_size();
  // Each rank's heartbeat count, and whether it left.
  const std::function<std::vector<std::pair<int64_t, bool>>()> snapshot = [store, size] {
    std::vector<std::pair<int64_t, bool>> ranks;
    for (int64_t r = 0; r < size; ++r) ranks.emplace_back(store->add(key("heartbeat", r), 0), store->check({key("left", r)}));
    return ranks;
  };
  std::vector<int64_t> lost;
  try {
    const auto before = within(query_deadline(), snapshot);
    if (before) std::this_thread::sleep_for(heartbeat->period * 3 + std::chrono::milliseconds(200));
    const auto after = before ? within(query_deadline(), snapshot) : std::nullopt;
    if (!after) throw std::runtime_error("the store did not answer");
    for (int64_t r = 0; r < size; ++r) {
      if (r != options.rank() && (*after)[r].first == (*before)[r].first && !(*after)[r].second) lost.push_back(r);
    }
  } catch (const std::exception&) {
    store_unreachable = true;
    if (options.rank() != 0 && options.host_store()) lost = {0};  // the store rank 0 hosts is unreachable
  }
  return lost;
}

ProcessGroup::ProcessGroup(const ProcessGroupOptions& options) : impl_(std::make_shared<Impl>(options)) {}

int64_t ProcessGroup::rank() const { return impl_->options.rank(); }
int64_t ProcessGroup::world_size() const { return impl_->options.world_size(); }
int64_t ProcessGroup::local_rank() const { return impl_->options.local_rank(); }
at::Device ProcessGroup::device() const {
  return impl_->nccl ? at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(local_rank())) : at::Device(at::kCPU);
}
std::string ProcessGroup::backend_name() const { return impl_->nccl ? "gloo+nccl" : "gloo"; }
const c10::intrusive_ptr<c10d::ProcessGroup>& ProcessGroup::c10d_group() const { return impl_->group; }
std::vector<int64_t> ProcessGroup::lost_ranks() const { return impl_->lost_ranks(); }
std::string ProcessGroup::describe_rank(int64_t rank) const { return impl_->describe(rank); }

void ProcessGroup::all_reduce_(at::Tensor& tensor, ReduceOp op) const {
  if (!tensor.is_contiguous()) {
    throw std::invalid_argument(std::string(kWho) + "::all_reduce_: tensor must be contiguous, got strides " +
                                c10::str(tensor.strides()));
  }
  detail::run_collective(*this, "all_reduce", [&] {
    std::vector<at::Tensor> tensors{tensor};
    c10d::AllreduceOptions reduce;
    reduce.reduceOp = c10d_op(op);
    impl_->group->allreduce(tensors, reduce)->wait();
  });
}

void ProcessGroup::broadcast_(std::vector<at::Tensor> tensors, int64_t root) const {
  if (root < 0 || root >= world_size()) {
    throw std::invalid_argument(std::string(kWho) + "::broadcast_: root must be in [0, " +
                                std::to_string(world_size()) + "), got " + std::to_string(root));
  }
  detail::run_collective(*this, "broadcast", [&] {
    for (at::Tensor& tensor : tensors) {
      std::vector<at::Tensor> one{tensor.is_contiguous() ? tensor : tensor.contiguous()};
      c10d::BroadcastOptions from;
      from.rootRank = root;
      impl_->group->broadcast(one, from)->wait();
      if (!one[0].is_same(tensor)) tensor.copy_(one[0]);
    }
  });
}

void ProcessGroup::barrier() const {
  detail::run_collective(*this, "barrier", [&] { impl_->group->barrier()->wait(); });
}

std::vector<double> all_reduce_sum(const ProcessGroup& group, const std::vector<double>& values) {
  at::Tensor sums = at::tensor(values, at::kDouble);
  group.all_reduce_(sums, ReduceOp::kSum);
  return std::vector<double>(sums.data_ptr<double>(), sums.data_ptr<double>() + sums.numel());
}

double all_reduce_sum(const ProcessGroup& group, double value) { return all_reduce_sum(group, std::vector<double>{value})[0]; }

namespace detail {

std::string first_line(const std::exception& error) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&error);
  std::string text = c10_error ? c10_error->what_without_backtrace() : error.what();
  return text.substr(0, text.find('\n'));
}

void throw_communication_error(const ProcessGroup& group, const std::string& what, const std::exception& cause) {
  const std::vector<int64_t> lost = group.lost_ranks();
  std::string who;
  if (lost.empty()) {
    who = "no rank was found lost (one may have hung past the timeout)";
  } else {
    for (int64_t r : lost) who += (who.empty() ? "" : ", ") + group.describe_rank(r);
    who += lost.size() > 1 ? " are lost" : " is lost";
    who += " (no heartbeat)";
  }
  throw CommunicationError(std::string(kWho) + ": rank " + std::to_string(group.rank()) + ": " + what +
                               " failed: " + who + "; cause: " + first_line(cause),
                           lost);
}

}  // namespace detail

}  // namespace slideformer::distributed
