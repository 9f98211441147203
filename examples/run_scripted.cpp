// Loads a scripted model that calls slideformer ops and runs it on a seeded random batch:
//   run_scripted MODEL.pt B C H W
// Prints the output shape and a checksum so a Python run can be compared with it.
#include <torch/script.h>

#include <iostream>

#include "slideformer/version.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::cerr << "usage: run_scripted MODEL.pt B C H W\n";
    return 2;
  }
  try {
    torch::jit::Module model = torch::jit::load(argv[1]);
    model.eval();
    torch::manual_seed(0);
    at::Tensor input = torch::rand({std::stoll(argv[2]), std::stoll(argv[3]), std::stoll(argv[4]),
                                    std::stoll(argv[5])});
    torch::NoGradGuard no_grad;
    at::Tensor out = model.forward({input}).toTensor();
    std::cout << slideformer::build_info() << "\n"
              << "output shape " << out.sizes() << " checksum " << out.sum().item<double>()
              << "\n";
  } catch (const std::exception& e) {
    std::cerr << "run_scripted: " << argv[1] << ": " << e.what() << "\n";
    return 1;
  }
  return 0;
}
