// The moving-garment clips, read back from the frames: where the garments are, which way they go,
// and whether one frame gives the direction away.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "slideformer/data/moving_clips.h"

namespace slideformer::data {
namespace {

// Images of constant brightness: image i is all `values[i]`.
at::Tensor constant_images(std::initializer_list<int> values, int64_t h, int64_t w) {
  at::Tensor images = at::empty({static_cast<int64_t>(values.size()), h, w}, at::kByte);
  int64_t i = 0;
  for (int value : values) images[i++].fill_(value);
  return images;
}

// The bounding box of the pixels equal to `value` in one frame; {-1, -1, 0} when there is none.
struct Box {
  int64_t x = -1, y = -1, pixels = 0;
};
Box find(const at::Tensor& frame, int value) {
  const at::Tensor where = (frame == value).nonzero();
  Box box;
  box.pixels = where.size(0);
  if (box.pixels > 0) {
    box.y = where.select(1, 0).min().item<int64_t>();
    box.x = where.select(1, 1).min().item<int64_t>();
  }
  return box;
}

TEST(MovingClips, OneVisibleGarmentMovesInAStraightLineAndItsDirectionGivesTheLabel) {
  // Image 0 is black (invisible), image 1 a 6 x 5 block of 200: every clip shows one garment,
  // whose direction says which of the two is the rightward one.
  const at::Tensor images = constant_images({0, 200}, 6, 5);
  const at::Tensor labels = at::tensor({7, 3}, at::kLong);
  const MovingClipsOptions options = MovingClipsOptions().frames(9).canvas(30).max_speed(3).seed(5);
  const MovingClips made = make_moving_clips(images, labels, 200, options);
  ASSERT_EQ(made.clips.sizes(), (at::IntArrayRef{200, 1, 9, 30, 30}));
  ASSERT_EQ(made.labels.sizes(), (at::IntArrayRef{200}));
  int rightward = 0;
  for (int64_t i = 0; i < 200; ++i) {
    const at::Tensor clip = made.clips[i][0];
    const Box first = find(clip[0], 200), second = find(clip[1], 200);
    const int64_t vx = second.x - first.x, vy = second.y - first.y;
    ASSERT_TRUE(vx != 0 && std::abs(vx) <= 3 && std::abs(vy) <= 3) << "clip " << i;
    for (int64_t f = 0; f < 9; ++f) {
      const Box box = find(clip[f], 200);
      ASSERT_EQ(box.pixels, 30) << "clip " << i << " frame " << f << ": the garment must be whole";
      ASSERT_EQ(box.x, first.x + f * vx) << "clip " << i << " frame " << f;
      ASSERT_EQ(box.y, first.y + f * vy) << "clip " << i << " frame " << f;
    }
    EXPECT_EQ(made.labels[i].item<int64_t>(), vx > 0 ? 3 : 7) << "clip " << i;
    rightward += vx > 0;
  }
  EXPECT_GT(rightward, 70);  // the visible garment is the rightward one in about half the clips
  EXPECT_LT(rightward, 130);
}

TEST(MovingClips, OverlapsKeepTheBrighterGarmentWhole) {
  const at::Tensor images = constant_images({100, 200}, 8, 8);
  const MovingClips made = make_moving_clips(images, at::tensor({0, 1}, at::kLong), 50,
                                             MovingClipsOptions().frames(4).canvas(16).max_speed(2));
  int64_t overlapping_frames = 0;
  for (int64_t i = 0; i < 50; ++i) {
    for (int64_t f = 0; f < 4; ++f) {
      const at::Tensor frame = made.clips[i][0][f];
      ASSERT_EQ(find(frame, 200).pixels, 64) << "clip " << i << " frame " << f;
      const int64_t dimmer = find(frame, 100).pixels;
      ASSERT_EQ((frame != 0).sum().item<int64_t>(), 64 + dimmer) << "clip " << i << " frame " << f;
      overlapping_frames += dimmer < 64;
    }
  }
  EXPECT_GT(overlapping_frames, 20);  // on a 16 x 16 canvas, two 8 x 8 garments often overlap
}

TEST(MovingClips, TheMiddleFrameDoesNotTellTheDirection) {
  // With an odd number of frames, the middle frame's position of a garment must have the same
  // distribution whichever way it moves: compare the mean and spread of x for both directions.
  const at::Tensor images = constant_images({0, 200}, 4, 4);
  const at::Tensor labels = at::tensor({0, 1}, at::kLong);
  const MovingClips made =
      make_moving_clips(images, labels, 4000, MovingClipsOptions().frames(9).canvas(40).max_speed(3).seed(11));
  double sum[2] = {0, 0}, squares[2] = {0, 0};
  int64_t n[2] = {0, 0};
  for (int64_t i = 0; i < 4000; ++i) {
    const int64_t right = made.labels[i].item<int64_t>();  // 1: the visible garment moves right
    const double x = static_cast<double>(find(made.clips[i][0][4], 200).x);
    sum[right] += x;
    squares[right] += x * x;
    ++n[right];
  }
  const double mean0 = sum[0] / n[0], mean1 = sum[1] / n[1];
  const double var0 = squares[0] / n[0] - mean0 * mean0, var1 = squares[1] / n[1] - mean1 * mean1;
  const double standard_error = std::sqrt(var0 / n[0] + var1 / n[1]);
  EXPECT_LT(std::abs(mean0 - mean1), 4 * standard_error) << mean0 << " vs " << mean1;
  EXPECT_NEAR(var0 / var1, 1.0, 0.15);
}

TEST(MovingClips, AClipDependsOnTheSeedAndItsIndexAlone) {
  const at::Tensor images = at::randint(0, 256, {20, 6, 6}, at::kByte);
  const at::Tensor labels = at::arange(20, at::kLong);
  MovingClipsOptions options = MovingClipsOptions().frames(5).canvas(20).objects(3).max_speed(2).seed(3);
  const MovingClips few = make_moving_clips(images, labels, 10, options);
  const MovingClips many = make_moving_clips(images, labels, 40, options);
  EXPECT_TRUE(few.clips.equal(many.clips.slice(0, 0, 10)));
  EXPECT_TRUE(few.labels.equal(many.labels.slice(0, 0, 10)));
  EXPECT_FALSE(few.clips.equal(make_moving_clips(images, labels, 10, options.seed(4)).clips));
  EXPECT_EQ(make_moving_clips(images, labels, 0, options).clips.size(0), 0);
}

std::string refusal(const at::Tensor& images, const at::Tensor& labels, int64_t count,
                    const MovingClipsOptions& options) {
  try {
    make_moving_clips(images, labels, count, options);
  } catch (const std::invalid_argument& error) {
    return error.what();
  }
  return "no error";
}

TEST(MovingClips, BadArgumentsAreNamed) {
  const at::Tensor images = at::zeros({3, 28, 28}, at::kByte);
  const at::Tensor labels = at::zeros({3}, at::kLong);
  const MovingClipsOptions good;
  const std::string op = "slideformer::data::make_moving_clips: ";
  EXPECT_EQ(refusal(images.to(at::kFloat), labels, 1, good),
            op + "images must be a (N, h, w) uint8 tensor, got CPUFloatType of shape [3, 28, 28]");
  EXPECT_EQ(refusal(at::Tensor(), labels, 1, good),
            op + "images must be a (N, h, w) uint8 tensor, got an undefined tensor");
  EXPECT_EQ(refusal(images, at::zeros({2}, at::kLong), 1, good),
            op + "labels must be a (3,) int64 tensor, got CPULongType of shape [2]");
  EXPECT_EQ(refusal(images, labels, -1, good), op + "count must be >= 0, got -1");
  EXPECT_EQ(refusal(images, labels, 1, MovingClipsOptions(good).frames(1)),
            op + "frames must be >= 2 (one frame shows no motion), got 1");
  EXPECT_EQ(refusal(images, labels, 1, MovingClipsOptions(good).objects(0)), op + "objects must be >= 1, got 0");
  EXPECT_EQ(refusal(images, labels, 1, MovingClipsOptions(good).objects(4)),
            op + "objects (4) must not exceed the number of images, 3");
  EXPECT_EQ(refusal(images, labels, 1, MovingClipsOptions(good).max_speed(0)), op + "max_speed must be >= 1, got 0");
  EXPECT_EQ(refusal(images, labels, 1, MovingClipsOptions(good).max_speed(3)),
            op + "canvas must be at least the image size plus (frames - 1) * max_speed = 28 + 45, got 64");
}

}  // namespace
}  // namespace slideformer::data
