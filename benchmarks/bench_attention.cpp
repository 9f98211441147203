// attention on CPU, fp32: slideformer::attention against at::scaled_dot_product_attention and
// the naive composite (matmul, softmax, matmul), forward and forward+backward, at B=4 H=8
// N=1024 D=64 (full and causal), at the Slide-Swin-T stage-3 shape B=8 H=12 N=196 D=32 and,
// without --quick, at N=4096. at::mm on 1024 x 1024 matrices is timed in the same rounds: the
// last column is our attention's FLOP rate over its FLOP rate (the throughput the BLAS reaches
// here). All contenders are measured round-robin in one run; the figures are medians.
//   bench_attention [--quick] [--reps N]
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "bench_common.h"
#include "slideformer/ops.h"

namespace {

struct Case {
  const char* name;
  int64_t batch, heads, tokens, head_dim;
  bool causal;
  int reps;
  // Forward FLOPs: QK^T and PV (halved by a causal mask). Backward does twice as many
  // (dP, dV, dQ, dK), plus the recomputed QK^T in ours: counted as 2x, as for any GEMM.
  double forward_flops() const {
    return 4.0 * batch * heads * tokens * tokens * head_dim / (causal ? 2 : 1);
  }
};

using AttentionFn =
    std::function<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool)>;

at::Tensor naive_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                           bool causal) {
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

// Forward and forward+backward times of each contender, plus at::mm 1024^3 (last), measured
// round-robin.
std::vector<Timing> time_contenders(const std::vector<AttentionFn>& fns, const Case& c,
                                    double* mm_seconds) {
  at::Tensor q = at::randn({c.batch, c.heads, c.tokens, c.head_dim});
  at::Tensor k = at::randn_like(q), v = at::randn_like(q), grad = at::randn_like(q);
  at::Tensor a = at::randn({1024, 1024}), b = at::randn({1024, 1024});
  std::vector<std::function<void()>> forward, forward_backward;
  for (const auto& fn : fns) {
    forward.push_back([&, fn] {
      at::NoGradGuard no_grad;
      fn(q, k, v, c.causal);
    });
    forward_backward.push_back([&, fn] {
      auto leaves = std::vector<at::Tensor>{q.detach().requires_grad_(),
                                            k.detach().requires_grad_(),
                                            v.detach().requires_grad_()};
      at::Tensor out = fn(leaves[0], leaves[1], leaves[2], c.causal);
      torch::autograd::grad({out}, leaves, {grad});
    });
  }
  forward.push_back([&] { at::mm(a, b); });
  const auto fwd = slideformer::bench::interleaved_median_seconds(forward, 1, c.reps);
  const auto both = slideformer::bench::interleaved_median_seconds(forward_backward, 1, c.reps);
  *mm_seconds = fwd.back();
  std::vector<Timing> timings;
  for (size_t i = 0; i < fns.size(); ++i) timings.push_back({fwd[i], both[i]});
  return timings;
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int reps = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--reps") == 0 && i + 1 < argc) reps = std::atoi(argv[++i]);
  }
  slideformer::bench::print_header("attention, CPU fp32");
  std::printf("%-22s | %-8s %9s %9s %9s | %9s %10s | %s\n", "case", "pass", "ours ms", "sdpa ms",
              "naive ms", "sdpa/ours", "naive/ours", "ours FLOP/s / at::mm FLOP/s");
  const AttentionFn ours = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              bool causal) {
    return slideformer::attention(q, k, v, std::nullopt, causal);
  };
  const AttentionFn sdpa = [](const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                              bool causal) {
    return at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
  };
  const std::vector<Case> cases = {{"B4 H8 N1024 D64", 4, 8, 1024, 64, false, 9},
                                   {"B4 H8 N1024 D64 causal", 4, 8, 1024, 64, true, 9},
                                   {"B8 H12 N196 D32 (T s3)", 8, 12, 196, 32, false, 31},
                                   {"B4 H8 N4096 D64", 4, 8, 4096, 64, false, 3}};
  for (const Case& base : cases) {
    if (quick && base.tokens > 1024) continue;
    Case c = base;
    if (reps > 0) c.reps = reps;
    double mm_seconds = 0;
    const auto t = time_contenders({ours, sdpa, naive_attention}, c, &mm_seconds);
    const double mm_rate = 2.0 * 1024 * 1024 * 1024 / mm_seconds;
    const double flops = c.forward_flops();
    std::printf("%-22s | %-8s %9.2f %9.2f %9.2f | %9.2f %10.2f | %.2f\n", c.name, "forward",
                1e3 * t[0].forward, 1e3 * t[1].forward, 1e3 * t[2].forward,
                t[1].forward / t[0].forward, t[2].forward / t[0].forward,
                flops / t[0].forward / mm_rate);
    std::printf("%-22s | %-8s %9.2f %9.2f %9.2f | %9.2f %10.2f | %.2f\n", c.name, "fwd+bwd",
                1e3 * t[0].forward_backward, 1e3 * t[1].forward_backward,
                1e3 * t[2].forward_backward, t[1].forward_backward / t[0].forward_backward,
                t[2].forward_backward / t[0].forward_backward,
                3 * flops / t[0].forward_backward / mm_rate);
    std::fflush(stdout);
  }
  std::printf("(at::mm 1024^3 is timed in each case's forward rounds; forward+backward counts "
              "3x the forward FLOPs)\n");
  return 0;
}
