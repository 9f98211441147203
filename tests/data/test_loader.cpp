// The loader: batches are a function of (seed, epoch, plan), whatever the thread count, the rank
// split or a resume; bad files stop it or are skipped and reported; held batches stay intact.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "image_files.h"
#include "scratch_dir.h"
#include "slideformer/data.h"
#include "slideformer/distributed.h"

namespace slideformer::data {
namespace {

namespace dist = slideformer::distributed;

class LoaderTest : public slideformer::testing::ScratchDirTest {
 protected:
  void SetUp() override {
    ScratchDirTest::SetUp();
    ASSERT_EQ(slideformer::testing::write_fashion_folder(path("train"), 44, 3), 44);
    config_.image_size = 24;
    config_.class_names = {"0", "1", "2"};
  }

  // All batches of one epoch of `plan`, loaded with `threads` threads.
  std::vector<Batch> load(const ImageFolder& folder, int64_t threads, int64_t epoch, std::vector<at::Tensor> plan,
                          bool skip = false) {
    Loader loader(folder, ImageTransform::train(config_),
                  LoaderOptions().threads(threads).prefetch(2).seed(11).skip_bad_images(skip));
    loader.start_epoch(epoch, std::move(plan));
    std::vector<Batch> batches;
    while (auto batch = loader.next()) batches.push_back(*batch);
    return batches;
  }

  static std::vector<at::Tensor> shuffled_plan(int64_t n, int64_t rank, int64_t world, int64_t epoch) {
    const dist::DistributedSampler sampler(n, rank, world, dist::DistributedSamplerOptions(8).seed(5));
    const at::Tensor order = sampler.order(epoch);
    std::vector<at::Tensor> plan;
    for (int64_t step = 0; step < sampler.steps_per_epoch(); ++step) plan.push_back(sampler.batch(order, step).indices);
    return plan;
  }

  DataConfig config_;
};

TEST_F(LoaderTest, BatchesDoNotDependOnTheThreadCount) {
  const ImageFolder folder(path("train"));
  const auto one = load(folder, 1, 2, shuffled_plan(folder.size(), 0, 1, 2));
  const auto three = load(folder, 3, 2, shuffled_plan(folder.size(), 0, 1, 2));
  ASSERT_EQ(one.size(), 6u);
  ASSERT_EQ(three.size(), one.size());
  for (size_t b = 0; b < one.size(); ++b) {
    EXPECT_TRUE(at::equal(one[b].images, three[b].images)) << "batch " << b;
    EXPECT_TRUE(at::equal(one[b].labels, three[b].labels));
    EXPECT_EQ(one[b].images.sizes(), at::IntArrayRef({one[b].indices.numel(), 3, 24, 24}));
  }
  // Another epoch draws other crops of other batches.
  const auto next_epoch = load(folder, 2, 3, shuffled_plan(folder.size(), 0, 1, 3));
  EXPECT_FALSE(at::equal(next_epoch[0].images, one[0].images));
}

TEST_F(LoaderTest, RanksSplitEachGlobalBatchAndResumingMidEpochGivesTheSameBatches) {
  const ImageFolder folder(path("train"));
  const auto whole = load(folder, 2, 1, shuffled_plan(folder.size(), 0, 1, 1));
  const auto rank0 = load(folder, 1, 1, shuffled_plan(folder.size(), 0, 2, 1));
  const auto rank1 = load(folder, 2, 1, shuffled_plan(folder.size(), 1, 2, 1));
  ASSERT_EQ(rank0.size(), whole.size());
  for (size_t b = 0; b < whole.size(); ++b) {
    EXPECT_TRUE(at::equal(at::cat({rank0[b].images, rank1[b].images}), whole[b].images)) << "batch " << b;
  }
  std::vector<at::Tensor> rest = shuffled_plan(folder.size(), 0, 1, 1);
  rest.erase(rest.begin(), rest.begin() + 4);
  const auto resumed = load(folder, 3, 1, rest);
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_TRUE(at::equal(resumed[0].images, whole[4].images));
  EXPECT_TRUE(at::equal(resumed[1].images, whole[5].images));
}

TEST_F(LoaderTest, HeldBatchesAreNotOverwrittenAndReleasedBuffersAreReused) {
  const ImageFolder folder(path("train"));
  Loader loader(folder, ImageTransform::eval(config_), LoaderOptions().threads(2).prefetch(1));
  loader.start_epoch(0, sequential_batches(folder.size(), 4));
  const Batch first = *loader.next();
  const at::Tensor copy = first.images.clone();
  const void* released_buffer = nullptr;
  int64_t reused = 0;
  while (auto batch = loader.next()) {
    if (batch->step == 1) released_buffer = batch->images.data_ptr();
    if (batch->step >= 3 && batch->images.data_ptr() == released_buffer) ++reused;
  }
  EXPECT_TRUE(at::equal(first.images, copy));
  EXPECT_GT(reused, 0);  // batch 1's buffer, released, served a later batch
  // The eval transform ignores the seed and epoch.
  Loader again(folder, ImageTransform::eval(config_), LoaderOptions().threads(1).seed(99));
  again.start_epoch(7, sequential_batches(folder.size(), 4));
  EXPECT_TRUE(at::equal(again.next()->images, copy));
}

TEST_F(LoaderTest, ABadFileStopsTheEpochOrIsSkippedAndReported) {
  const std::string bad = path("train/1/zz_bad.jpg");
  slideformer::testing::write_file(bad, "not a jpeg");
  const ImageFolder folder(path("train"));
  const auto plan = sequential_batches(folder.size(), 16);
  try {
    load(folder, 2, 0, plan);
    ADD_FAILURE() << "no error for " << bad;
  } catch (const ImageError& error) {
    EXPECT_EQ(std::string(error.what()), bad + ": not a JPEG or PNG image (unknown signature)");
  }
  const auto batches = load(folder, 2, 0, plan, /*skip=*/true);
  int64_t images = 0, errors = 0;
  for (const Batch& batch : batches) {
    images += batch.images.size(0);
    errors += static_cast<int64_t>(batch.errors.size());
    EXPECT_EQ(batch.labels.numel(), batch.images.size(0));
    for (const std::string& message : batch.errors) EXPECT_EQ(message.rfind(bad + ": ", 0), 0u) << message;
  }
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(images, folder.size() - 1);
}

TEST_F(LoaderTest, TrainTransformMatchesACompositeOfCropResizeFlipAndNormalise) {
  const ImageFolder folder(path("train"));
  const ImageTransform train = ImageTransform::train(config_, TrainTransformOptions().dct_margin(0));
  const ImageTransform eval = ImageTransform::eval(config_, EvalTransformOptions().dct_margin(0));
  const at::Tensor mean = at::tensor(config_.mean, at::kFloat).view({3, 1, 1});
  const at::Tensor std = at::tensor(config_.std, at::kFloat).view({3, 1, 1});
  for (int64_t i = 0; i < 8; ++i) {
    const std::string& file = folder.sample(i).path;
    const at::Tensor image = read_image(file).permute({2, 0, 1}).to(at::kFloat).div(255).unsqueeze(0);
    const int64_t h = image.size(2), w = image.size(3);
    const auto [box, flip] = train.draw(w, h, 1000 + i);
    at::Tensor expected = at::_upsample_bilinear2d_aa(
        image.narrow(2, box.y, box.height).narrow(3, box.x, box.width), {24, 24}, false);
    if (flip) expected = expected.flip(3);
    EXPECT_LT((train(file, 1000 + i) - (expected[0] - mean) / std).abs().max().item<float>(), 1e-4) << file;
    // Eval: the short side to floor(24 / 0.875) = 27, then the central 24 x 24.
    const int64_t rh = w <= h ? int64_t(27.0 * h / w) : 27, rw = w <= h ? 27 : int64_t(27.0 * w / h);
    const at::Tensor resized = at::_upsample_bilinear2d_aa(image, {rh, rw}, false)[0];
    const at::Tensor center = resized.narrow(1, int64_t(std::nearbyint((rh - 24) / 2.0)), 24)
                                  .narrow(2, int64_t(std::nearbyint((rw - 24) / 2.0)), 24);
    EXPECT_LT((eval(file) - (center - mean) / std).abs().max().item<float>(), 1e-4) << file;
  }
}

}  // namespace
}  // namespace slideformer::data
