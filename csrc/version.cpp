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
#ifdef SLIDEFORMER_CPU_AVX2
  const char* cpu_isa = "avx2";
#else
  const char* cpu_isa = "default";
#endif
  return std::string("slideformer ") + SLIDEFORMER_VERSION + " (torch " + SLIDEFORMER_TORCH_VERSION +
         ", " + SLIDEFORMER_BUILD_TYPE + ", " + SLIDEFORMER_CXX_COMPILER + ", cpu " + cpu_isa +
         ", cuda " + (built_with_cuda() ? "sm_80;sm_90" : "off") + ")";
}

}  // namespace slideformer
