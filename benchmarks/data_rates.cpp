// The data loader's throughput on a folder of JPEGs: slideformer::data's Loader (decode +
// RandomResizedCrop + flip + normalise to S x S, a batch at a time) and, as the practical limit,
// TurboJPEG decoding the same files at full size from memory on the same number of threads.
// Prints one JSON line per measurement; benchmarks/bench_data.py runs it beside torchvision.
//
//   data_rates --folder DIR --threads N [--size 224] [--batch-size 64] [--rounds 3] [--what loader|decode]
#include <ATen/ATen.h>
#include <turbojpeg.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "slideformer/data.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace data = slideformer::data;

struct Arguments {
  std::string folder, what = "loader";
  int64_t threads = 1, size = 224, batch_size = 64, rounds = 3;
};

Arguments parse(int argc, char** argv) {
  Arguments a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i], value = argv[i + 1];
    if (key == "--folder") a.folder = value;
    else if (key == "--what") a.what = value;
    else if (key == "--threads") a.threads = std::atoll(value.c_str());
    else if (key == "--size") a.size = std::atoll(value.c_str());
    else if (key == "--batch-size") a.batch_size = std::atoll(value.c_str());
    else if (key == "--rounds") a.rounds = std::atoll(value.c_str());
    else throw std::invalid_argument("data_rates: unknown option " + key);
  }
  if (a.folder.empty()) throw std::invalid_argument("data_rates: --folder DIR is required");
  return a;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

// Images per second of whole epochs through the Loader (one warm-up epoch first).
double loader_rate(const Arguments& a) {
  const data::ImageFolder folder(a.folder);
  data::DataConfig config;
  config.image_size = a.size;
  data::Loader loader(folder, data::ImageTransform::train(config), data::LoaderOptions().threads(a.threads));
  std::vector<double> rates;
  for (int64_t epoch = 0; epoch <= a.rounds; ++epoch) {
    const at::Tensor order = at::randperm(folder.size(), at::kLong);
    std::vector<at::Tensor> plan;
    for (int64_t start = 0; start < folder.size(); start += a.batch_size) {
      plan.push_back(order.narrow(0, start, std::min(a.batch_size, folder.size() - start)));
    }
    const auto start = Clock::now();
    loader.start_epoch(epoch, plan);
    int64_t images = 0;
    while (auto batch = loader.next()) images += batch->images.size(0);
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (epoch > 0) rates.push_back(images / seconds);
  }
  return median(rates);
}

// Images per second of TurboJPEG full-size RGB decoding of the files (read beforehand), `threads`
// threads taking files from a shared counter.
double decode_rate(const Arguments& a) {
  const data::ImageFolder folder(a.folder);
  std::vector<std::string> files;
  for (const data::Sample& sample : folder.samples()) files.push_back(data::read_file_bytes(sample.path));
  std::vector<double> rates;
  for (int64_t round = 0; round <= a.rounds; ++round) {
    std::atomic<size_t> next{0};
    const auto start = Clock::now();
    std::vector<std::thread> workers;
    for (int64_t t = 0; t < a.threads; ++t) {
      workers.emplace_back([&] {
        tjhandle handle = tjInitDecompress();
        std::vector<unsigned char> pixels;
        for (size_t i; (i = next++) < files.size();) {
          const auto* jpeg = reinterpret_cast<const unsigned char*>(files[i].data());
          int w = 0, h = 0, subsampling = 0, colorspace = 0;
          tjDecompressHeader3(handle, jpeg, files[i].size(), &w, &h, &subsampling, &colorspace);
          pixels.resize(static_cast<size_t>(w) * h * 3);
          tjDecompress2(handle, jpeg, files[i].size(), pixels.data(), w, 0, h, TJPF_RGB, 0);
        }
        tjDestroy(handle);
      });
    }
    for (std::thread& worker : workers) worker.join();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    if (round > 0) rates.push_back(files.size() / seconds);
  }
  return median(rates);
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const Arguments a = parse(argc, argv);
    const double rate = a.what == "decode" ? decode_rate(a) : loader_rate(a);
    std::printf("{\"what\": \"%s\", \"threads\": %lld, \"images_per_second\": %.1f}\n", a.what.c_str(),
                static_cast<long long>(a.threads), rate);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "data_rates: %s\n", e.what());
    return 1;
  }
}
