#pragma once
// The CPU this process runs on, as the benchmarks report it beside every figure: speed depends on
// the vendor and vector ISA (see docs/benchmarks.md), so a figure without them means little.
#include <string>

namespace slideformer {

struct CpuInfo {
  std::string vendor;      // the CPUID vendor: "GenuineIntel", "AuthenticAMD", ...; "unknown" off x86
  std::string model;       // the CPUID brand string, e.g. "Intel(R) Xeon(R) Processor @ 2.80GHz"
  std::string kernel_isa;  // the vector ISA this library's CPU kernels were built for
  std::string aten_isa;    // the one ATen's kernels run (at::get_cpu_capability())
  int threads = 0;         // ATen's intra-op threads (at::get_num_threads())
};

CpuInfo cpu_info();

// One line: model (vendor), our kernels' ISA, ATen's ISA, threads.
std::string describe_cpu();

}  // namespace slideformer
