// Fuzz target: the safetensors reader (include/slideformer/io/safetensors.h) on the input as a
// file. Its contract: success, or a WeightFileError naming the input. On success the tensors hold
// no more bytes than the input (nothing is allocated from a declared size alone), and what was
// read, written again with safetensors_bytes and read back, is the same bit for bit (the writer
// checked against the reader).
#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

#include "slideformer/io/safetensors.h"

namespace {

using namespace slideformer::io;

bool same_bytes(const at::Tensor& a, const at::Tensor& b) {
  if (a.scalar_type() != b.scalar_type() || a.sizes() != b.sizes()) return false;
  const at::Tensor x = a.contiguous(), y = b.contiguous();
  return x.nbytes() == 0 || std::memcmp(x.data_ptr(), y.data_ptr(), x.nbytes()) == 0;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string name = "fuzz.safetensors";
  SafetensorsContents contents;
  try {
    contents = read_safetensors(data, size, name);
  } catch (const WeightFileError& error) {
    if (error.file() != name) std::abort();
    return 0;
  }
  size_t bytes = 0;
  for (const auto& item : contents.tensors) bytes += item.second.nbytes();
  if (bytes > size) std::abort();
  const std::string again = safetensors_bytes(contents.tensors, contents.metadata);
  const SafetensorsContents back = read_safetensors(again.data(), again.size(), "written again");
  if (back.metadata != contents.metadata || back.tensors.size() != contents.tensors.size()) std::abort();
  for (size_t i = 0; i < contents.tensors.size(); ++i) {  // the writer reorders by element size
    bool found = false;
    for (const auto& [other, tensor] : back.tensors) {
      if (other == contents.tensors[i].first) found = same_bytes(tensor, contents.tensors[i].second);
    }
    if (!found) std::abort();
  }
  return 0;
}
