// GPU benchmarks, run by ./run gpu-check: slideformer::attention against
// at::scaled_dot_product_attention, every ratio measured in this one run on one GPU. Exits 0 with
// a notice when there is no GPU or the library was built without CUDA kernels.
//
//   bench_cuda [--reps N]
//
// Shapes: the attention bar's shape (docs/benchmarks.md) (B=4, H=8, N=1024, D=64) and the global-attention stages of
// Slide-Swin-T at B=64 (stage 3: 14x14 tokens, 12 heads; stage 4: 7x7 tokens, 24 heads; D=32,
// with a relative-position bias (1, H, N, N)). The flash backend takes neither float32 nor a
// bias, so it is the peer only for the half-type, bias-free rows; the other rows compare with
// whichever backend SDPA picks by itself.
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/cuda.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "bench_cuda_common.h"
#include "slideformer/ops.h"
#include "slideformer/version.h"

namespace {

int g_reps = 20;

double median_ms(const std::function<void()>& fn) {
  return slideformer::bench::median_cuda_ms(fn, g_reps);
}

enum class Peer { kFlash, kDefault };

// SDPA restricted to the flash backend, or with every backend allowed.
struct SdpaBackends {
  explicit SdpaBackends(Peer peer) {
    auto& ctx = at::globalContext();
    ctx.setSDPUseFlash(true);
    ctx.setSDPUseMemEfficient(peer == Peer::kDefault);
    ctx.setSDPUseMath(peer == Peer::kDefault);
    ctx.setSDPUseCuDNN(peer == Peer::kDefault);
  }
  ~SdpaBackends() {
    auto& ctx = at::globalContext();
    ctx.setSDPUseMemEfficient(true);
    ctx.setSDPUseMath(true);
    ctx.setSDPUseCuDNN(true);
  }
};

struct Case {
  std::string name;
  int64_t batch, heads, tokens, head_dim;
  at::ScalarType dtype;
  bool bias, causal;
  Peer peer;
};

void run_case(const Case& c) {
  const auto opts = at::TensorOptions().device(at::kCUDA).dtype(c.dtype);
  auto make = [&](int64_t n) {
    return at::randn({c.batch, c.heads, n, c.head_dim}, opts).requires_grad_();
  };
  at::Tensor q = make(c.tokens), k = make(c.tokens), v = make(c.tokens);
  std::optional<at::Tensor> bias;
  if (c.bias) bias = at::randn({1, c.heads, c.tokens, c.tokens}, opts).mul_(0.02).requires_grad_();
  const at::Tensor grad = at::randn_like(q);
  std::vector<at::Tensor> inputs = {q, k, v};
  if (bias) inputs.push_back(*bias);

  auto ours = [&] { return slideformer::attention(q, k, v, bias, c.causal); };
  auto theirs = [&] {
    const SdpaBackends backends(c.peer);
    return at::scaled_dot_product_attention(q, k, v, bias, 0.0, c.causal);
  };
  auto forward_only = [](const std::function<at::Tensor()>& f) {
    return [f] {
      const at::NoGradGuard no_grad;
      f();
    };
  };
  auto forward_backward = [&](const std::function<at::Tensor()>& f) {
    return [f, &grad, &inputs] { torch::autograd::grad({f()}, inputs, {grad}); };
  };
  const double ours_fwd = median_ms(forward_only(ours)), theirs_fwd = median_ms(forward_only(theirs));
  const double ours_fb = median_ms(forward_backward(ours)),
               theirs_fb = median_ms(forward_backward(theirs));
  std::printf("%-44s fwd %8.3f ms vs %8.3f ms (x%5.2f)   fwd+bwd %8.3f ms vs %8.3f ms (x%5.2f)\n",
              c.name.c_str(), ours_fwd, theirs_fwd, theirs_fwd / ours_fwd, ours_fb, theirs_fb,
              theirs_fb / ours_fb);
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--reps") == 0) g_reps = std::max(1, std::atoi(argv[i + 1]));
  }
  if (!slideformer::built_with_cuda() || !torch::cuda::is_available()) {
    std::printf("bench_cuda: no CUDA device or no CUDA kernels in this build: nothing to measure\n");
    return 0;
  }
  std::printf("%s\n", slideformer::build_info().c_str());
  std::printf("slideformer::attention vs at::scaled_dot_product_attention; x = peer time / ours "
              "(above 1: slideformer is faster)\n");
  const std::vector<Case> cases = {
      {"B4 H8 N1024 D64 fp16 vs flash", 4, 8, 1024, 64, at::kHalf, false, false, Peer::kFlash},
      {"B4 H8 N1024 D64 fp16 causal vs flash", 4, 8, 1024, 64, at::kHalf, false, true,
       Peer::kFlash},
      {"B4 H8 N1024 D64 bf16 vs flash", 4, 8, 1024, 64, at::kBFloat16, false, false,
       Peer::kFlash},
      {"B4 H8 N1024 D64 fp32 vs sdpa", 4, 8, 1024, 64, at::kFloat, false, false, Peer::kDefault},
      {"Swin-T stage 3 B64 H12 N196 D32 fp16 vs flash", 64, 12, 196, 32, at::kHalf, false, false,
       Peer::kFlash},
      {"Swin-T stage 3 B64 H12 N196 D32 +bias fp32", 64, 12, 196, 32, at::kFloat, true, false,
       Peer::kDefault},
      {"Swin-T stage 3 B64 H12 N196 D32 +bias fp16", 64, 12, 196, 32, at::kHalf, true, false,
       Peer::kDefault},
      {"Swin-T stage 4 B64 H24 N49 D32 +bias fp32", 64, 24, 49, 32, at::kFloat, true, false,
       Peer::kDefault},
      {"Swin-T stage 4 B64 H24 N49 D32 +bias fp16", 64, 24, 49, 32, at::kHalf, true, false,
       Peer::kDefault},
  };
  for (const auto& c : cases) run_case(c);
  return 0;
}
