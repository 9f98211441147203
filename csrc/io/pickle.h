#pragma once
// Python pickles as torch.save writes them (protocol 2, any protocol up to 5 read), without
// Python. Two uses:
// - check_pickle walks a pickle's opcodes and checks every length it declares against the bytes
//   that are there: torch's own unpickler reserves a declared length before it reads, so this
//   check goes first wherever torch reads an archive of unknown origin;
// - Unpickler runs a pickle on a stack machine that knows what state dicts are made of (dicts,
//   collections.OrderedDict, torch._utils._rebuild_tensor_v2 over persistent-id storages) and
//   turns every other class into an inert stub: nothing is imported, called or executed, so a
//   checkpoint that also pickles an optimizer, a scheduler or a yacs CfgNode reads without them.
// Every failure is a WeightFileError "<file>: <record> byte N: <problem>".
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace slideformer::io::detail {

// One opcode and its argument, bounds-checked.
struct PickleInstruction {
  uint8_t opcode = 0;
  uint64_t position = 0;
  int64_t integer = 0;       // integer and memo-index arguments
  double real = 0;           // BINFLOAT
  std::string_view bytes;    // string, bytes, LONG1/LONG4 and text-line arguments
  std::string_view second;   // GLOBAL / INST: the name (bytes holds the module)
};

class PickleReader {
 public:
  // `where` names the pickle in messages ("<file>: <where> byte N: ...").
  PickleReader(std::string_view data, std::string file, std::string where);
  bool at_end() const { return cursor_ >= data_.size(); }
  PickleInstruction next();
  [[noreturn]] void fail(uint64_t position, const std::string& problem) const;

 private:
  std::string_view take(uint64_t count, uint64_t position, const char* what);
  std::string_view line(uint64_t position);

  std::string_view data_;
  uint64_t cursor_ = 0;
  std::string file_, where_;
};

// Every opcode decodes and every declared length fits in `data`, up to a STOP.
void check_pickle(std::string_view data, const std::string& file, const std::string& where);

// What the unpickler builds. Containers and stubs refer to their members by index (Ref).
enum class PickleKind : uint8_t {
  kNone, kBool, kInt, kFloat, kString, kBytes, kTuple, kList, kDict, kSet, kGlobal, kObject, kStorage, kTensor
};

struct PickledStorage {
  std::string key;  // its record: data/<key>
  c10::ScalarType dtype;
  int64_t numel;
};

struct PickledTensor {
  uint32_t storage;  // index into storages()
  int64_t offset;
  std::vector<int64_t> sizes, strides;
};

class Unpickler {
 public:
  using Ref = uint32_t;
  Unpickler(std::string_view data, std::string file, std::string where);
  // Runs the pickle to its STOP; the value it returns.
  Ref load();

  PickleKind kind(Ref ref) const { return nodes_[ref].kind; }
  int64_t integer(Ref ref) const { return nodes_[ref].value; }
  // kString, kBytes, kGlobal ("module.name").
  const std::string& text(Ref ref) const { return strings_[nodes_[ref].index]; }
  // kTuple, kList, kSet: the elements; kDict: key, value, key, value, ...
  const std::vector<Ref>& items(Ref ref) const { return lists_[nodes_[ref].index]; }
  const PickledTensor& tensor(Ref ref) const { return tensors_[nodes_[ref].index]; }
  const std::vector<PickledStorage>& storages() const { return storages_; }
  // "a list", "a yacs.config.CfgNode object", ... for messages.
  std::string describe(Ref ref) const;

 private:
  struct Node {
    PickleKind kind;
    uint32_t index;  // into strings_, lists_, tensors_; an object's class and state are in lists_
    int64_t value;
  };
  Ref add(PickleKind kind, int64_t value = 0, uint32_t index = 0);
  Ref add_string(PickleKind kind, std::string_view text);
  Ref add_list(PickleKind kind, std::vector<Ref> items);
  Ref add_object(Ref type, Ref arguments);
  void execute(const PickleInstruction& instruction);
  void execute_object(const PickleInstruction& instruction);
  Ref pop(const PickleInstruction& instruction);
  Ref top(const PickleInstruction& instruction) const;
  std::vector<Ref> pop_to_mark(const PickleInstruction& instruction);
  void add_items(Ref target, std::vector<Ref> values, const PickleInstruction& instruction);
  Ref reduce(Ref callable, Ref arguments, const PickleInstruction& instruction);
  Ref rebuild_tensor(Ref arguments, const PickleInstruction& instruction);
  Ref persistent_load(Ref id, const PickleInstruction& instruction);
  int64_t int_item(Ref tuple, size_t index, const char* what, const PickleInstruction& instruction) const;

  PickleReader reader_;
  std::vector<Node> nodes_;
  std::vector<std::string> strings_;
  std::vector<std::vector<Ref>> lists_;
  std::vector<PickledTensor> tensors_;
  std::vector<PickledStorage> storages_;
  std::unordered_map<std::string, uint32_t> storage_by_key_;
  std::vector<Ref> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, Ref> memo_;
  bool stopped_ = false;
  Ref result_ = 0;
};

}  // namespace slideformer::io::detail
