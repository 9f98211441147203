// GPU benchmark of slide_attention, run by ./run gpu-check: forward and forward+backward time and
// peak extra GPU memory of the fused op at the Slide-Swin-T stage-1 (B=8, H=3, 56x56, D=32) and
// stage-2 (B=8, H=6, 28x28) shapes and at B=64 for both (k=3, shift_weight, shift_bias and
// key_bias), against the Slide-Transformer-style composite in aten ops (slide_composite.h) and
// against global attention over all Y*X tokens (slideformer::attention and
// at::scaled_dot_product_attention), every ratio measured in this one run on one GPU. Exits 0
// with a notice when there is no GPU or the library was built without CUDA kernels.
//
//   bench_cuda_slide [--reps N]
#include <ATen/ATen.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "bench_cuda_common.h"
#include "slide_composite.h"
#include "slideformer/ops.h"
#include "slideformer/version.h"

namespace {

int g_reps = 20;
constexpr int64_t kKernel = 3, kK2 = kKernel * kKernel;

double median_ms(const std::function<void()>& fn) {
  return slideformer::bench::median_cuda_ms(fn, g_reps);
}

// Peak bytes the caching allocator handed out during one call of fn, above what was live before.
double peak_extra_mib(const std::function<void()>& fn) {
  namespace alloc = c10::cuda::CUDACachingAllocator;
  const c10::DeviceIndex device = 0;
  torch::cuda::synchronize();
  alloc::resetPeakStats(device);
  const auto aggregate = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
  const int64_t before = alloc::getDeviceStats(device).allocated_bytes[aggregate].current;
  fn();
  torch::cuda::synchronize();
  const int64_t peak = alloc::getDeviceStats(device).allocated_bytes[aggregate].peak;
  return (peak - before) / (1024.0 * 1024.0);
}

struct Stage {
  std::string name;
  int64_t batch, heads, size, head_dim;
};

// Leaves q, k, v, shift_weight, shift_bias, key_bias.
using Leaves = std::vector<at::Tensor>;

Leaves make_leaves(const Stage& s, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(dtype);
  at::Tensor q = at::randn({s.batch, s.heads, s.size, s.size, s.head_dim}, opts);
  Leaves x = {q, at::randn_like(q), at::randn_like(q),
              at::eye(kK2, opts).expand({s.head_dim, kK2, kK2}) +
                  0.1 * at::randn({s.head_dim, kK2, kK2}, opts),
              0.1 * at::randn({s.head_dim, kK2}, opts), 0.02 * at::randn({s.heads, kK2}, opts)};
  for (auto& t : x) t = t.contiguous().requires_grad_();
  return x;
}

struct Contender {
  std::string name;
  std::function<at::Tensor(const Leaves&)> fn;
  size_t differentiable;  // leading leaves it reads: all six, or q, k, v for global attention
};

at::Tensor tokens(const at::Tensor& t) { return t.flatten(2, 3); }

std::vector<Contender> contenders() {
  return {
      {"slide_attention (ours)",
       [](const Leaves& x) {
         return slideformer::slide_attention(x[0], x[1], x[2],
                                             slideformer::SlideAttentionFuncOptions(kKernel)
                                                 .shift_weight(x[3])
                                                 .shift_bias(x[4])
                                                 .key_bias(x[5]));
       },
       6},
      {"composite, merged conv",
       [](const Leaves& x) { return slideformer::bench::slide_composite(x, kKernel, false); }, 6},
      {"composite, two-path (reference)",
       [](const Leaves& x) { return slideformer::bench::slide_composite(x, kKernel, true); }, 6},
      {"global attention (ours)",
       [](const Leaves& x) {
         return slideformer::attention(tokens(x[0]), tokens(x[1]), tokens(x[2]));
       },
       3},
      {"global attention (SDPA)",
       [](const Leaves& x) {
         return at::scaled_dot_product_attention(tokens(x[0]), tokens(x[1]), tokens(x[2]));
       },
       3},
  };
}

void run_stage(const Stage& s, at::ScalarType dtype) {
  const Leaves x = make_leaves(s, dtype);
  const at::Tensor grad = at::randn_like(x[0]);
  std::printf("\n%s, %s (B=%ld H=%ld %ldx%ld D=%ld k=%ld)\n", s.name.c_str(),
              c10::toString(dtype), long(s.batch), long(s.heads), long(s.size), long(s.size),
              long(s.head_dim), long(kKernel));
  double ours_fwd = 0, ours_fb = 0, ours_mem = 0;
  for (const Contender& c : contenders()) {
    const Leaves wrt(x.begin(), x.begin() + c.differentiable);
    auto forward = [&] {
      const at::NoGradGuard no_grad;
      c.fn(x);
    };
    auto forward_backward = [&] {
      torch::autograd::grad({c.fn(x).view_as(grad)}, wrt, {grad});
    };
    const double fwd = median_ms(forward), fb = median_ms(forward_backward);
    const double mem = peak_extra_mib(forward_backward);
    if (ours_fwd == 0) {
      ours_fwd = fwd;
      ours_fb = fb;
      ours_mem = mem;
    }
    std::printf("  %-34s fwd %8.3f ms (x%6.2f)  fwd+bwd %8.3f ms (x%6.2f)  peak extra %8.1f MiB "
                "(ours / it %.3f)\n",
                c.name.c_str(), fwd, fwd / ours_fwd, fb, fb / ours_fb, mem,
                mem > 0 ? ours_mem / mem : 0.0);
  }
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0) g_reps = std::max(1, std::atoi(argv[i + 1]));
  }
  if (!slideformer::built_with_cuda() || !torch::cuda::is_available()) {
    std::printf(
        "bench_cuda_slide: no CUDA device or no CUDA kernels in this build: nothing to measure\n");
    return 0;
  }
  std::printf("%s\n", slideformer::build_info().c_str());
  std::printf("slide_attention on the GPU; x = its time / ours (above 1: slideformer is faster)\n");
  const std::vector<Stage> stages = {{"Slide-Swin-T stage 1", 8, 3, 56, 32},
                                     {"Slide-Swin-T stage 2", 8, 6, 28, 32},
                                     {"Slide-Swin-T stage 1, B=64", 64, 3, 56, 32},
                                     {"Slide-Swin-T stage 2, B=64", 64, 6, 28, 32}};
  for (const auto dtype : {at::kFloat, at::kHalf}) {
    for (const Stage& s : stages) run_stage(s, dtype);
  }
  return 0;
}
