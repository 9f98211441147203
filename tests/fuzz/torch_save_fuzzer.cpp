// Fuzz target: the torch.save reader and the archive check (include/slideformer/io/torch_save.h).
// The first byte picks the mode: odd, the rest is the file as it is; even, the next four bytes
// give the sizes (x 2 bytes) of the storage records data/0 .. data/3 and the rest is data.pkl,
// put in an archive by torch's writer (valid ZIP structure and CRCs, so the input reaches the
// unpickler). Contract: success or a WeightFileError naming the input, for both; on success the
// tensors' storages hold no more bytes than the file, and, for the archives made here, the archive
// check (which reads less) passes the file too.
#include <caffe2/serialize/inline_container.h>

#include <ATen/ATen.h>

#include <cstdlib>
#include <unordered_set>

#include "fuzz_input.h"
#include "slideformer/io/torch_save.h"

namespace {

using namespace slideformer::io;

std::string archive_around(slideformer::fuzz::FuzzInput& in) {
  size_t sizes[4];
  for (size_t& size : sizes) size = 2 * static_cast<size_t>(in.byte());
  const std::string pickle = in.rest();
  std::string out;
  caffe2::serialize::PyTorchStreamWriter writer([&](const void* data, size_t count) {
    out.append(static_cast<const char*>(data), count);
    return count;
  });
  writer.writeRecord("data.pkl", pickle.data(), pickle.size());
  for (int i = 0; i < 4; ++i) {
    const std::string bytes(sizes[i], static_cast<char>(i + 1));
    writer.writeRecord("data/" + std::to_string(i), bytes.data(), bytes.size());
  }
  writer.writeEndOfFile();
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  slideformer::fuzz::FuzzInput in(data, size);
  const bool raw = in.byte() & 1;
  const std::string file = raw ? in.rest() : archive_around(in);
  const std::string path = slideformer::fuzz::scratch_file("fuzz.pt", file);
  bool read = false;
  try {
    const NamedTensors tensors = read_torch_save(file.data(), file.size(), path);
    std::unordered_set<const void*> storages;
    size_t bytes = 0;
    for (const auto& item : tensors) {
      if (storages.insert(item.second.storage().data()).second) bytes += item.second.storage().nbytes();
    }
    if (bytes > file.size()) std::abort();
    read = true;
  } catch (const WeightFileError& error) {
    if (error.file() != path) std::abort();
  }
  try {
    check_torch_archive(path);
  } catch (const WeightFileError& error) {
    // In an archive of the writer the only pickle is data.pkl, which the reader read whole.
    if ((read && !raw) || error.file() != path) std::abort();
  }
  return 0;
}
