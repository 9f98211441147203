#pragma once
// torch.save files (the ZIP format of PyTorch >= 1.6) read without Python: the state dicts they
// hold, as a dict or collections.OrderedDict at the top level or one level down ("model",
// "state_dict", "state_dict_ema", "model_ema", ...). Tensors of the float, half, bfloat16,
// double, integer and bool storages come back as torch.load gives them: a tensor per name,
// sharing storage where the file shares it (views keep their offsets and strides). Whatever else
// the file pickles (optimizer and scheduler state, a yacs CfgNode, numpy scalars) is skipped
// without its classes, and only the chosen state dict's storages are read.
#include <cstddef>
#include <string>
#include <vector>

#include "slideformer/io/weight_file.h"

namespace slideformer::io {

// The state dicts of the file: "" for the top level when it is one, else the keys of the
// top-level dict whose values are state dicts, in the file's order.
std::vector<std::string> torch_save_state_dict_entries(const std::string& path);

// The state dict `entry` of the file. Empty `entry`: the top level when it is a state dict, else
// the first of "state_dict", "model", "model_state", "module" the file has, else its only one;
// WeightFileError listing the entries when the choice is ambiguous or there is none.
NamedTensors read_torch_save(const std::string& path, const std::string& entry = "");
// The same from bytes in memory, named `name` in messages.
NamedTensors read_torch_save(const void* data, size_t size, const std::string& name, const std::string& entry = "");

// Checks the ZIP structure of any torch archive (torch.save, torch.jit.save, torch::save) and
// every length its pickles declare against the bytes there, before torch's own reader, which
// reserves a declared length before reading it, sees the file. WeightFileError if damaged.
void check_torch_archive(const std::string& path);

}  // namespace slideformer::io
