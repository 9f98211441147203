// torch.save archives: <folder>/data.pkl pickles the saved object, each storage is the record
// <folder>/data/<key>; <folder>/byteorder says "little" (absent in old files, which are too).
#include "slideformer/io/torch_save.h"

#include <ATen/ops/empty.h>

#include <memory>
#include <unordered_map>

#include "io/byte_source.h"
#include "io/pickle.h"
#include "io/zip_archive.h"

namespace slideformer::io {

namespace {

using detail::ByteSource;
using detail::PickleKind;
using detail::Unpickler;
using detail::ZipArchive;
using detail::ZipRecord;

// The entries a checkpoint's state dict goes by when the caller names none, in this order.
const char* const kMainEntries[] = {"state_dict", "model", "model_state", "module"};

// The folder every record of a torch.save archive lives in ("name/").
std::string record_folder(const ZipArchive& archive, const ByteSource& source) {
  std::vector<std::string> folders;
  for (const ZipRecord& record : archive.records()) {
    const size_t slash = record.name.find('/');
    if (slash != std::string::npos && record.name.compare(slash, std::string::npos, "/data.pkl") == 0) {
      folders.push_back(record.name.substr(0, slash + 1));
    }
  }
  if (folders.empty()) source.fail("a ZIP archive without a data.pkl record: not a torch.save file");
  if (folders.size() > 1) source.fail("several data.pkl records (" + folders[0] + ", " + folders[1] + ")");
  return folders[0];
}

class TorchSaveReader {
 public:
  explicit TorchSaveReader(std::unique_ptr<ByteSource> source)
      : source_(std::move(source)),
        archive_(*source_),
        folder_(record_folder(archive_, *source_)),
        pickle_(archive_.read(*archive_.find(folder_ + "data.pkl"))),
        unpickler_(pickle_, source_->name(), folder_ + "data.pkl") {
    if (const ZipRecord* order = archive_.find(folder_ + "byteorder")) {
      const std::string value = archive_.read(*order);
      if (value != "little") source_->fail("byte order '" + value.substr(0, 16) + "' is not supported (little-endian only)");
    }
    root_ = unpickler_.load();
  }

  std::vector<std::pair<std::string, Unpickler::Ref>> state_dicts() const {
    if (is_state_dict(root_)) return {{"", root_}};
    std::vector<std::pair<std::string, Unpickler::Ref>> found;
    if (unpickler_.kind(root_) != PickleKind::kDict) return found;
    const auto& items = unpickler_.items(root_);
    for (size_t i = 0; i + 1 < items.size(); i += 2) {
      if (unpickler_.kind(items[i]) == PickleKind::kString && is_state_dict(items[i + 1])) {
        found.emplace_back(unpickler_.text(items[i]), items[i + 1]);
      }
    }
    return found;
  }

  NamedTensors read(const std::string& entry) { return materialize(choose(entry)); }

 private:
  bool is_state_dict(Unpickler::Ref ref) const {
    if (unpickler_.kind(ref) != PickleKind::kDict || unpickler_.items(ref).empty()) return false;
    const auto& items = unpickler_.items(ref);
    for (size_t i = 0; i < items.size(); i += 2) {
      if (unpickler_.kind(items[i]) != PickleKind::kString || unpickler_.kind(items[i + 1]) != PickleKind::kTensor) return false;
    }
    return true;
  }

  std::string entry_list() const {
    std::string list;
    for (const auto& [name, ref] : state_dicts()) list += (list.empty() ? "'" : ", '") + name + "'";
    return list;
  }

  Unpickler::Ref choose(const std::string& entry) {
    const auto dicts = state_dicts();
    auto find = [&](const std::string& name) {
      for (const auto& [key, ref] : dicts) {
        if (key == name) return ref;
      }
      return Unpickler::Ref{0};
    };
    if (!entry.empty()) {
      if (const Unpickler::Ref ref = find(entry)) return ref;
      source_->fail("has no state dict '" + entry + "'" + (dicts.empty() ? std::string(" (it has none)") : " (it has " + entry_list() + ")"));
    }
    if (dicts.size() == 1) return dicts[0].second;
    for (const char* name : kMainEntries) {
      if (const Unpickler::Ref ref = find(name)) return ref;
    }
    if (dicts.empty()) source_->fail("holds no state dict (a dict of tensors, at the top level or under one key): " + contents());
    source_->fail("holds several state dicts (" + entry_list() + "): name the one to read");
  }

  // What the file holds instead of a state dict, for messages.
  std::string contents() const {
    std::string text = "it holds " + unpickler_.describe(root_);
    if (unpickler_.kind(root_) == PickleKind::kDict) {
      const auto& items = unpickler_.items(root_);
      std::string keys;
      for (size_t i = 0; i < items.size() && i < 16; i += 2) {
        keys += (keys.empty() ? "" : ", ") + (unpickler_.kind(items[i]) == PickleKind::kString ? "'" + unpickler_.text(items[i]) + "'" : unpickler_.describe(items[i]));
      }
      text += keys.empty() ? " (empty)" : " with keys " + keys + (items.size() > 16 ? ", ..." : "");
    }
    if (archive_.find(folder_ + "constants.pkl")) {
      text += "; it is a TorchScript archive (torch.jit.save, or a slideformer checkpoint)";
    }
    return text;
  }

  // Every storage record is checked before any is read; each is read once, however many
  // tensors view it.
  NamedTensors materialize(Unpickler::Ref dict) {
    const auto& items = unpickler_.items(dict);
    std::unordered_map<std::string, size_t> position;
    std::vector<std::pair<std::string, Unpickler::Ref>> tensors;
    for (size_t i = 0; i < items.size(); i += 2) {
      const auto [at, added] = position.emplace(unpickler_.text(items[i]), tensors.size());
      if (added) tensors.emplace_back(unpickler_.text(items[i]), items[i + 1]);
      else tensors[at->second].second = items[i + 1];  // a repeated key: the last value, as in Python
    }
    std::unordered_map<uint32_t, const ZipRecord*> records;
    for (const auto& [name, ref] : tensors) {
      const uint32_t index = unpickler_.tensor(ref).storage;
      if (!records.count(index)) records[index] = storage_record(name, unpickler_.storages()[index]);
    }
    std::unordered_map<uint32_t, c10::Storage> loaded;
    NamedTensors out;
    for (const auto& [name, ref] : tensors) {
      const detail::PickledTensor& view = unpickler_.tensor(ref);
      const detail::PickledStorage& storage = unpickler_.storages()[view.storage];
      auto found = loaded.find(view.storage);
      if (found == loaded.end()) {
        at::Tensor flat = at::empty({storage.numel}, at::TensorOptions().dtype(storage.dtype));
        if (storage.numel > 0) archive_.read(*records[view.storage], flat.data_ptr());
        found = loaded.emplace(view.storage, flat.storage()).first;
      }
      at::Tensor tensor = at::empty({0}, at::TensorOptions().dtype(storage.dtype));
      tensor.set_(found->second, view.offset, view.sizes, view.strides);
      out.emplace_back(name, std::move(tensor));
    }
    return out;
  }

  const ZipRecord* storage_record(const std::string& tensor, const detail::PickledStorage& storage) const {
    const std::string name = folder_ + "data/" + storage.key;
    const ZipRecord* record = archive_.find(name);
    if (!record) source_->fail("record '" + name + "' of tensor '" + tensor + "' is missing");
    const uint64_t bytes = static_cast<uint64_t>(storage.numel) * c10::elementSize(storage.dtype);
    if (record->size != bytes) {
      source_->fail("record '" + name + "' of tensor '" + tensor + "' holds " + std::to_string(record->size) +
                    " bytes, its " + std::to_string(storage.numel) + " " + c10::toString(storage.dtype) +
                    " elements need " + std::to_string(bytes));
    }
    return record;
  }

  std::unique_ptr<ByteSource> source_;
  ZipArchive archive_;
  std::string folder_;
  std::string pickle_;
  Unpickler unpickler_;
  Unpickler::Ref root_ = 0;
};

}  // namespace

std::vector<std::string> torch_save_state_dict_entries(const std::string& path) {
  std::vector<std::string> names;
  for (const auto& [name, ref] : TorchSaveReader(detail::open_file(path)).state_dicts()) names.push_back(name);
  return names;
}

NamedTensors read_torch_save(const std::string& path, const std::string& entry) {
  return TorchSaveReader(detail::open_file(path)).read(entry);
}

NamedTensors read_torch_save(const void* data, size_t size, const std::string& name, const std::string& entry) {
  return TorchSaveReader(detail::memory_source(data, size, name)).read(entry);
}

void check_torch_archive(const std::string& path) {
  const auto source = detail::open_file(path);
  const ZipArchive archive(*source);
  for (const ZipRecord& record : archive.records()) {
    if (record.name.size() >= 3 && record.name.compare(record.name.size() - 3, 3, "pkl") == 0) {
      detail::check_pickle(archive.read(record), path, record.name);
    }
  }
}

}  // namespace slideformer::io
