// Loader: worker threads fill a ring of batch buffers from the epoch plan (see loader.h).
#include "slideformer/data/loader.h"

#include <ATen/ATen.h>

#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "random.h"

namespace slideformer::data {

uint64_t sample_key(uint64_t seed, int64_t epoch, int64_t index) {
  using detail::mix64;
  return mix64(mix64(mix64(seed) + static_cast<uint64_t>(epoch)) + static_cast<uint64_t>(index));
}

std::vector<at::Tensor> sequential_batches(int64_t size, int64_t batch_size) {
  TORCH_CHECK(size >= 0 && batch_size > 0, "slideformer::data::sequential_batches: size must be >= 0 and "
              "batch_size > 0, got ", size, " and ", batch_size);
  std::vector<at::Tensor> batches;
  for (int64_t start = 0; start < size; start += batch_size) {
    batches.push_back(at::arange(start, std::min(size, start + batch_size), at::kLong));
  }
  return batches;
}

namespace {

// One batch being filled: its buffer, how many samples are still being worked on, and each
// position's error (null when it loaded).
struct Slot {
  at::Tensor buffer;
  int64_t batch = -1;
  int64_t remaining = 0;
  std::vector<std::exception_ptr> errors;
  std::vector<bool> bad_image;  // the error is an ImageError (skippable)
};

}  // namespace

struct Loader::State {
  ImageFolder data;
  ImageTransform transform;
  LoaderOptions options;
  at::Tensor labels;
  int64_t image_floats = 0;

  std::mutex mutex;
  std::condition_variable work_ready, batch_done;
  std::vector<std::thread> workers;
  bool stopping = false;
  uint64_t generation = 0;  // bumped by start_epoch: work of an abandoned epoch is discarded
  int64_t epoch = 0;
  std::vector<at::Tensor> plan;
  int64_t next_batch = 0, next_position = 0;  // the next sample to hand to a worker
  int64_t returned = 0;                       // batches next() has returned
  int64_t in_flight = 0;                      // samples being worked on
  std::vector<Slot> slots;                    // prefetch + 1: the caller's batch and those ahead

  State(ImageFolder d, ImageTransform t, LoaderOptions o)
      : data(std::move(d)), transform(std::move(t)), options(o), labels(data.labels()) {
    const auto shape = transform.output_shape();
    image_floats = shape[0] * shape[1] * shape[2];
    slots.resize(static_cast<size_t>(options.prefetch() + 1));
  }

  int64_t window_end() const {  // batches before this one may be filled
    return std::max<int64_t>(returned - 1, 0) + static_cast<int64_t>(slots.size());
  }

  Slot& slot_of(int64_t batch) { return slots[static_cast<size_t>(batch) % slots.size()]; }

  // Readies the slot of `batch`: a buffer nobody else holds, large enough.
  void prepare(int64_t batch) {
    Slot& slot = slot_of(batch);
    const int64_t size = plan[batch].numel();
    const auto shape = transform.output_shape();
    if (!slot.buffer.defined() || slot.buffer.size(0) < size || slot.buffer.storage().use_count() > 1) {
      slot.buffer = at::empty({std::max<int64_t>(size, 1), shape[0], shape[1], shape[2]}, at::kFloat);
    }
    slot.batch = batch;
    slot.remaining = size;
    slot.errors.assign(static_cast<size_t>(size), nullptr);
    slot.bad_image.assign(static_cast<size_t>(size), false);
  }

  // Loads one sample into `out`; its error, if any.
  std::exception_ptr load(int64_t index, float* out, bool& bad_image) const {
    const Sample& sample = data.sample(index);
    try {
      const std::string bytes = read_file_bytes(sample.path);
      transform.apply(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), sample.path,
                      sample_key(options.seed(), epoch, index), out);
    } catch (const ImageError&) {
      bad_image = true;
      return std::current_exception();
    } catch (...) {
      return std::current_exception();
    }
    return nullptr;
  }

  void work() {
    std::unique_lock<std::mutex> lock(mutex);
    while (true) {
      work_ready.wait(lock, [&] {
        return stopping || (next_batch < static_cast<int64_t>(plan.size()) && next_batch < window_end());
      });
      if (stopping) return;
      const int64_t batch = next_batch, position = next_position;
      if (++next_position >= plan[batch].numel()) ++next_batch, next_position = 0;
      if (position >= plan[batch].numel()) continue;  // an empty batch
      Slot& slot = slot_of(batch);
      const uint64_t my_generation = generation;
      const int64_t index = plan[batch].data_ptr<int64_t>()[position];
      float* out = slot.buffer.data_ptr<float>() + position * image_floats;
      ++in_flight;
      lock.unlock();
      bool bad_image = false;
      std::exception_ptr error = load(index, out, bad_image);
      lock.lock();
      --in_flight;
      if (generation == my_generation) {
        slot.errors[position] = std::move(error);
        slot.bad_image[position] = bad_image;
        --slot.remaining;
      }
      batch_done.notify_all();
    }
  }
};

Loader::Loader(ImageFolder data, ImageTransform transform, LoaderOptions options) {
  TORCH_CHECK(options.threads() >= 1 && options.threads() <= 1024, "slideformer::data::Loader: threads must be in "
              "[1, 1024], got ", options.threads());
  TORCH_CHECK(options.prefetch() >= 1 && options.prefetch() <= 64, "slideformer::data::Loader: prefetch must be in "
              "[1, 64], got ", options.prefetch());
  state_ = std::make_unique<State>(std::move(data), std::move(transform), options);
  for (int64_t t = 0; t < options.threads(); ++t) state_->workers.emplace_back([state = state_.get()] { state->work(); });
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->stopping = true;
  }
  state_->work_ready.notify_all();
  for (std::thread& worker : state_->workers) worker.join();
}

void Loader::start_epoch(int64_t epoch, std::vector<at::Tensor> batches) {
  for (at::Tensor& batch : batches) {
    TORCH_CHECK(batch.dim() == 1 && batch.scalar_type() == at::kLong, "slideformer::data::Loader::start_epoch: "
                "each batch must be a 1-D int64 tensor of dataset indices, got ", batch.sizes(), " ", batch.scalar_type());
    batch = batch.contiguous();
    if (batch.numel() > 0) {
      const int64_t low = batch.min().item<int64_t>(), high = batch.max().item<int64_t>();
      TORCH_CHECK(low >= 0 && high < state_->data.size(), "slideformer::data::Loader::start_epoch: index ",
                  low < 0 ? low : high, " is outside the dataset of ", state_->data.size(), " samples");
    }
  }
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mutex);
  ++s.generation;
  s.plan.clear();  // no new work of the abandoned epoch
  s.batch_done.wait(lock, [&] { return s.in_flight == 0; });  // nobody writes to the buffers now
  s.epoch = epoch;
  s.plan = std::move(batches);
  s.next_batch = s.next_position = s.returned = 0;
  for (int64_t b = 0; b < std::min<int64_t>(s.plan.size(), s.window_end()); ++b) s.prepare(b);
  lock.unlock();
  s.work_ready.notify_all();
}

std::optional<Batch> Loader::next() {
  State& s = *state_;
  std::unique_lock<std::mutex> lock(s.mutex);
  const int64_t total = static_cast<int64_t>(s.plan.size());
  if (s.returned >= total) return std::nullopt;
  const int64_t step = s.returned;
  // The batch returned before this one is released: its slot takes the next batch of the window.
  const int64_t old_end = s.window_end();
  ++s.returned;
  for (int64_t b = old_end; b < std::min(total, s.window_end()); ++b) s.prepare(b);
  s.work_ready.notify_all();
  Slot& slot = s.slot_of(step);
  s.batch_done.wait(lock, [&] { return slot.remaining == 0; });
  Batch batch;
  batch.step = step;
  batch.indices = s.plan[step];
  const int64_t size = batch.indices.numel();
  std::vector<int64_t> kept;
  for (int64_t i = 0; i < size; ++i) {
    if (!slot.errors[i]) {
      kept.push_back(i);
      continue;
    }
    if (!s.options.skip_bad_images() || !slot.bad_image[i]) std::rethrow_exception(slot.errors[i]);
    try {
      std::rethrow_exception(slot.errors[i]);
    } catch (const ImageError& error) {
      batch.errors.push_back(error.what());
    }
  }
  batch.images = slot.buffer.narrow(0, 0, size);
  if (static_cast<int64_t>(kept.size()) < size) {
    const at::Tensor positions = at::tensor(kept, at::kLong);
    batch.images = batch.images.index_select(0, positions);
    batch.indices = batch.indices.index_select(0, positions);
  }
  batch.labels = s.labels.index_select(0, batch.indices);
  return batch;
}

const ImageFolder& Loader::data() const { return state_->data; }
const ImageTransform& Loader::transform() const { return state_->transform; }

}  // namespace slideformer::data
