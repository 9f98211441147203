#pragma once
// A threaded loader: worker threads read, decode and transform the images of the batches an epoch
// plan lists, straight into reused batch buffers, a bounded number of batches ahead.
//
//   slideformer::data::Loader loader(folder, ImageTransform::train(config),
//                                    slideformer::data::LoaderOptions().threads(4).seed(0));
//   loader.start_epoch(epoch, batches);      // e.g. DistributedSampler::batch(order, step).indices
//   while (auto batch = loader.next()) train_step(batch->images, batch->labels);
//
// Determinism: a sample's image is a function of (seed, epoch, dataset index) alone (its transform
// key, sample_key()), and batches come out in plan order, so the batches are the same whatever the
// number of threads, the rank count that split the plan, or a resume in mid-epoch.
// Memory: prefetch batch buffers (reused while the caller holds no reference to a returned batch)
// plus one decode buffer set per thread.
#include <ATen/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "slideformer/data/folder.h"
#include "slideformer/data/transforms.h"

namespace slideformer::data {

struct LoaderOptions {
  TORCH_ARG(int64_t, threads) = 2;
  // Batches decoded ahead of the one the caller is using (at least 1).
  TORCH_ARG(int64_t, prefetch) = 2;
  TORCH_ARG(uint64_t, seed) = 0;
  // A file that cannot be read or decoded (ImageError) is left out of its batch and reported in
  // Batch::errors, instead of making next() throw.
  TORCH_ARG(bool, skip_bad_images) = false;
};

struct Batch {
  at::Tensor images;   // (B, C, S, S) float32
  at::Tensor labels;   // (B) int64
  at::Tensor indices;  // (B) int64 dataset indices
  int64_t step = 0;    // position in the epoch's plan
  std::vector<std::string> errors;  // the skipped files' messages (skip_bad_images)
};

// The transform key of dataset sample `index` in `epoch`.
uint64_t sample_key(uint64_t seed, int64_t epoch, int64_t index);

// Batches of 0..size-1 in order (the last one shorter), for evaluation.
std::vector<at::Tensor> sequential_batches(int64_t size, int64_t batch_size);

class Loader {
 public:
  Loader(ImageFolder data, ImageTransform transform, LoaderOptions options = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // Starts loading `batches` (1-D int64 dataset indices each; empty ones allowed) of `epoch`;
  // an epoch still in progress is abandoned.
  void start_epoch(int64_t epoch, std::vector<at::Tensor> batches);
  // The next batch of the plan, or nullopt at its end. Throws the first failed file's ImageError
  // (in batch order) unless skip_bad_images. The tensors stay valid as long as the caller holds
  // them (a held buffer is not reused).
  std::optional<Batch> next();

  const ImageFolder& data() const;
  const ImageTransform& transform() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace slideformer::data
