#include "slideformer/io/weight_file.h"

#include <cstring>

#include "io/byte_source.h"
#include "slideformer/io/safetensors.h"
#include "slideformer/io/torch_save.h"

namespace slideformer::io {

// A ZIP archive starts with a local record header; a safetensors file with its header length and
// then the header's '{'. What else it may be is named so that the message helps.
WeightFileFormat detect_weight_file_format(const std::string& path) {
  const auto source = detail::open_file(path);
  uint8_t head[9] = {};
  const size_t count = static_cast<size_t>(std::min<uint64_t>(source->size(), sizeof head));
  source->read(0, head, count, "the file's first bytes");
  if (count >= 4 && std::memcmp(head, "PK\x03\x04", 4) == 0) return WeightFileFormat::kTorchSave;
  if (count == 9 && head[8] == '{') return WeightFileFormat::kSafetensors;
  if (count >= 2 && head[0] == 0x80 && head[1] <= 5) {
    source->fail("a legacy torch.save file (PyTorch before 1.6), which is not supported: load it with torch.load "
                 "and save it again with a current PyTorch");
  }
  source->fail("neither a safetensors file nor a torch.save archive (" + std::to_string(source->size()) + " bytes)");
}

NamedTensors read_weights(const std::string& path, const std::string& entry) {
  if (detect_weight_file_format(path) == WeightFileFormat::kTorchSave) return read_torch_save(path, entry);
  if (!entry.empty()) {
    throw WeightFileError(path, "a safetensors file holds one state dict, so no entry ('" + entry + "') can be named");
  }
  return read_safetensors(path).tensors;
}

}  // namespace slideformer::io
