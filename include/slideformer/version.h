#pragma once
// What this copy of the library is and how it was built.
#include <string>

namespace slideformer {

// Semantic version of the library, e.g. "0.1.0".
std::string version();
// One line: version, torch version, build type, compiler, CPU vector ISA, CUDA on/off.
std::string build_info();
// True when the CUDA kernels were compiled in (they still need a GPU at run time).
bool built_with_cuda();

}  // namespace slideformer
