#pragma once
// `slideformer bench`: throughput of a preset, its FLOPs and its fraction of the at::mm rate.
#include <cstdint>
#include <string>

#include "slideformer/nn/options.h"

namespace slideformer::app {

// Floating-point operations of one image's forward pass, counted as 2 per multiply-add of the
// products that dominate: linear layers, convolutions, the QK^T and PV products of global
// attention, and the window products of slide attention (QK^T and PV over the k*k window, and
// the deformed shift mixing the k*k shifted copies of K and V). Norms, activations, softmax and
// additions are not counted (the usual convention).
struct FlopCount {
  double linear = 0, convolution = 0, global_attention = 0, slide_attention = 0;
  double total() const { return linear + convolution + global_attention + slide_attention; }
};
FlopCount forward_flops(const nn::SlideTransformerOptions& options);

struct BenchConfig {
  std::string preset = "slide_swin_tiny";
  int64_t batch_size = 8;
  int64_t threads = 1;
  int64_t rounds = 5;  // timed rounds after one warm-up round
  bool json = false;   // one JSON line instead of the table (for benchmarks/bench_model.py)
};

int bench(const BenchConfig& config);

}  // namespace slideformer::app
