// ImageTransform (train: RandomResizedCrop + flip; eval: resize + center crop), each fused from
// decode to normalised planar floats, and the RandomResizedCrop box sampling.
#include "slideformer/data/transforms.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "pixels.h"
#include "random.h"
#include "resample.h"

namespace slideformer::data {

namespace {

// A thread's buffers, reused by every image it transforms.
struct TransformScratch {
  detail::Pixels raw, upright;
  detail::ResampleScratch resample;
};

TransformScratch& thread_scratch() {
  thread_local TransformScratch scratch;
  return scratch;
}

// Buffers past this size are released after use, so that one huge image does not pin its memory
// in every thread for the rest of the run.
constexpr size_t kKeptBufferBytes = size_t{64} << 20;

void release_if_large(std::vector<uint8_t>& buffer) {
  if (buffer.capacity() > kKeptBufferBytes) std::vector<uint8_t>().swap(buffer);
}

// Python's round() (half to even), as torchvision's center_crop rounds its offsets.
int64_t round_half_even(double value) { return static_cast<int64_t>(std::nearbyint(value)); }

// torchvision's Resize(int) output size: the short side becomes `size`, the long one keeps the
// aspect ratio (truncated).
std::pair<int64_t, int64_t> resized_size(int64_t width, int64_t height, int64_t size) {
  if (width <= height) return {size, static_cast<int64_t>(static_cast<double>(size) * height / width)};
  return {static_cast<int64_t>(static_cast<double>(size) * width / height), size};
}

}  // namespace

CropBox random_resized_crop_box(int64_t width, int64_t height, Range scale, Range ratio, uint64_t key) {
  detail::KeyRandom random(key);
  const double area = static_cast<double>(width) * static_cast<double>(height);
  const double log_low = std::log(ratio[0]), log_high = std::log(ratio[1]);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target_area = area * random.uniform(scale[0], scale[1]);
    const double aspect = std::exp(random.uniform(log_low, log_high));
    const auto w = static_cast<int64_t>(std::nearbyint(std::sqrt(target_area * aspect)));
    const auto h = static_cast<int64_t>(std::nearbyint(std::sqrt(target_area / aspect)));
    if (0 < w && w <= width && 0 < h && h <= height) {
      const int64_t y = random.integer(0, height - h + 1);
      const int64_t x = random.integer(0, width - w + 1);
      return {x, y, w, h};
    }
  }
  // The central crop, of the whole image unless its ratio is outside `ratio`.
  const double in_ratio = static_cast<double>(width) / static_cast<double>(height);
  int64_t w = width, h = height;
  if (in_ratio < std::min(ratio[0], ratio[1])) {
    h = static_cast<int64_t>(std::nearbyint(w / std::min(ratio[0], ratio[1])));
  } else if (in_ratio > std::max(ratio[0], ratio[1])) {
    w = static_cast<int64_t>(std::nearbyint(h * std::max(ratio[0], ratio[1])));
  }
  return {(width - w) / 2, (height - h) / 2, w, h};
}

ImageTransform::ImageTransform(DataConfig config, bool train, TrainTransformOptions train_options,
                               EvalTransformOptions eval_options)
    : config_(std::move(config)), train_(train), train_options_(train_options), eval_options_(eval_options) {
  config_.check();
  const auto& scale = train_options_.scale();
  const auto& ratio = train_options_.ratio();
  if (!(scale[0] > 0 && scale[0] <= scale[1] && scale[1] <= 1) || !(ratio[0] > 0 && ratio[0] <= ratio[1])) {
    throw std::invalid_argument("slideformer::data::ImageTransform: scale must satisfy 0 < min <= max <= 1 and "
                                "ratio 0 < min <= max, got scale (" + std::to_string(scale[0]) + ", " +
                                std::to_string(scale[1]) + "), ratio (" + std::to_string(ratio[0]) + ", " +
                                std::to_string(ratio[1]) + ")");
  }
  normalize(true);
}

ImageTransform ImageTransform::train(const DataConfig& config, TrainTransformOptions options) {
  return ImageTransform(config, true, options, {});
}

ImageTransform ImageTransform::eval(const DataConfig& config, EvalTransformOptions options) {
  return ImageTransform(config, false, {}, options);
}

ImageTransform& ImageTransform::normalize(bool on) {
  for (int64_t c = 0; c < config_.channels; ++c) {
    const double mean = on ? config_.mean[c] : 0.0, std = on ? config_.std[c] : 1.0;
    scale_[c] = static_cast<float>(1.0 / (255.0 * std));
    shift_[c] = static_cast<float>(-mean / std);
  }
  return *this;
}

ImageTransform::Draw ImageTransform::draw(int64_t width, int64_t height, uint64_t key) const {
  Draw draw;
  draw.box = random_resized_crop_box(width, height, train_options_.scale(), train_options_.ratio(), key);
  draw.flip = detail::KeyRandom(~key).uniform() < train_options_.flip_probability();
  return draw;
}

void ImageTransform::apply(const uint8_t* data, size_t size, const std::string& name, uint64_t key, float* out) const {
  TransformScratch& scratch = thread_scratch();
  const ImageInfo info = read_image_info(data, size, name);
  const DecodeOptions& decode = train_ ? train_options_.decode() : eval_options_.decode();
  const int64_t s = config_.image_size;
  detail::Geometry g;
  bool flip = false;
  int64_t min_width = 0, min_height = 0;  // the decoded size DCT scaling must keep
  detail::Region crop;                    // the train transform decodes only around its crop
  if (train_) {
    const auto [box, mirrored] = draw(info.width, info.height, key);
    flip = mirrored;
    g = {double(box.x), double(box.y), double(box.width), double(box.height), s, s, 0, 0, s, s};
    crop = {g.box_x, g.box_y, g.box_width, g.box_height};
    const double margin = train_options_.dct_margin();
    if (margin > 0) {
      min_width = static_cast<int64_t>(std::ceil(margin * s * info.width / box.width));
      min_height = static_cast<int64_t>(std::ceil(margin * s * info.height / box.height));
    }
  } else {
    const auto [w, h] = resized_size(info.width, info.height, config_.resize_size());
    g = {0, 0, double(info.width), double(info.height), w, h, round_half_even((w - s) / 2.0),
         round_half_even((h - s) / 2.0), s, s};
    const double margin = eval_options_.dct_margin();
    if (margin > 0) {
      min_width = static_cast<int64_t>(std::ceil(margin * w));
      min_height = static_cast<int64_t>(std::ceil(margin * h));
    }
  }
  const detail::Decoded decoded = detail::decode_any(data, size, name, decode.max_pixels(), min_width, min_height,
                                                     scratch.raw, train_ ? &crop : nullptr);
  const bool convert = detail::needs_conversion(decoded, config_.channels);
  if (convert) detail::convert_upright(scratch.raw, decoded.layout, decoded.orientation, config_.channels, scratch.upright);
  // The box in the decoded pixels (possibly DCT-scaled, possibly a region).
  g.box_x = g.box_x * decoded.scale - double(decoded.origin_x), g.box_y = g.box_y * decoded.scale - double(decoded.origin_y);
  g.box_width *= decoded.scale, g.box_height *= decoded.scale;
  detail::resample_planar(convert ? scratch.upright : scratch.raw, g, flip, scale_.data(), shift_.data(), out,
                          scratch.resample);
  release_if_large(scratch.raw.data);
  release_if_large(scratch.upright.data);
}

at::Tensor ImageTransform::operator()(const uint8_t* data, size_t size, const std::string& name, uint64_t key) const {
  at::Tensor out = at::empty(output_shape(), at::kFloat);
  apply(data, size, name, key, out.data_ptr<float>());
  return out;
}

at::Tensor ImageTransform::operator()(const std::string& path, uint64_t key) const {
  const std::string bytes = read_file_bytes(path);
  return (*this)(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path, key);
}

at::Tensor mix_batch(at::Tensor& images, const at::Tensor& labels, const MixupOptions& options, uint64_t key) {
  TORCH_CHECK(images.dim() == 4 && images.is_floating_point(), "slideformer::data::mix_batch: images must be "
              "(B, C, H, W) floating point, got ", images.sizes(), " ", images.scalar_type());
  TORCH_CHECK(labels.dim() == 1 && labels.size(0) == images.size(0) && labels.scalar_type() == at::kLong,
              "slideformer::data::mix_batch: labels must be (B) int64 matching the images, got ", labels.sizes(),
              " ", labels.scalar_type());
  TORCH_CHECK(options.num_classes() > 0 && options.mixup_alpha() >= 0 && options.cutmix_alpha() >= 0,
              "slideformer::data::mix_batch: num_classes must be > 0 and the alphas >= 0");
  const double off = options.label_smoothing() / options.num_classes(), on = 1.0 - options.label_smoothing() + off;
  auto smooth = [&](const at::Tensor& l) {
    return at::full({l.size(0), options.num_classes()}, off, at::kFloat).scatter_(1, l.unsqueeze(1), on);
  };
  detail::KeyRandom random(key);
  const bool mix = random.uniform() < options.probability() && (options.mixup_alpha() > 0 || options.cutmix_alpha() > 0);
  const bool cutmix = options.cutmix_alpha() > 0 &&
                      (options.mixup_alpha() == 0 || random.uniform() < options.switch_probability());
  if (!mix || images.size(0) == 0) return smooth(labels);
  // Beta(a, a) from two Gamma(a) draws of a generator seeded by the key.
  std::mt19937_64 engine(random.next());
  const double alpha = cutmix ? options.cutmix_alpha() : options.mixup_alpha();
  std::gamma_distribution<double> gamma(alpha, 1.0);
  const double g1 = gamma(engine), g2 = gamma(engine);
  double lam = g1 + g2 > 0 ? g1 / (g1 + g2) : 0.5;
  const at::Tensor mirrored = images.flip(0);
  if (cutmix) {
    const int64_t h = images.size(2), w = images.size(3);
    const double cut = std::sqrt(1.0 - lam);
    const auto cut_h = static_cast<int64_t>(h * cut), cut_w = static_cast<int64_t>(w * cut);
    const int64_t cy = random.integer(0, h), cx = random.integer(0, w);
    const int64_t y0 = std::clamp<int64_t>(cy - cut_h / 2, 0, h), y1 = std::clamp<int64_t>(cy + cut_h / 2, 0, h);
    const int64_t x0 = std::clamp<int64_t>(cx - cut_w / 2, 0, w), x1 = std::clamp<int64_t>(cx + cut_w / 2, 0, w);
    images.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0).copy_(mirrored.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0));
    lam = 1.0 - static_cast<double>((y1 - y0) * (x1 - x0)) / static_cast<double>(h * w);
  } else {
    images.mul_(lam).add_(mirrored, 1.0 - lam);
  }
  return smooth(labels).mul_(lam).add_(smooth(labels.flip(0)), 1.0 - lam);
}

}  // namespace slideformer::data
