#pragma once
// How a host-executed CUDA kernel entry is registered for the host dispatch key (cuda_host.h).
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/DispatchKeySet.h>

namespace slideformer::testing {

inline constexpr c10::DispatchKey kCudaHostKey = c10::DispatchKey::TESTING_ONLY_GenericMode;

// Whether a call at the host key is one for the kernel itself: CPU tensors with no Python,
// functionalization or functorch layer left to run (fake tensors, dispatch modes, vmap).
inline bool reaches_kernel(c10::DispatchKeySet keys) {
  using K = c10::DispatchKey;
  static const c10::DispatchKeySet layers({K::Python, K::PythonTLSSnapshot, K::PreDispatch,
                                           K::PythonDispatcher, K::Functionalize,
                                           K::FuncTorchBatched, K::FuncTorchVmapMode,
                                           K::FuncTorchGradWrapper, K::FuncTorchDynamicLayerBackMode,
                                           K::FuncTorchDynamicLayerFrontMode});
  return (keys & layers).empty() && keys.highestBackendKey() == c10::BackendComponent::CPUBit;
}

// HostKernel<decltype(f)>::call<&f, kOp>: the kernel of op kOp at the host key. It runs f, the
// host execution of the op's CUDA kernels, for calls that reach the kernel, and passes any other
// call on to the next dispatch key (a Meta or fake tensor, a dispatch mode).
template <typename Signature>
struct HostKernel;

template <typename Ret, typename... Args>
struct HostKernel<Ret(Args...)> {
  template <Ret (*kKernel)(Args...), const char* kOp>
  static Ret call(c10::DispatchKeySet keys, Args... args) {
    const c10::DispatchKeySet rest = keys.remove(kCudaHostKey);
    if (reaches_kernel(rest)) return kKernel(args...);
    static const auto op =
        c10::Dispatcher::singleton().findSchemaOrThrow(kOp, "").typed<Ret(Args...)>();
    return op.redispatch(rest, args...);
  }
};

}  // namespace slideformer::testing
