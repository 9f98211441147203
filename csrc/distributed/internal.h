#pragma once
// Pieces shared by the distributed sources; never installed (they name c10d types).
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>

#include <chrono>
#include <exception>
#include <string>

#include "slideformer/distributed.h"

namespace slideformer::distributed::detail {

// The first line of an exception's message (c10 errors carry a backtrace after it).
std::string first_line(const std::exception& error);

// A failed collective of `group` as a CommunicationError: waits for the heartbeats to tell which
// ranks are lost and names them, with the cause's first line.
[[noreturn]] void throw_communication_error(const ProcessGroup& group, const std::string& what,
                                            const std::exception& cause);

// Runs `collective`, turning a failure of the transport (c10d's distributed errors, Gloo's own
// exceptions) into throw_communication_error(group, what, ...). Other c10 errors are usage
// mistakes (a loss that does not require grad, a parameter without gradient): they pass unchanged.
template <typename F>
void run_collective(const ProcessGroup& group, const std::string& what, F&& collective) {
  try {
    collective();
  } catch (const CommunicationError&) {
    throw;
  } catch (const c10::DistError& error) {
    throw_communication_error(group, what, error);
  } catch (const c10::Error&) {
    throw;
  } catch (const std::exception& error) {
    throw_communication_error(group, what, error);
  }
}

// An NCCL backend for CUDA tensors on device `local_rank` (which becomes the current device), or
// null when the library was built without NCCL.
c10::intrusive_ptr<c10d::Backend> make_nccl_backend(const c10::intrusive_ptr<c10d::Store>& store,
                                                    int64_t rank, int64_t world_size,
                                                    int64_t local_rank,
                                                    std::chrono::milliseconds timeout);

}  // namespace slideformer::distributed::detail
