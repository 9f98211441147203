// DataParallel: c10d's Reducer (the engine of PyTorch's DistributedDataParallel) driven from C++,
// with a communication hook that weights each rank's gradients and times every bucket.
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <torch/csrc/distributed/c10d/comm.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "internal.h"

namespace slideformer::distributed {

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kWho = "slideformer::distributed::DataParallel";
// Parameters and buffers are broadcast from rank 0 in chunks of this size (PyTorch's default).
constexpr size_t kBroadcastBytes = 250 * 1024 * 1024;

// When each bucket's all-reduce was launched and when it completed.
struct Timeline {
  std::mutex mutex;
  std::vector<std::pair<Clock::time_point, Clock::time_point>> intervals;
};

// This step's weight, set by backward() and read by the hook.
using SharedWeight = std::shared_ptr<std::atomic<double>>;

// Sum over ranks of weight * gradient, one all-reduce per bucket. The returned future completes
// after the bucket's end time is recorded, so the Reducer's wait also waits for the record. The
// completion callback runs on a Gloo thread: it holds the timeline only, never the group, whose
// destruction joins those threads.
class WeightedSumHook final : public c10d::CommHookInterface {
 public:
  WeightedSumHook(c10::intrusive_ptr<c10d::ProcessGroup> group, SharedWeight weight, std::shared_ptr<Timeline> timeline)
      : group_(std::move(group)), weight_(std::move(weight)), timeline_(std::move(timeline)) {}

  c10::intrusive_ptr<c10::ivalue::Future> runHook(c10d::GradBucket& bucket) override {
    const Clock::time_point launched = Clock::now();
    std::vector<at::Tensor> tensors{bucket.getBufferRef()};
    const double weight = weight_->load();
    if (weight != 1.0) tensors[0].mul_(weight);
    c10::intrusive_ptr<c10::ivalue::Future> reduced = group_->allreduce(tensors)->getFuture();
    size_t slot;
    {
      std::lock_guard<std::mutex> lock(timeline_->mutex);
      slot = timeline_->intervals.size();
      timeline_->intervals.emplace_back(launched, launched);
    }
    return reduced->then(
        [timeline = timeline_, slot](c10::ivalue::Future& done) {
          std::lock_guard<std::mutex> lock(timeline->mutex);
          timeline->intervals[slot].second = Clock::now();
          return done.value();
        },
        reduced->elementType());
  }

  at::Tensor parseHookResult(const c10::IValue& result) override {
    return c10d::detail::parseCppCommHookResult(result);
  }

 private:
  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  SharedWeight weight_;
  std::shared_ptr<Timeline> timeline_;
};

double seconds(Clock::duration duration) { return std::chrono::duration<double>(duration).count(); }

// Length of the union of the intervals, and of its part before `until`.
std::pair<double, double> union_length(std::vector<std::pair<Clock::time_point, Clock::time_point>> intervals,
                                       Clock::time_point until) {
  std::sort(intervals.begin(), intervals.end());
  double total = 0, before = 0;
  Clock::time_point covered = Clock::time_point::min();
  for (const auto& [start, end] : intervals) {
    const Clock::time_point from = std::max(start, covered);
    if (end <= from) continue;
    total += seconds(end - from);
    if (from < until) before += seconds(std::min(end, until) - from);
    covered = end;
  }
  return {total, before};
}

}  // namespace

struct DataParallel::Impl {
  std::shared_ptr<torch::nn::Module> module;
  ProcessGroup group;
  DataParallelOptions options;
  std::vector<at::Tensor> parameters;  // the reduced ones: requires_grad, each once
  std::unordered_map<const c10::TensorImpl*, std::string> names;
  std::vector<at::Tensor> buffers;
  SharedWeight weight = std::make_shared<std::atomic<double>>(1.0);
  std::shared_ptr<Timeline> timeline = std::make_shared<Timeline>();
  std::unique_ptr<c10d::Reducer> reducer;
  bool sync = true;
  BackwardTiming timing;

  Impl(std::shared_ptr<torch::nn::Module> module_, ProcessGroup group_, DataParallelOptions options_)
      : module(std::move(module_)), group(std::move(group_)), options(options_) {}
};

DataParallel::DataParallel(std::shared_ptr<torch::nn::Module> module, ProcessGroup group,
                           DataParallelOptions options)
    : impl_(std::make_unique<Impl>(std::move(module), std::move(group), options)) {
  Impl& s = *impl_;
  if (!s.module) throw std::invalid_argument(std::string(kWho) + ": module is null");
  if (options.bucket_cap_bytes() < 1 || options.first_bucket_cap_bytes() < 1) {
    throw std::invalid_argument(std::string(kWho) + ": bucket sizes must be >= 1 byte, got bucket_cap_bytes " +
                                std::to_string(options.bucket_cap_bytes()) + " and first_bucket_cap_bytes " +
                                std::to_string(options.first_bucket_cap_bytes()));
  }
  std::vector<at::Tensor> states;  // every parameter (frozen ones too) and buffer, from rank 0
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& item : s.module->named_parameters()) {
    const at::Tensor& p = item.value();
    if (!seen.insert(p.unsafeGetTensorImpl()).second) continue;  // shared: reduce it once
    states.push_back(p.detach());
    if (!p.requires_grad()) continue;
    s.parameters.push_back(p);
    s.names.emplace(p.unsafeGetTensorImpl(), item.key());
  }
  if (s.parameters.empty()) {
    throw std::invalid_argument(std::string(kWho) + ": the module has no parameter that requires a gradient");
  }
  for (const at::Tensor& b : s.module->buffers()) s.buffers.push_back(b.detach());
  states.insert(states.end(), s.buffers.begin(), s.buffers.end());

  const c10::intrusive_ptr<c10d::ProcessGroup>& c10d_group = s.group.c10d_group();
  detail::run_collective(s.group, "checking and broadcasting the module", [&] {
    c10d::verify_params_across_processes(c10d_group, s.parameters, std::nullopt);
    c10d::broadcast_coalesced(c10d_group, states, kBroadcastBytes, 0);
  });

  // Until the first backward shows the order in which gradients arrive, buckets follow the
  // reverse registration order (the backward visits the last layers first); the Reducer then
  // rebuilds them once in arrival order.
  const std::vector<size_t> limits{static_cast<size_t>(options.first_bucket_cap_bytes()),
                                   static_cast<size_t>(options.bucket_cap_bytes())};
  auto buckets = std::get<0>(c10d::compute_bucket_assignment_by_size(
      s.parameters, limits, std::vector<bool>(s.parameters.size(), false)));
  std::reverse(buckets.begin(), buckets.end());
  std::unordered_map<size_t, std::string> index_names;
  for (size_t i = 0; i < s.parameters.size(); ++i) index_names.emplace(i, s.names.at(s.parameters[i].unsafeGetTensorImpl()));
  s.reducer = std::make_unique<c10d::Reducer>(
      s.parameters, std::move(buckets), c10d_group, std::vector<bool>(s.parameters.size(), false),
      options.bucket_cap_bytes(), options.find_unused_parameters(), /*gradient_as_bucket_view=*/false,
      std::move(index_names), options.first_bucket_cap_bytes(), /*skip_all_reduce_unused_params=*/false,
      /*use_python_reducer=*/false, /*bucket_bytes_cap_list=*/std::vector<int64_t>{});
  s.reducer->register_comm_hook(std::make_unique<WeightedSumHook>(c10d_group, s.weight, s.timeline));
}

DataParallel::~DataParallel() = default;
DataParallel::DataParallel(DataParallel&&) noexcept = default;
DataParallel& DataParallel::operator=(DataParallel&&) noexcept = default;

void DataParallel::backward(const at::Tensor& loss, std::optional<double> weight) {
  Impl& s = *impl_;
  if (!s.sync) {
    loss.backward();
    return;
  }
  if (weight && !std::isfinite(*weight)) {
    throw std::invalid_argument(std::string(kWho) + "::backward: weight must be finite, got " + std::to_string(*weight));
  }
  *s.weight = weight.value_or(1.0 / static_cast<double>(s.group.world_size()));
  {
    std::lock_guard<std::mutex> lock(s.timeline->mutex);
    s.timeline->intervals.clear();
  }
  Clock::time_point start, end;
  detail::run_collective(s.group, "the gradient all-reduce", [&] {
    s.reducer->rebuild_buckets();
    s.reducer->prepare_for_backward(s.options.find_unused_parameters() ? std::vector<at::Tensor>{loss}
                                                                       : std::vector<at::Tensor>{});
    start = Clock::now();
    loss.backward();
    end = Clock::now();
  });
  // After the backward: the forward may have saved a buffer for it (an index table).
  if (s.options.broadcast_buffers()) broadcast_buffers();
  if (!s.options.find_unused_parameters()) {
    for (const at::Tensor& p : s.parameters) {
      if (p.grad().defined()) continue;
      throw std::invalid_argument(
          std::string(kWho) + "::backward: parameter '" + s.names.at(p.unsafeGetTensorImpl()) +
          "' got no gradient from this loss, so its bucket was never reduced; every parameter that "
          "requires grad must take part in the loss, unless DataParallelOptions::find_unused_parameters is on");
    }
  }
  std::lock_guard<std::mutex> lock(s.timeline->mutex);
  const auto& intervals = s.timeline->intervals;
  Clock::time_point compute_end = start;
  for (const auto& interval : intervals) compute_end = std::max(compute_end, interval.first);
  const auto [communication, overlapped] = union_length(intervals, compute_end);
  s.timing = BackwardTiming{seconds(end - start), seconds(compute_end - start), communication, overlapped,
                            static_cast<int64_t>(intervals.size())};
}

void DataParallel::broadcast_buffers() {
  Impl& s = *impl_;
  if (s.buffers.empty()) return;
  detail::run_collective(s.group, "the buffer broadcast", [&] {
    c10d::broadcast_coalesced(s.group.c10d_group(), s.buffers, kBroadcastBytes, 0);
  });
}

DataParallel::NoSync::NoSync(DataParallel& parallel) : parallel_(parallel), previous_(parallel.impl_->sync) {
  parallel_.impl_->sync = false;
}

DataParallel::NoSync::~NoSync() { parallel_.impl_->sync = previous_; }

const ProcessGroup& DataParallel::group() const { return impl_->group; }
torch::nn::Module& DataParallel::module() const { return *impl_->module; }
BackwardTiming DataParallel::last_timing() const { return impl_->timing; }

std::vector<std::vector<std::string>> DataParallel::bucket_parameter_names() const {
  std::vector<std::vector<std::string>> names;
  for (const c10d::GradBucket& bucket : impl_->reducer->get_grad_buckets()) {
    names.emplace_back();
    for (const at::Tensor& p : bucket.getParameters()) names.back().push_back(impl_->names.at(p.unsafeGetTensorImpl()));
  }
  return names;
}

}  // namespace slideformer::distributed
