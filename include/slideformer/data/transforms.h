#pragma once
// Image transforms with timm's and torchvision's meaning, each one fused pass from encoded bytes to
// a normalised (C, S, S) float image:
//   train: RandomResizedCrop(S, scale, ratio) + horizontal flip, normalise;
//   eval:  resize the short side to floor(S / crop_pct) with antialiasing, center crop S, normalise.
// Random draws come from a 64-bit key (the loader derives it from seed, epoch and sample index), so
// an image's augmentation does not depend on which thread, batch or process handles it.
#include <ATen/Tensor.h>
#include <torch/arg.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "slideformer/data/image.h"

namespace slideformer::data {

// What a model expects of its input images; stored with checkpoints and exported models, so that
// a deployed model carries its class names and eval transform.
struct DataConfig {
  std::vector<std::string> class_names;  // class index -> name
  int64_t channels = 3;                  // 1 (gray) or 3 (RGB)
  int64_t image_size = 224;              // S: the model's input is S x S
  std::vector<double> mean{0.485, 0.456, 0.406};  // per channel, on the 0..1 scale
  std::vector<double> std{0.229, 0.224, 0.225};
  double crop_pct = 0.875;  // eval: resize the short side to floor(S / crop_pct), crop S
  std::string interpolation = "bilinear";  // the one supported: antialiased triangle filter

  // The short side the eval transform resizes to.
  int64_t resize_size() const;
  // Throws std::invalid_argument naming the field unless the config is usable.
  void check() const;
  // One JSON object ({"class_names": [...], "channels": 3, ...}) and back; from_json throws
  // std::invalid_argument "<where>: ..." for a malformed or incomplete text.
  std::string to_json() const;
  static DataConfig from_json(const std::string& text, const std::string& where);
  bool operator==(const DataConfig& other) const;
};

// A closed interval [min, max].
using Range = std::array<double, 2>;

// A crop box in upright source pixels.
struct CropBox {
  int64_t x = 0, y = 0, width = 0, height = 0;
};

// torchvision's RandomResizedCrop.get_params with the random numbers of `key`: up to ten tries of
// an area fraction uniform in `scale` and a log-uniform aspect ratio in `ratio`, else the central
// crop of the nearest allowed ratio.
CropBox random_resized_crop_box(int64_t width, int64_t height, Range scale, Range ratio, uint64_t key);

struct TrainTransformOptions {
  TORCH_ARG(Range, scale) = {0.08, 1.0};
  TORCH_ARG(Range, ratio) = {3.0 / 4.0, 4.0 / 3.0};
  TORCH_ARG(double, flip_probability) = 0.5;
  // JPEG: decode at a DCT scale (1/2, 1/4, 1/8) at which the crop box stays at least this many
  // times the output size; 0 turns DCT scaling off.
  TORCH_ARG(double, dct_margin) = 1.0;
  TORCH_ARG(DecodeOptions, decode) = {};
};

struct EvalTransformOptions {
  // As TrainTransformOptions::dct_margin, for the resized (short side floor(S / crop_pct)) image.
  // Off by default: the result is then torchvision's Resize + CenterCrop to float rounding. At 2
  // (a decode at least twice the resized size) it differs by about 1e-3 on average and up to
  // 3e-2 at sharp edges (docs/data.md), for a faster decode of large photographs.
  TORCH_ARG(double, dct_margin) = 0.0;
  TORCH_ARG(DecodeOptions, decode) = {};
};

// An image transform: encoded bytes -> (channels, S, S) float32, normalised with the config's
// mean and std (or left on the 0..1 scale with normalize(false)).
class ImageTransform {
 public:
  static ImageTransform train(const DataConfig& config, TrainTransformOptions options = {});
  static ImageTransform eval(const DataConfig& config, EvalTransformOptions options = {});

  ImageTransform& normalize(bool on);
  bool is_train() const { return train_; }
  const DataConfig& config() const { return config_; }
  std::vector<int64_t> output_shape() const { return {config_.channels, config_.image_size, config_.image_size}; }

  // A new (C, S, S) float tensor. `name` names the image in errors; `key` seeds a train
  // transform's draws (an eval transform ignores it).
  at::Tensor operator()(const uint8_t* data, size_t size, const std::string& name, uint64_t key = 0) const;
  at::Tensor operator()(const std::string& path, uint64_t key = 0) const;
  // A train transform's random draws for an upright width x height image: the crop box and
  // whether the crop is mirrored.
  struct Draw {
    CropBox box;
    bool flip = false;
  };
  Draw draw(int64_t width, int64_t height, uint64_t key) const;
  // Writes the result to `out` (C * S * S floats), with this thread's reused buffers.
  void apply(const uint8_t* data, size_t size, const std::string& name, uint64_t key, float* out) const;

 private:
  ImageTransform(DataConfig config, bool train, TrainTransformOptions train_options,
                 EvalTransformOptions eval_options);
  DataConfig config_;
  bool train_ = false;
  TrainTransformOptions train_options_;
  EvalTransformOptions eval_options_;
  std::array<float, 3> scale_{}, shift_{};  // value (0..255) * scale + shift
};

// timm's Mixup / CutMix in "batch" mode: one draw per batch, each image mixed with its mirror in the
// batch (images[B - 1 - i]).
struct MixupOptions {
  explicit MixupOptions(int64_t num_classes) : num_classes_(num_classes) {}
  TORCH_ARG(int64_t, num_classes);
  TORCH_ARG(double, mixup_alpha) = 0.8;   // Beta(alpha, alpha) mixing weight; 0 = no mixup
  TORCH_ARG(double, cutmix_alpha) = 1.0;  // Beta(alpha, alpha) box area; 0 = no cutmix
  TORCH_ARG(double, probability) = 1.0;   // of mixing a batch at all
  TORCH_ARG(double, switch_probability) = 0.5;  // of cutmix rather than mixup when both are on
  TORCH_ARG(double, label_smoothing) = 0.1;
};

// Mixes `images` (B, C, H, W, float) in place and returns the (B, num_classes) float soft targets
// of `labels` (B, int64). The draws come from `key`.
at::Tensor mix_batch(at::Tensor& images, const at::Tensor& labels, const MixupOptions& options, uint64_t key);

}  // namespace slideformer::data
