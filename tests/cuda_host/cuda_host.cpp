// The plumbing of libslideformer_cuda_host (see cuda_host.h): the dispatch key that routes the
// internal ops to the host-executed kernels (attention_host.cpp, slide_attention_host.cpp), the
// scoped switches of the tests, and a Python handle on them.
#include "cuda_host.h"

#include <cxxabi.h>
#include <dlfcn.h>
#include <torch/library.h>

#include <cstdlib>
#include <memory>

#include "host_kernel.h"
#include "ops/cuda/host_runtime.h"

namespace slideformer::testing {

namespace host_runtime = ops::cuda::host_runtime;

ScopedCudaHostExecution::ScopedCudaHostExecution() : include_(kCudaHostKey) {}
ScopedCpuKernels::ScopedCpuKernels() : exclude_(kCudaHostKey) {}

namespace {

host_runtime::DeviceProperties properties(EmulatedGpu gpu) {
  return gpu == EmulatedGpu::kH100 ? host_runtime::kH100 : host_runtime::kA100;
}

// "void ns::name<args>(params)" -> "name<args>"
std::string kernel_name(const void* kernel) {
  Dl_info info{};
  if (dladdr(kernel, &info) == 0 || info.dli_sname == nullptr) return "?";
  int status = 0;
  const std::unique_ptr<char, void (*)(void*)> demangled(
      abi::__cxa_demangle(info.dli_sname, nullptr, nullptr, &status), std::free);
  std::string name = status == 0 ? demangled.get() : info.dli_sname;
  name = name.substr(0, name.find('('));
  const size_t open = name.find('<');
  const size_t last_colon = name.rfind("::", open);
  if (last_colon != std::string::npos) name = name.substr(last_colon + 2);
  if (name.rfind("void ", 0) == 0) name = name.substr(5);
  return name;
}

// Python: torch.ops.slideformer_cuda_host.launches() -> the kernels launched on this thread so far.
int64_t launches() { return static_cast<int64_t>(host_runtime::launch_count()); }

// Python: torch.ops.slideformer_cuda_host.set_enabled(on) -> the previous state, for this thread.
bool set_enabled(bool on) {
  const bool previous = c10::impl::tls_is_dispatch_key_included(kCudaHostKey);
  c10::impl::tls_set_dispatch_key_included(kCudaHostKey, on);
  return previous;
}

}  // namespace

uint64_t host_execution_seed() { return host_runtime::block_order_seed(); }

ScopedEmulatedGpu::ScopedEmulatedGpu(EmulatedGpu gpu) {
  host_runtime::emulated_device() = properties(gpu);
}
ScopedEmulatedGpu::~ScopedEmulatedGpu() { host_runtime::emulated_device() = host_runtime::kA100; }

RecordedLaunches::RecordedLaunches() : previous_(host_runtime::launch_log()) {
  host_runtime::launch_log() = &records_;
}
RecordedLaunches::~RecordedLaunches() {
  host_runtime::launch_log() = previous_;
  if (previous_ != nullptr) previous_->insert(previous_->end(), records_.begin(), records_.end());
}

std::vector<KernelLaunch> RecordedLaunches::launches() const {
  std::vector<KernelLaunch> launches;
  for (const auto& r : records_) {
    launches.push_back({kernel_name(r.kernel), r.blocks, r.threads, r.shared_bytes});
  }
  return launches;
}

std::vector<std::string> RecordedLaunches::kernels() const {
  std::vector<std::string> names;
  for (const auto& r : records_) names.push_back(kernel_name(r.kernel));
  return names;
}

}  // namespace slideformer::testing

// Every op without a host kernel passes through the key.
TORCH_LIBRARY_IMPL(_, TESTING_ONLY_GenericMode, m) {
  m.fallback(torch::CppFunction::makeFallthrough());
}

TORCH_LIBRARY(slideformer_cuda_host, m) {
  m.def("set_enabled(bool on) -> bool", &slideformer::testing::set_enabled);
  m.def("launches() -> int", &slideformer::testing::launches);
}
