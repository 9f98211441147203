#include "ranks.h"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

#include "image_data.h"
#include "inference.h"

namespace slideformer::app {

namespace dist = slideformer::distributed;

namespace {

at::Tensor this_ranks_part(const Ranks& ranks, int64_t n) {
  return dist::DistributedSampler(n, ranks.rank(), ranks.size(),
                                  dist::DistributedSamplerOptions(std::max<int64_t>(1, n)).shuffle(false))
      .shard(0);
}

}  // namespace

void agree_on_start(const Ranks& ranks, const std::string& failure) {
  std::vector<double> failed(ranks.size(), 0.0);
  failed[ranks.rank()] = failure.empty() ? 0.0 : 1.0;
  failed = ranks.sum(failed);
  const auto first = std::find_if(failed.begin(), failed.end(), [](double f) { return f > 0; });
  if (first == failed.end()) return;
  const int64_t failing = first - failed.begin();
  if (failing == ranks.rank()) throw std::runtime_error(failure);
  throw std::runtime_error(fmt::format("rank {}: stopping: rank {} could not start the run", ranks.rank(), failing));
}

std::pair<double, int64_t> folder_accuracy(const Ranks& ranks, const Model& model, data::Loader& loader,
                                           int64_t folder_size) {
  const Scored scored = score(loader, this_ranks_part(ranks, folder_size),
                              [&](const at::Tensor& images) { return model(images); });
  const int64_t right = scored.labels.numel() ? scored.logits.argmax(1).eq(scored.labels).sum().item<int64_t>() : 0;
  const std::vector<double> counts = ranks.sum({double(right), double(scored.labels.numel()), double(scored.skipped)});
  return {counts[0] / std::max(counts[1], 1.0), static_cast<int64_t>(counts[2])};
}

double test_accuracy(const Ranks& ranks, const Model& model, const Dataset& test) {
  const int64_t n = test.images.size(0);
  const at::Tensor mine = this_ranks_part(ranks, n);
  const Dataset part{test.images.index_select(0, mine), test.labels.index_select(0, mine)};
  const at::Tensor predictions = predict_classes(
      [&](const at::Tensor& unit) { return model(normalise(*model.classifier, unit)); }, part);
  const std::vector<double> counts =
      ranks.sum({predictions.eq(part.labels).sum().item<double>(), static_cast<double>(mine.numel())});
  return counts[0] / std::max(counts[1], 1.0);
}

void CommunicationTotals::add(const dist::BackwardTiming& timing) {
  backward += timing.backward;
  communication += timing.communication;
  overlapped += timing.overlapped;
  exposed += timing.exposed();
}

std::string CommunicationTotals::json(int64_t processes) const {
  return fmt::format(
      ", \"processes\": {}, \"backward_seconds\": {:.3f}, \"allreduce_seconds\": {:.3f}, "
      "\"allreduce_overlapped_seconds\": {:.3f}, \"allreduce_exposed_seconds\": {:.3f}, "
      "\"metric_sync_seconds\": {:.3f}",
      processes, backward, communication, overlapped, exposed, metric_sync);
}

}  // namespace slideformer::app
