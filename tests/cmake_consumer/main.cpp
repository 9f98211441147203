// Uses the installed slideformer the way an outside project would.
#include <ATen/ATen.h>
#include <slideformer/ops.h>
#include <slideformer/version.h>

#include <iostream>

int main() {
  at::Tensor q = at::randn({1, 2, 5, 8});
  at::Tensor out = slideformer::attention(q, q, q);
  const bool ok = out.sizes() == q.sizes() && out.isfinite().all().item<bool>();
  std::cout << slideformer::build_info() << "\n" << (ok ? "consumer ok" : "consumer FAILED") << "\n";
  return ok ? 0 : 1;
}
