#pragma once
// safetensors files (https://github.com/huggingface/safetensors, the format's specification):
// an 8-byte little-endian header length N, N bytes of JSON
//   {"__metadata__": {"key": "value", ...}, "name": {"dtype": "F32", "shape": [2, 3],
//    "data_offsets": [begin, end]}, ...}
// then the tensors' bytes, offsets relative to the end of the header. The reader checks the whole
// header first (dtypes, shapes, offsets within the data, no overlap, no gap, sizes that match the
// dtype and shape), then allocates each tensor and copies its bytes into it (so unaligned data is
// fine); a damaged file is a WeightFileError naming it and what is wrong.
#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "slideformer/io/weight_file.h"

namespace slideformer::io {

// The free-form string pairs under "__metadata__".
using Metadata = std::vector<std::pair<std::string, std::string>>;

struct SafetensorsContents {
  NamedTensors tensors;  // in the header's order
  Metadata metadata;
};

SafetensorsContents read_safetensors(const std::string& path);
// The same from bytes in memory, named `name` in messages.
SafetensorsContents read_safetensors(const void* data, size_t size, const std::string& name);

// Writes `tensors` (any device, strides or dtype the format has: float64/32/16, bfloat16, the
// integer types, bool, float8 and complex64) with `metadata`, atomically (a temporary file
// renamed over `path`). The header is padded to 8 bytes and the tensors are laid out by
// decreasing element size, so every tensor is aligned to its element size.
void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata = {});
// The bytes save_safetensors would write.
std::string safetensors_bytes(const NamedTensors& tensors, const Metadata& metadata = {});

}  // namespace slideformer::io
