#pragma once
// The processes of a training run: this one alone, or the ranks of a data-parallel job, and what
// they do together (agree to start, score their parts of the validation data, time their
// communication).
#include <ATen/Tensor.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "idx.h"
#include "model_config.h"
#include "slideformer/data.h"
#include "slideformer/distributed.h"

namespace slideformer::app {

struct Ranks {
  std::optional<distributed::ProcessGroup> group;

  int64_t rank() const { return group ? group->rank() : 0; }
  int64_t size() const { return group ? group->world_size() : 1; }
  // Sums over the ranks (the values themselves in a single process).
  std::vector<double> sum(const std::vector<double>& values) const {
    return group ? distributed::all_reduce_sum(*group, values) : values;
  }
};

// Every rank learns whether all of them could start (`failure` empty), so that none waits for one
// that gave up: the first rank that failed throws its own error, the others that they stop
// because of it.
void agree_on_start(const Ranks& ranks, const std::string& failure);

// The accuracy of `model` on the test set, each rank scoring its part.
double test_accuracy(const Ranks& ranks, const Model& model, const Dataset& test);

// The accuracy on the validation folder of an eval loader, each rank scoring its part, and the
// number of images skipped.
std::pair<double, int64_t> folder_accuracy(const Ranks& ranks, const Model& model, data::Loader& loader,
                                           int64_t folder_size);

// Rank 0's view of the gradient all-reduce over an epoch (BackwardTiming summed), and the time
// the per-step metric all-reduce waited for the slowest rank.
struct CommunicationTotals {
  double backward = 0, communication = 0, overlapped = 0, exposed = 0, metric_sync = 0;

  void add(const distributed::BackwardTiming& timing);
  // The fields of a metrics.jsonl line (", \"processes\": ...").
  std::string json(int64_t processes) const;
};

}  // namespace slideformer::app
