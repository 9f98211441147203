// slide_attention_nd on CPU, fp32, at the token grids of the video presets (docs/modules.md):
// 3-D over (T, H, W) and 1-D over time at every spatial position, causal in time, zeros border,
// k = 3 per axis; forward and forward+backward time of the fused op against the unfold composite in
// aten ops (pad, Tensor::unfold per axis, copy to (B, H, N, K, D), einsum, softmax, einsum), measured
// interleaved in one run, and the peak extra memory of one forward+backward of each
// (counting_allocator.h: the peak of live bytes minus those before, inputs excluded). Two
// configurations: neighbourhood attention (key_bias only) and the full Slide-Transformer
// parameters (shift_weight, shift_bias, key_bias).
//   bench_slide_attention_nd [--quick]
#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <vector>

#include "bench_common.h"
#include "counting_allocator.h"

namespace {

using slideformer::bench::CountingCpuAllocator;

struct Shape {
  const char* name;
  std::vector<int64_t> sizes;  // (B, H, map..., D)
};

int64_t map_rank(const at::Tensor& q) { return q.dim() - 3; }
int64_t window_slots(const at::Tensor& q) { return static_cast<int64_t>(std::pow(3, map_rank(q))); }

// Leaves: q, k, v, key_bias, and with shift: shift_weight, shift_bias.
at::Tensor fused(const std::vector<at::Tensor>& x) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("slideformer::slide_attention_nd", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         c10::IntArrayRef, c10::IntArrayRef,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, c10::string_view,
                                         bool, std::optional<double>)>();
  auto optional = [&](size_t i) {
    return i < x.size() ? std::optional<at::Tensor>(x[i]) : std::nullopt;
  };
  return op.call(x[0], x[1], x[2], {3}, {1}, x[3], optional(4), optional(5), "zeros", true,
                 std::nullopt);
}

// (B, H, map..., D) -> (B, H, N, K, D): zero-padded causal-in-time windows by unfold.
at::Tensor unfold_windows(const at::Tensor& t) {
  const int64_t rank = map_rank(t);
  std::vector<int64_t> pad;
  for (int64_t a = rank - 1; a >= 0; --a) {
    pad.push_back(a == 0 ? 2 : 1);  // before: causal axis 0 looks back k - 1 = 2
    pad.push_back(a == 0 ? 0 : 1);
  }
  at::Tensor x = at::constant_pad_nd(t.movedim(-1, 2), pad);  // (B, H, D, map padded)
  for (int64_t a = 0; a < rank; ++a) x = x.unfold(3 + a, 3, 1);
  x = x.flatten(-rank).movedim(2, -1);  // (B, H, map..., K, D)
  return x.reshape({t.size(0), t.size(1), -1, window_slots(t), t.size(-1)});
}

at::Tensor composite(const std::vector<at::Tensor>& x) {
  const at::Tensor& q = x[0];
  const int64_t heads = q.size(1), head_dim = q.size(-1);
  auto mix = [&](at::Tensor w) {
    if (x.size() > 4) w = at::einsum("cnm,bhpmc->bhpnc", {x[4], w}) + x[5].t();
    return w;
  };
  const at::Tensor keys = mix(unfold_windows(x[1])) + x[3].view({1, heads, 1, -1, 1});
  const at::Tensor values = mix(unfold_windows(x[2]));
  const at::Tensor logits =
      at::einsum("bhpc,bhpnc->bhpn", {q.reshape({q.size(0), heads, -1, head_dim}), keys}) *
      (1.0 / std::sqrt(double(head_dim)));
  return at::einsum("bhpn,bhpnc->bhpc", {at::softmax(logits, -1), values}).view(q.sizes());
}

std::vector<at::Tensor> make_leaves(const Shape& s, bool shift) {
  const at::Tensor q = at::randn(s.sizes);
  const int64_t heads = s.sizes[1], head_dim = s.sizes.back();
  const int64_t k = window_slots(q);
  std::vector<at::Tensor> x = {q, at::randn_like(q), at::randn_like(q),
                               0.02 * at::randn({heads, k})};
  if (shift) {
    x.push_back(at::eye(k).expand({head_dim, k, k}) + 0.1 * at::randn({head_dim, k, k}));
    x.push_back(0.1 * at::randn({head_dim, k}));
  }
  return x;
}

void forward_only(at::Tensor (*fn)(const std::vector<at::Tensor>&),
                  const std::vector<at::Tensor>& x) {
  at::NoGradGuard no_grad;
  fn(x);
}

void forward_backward(at::Tensor (*fn)(const std::vector<at::Tensor>&),
                      const std::vector<at::Tensor>& leaves, const at::Tensor& grad_out) {
  std::vector<at::Tensor> x;
  for (const at::Tensor& t : leaves) x.push_back(t.detach().requires_grad_());
  torch::autograd::grad({fn(x)}, x, {grad_out});
}

double mib(size_t bytes) { return bytes / (1024.0 * 1024.0); }

void run_shape(const Shape& s, bool shift, int reps) {
  std::string title = std::string("slide_attention_nd, CPU fp32, ") + s.name + ": shape (";
  for (size_t i = 0; i < s.sizes.size(); ++i) title += (i ? ", " : "") + std::to_string(s.sizes[i]);
  title += "), k=3, causal, zeros, ";
  title += shift ? "shift_weight + shift_bias + key_bias" : "key_bias only";
  slideformer::bench::print_header(title.c_str());
  const std::vector<at::Tensor> x = make_leaves(s, shift);
  const at::Tensor grad_out = at::randn_like(x[0]);
  at::Tensor (*contenders[2])(const std::vector<at::Tensor>&) = {&fused, &composite};
  const char* names[2] = {"slideformer::slide_attention_nd", "unfold composite"};
  std::vector<std::function<void()>> forward, both;
  for (auto* fn : contenders) {
    forward.push_back([&, fn] { forward_only(fn, x); });
    both.push_back([&, fn] { forward_backward(fn, x, grad_out); });
  }
  const auto t_forward = slideformer::bench::interleaved_median_seconds(forward, 1, reps);
  const auto t_both = slideformer::bench::interleaved_median_seconds(both, 1, reps);
  double peak[2];
  for (int i = 0; i < 2; ++i) {
    const size_t before = CountingCpuAllocator::instance().start_measurement();
    forward_backward(contenders[i], x, grad_out);
    peak[i] = mib(CountingCpuAllocator::instance().peak() - before);
  }
  std::printf("%-32s | %9s %11s | %14s\n", "contender", "fwd ms", "fwd+bwd ms", "peak extra MiB");
  for (int i = 0; i < 2; ++i) {
    std::printf("%-32s | %9.2f %11.2f | %14.1f\n", names[i], 1e3 * t_forward[i], 1e3 * t_both[i],
                peak[i]);
  }
  std::printf(
      "fwd: %.1fx, fwd+bwd: %.1fx the composite's speed (bar: >= 10); peak extra memory "
      "fused / composite: %.3f (bar: <= 0.2)\n",
      t_forward[1] / t_forward[0], t_both[1] / t_both[0], peak[0] / peak[1]);
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  c10::SetAllocator(at::kCPU, &CountingCpuAllocator::instance(), /*priority=*/1);
  at::manual_seed(0);
  const int reps = quick ? 3 : 5;
  // Stage 1 of the presets: mvit_v2_s / mvit_v1_b take 16 x 224 x 224 clips to 8 x 56 x 56 tokens
  // of width 96 (1 head); moving_mvit 8 x 48 x 48 clips to 4 x 12 x 12 tokens of width 32.
  const std::vector<Shape> shapes = {
      {"mvit_v2_s stage 1, 3-D (T, H, W)", {1, 1, 8, 56, 56, 96}},
      {"mvit_v2_s stage 1, 1-D over time", {56 * 56, 1, 8, 96}},
      {"moving_mvit stage 1 (batch 32), 3-D", {32, 1, 4, 12, 12, 32}},
      {"moving_mvit stage 1 (batch 32), 1-D over time", {32 * 144, 1, 4, 32}},
  };
  for (const bool shift : {false, true}) {
    for (const Shape& s : shapes) run_shape(s, shift, reps);
  }
  return 0;
}
