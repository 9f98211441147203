// The NCCL backend, compiled in when CMake found nccl.h next to a CUDA build of torch (whose
// torch_cuda target defines USE_C10D_NCCL).
#include "internal.h"

#if defined(SLIDEFORMER_WITH_NCCL) && defined(USE_C10D_NCCL)
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace slideformer::distributed::detail {

c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int64_t rank, int64_t world_size,
                                                    int64_t local_rank,
                                                    std::chrono::milliseconds timeout) {
#if defined(SLIDEFORMER_WITH_NCCL) && defined(USE_C10D_NCCL)
  c10::cuda::set_device(static_cast<c10::DeviceIndex>(local_rank));
  auto options = c10d::ProcessGroupNCCL::Options::create();
  options->timeout = timeout;
  return c10::make_intrusive<c10d::ProcessGroupNCCL>(store, static_cast<int>(rank),
                                                     static_cast<int>(world_size), options);
#else
  return {};
#endif
}

}  // namespace slideformer::distributed::detail
