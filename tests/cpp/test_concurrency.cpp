// Both operators (forward and backward) and one loaded TorchScript model, called from 8 threads at
// the same time, give the bits of a serial run (issue 11; ./run sanitize thread runs it too).
#include <gtest/gtest.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "slideformer/nn/export.h"
#include "slideformer/ops.h"

namespace {

struct Inputs {
  std::vector<at::Tensor> attention;  // q, k, v, bias
  std::vector<at::Tensor> slide;      // q, k, v, key_bias, shift_weight, shift_bias
  at::Tensor images;
};

Inputs make_inputs() {
  torch::manual_seed(11);
  Inputs in;
  in.attention = {torch::randn({2, 2, 33, 16}), torch::randn({2, 2, 40, 16}),
                  torch::randn({2, 2, 40, 8}), torch::randn({2, 1, 33, 40})};
  in.slide = {torch::randn({2, 2, 9, 11, 16}), torch::randn({2, 2, 9, 11, 16}),
              torch::randn({2, 2, 9, 11, 16}), torch::randn({2, 9}),
              torch::eye(9).expand({16, 9, 9}) + 0.1 * torch::randn({16, 9, 9}),
              0.1 * torch::randn({16, 9})};
  in.images = torch::rand({3, 1, 28, 28});
  return in;
}

// The gradients of sum(out * weight) for every input, weight fixed by the output's shape.
std::vector<at::Tensor> output_and_grads(const at::Tensor& out, const std::vector<at::Tensor>& leaves) {
  const at::Tensor weight = at::linspace(-1, 1, out.numel()).view(out.sizes());
  std::vector<at::Tensor> results = torch::autograd::grad({(out * weight).sum()}, leaves);
  results.insert(results.begin(), out.detach());
  return results;
}

std::vector<at::Tensor> leaves_of(const std::vector<at::Tensor>& tensors) {
  std::vector<at::Tensor> leaves;
  for (const auto& t : tensors) leaves.push_back(t.detach().requires_grad_());
  return leaves;
}

// Everything one caller computes: both operators' outputs and gradients (both borders of the
// slide op) and the scripted model's logits.
std::vector<at::Tensor> run_everything(const Inputs& in, torch::jit::Module& model) {
  std::vector<at::Tensor> results;
  const auto a = leaves_of(in.attention);
  for (bool causal : {false, true}) {
    auto r = output_and_grads(slideformer::attention(a[0], a[1], a[2], a[3], causal), a);
    results.insert(results.end(), r.begin(), r.end());
  }
  const auto s = leaves_of(in.slide);
  for (const char* border : {"zeros", "clamp"}) {
    const auto options = slideformer::SlideAttentionFuncOptions(3).key_bias(s[3]).shift_weight(s[4])
                             .shift_bias(s[5]).border(border);
    auto r = output_and_grads(slideformer::slide_attention(s[0], s[1], s[2], options), s);
    results.insert(results.end(), r.begin(), r.end());
  }
  torch::NoGradGuard no_grad;
  results.push_back(model.forward({in.images}).toTensor());
  return results;
}

TEST(Concurrency, EightThreadsGiveTheBitsOfASerialRun) {
  const Inputs in = make_inputs();
  slideformer::nn::SlideTransformer network(slideformer::nn::fashion());
  network->eval();
  std::stringstream buffer;
  slideformer::nn::to_torchscript(network).save(buffer);
  torch::jit::Module model = torch::jit::load(buffer);

  const std::vector<at::Tensor> serial = run_everything(in, model);
  constexpr int kThreads = 8, kRounds = 2;
  std::vector<std::vector<std::vector<at::Tensor>>> results(kThreads);
  std::vector<std::string> errors(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      try {
        for (int round = 0; round < kRounds; ++round) results[t].push_back(run_everything(in, model));
      } catch (const std::exception& e) {
        errors[t] = e.what();
      }
    });
  }
  for (auto& thread : threads) thread.join();
  for (int t = 0; t < kThreads; ++t) {
    ASSERT_EQ(errors[t], "") << "thread " << t;
    ASSERT_EQ(results[t].size(), size_t(kRounds));
    for (const auto& round : results[t]) {
      ASSERT_EQ(round.size(), serial.size());
      for (size_t i = 0; i < serial.size(); ++i) {
        EXPECT_TRUE(at::equal(round[i], serial[i])) << "thread " << t << ", result " << i;
      }
    }
  }
}

}  // namespace
