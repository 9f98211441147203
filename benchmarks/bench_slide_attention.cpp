// slide_attention on CPU, fp32, at the Slide-Swin-T stage-1 and stage-2 shapes (k = 3, with
// shift_weight, shift_bias and key_bias): forward and forward+backward time of the fused op
// against the Slide-Transformer-style composite in aten ops (depthwise conv2d making the k*k
// shifted copies of K and V, einsum, softmax, einsum) and against global attention over all
// Y*X tokens (slideformer::attention and at::scaled_dot_product_attention), all measured
// interleaved in one run; then the peak extra memory of one forward+backward of each.
//
// Peak extra memory: a counting allocator wraps torch's CPU allocator (c10::SetAllocator), so
// every CPU allocation made through c10 is counted: tensors (outputs, saved activations,
// gradients, the op's own scratch, which it allocates as tensors) and oneDNN's buffers (it
// allocates through c10's raw_allocate). The figure is the peak of live bytes during one
// forward+backward minus the live bytes before it (inputs excluded). Plain malloc inside a
// library (e.g. a BLAS's private workspace) is not seen.
//   bench_slide_attention [--quick]
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "bench_common.h"
#include "counting_allocator.h"
#include "slideformer/ops.h"

namespace {

using slideformer::bench::CountingCpuAllocator;

struct Stage {
  const char* name;
  int64_t batch, heads, size, head_dim;
  bool has_bar;  // docs/benchmarks.md states the bar at the stage-1 shape
};

constexpr int64_t kKernel = 3, kK2 = kKernel * kKernel;

// The parameters of one slide attention layer, and the leaves a backward differentiates.
struct Inputs {
  at::Tensor q, k, v, grad_out;
  at::Tensor shift_weight, shift_bias, key_bias;  // W = I + learned part, as the op takes them
};

Inputs make_inputs(const Stage& s) {
  Inputs in;
  in.q = at::randn({s.batch, s.heads, s.size, s.size, s.head_dim});
  in.k = at::randn_like(in.q);
  in.v = at::randn_like(in.q);
  in.grad_out = at::randn_like(in.q);
  in.shift_weight =
      at::eye(kK2).expand({s.head_dim, kK2, kK2}) + 0.1 * at::randn({s.head_dim, kK2, kK2});
  in.shift_bias = 0.1 * at::randn({s.head_dim, kK2});
  in.key_bias = 0.02 * at::randn({s.heads, kK2});
  return in;
}

// Leaves: q, k, v, shift_weight, shift_bias, key_bias.
at::Tensor ours(const std::vector<at::Tensor>& x) {
  return slideformer::slide_attention(
      x[0], x[1], x[2],
      slideformer::SlideAttentionFuncOptions(kKernel).shift_weight(x[3]).shift_bias(x[4]).key_bias(
          x[5]));
}

// Slide-Transformer's formulation in aten ops. two_path: as its training code, a frozen
// one-hot depthwise conv plus a learnable one (weight W - I, with the bias); otherwise the
// merged single conv (weight W), the cheaper of the two.
at::Tensor composite(const std::vector<at::Tensor>& x, bool two_path) {
  const at::Tensor &q = x[0], &shift_weight = x[3], &shift_bias = x[4], &key_bias = x[5];
  const int64_t B = q.size(0), H = q.size(1), Y = q.size(2), X = q.size(3), D = q.size(4);
  const at::Tensor one_hot = at::eye(kK2).view({kK2, 1, kKernel, kKernel}).repeat({D, 1, 1, 1});
  // Output channel c*k2 + n of the conv is shifted copy n of channel c; kernel tap m = (i, j).
  const at::Tensor weight =
      two_path ? (shift_weight - at::eye(kK2)).reshape({D * kK2, 1, kKernel, kKernel})
               : shift_weight.reshape({D * kK2, 1, kKernel, kKernel});
  auto shifted = [&](const at::Tensor& t) {
    at::Tensor planes = t.permute({0, 1, 4, 2, 3}).reshape({B * H, D, Y, X});
    at::Tensor copies = at::conv2d(planes, weight, shift_bias.reshape(-1), 1, kKernel / 2, 1, D);
    if (two_path) copies = copies + at::conv2d(planes, one_hot, {}, 1, kKernel / 2, 1, D);
    return copies.view({B, H, D, kK2, Y, X});
  };
  const at::Tensor keys = shifted(x[1]) + key_bias.view({1, H, 1, kK2, 1, 1});
  const at::Tensor logits =
      at::einsum("bhyxc,bhcnyx->bhyxn", {q, keys}) * (1.0 / std::sqrt(double(D)));
  return at::einsum("bhyxn,bhcnyx->bhyxc", {at::softmax(logits, -1), shifted(x[2])});
}

// Global attention over all Y*X tokens of each (b, h): what the slide window replaces.
at::Tensor tokens(const at::Tensor& t) { return t.flatten(2, 3); }
at::Tensor global_ours(const std::vector<at::Tensor>& x) {
  return slideformer::attention(tokens(x[0]), tokens(x[1]), tokens(x[2]));
}
at::Tensor global_sdpa(const std::vector<at::Tensor>& x) {
  return at::scaled_dot_product_attention(tokens(x[0]), tokens(x[1]), tokens(x[2]));
}

struct Contender {
  const char* name;
  at::Tensor (*fn)(const std::vector<at::Tensor>&);
  size_t differentiable;  // leading leaves it reads: all six, or q, k, v for global attention
};

at::Tensor composite_merged(const std::vector<at::Tensor>& x) { return composite(x, false); }
at::Tensor composite_two_path(const std::vector<at::Tensor>& x) { return composite(x, true); }

// Leaves in the order q, k, v, shift_weight, shift_bias, key_bias.
std::vector<at::Tensor> leaves(const Inputs& in, bool requires_grad) {
  std::vector<at::Tensor> x = {in.q, in.k, in.v, in.shift_weight, in.shift_bias, in.key_bias};
  for (auto& t : x) t = t.detach().requires_grad_(requires_grad);
  return x;
}

void forward_only(const Contender& c, const Inputs& in) {
  at::NoGradGuard no_grad;
  c.fn(leaves(in, false));
}

void forward_backward(const Contender& c, const Inputs& in) {
  const std::vector<at::Tensor> x = leaves(in, true);
  const at::Tensor out = c.fn(x).view_as(in.grad_out);
  torch::autograd::grad({out}, std::vector<at::Tensor>(x.begin(), x.begin() + c.differentiable),
                        {in.grad_out});
}

double mib(size_t bytes) { return bytes / (1024.0 * 1024.0); }

void run_stage(const Stage& s, int reps) {
  char title[200];
  std::snprintf(title, sizeof title,
                "slide_attention, CPU fp32, %s: B=%lld H=%lld %lldx%lld D=%lld k=3, "
                "shift_weight + shift_bias + key_bias",
                s.name, (long long)s.batch, (long long)s.heads, (long long)s.size,
                (long long)s.size, (long long)s.head_dim);
  slideformer::bench::print_header(title);
  const Inputs in = make_inputs(s);
  const std::vector<Contender> contenders = {
      {"slideformer::slide_attention", &ours, 6},
      {"composite, merged conv", &composite_merged, 6},
      {"composite, two-path (reference)", &composite_two_path, 6},
      {"global attention, slideformer", &global_ours, 3},
      {"global attention, SDPA", &global_sdpa, 3},
  };
  std::vector<std::function<void()>> forward, both;
  for (const auto& c : contenders) {
    forward.push_back([&, c] { forward_only(c, in); });
    both.push_back([&, c] { forward_backward(c, in); });
  }
  const auto t_forward = slideformer::bench::interleaved_median_seconds(forward, 1, reps);
  const auto t_both = slideformer::bench::interleaved_median_seconds(both, 1, reps);
  std::vector<double> peak_mib;
  for (const auto& c : contenders) {
    const size_t before = CountingCpuAllocator::instance().start_measurement();
    forward_backward(c, in);
    peak_mib.push_back(mib(CountingCpuAllocator::instance().peak() - before));
  }
  std::printf("%-32s | %9s %11s | %13s %15s | %14s %16s\n", "contender", "fwd ms", "fwd+bwd ms",
              "fwd: x ours", "fwd+bwd: x ours", "peak extra MiB", "memory: x ours");
  for (size_t i = 0; i < contenders.size(); ++i) {
    std::printf("%-32s | %9.2f %11.2f | %13.2f %15.2f | %14.1f %16.2f\n", contenders[i].name,
                1e3 * t_forward[i], 1e3 * t_both[i], t_forward[i] / t_forward[0],
                t_both[i] / t_both[0], peak_mib[i], peak_mib[i] / peak_mib[0]);
  }
  // Against the cheaper of the two composites.
  std::printf(
      "fwd+bwd speed-up over the merged composite: %.1fx%s; peak extra memory ours / "
      "merged composite: %.3f%s\n",
      t_both[1] / t_both[0], s.has_bar ? " (bar: >= 5)" : "",
      peak_mib[0] / peak_mib[1], s.has_bar ? " (bar: <= 0.333)" : "");
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  c10::SetAllocator(at::kCPU, &CountingCpuAllocator::instance(), /*priority=*/1);
  at::manual_seed(0);
  const int reps = quick ? 3 : 7;
  run_stage({"Slide-Swin-T stage 1", 8, 3, 56, 32, true}, reps);
  run_stage({"Slide-Swin-T stage 2", 8, 6, 28, 32, false}, reps);
  return 0;
}
