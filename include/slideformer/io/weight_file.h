#pragma once
// Weight files in and out of the library, without Python: safetensors (read and written) and
// torch.save archives (read). The readers check every size a file declares against the file
// before they allocate or read, and refuse a damaged or foreign file with one WeightFileError
// "<file>: <what is wrong>". docs/pretrained.md describes the formats and their limits.
#include <ATen/core/Tensor.h>

#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace slideformer::io {

// Tensors by name, in the file's order (a state dict).
using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

// A file that cannot be read or written as asked: what() is "<file>: <problem>".
class WeightFileError : public std::runtime_error {
 public:
  WeightFileError(const std::string& file, const std::string& problem)
      : std::runtime_error(file + ": " + problem), file_(file), problem_(problem) {}
  const std::string& file() const { return file_; }
  const std::string& problem() const { return problem_; }

 private:
  std::string file_, problem_;
};

enum class WeightFileFormat { kSafetensors, kTorchSave };

// The format of `path` from its first bytes; WeightFileError if it is neither (naming what it
// looks like where it can: a legacy torch.save file, a TorchScript archive, ...).
WeightFileFormat detect_weight_file_format(const std::string& path);

// The state dict in `path`, safetensors or torch.save. `entry` picks a state dict nested in a
// torch.save checkpoint ("model", "state_dict_ema", ...); empty = the file's main one (see
// read_torch_save_state_dict). Safetensors files hold one, so `entry` must be empty for them.
NamedTensors read_weights(const std::string& path, const std::string& entry = "");

}  // namespace slideformer::io
