// attention on CPU, fp32: slideformer::attention against at::scaled_dot_product_attention and
// the naive composite (matmul, softmax, matmul), forward and forward+backward, same run.
//   bench_attention [--quick]
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "bench_common.h"
#include "slideformer/ops.h"

namespace {

using slideformer::bench::median_seconds;

struct Case {
  int64_t batch, heads, tokens, head_dim;
  bool causal;
};

using AttentionFn = std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>;

at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
  at::Tensor logits = at::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(double(q.size(-1))));
  if (causal) {
    const int64_t n = q.size(2);
    logits = logits.masked_fill(at::ones({n, n}, at::kBool).triu(1), -INFINITY);
  }
  return at::matmul(at::softmax(logits, -1), v);
}

struct Timing {
  double forward, forward_backward;
};

// Forward and forward+backward times of each contender, measured interleaved.
std::vector<Timing> time_contenders(const std::vector<AttentionFn>& fns, const Case& c, int reps) {
  at::Tensor q = at::randn({c.batch, c.heads, c.tokens, c.head_dim});
  at::Tensor k = at::randn_like(q), v = at::randn_like(q), grad = at::randn_like(q);
  std::vector<std::function<void()>> forward, forward_backward;
  for (const auto& fn : fns) {
    forward.push_back([&, fn] {
      at::NoGradGuard no_grad;
      fn(q, k, v, c.causal);
    });
    forward_backward.push_back([&, fn] {
      auto leaves = std::vector<at::Tensor>{q.detach().requires_grad_(), k.detach().requires_grad_(),
                                            v.detach().requires_grad_()};
      at::Tensor out = fn(leaves[0], leaves[1], leaves[2], c.causal);
      torch::autograd::grad({out}, leaves, {grad});
    });
  }
  const auto fwd = slideformer::bench::interleaved_median_seconds(forward, 1, reps);
  const auto both = slideformer::bench::interleaved_median_seconds(forward_backward, 1, reps);
  std::vector<Timing> timings;
  for (size_t i = 0; i < fns.size(); ++i) timings.push_back({fwd[i], both[i]});
  return timings;
}

// Attention forward FLOP/s over the FLOP/s of a square, compute-bound at::mm doing as many
// FLOPs (the throughput the BLAS reaches here), both timed interleaved.
double flops_ratio_to_mm(const AttentionFn& attention, const Case& c, double attention_flops,
                         int reps) {
  at::Tensor q = at::randn({c.batch, c.heads, c.tokens, c.head_dim});
  const int64_t n = static_cast<int64_t>(std::cbrt(attention_flops / 2.0));
  at::Tensor a = at::randn({n, n}), b = at::randn({n, n});
  at::NoGradGuard no_grad;
  const auto t = slideformer::bench::interleaved_median_seconds(
      {[&] { attention(q, q, q, c.causal); }, [&] { at::mm(a, b); }}, 1, reps);
  return (attention_flops / t[0]) / (2.0 * n * n * n / t[1]);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  slideformer::bench::print_header("attention, CPU fp32, B=4 H=8 D=64");
  std::printf("%-6s %-7s | %-12s %9s %9s %9s | %-22s %-22s | %s\n", "N", "causal", "pass",
              "ours ms", "sdpa ms", "naive ms", "sdpa/ours (>=1: faster)", "naive/ours",
              "attn FLOP/s / mm FLOP/s");
  const AttentionFn ours = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
    return slideformer::attention(q, k, v, std::nullopt, causal);
  };
  const AttentionFn sdpa = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, bool causal) {
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
  };
  for (int64_t tokens : {int64_t(1024), int64_t(4096)}) {
    if (quick && tokens > 1024) break;
    for (bool causal : {false, true}) {
      const Case c{4, 8, tokens, 64, causal};
      const int reps = tokens > 1024 ? 3 : 7;
      const auto timings = time_contenders({ours, sdpa, naive_attention}, c, reps);
      const Timing &t_ours = timings[0], &t_sdpa = timings[1], &t_naive = timings[2];
      // Forward FLOPs: QK^T and PV, halved by a causal mask.
      const double flops = 4.0 * c.batch * c.heads * c.tokens * c.tokens * c.head_dim / (causal ? 2 : 1);
      std::printf("%-6lld %-7s | %-12s %9.2f %9.2f %9.2f | %22.2f %22.2f | %.2f\n",
                  (long long)tokens, causal ? "yes" : "no", "forward", 1e3 * t_ours.forward,
                  1e3 * t_sdpa.forward, 1e3 * t_naive.forward, t_sdpa.forward / t_ours.forward,
                  t_naive.forward / t_ours.forward, flops_ratio_to_mm(ours, c, flops, reps));
      std::printf("%-6lld %-7s | %-12s %9.2f %9.2f %9.2f | %22.2f %22.2f |\n", (long long)tokens,
                  causal ? "yes" : "no", "fwd+bwd", 1e3 * t_ours.forward_backward,
                  1e3 * t_sdpa.forward_backward, 1e3 * t_naive.forward_backward,
                  t_sdpa.forward_backward / t_ours.forward_backward,
                  t_naive.forward_backward / t_ours.forward_backward);
      std::fflush(stdout);
    }
  }
  return 0;
}
