#include "slideformer/cpu.h"

#include <ATen/Parallel.h>
#include <ATen/Version.h>

#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace slideformer {

namespace {

#if defined(__x86_64__) || defined(__i386__)
std::string cpuid_vendor() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return "unknown";
  char vendor[13] = {};
  std::memcpy(vendor, &ebx, 4);
  std::memcpy(vendor + 4, &edx, 4);
  std::memcpy(vendor + 8, &ecx, 4);
  return vendor;
}

std::string cpuid_brand() {
  unsigned words[12] = {};
  if (__get_cpuid_max(0x80000000, nullptr) < 0x80000004) return "unknown";
  for (unsigned leaf = 0; leaf < 3; ++leaf) {
    __get_cpuid(0x80000002 + leaf, &words[4 * leaf], &words[4 * leaf + 1], &words[4 * leaf + 2], &words[4 * leaf + 3]);
  }
  std::string brand(reinterpret_cast<const char*>(words), sizeof(words));
  brand = brand.c_str();  // up to the first NUL
  const size_t begin = brand.find_first_not_of(' '), end = brand.find_last_not_of(' ');
  return begin == std::string::npos ? "unknown" : brand.substr(begin, end - begin + 1);
}
#else
std::string cpuid_vendor() { return "unknown"; }
std::string cpuid_brand() { return "unknown"; }
#endif

}  // namespace

CpuInfo cpu_info() {
  return {cpuid_vendor(), cpuid_brand(), SLIDEFORMER_CPU_ISA, at::get_cpu_capability(), at::get_num_threads()};
}

std::string describe_cpu() {
  const CpuInfo cpu = cpu_info();
  return cpu.model + " (" + cpu.vendor + "), slideformer kernels " + cpu.kernel_isa + ", ATen " + cpu.aten_isa +
         ", " + std::to_string(cpu.threads) + " threads";
}

}  // namespace slideformer
