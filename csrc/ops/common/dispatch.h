#pragma once
// Typed handles of the internal ops, so autograd kernels redispatch through the dispatcher
// (and so reach the CPU, CUDA or Meta kernel of the inputs).
#include <ATen/core/dispatch/Dispatcher.h>

namespace slideformer::ops {

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace slideformer::ops
