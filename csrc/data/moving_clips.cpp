// Moving-garment clips (slideformer/data/moving_clips.h).
#include "slideformer/data/moving_clips.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "random.h"

namespace slideformer::data {
namespace {

constexpr const char* kWhere = "slideformer::data::make_moving_clips: ";

void require(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(kWhere + message);
}

void check_inputs(const at::Tensor& images, const at::Tensor& labels, int64_t count,
                  const MovingClipsOptions& o) {
  require(images.defined() && images.dim() == 3 && images.scalar_type() == at::kByte,
          "images must be a (N, h, w) uint8 tensor, got " +
              (images.defined() ? images.toString() + " of shape " + c10::str(images.sizes()) : "an undefined tensor"));
  require(labels.defined() && labels.dim() == 1 && labels.scalar_type() == at::kLong &&
              labels.size(0) == images.size(0),
          "labels must be a (" + std::to_string(images.size(0)) + ",) int64 tensor, got " +
              (labels.defined() ? labels.toString() + " of shape " + c10::str(labels.sizes()) : "an undefined tensor"));
  require(count >= 0, "count must be >= 0, got " + std::to_string(count));
  require(o.frames() >= 2, "frames must be >= 2 (one frame shows no motion), got " + std::to_string(o.frames()));
  require(o.objects() >= 1, "objects must be >= 1, got " + std::to_string(o.objects()));
  require(images.size(0) >= o.objects(), "objects (" + std::to_string(o.objects()) +
                                             ") must not exceed the number of images, " +
                                             std::to_string(images.size(0)));
  require(o.max_speed() >= 1, "max_speed must be >= 1, got " + std::to_string(o.max_speed()));
  const int64_t path = (o.frames() - 1) * o.max_speed();
  const int64_t largest = std::max(images.size(1), images.size(2));
  require(o.canvas() >= largest + path,
          "canvas must be at least the image size plus (frames - 1) * max_speed = " +
              std::to_string(largest) + " + " + std::to_string(path) + ", got " + std::to_string(o.canvas()));
}

// Where one garment starts (x0, y0) and how far it moves per frame (vx, vy).
struct Track {
  int64_t image, x0, y0, vx, vy;
};

// A start, along one axis, uniform among those that keep the whole path of `frames` steps of
// `velocity` on [0, room]; for either sign of the velocity, the middle of the path is then
// uniform on the same interval.
int64_t start_on_axis(detail::KeyRandom& random, int64_t room, int64_t frames, int64_t velocity) {
  const int64_t path = (frames - 1) * velocity;
  const int64_t low = std::max<int64_t>(0, -path), high = room - std::max<int64_t>(0, path);
  return random.integer(low, high + 1);
}

std::vector<Track> draw_tracks(detail::KeyRandom& random, int64_t num_images, int64_t h, int64_t w,
                               const MovingClipsOptions& o, int64_t* rightward) {
  std::vector<Track> tracks(o.objects());
  *rightward = random.integer(0, o.objects());
  for (int64_t n = 0; n < o.objects(); ++n) {
    Track& t = tracks[n];
    bool repeated = true;
    while (repeated) {  // distinct images; objects <= num_images (checked)
      t.image = random.integer(0, num_images);
      repeated = std::any_of(tracks.begin(), tracks.begin() + n, [&](const Track& u) { return u.image == t.image; });
    }
    const int64_t speed = random.integer(1, o.max_speed() + 1);
    t.vx = n == *rightward ? speed : -speed;
    t.vy = random.integer(-o.max_speed(), o.max_speed() + 1);
    t.x0 = start_on_axis(random, o.canvas() - w, o.frames(), t.vx);
    t.y0 = start_on_axis(random, o.canvas() - h, o.frames(), t.vy);
  }
  return tracks;
}

// Draws the garments of `tracks` into one clip's frames (frames x canvas x canvas), keeping the
// brighter pixel where they overlap.
void render(const std::vector<Track>& tracks, const uint8_t* images, int64_t h, int64_t w,
            const MovingClipsOptions& o, uint8_t* clip) {
  const int64_t s = o.canvas();
  for (int64_t f = 0; f < o.frames(); ++f) {
    uint8_t* frame = clip + f * s * s;
    for (const Track& t : tracks) {
      const uint8_t* image = images + t.image * h * w;
      const int64_t x = t.x0 + f * t.vx, y = t.y0 + f * t.vy;
      for (int64_t r = 0; r < h; ++r) {
        uint8_t* row = frame + (y + r) * s + x;
        for (int64_t c = 0; c < w; ++c) row[c] = std::max(row[c], image[r * w + c]);
      }
    }
  }
}

}  // namespace

MovingClips make_moving_clips(const at::Tensor& images, const at::Tensor& labels, int64_t count,
                              const MovingClipsOptions& options) {
  check_inputs(images, labels, count, options);
  const at::Tensor source = images.contiguous();
  const at::Tensor classes = labels.contiguous();
  const int64_t h = source.size(1), w = source.size(2), s = options.canvas();
  MovingClips result{at::zeros({count, 1, options.frames(), s, s}, at::kByte), at::empty({count}, at::kLong)};
  const uint8_t* pixels = source.data_ptr<uint8_t>();
  const int64_t* class_of = classes.data_ptr<int64_t>();
  uint8_t* clips = result.clips.data_ptr<uint8_t>();
  int64_t* clip_labels = result.labels.data_ptr<int64_t>();
  at::parallel_for(0, count, 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      detail::KeyRandom random(detail::mix64(options.seed()) ^ static_cast<uint64_t>(i));
      int64_t rightward = 0;
      const std::vector<Track> tracks = draw_tracks(random, source.size(0), h, w, options, &rightward);
      render(tracks, pixels, h, w, options, clips + i * options.frames() * s * s);
      clip_labels[i] = class_of[tracks[rightward].image];
    }
  });
  return result;
}

}  // namespace slideformer::data
