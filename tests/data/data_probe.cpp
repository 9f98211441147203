// libslideformer_data_probe: the data library's functions as operators of a test-only namespace,
// so that the Python tests compare them with Pillow and torchvision in one process
// (tests/python/test_data.py). Never installed.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "data/pixels.h"
#include "slideformer/data.h"

namespace {

using namespace slideformer::data;

const uint8_t* bytes_of(const at::Tensor& data) {
  TORCH_CHECK(data.dim() == 1 && data.scalar_type() == at::kByte && data.is_contiguous(),
              "data must be a contiguous 1-D uint8 tensor");
  return data.data_ptr<uint8_t>();
}

at::Tensor decode(const at::Tensor& data, const std::string& name, int64_t channels, int64_t min_width,
                  int64_t min_height, int64_t max_pixels) {
  return decode_image(bytes_of(data), data.numel(), name,
                      DecodeOptions().channels(channels).min_width(min_width).min_height(min_height).max_pixels(max_pixels));
}

// The JPEG decoder's output around a region (x, y, width, height of the full-size image), as
// (pixels, [origin_x, origin_y, scale denominator]): what the train transform resamples from.
std::tuple<at::Tensor, std::vector<int64_t>> decode_region(const at::Tensor& data, std::vector<double> region,
                                                           int64_t min_width, int64_t min_height) {
  TORCH_CHECK(region.size() == 4, "region must be x, y, width, height");
  slideformer::data::detail::Pixels raw;
  const slideformer::data::detail::Region needed{region[0], region[1], region[2], region[3]};
  const auto d = slideformer::data::detail::decode_jpeg(bytes_of(data), data.numel(), "image", int64_t{1} << 40, min_width,
                                                min_height, raw, &needed);
  at::Tensor pixels = at::empty({raw.height, raw.width, raw.channels}, at::kByte);
  std::copy(raw.data.begin(), raw.data.end(), pixels.data_ptr<uint8_t>());
  return {pixels, {d.origin_x, d.origin_y, static_cast<int64_t>(std::lround(1.0 / d.scale))}};
}

std::vector<int64_t> info(const at::Tensor& data, const std::string& name) {
  const ImageInfo i = read_image_info(bytes_of(data), data.numel(), name);
  return {i.width, i.height, i.channels, i.orientation};
}

DataConfig config_of(int64_t image_size, double crop_pct, int64_t channels, std::vector<double> mean,
                     std::vector<double> std) {
  DataConfig config;
  config.image_size = image_size;
  config.crop_pct = crop_pct;
  config.channels = channels;
  config.mean = std::move(mean);
  config.std = std::move(std);
  return config;
}

at::Tensor transform(const at::Tensor& data, const std::string& name, bool train, int64_t image_size, double crop_pct,
                     int64_t channels, std::vector<double> mean, std::vector<double> std, double dct_margin,
                     int64_t key) {
  const DataConfig config = config_of(image_size, crop_pct, channels, std::move(mean), std::move(std));
  const ImageTransform t = train ? ImageTransform::train(config, TrainTransformOptions().dct_margin(dct_margin))
                                 : ImageTransform::eval(config, EvalTransformOptions().dct_margin(dct_margin));
  return t(bytes_of(data), data.numel(), name, static_cast<uint64_t>(key));
}

// (count, 5) rows x, y, width, height, flip of the train transform's draws for keys
// first_key .. first_key + count - 1.
at::Tensor train_draws(int64_t width, int64_t height, int64_t count, int64_t first_key) {
  const ImageTransform t = ImageTransform::train(DataConfig{});
  at::Tensor out = at::empty({count, 5}, at::kLong);
  auto rows = out.accessor<int64_t, 2>();
  for (int64_t i = 0; i < count; ++i) {
    const auto [box, flip] = t.draw(width, height, static_cast<uint64_t>(first_key + i));
    rows[i][0] = box.x, rows[i][1] = box.y, rows[i][2] = box.width, rows[i][3] = box.height, rows[i][4] = flip;
  }
  return out;
}

}  // namespace

TORCH_LIBRARY(slideformer_data_test, m) {
  m.def("decode(Tensor data, str name, int channels, int min_width, int min_height, int max_pixels) -> Tensor", decode);
  m.def("info(Tensor data, str name) -> int[]", info);
  m.def("decode_region(Tensor data, float[] region, int min_width, int min_height) -> (Tensor, int[])", decode_region);
  m.def("transform(Tensor data, str name, bool train, int image_size, float crop_pct, int channels, float[] mean, "
        "float[] std, float dct_margin, int key) -> Tensor", transform);
  m.def("train_draws(int width, int height, int count, int first_key) -> Tensor", train_draws);
  m.def("sample_key(int seed, int epoch, int index) -> int", [](int64_t seed, int64_t epoch, int64_t index) {
    return static_cast<int64_t>(sample_key(static_cast<uint64_t>(seed), epoch, index));
  });
}
