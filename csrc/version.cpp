#include "slideformer/version.h"

namespace slideformer {

std::string version() { return SLIDEFORMER_VERSION; }

bool built_with_cuda() {
#ifdef SLIDEFORMER_WITH_CUDA
  return true;
#else
  return false;
#endif
}

std::string build_info() {
  return std::string("slideformer ") + SLIDEFORMER_VERSION + " (torch " + SLIDEFORMER_TORCH_VERSION +
         ", " + SLIDEFORMER_BUILD_TYPE + ", " + SLIDEFORMER_CXX_COMPILER + ", cpu " + SLIDEFORMER_CPU_ISA +
         ", cuda " + (built_with_cuda() ? "sm_80;sm_90" : "off") + ")";
}

}  // namespace slideformer
