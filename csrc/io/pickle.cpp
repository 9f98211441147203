#include "io/pickle.h"

#include <c10/util/irange.h>

#include <charconv>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "io/byte_source.h"

namespace slideformer::io::detail {

namespace {

// The argument that follows each opcode (pickletools' table).
enum class Argument : uint8_t { kNone, kU1, kU2, kI4, kU4, kU8, kF8, kBytes1, kBytes4, kSignedBytes4, kBytes8, kLine, kTwoLines, kInvalid };

Argument argument_of(uint8_t opcode) {
  switch (opcode) {
    case '(': case '.': case '0': case '1': case '2': case 'N': case 'Q': case 'R': case 'a': case 'b':
    case 'd': case '}': case 'e': case 'l': case ']': case 'o': case 's': case 't': case ')': case 'u':
    case 0x81: case 0x85: case 0x86: case 0x87: case 0x88: case 0x89: case 0x8f: case 0x90: case 0x91:
    case 0x92: case 0x93: case 0x94: case 0x97: case 0x98:
      return Argument::kNone;
    case 0x80: case 'K': case 'q': case 'h': case 0x82: return Argument::kU1;
    case 'M': case 0x83: return Argument::kU2;
    case 'J': case 0x84: return Argument::kI4;
    case 'j': case 'r': return Argument::kU4;
    case 0x95: return Argument::kU8;
    case 'G': return Argument::kF8;
    case 'U': case 'C': case 0x8c: case 0x8a: return Argument::kBytes1;
    case 'X': case 'B': return Argument::kBytes4;
    case 'T': case 0x8b: return Argument::kSignedBytes4;
    case 0x8d: case 0x8e: case 0x96: return Argument::kBytes8;
    case 'F': case 'I': case 'L': case 'P': case 'S': case 'V': case 'g': case 'p': return Argument::kLine;
    case 'c': case 'i': return Argument::kTwoLines;
    default: return Argument::kInvalid;
  }
}

std::string hex(uint8_t byte) {
  static const char digits[] = "0123456789abcdef";
  return std::string("0x") + digits[byte >> 4] + digits[byte & 15];
}

// A decimal integer of a text opcode, or false.
bool parse_int(std::string_view text, int64_t& value) {
  if (!text.empty() && text.back() == 'L') text.remove_suffix(1);  // protocol 0 longs
  const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
  return result.ec == std::errc() && result.ptr == text.data() + text.size();
}

// Storage classes of torch.save (torch.<Name>Storage) and their element types.
bool storage_dtype(const std::string& global, c10::ScalarType& dtype) {
  static const std::pair<const char*, c10::ScalarType> kStorages[] = {
      {"torch.FloatStorage", c10::kFloat},   {"torch.DoubleStorage", c10::kDouble},
      {"torch.HalfStorage", c10::kHalf},     {"torch.BFloat16Storage", c10::kBFloat16},
      {"torch.LongStorage", c10::kLong},     {"torch.IntStorage", c10::kInt},
      {"torch.ShortStorage", c10::kShort},   {"torch.CharStorage", c10::kChar},
      {"torch.ByteStorage", c10::kByte},     {"torch.BoolStorage", c10::kBool},
      {"torch.UntypedStorage", c10::kByte},  {"torch.ComplexFloatStorage", c10::kComplexFloat},
      {"torch.ComplexDoubleStorage", c10::kComplexDouble}};
  for (const auto& [name, type] : kStorages) {
    if (global == name) {
      dtype = type;
      return true;
    }
  }
  return false;
}

}  // namespace

PickleReader::PickleReader(std::string_view data, std::string file, std::string where)
    : data_(data), file_(std::move(file)), where_(std::move(where)) {}

void PickleReader::fail(uint64_t position, const std::string& problem) const {
  throw WeightFileError(file_, where_ + " byte " + std::to_string(position) + ": " + problem);
}

std::string_view PickleReader::take(uint64_t count, uint64_t position, const char* what) {
  const uint64_t left = data_.size() - cursor_;
  if (count > left) {
    fail(position, std::string(what) + " declares " + std::to_string(count) + " bytes, but only " +
                       std::to_string(left) + " are left in the pickle");
  }
  const std::string_view bytes = data_.substr(cursor_, count);
  cursor_ += count;
  return bytes;
}

std::string_view PickleReader::line(uint64_t position) {
  const size_t end = data_.find('\n', cursor_);
  if (end == std::string_view::npos) fail(position, "truncated: a text argument has no end of line");
  const std::string_view text = data_.substr(cursor_, end - cursor_);
  cursor_ = end + 1;
  return text;
}

PickleInstruction PickleReader::next() {
  PickleInstruction instruction;
  instruction.position = cursor_;
  if (at_end()) fail(cursor_, "truncated: the pickle ends without its STOP opcode");
  instruction.opcode = static_cast<uint8_t>(data_[cursor_++]);
  auto fixed = [&](int count) {
    return little_endian(reinterpret_cast<const uint8_t*>(take(count, instruction.position, "an argument").data()), count);
  };
  switch (argument_of(instruction.opcode)) {
    case Argument::kNone: break;
    case Argument::kU1: instruction.integer = static_cast<int64_t>(fixed(1)); break;
    case Argument::kU2: instruction.integer = static_cast<int64_t>(fixed(2)); break;
    case Argument::kI4: instruction.integer = static_cast<int32_t>(fixed(4)); break;
    case Argument::kU4: instruction.integer = static_cast<int64_t>(fixed(4)); break;
    case Argument::kU8: {  // a frame: the opcodes that follow, which must be there
      const uint64_t length = fixed(8);
      take(length, instruction.position, "a frame");
      cursor_ -= length;
      break;
    }
    case Argument::kF8: {
      const std::string_view raw = take(8, instruction.position, "a float");
      uint64_t bits = 0;
      for (char c : raw) bits = (bits << 8) | static_cast<uint8_t>(c);  // big-endian
      std::memcpy(&instruction.real, &bits, 8);
      break;
    }
    case Argument::kBytes1: instruction.bytes = take(fixed(1), instruction.position, "a string"); break;
    case Argument::kBytes4: instruction.bytes = take(fixed(4), instruction.position, "a string"); break;
    case Argument::kSignedBytes4: {
      const int64_t length = static_cast<int32_t>(fixed(4));
      if (length < 0) fail(instruction.position, "negative length " + std::to_string(length));
      instruction.bytes = take(static_cast<uint64_t>(length), instruction.position, "a string");
      break;
    }
    case Argument::kBytes8: instruction.bytes = take(fixed(8), instruction.position, "a string"); break;
    case Argument::kLine: instruction.bytes = line(instruction.position); break;
    case Argument::kTwoLines:
      instruction.bytes = line(instruction.position);
      instruction.second = line(instruction.position);
      break;
    case Argument::kInvalid: fail(instruction.position, "unknown opcode " + hex(instruction.opcode));
  }
  return instruction;
}

void check_pickle(std::string_view data, const std::string& file, const std::string& where) {
  PickleReader reader(data, file, where);
  while (reader.next().opcode != '.') {
  }
}


namespace {
constexpr Unpickler::Ref kNoneRef = 0, kFalseRef = 1, kTrueRef = 2;
constexpr size_t kMaxDims = 64;
}  // namespace

Unpickler::Unpickler(std::string_view data, std::string file, std::string where)
    : reader_(data, std::move(file), std::move(where)) {
  add(PickleKind::kNone);
  add(PickleKind::kBool, 0);
  add(PickleKind::kBool, 1);
}

Unpickler::Ref Unpickler::load() {
  while (!stopped_) execute(reader_.next());
  return result_;
}

Unpickler::Ref Unpickler::add(PickleKind kind, int64_t value, uint32_t index) {
  if (nodes_.size() >= std::numeric_limits<Ref>::max()) reader_.fail(0, "too many values");
  nodes_.push_back({kind, index, value});
  return static_cast<Ref>(nodes_.size() - 1);
}

Unpickler::Ref Unpickler::add_string(PickleKind kind, std::string_view text) {
  strings_.emplace_back(text);
  return add(kind, 0, static_cast<uint32_t>(strings_.size() - 1));
}

Unpickler::Ref Unpickler::add_list(PickleKind kind, std::vector<Ref> items) {
  lists_.push_back(std::move(items));
  return add(kind, 0, static_cast<uint32_t>(lists_.size() - 1));
}

// A stub for an instance of any class: its type and arguments (and the state BUILD gives it).
Unpickler::Ref Unpickler::add_object(Ref type, Ref arguments) {
  return add_list(PickleKind::kObject, {type, arguments, kNoneRef});
}

Unpickler::Ref Unpickler::pop(const PickleInstruction& instruction) {
  const size_t floor = marks_.empty() ? 0 : marks_.back();
  if (stack_.size() <= floor) reader_.fail(instruction.position, "stack underflow (" + hex(instruction.opcode) + ")");
  const Ref ref = stack_.back();
  stack_.pop_back();
  return ref;
}

Unpickler::Ref Unpickler::top(const PickleInstruction& instruction) const {
  if (stack_.empty()) reader_.fail(instruction.position, "stack underflow (" + hex(instruction.opcode) + ")");
  return stack_.back();
}

std::vector<Unpickler::Ref> Unpickler::pop_to_mark(const PickleInstruction& instruction) {
  if (marks_.empty()) reader_.fail(instruction.position, "no MARK before " + hex(instruction.opcode));
  std::vector<Ref> items(stack_.begin() + static_cast<std::ptrdiff_t>(marks_.back()), stack_.end());
  stack_.resize(marks_.back());
  marks_.pop_back();
  return items;
}

void Unpickler::execute(const PickleInstruction& in) {
  auto push = [&](Ref ref) { stack_.push_back(ref); };
  auto integer = [&](std::string_view text) {
    int64_t value = 0;
    if (!parse_int(text, value)) reader_.fail(in.position, "invalid integer '" + std::string(text.substr(0, 40)) + "'");
    return value;
  };
  switch (in.opcode) {
    case 0x80:
      if (in.integer > 5) reader_.fail(in.position, "pickle protocol " + std::to_string(in.integer) + " is newer than 5");
      break;
    case 0x95: break;  // FRAME
    case '.': result_ = pop(in), stopped_ = true; break;
    case '(': marks_.push_back(stack_.size()); break;
    case '0':
      if (!marks_.empty() && stack_.size() == marks_.back()) {
        marks_.pop_back();
      } else {
        pop(in);
      }
      break;
    case '1': pop_to_mark(in); break;
    case '2': push(top(in)); break;
    case 'N': push(kNoneRef); break;
    case 0x88: push(kTrueRef); break;
    case 0x89: push(kFalseRef); break;
    case 'I':
      push(in.bytes == "01" ? kTrueRef : in.bytes == "00" ? kFalseRef : add(PickleKind::kInt, integer(in.bytes)));
      break;
    case 'L': push(add(PickleKind::kInt, integer(in.bytes))); break;
    case 'J': case 'K': case 'M': push(add(PickleKind::kInt, in.integer)); break;
    case 0x8a: case 0x8b: {  // little-endian two's complement
      if (in.bytes.size() > 8) {
        push(add_object(add_string(PickleKind::kGlobal, "builtins.int (over 64 bits)"), kNoneRef));
        break;
      }
      uint64_t bits = little_endian(reinterpret_cast<const uint8_t*>(in.bytes.data()), static_cast<int>(in.bytes.size()));
      if (!in.bytes.empty() && in.bytes.size() < 8 && (in.bytes.back() & 0x80)) bits |= ~uint64_t{0} << (8 * in.bytes.size());
      push(add(PickleKind::kInt, static_cast<int64_t>(bits)));
      break;
    }
    case 'F': case 'G': {
      double value = in.real;
      if (in.opcode == 'F') value = std::strtod(std::string(in.bytes).c_str(), nullptr);
      int64_t bits = 0;
      std::memcpy(&bits, &value, sizeof bits);
      push(add(PickleKind::kFloat, bits));
      break;
    }
    case 'X': case 0x8c: case 0x8d: case 'V': case 'T': case 'U': case 'S':
      push(add_string(PickleKind::kString, in.bytes));
      break;
    case 'B': case 'C': case 0x8e: case 0x96: push(add_string(PickleKind::kBytes, in.bytes)); break;
    case 'p': memo_[static_cast<uint64_t>(integer(in.bytes))] = top(in); break;
    case 'q': case 'r': memo_[static_cast<uint64_t>(in.integer)] = top(in); break;
    case 0x94: memo_[memo_.size()] = top(in); break;
    case 'g': case 'h': case 'j': {
      const int64_t key = in.opcode == 'g' ? integer(in.bytes) : in.integer;
      const auto found = memo_.find(static_cast<uint64_t>(key));
      if (found == memo_.end()) reader_.fail(in.position, "memo entry " + std::to_string(key) + " was never stored");
      push(found->second);
      break;
    }
    default: execute_object(in);
  }
}

// Opcodes that make or fill containers and objects.
void Unpickler::execute_object(const PickleInstruction& in) {
  auto push = [&](Ref ref) { stack_.push_back(ref); };
  switch (in.opcode) {
    case '}': push(add_list(PickleKind::kDict, {})); break;
    case ']': push(add_list(PickleKind::kList, {})); break;
    case ')': push(add_list(PickleKind::kTuple, {})); break;
    case 0x8f: push(add_list(PickleKind::kSet, {})); break;
    case 't': push(add_list(PickleKind::kTuple, pop_to_mark(in))); break;
    case 'l': push(add_list(PickleKind::kList, pop_to_mark(in))); break;
    case 0x91: push(add_list(PickleKind::kSet, pop_to_mark(in))); break;
    case 'd': {
      const Ref dict = add_list(PickleKind::kDict, {});
      add_items(dict, pop_to_mark(in), in);
      push(dict);
      break;
    }
    case 0x85: case 0x86: case 0x87: {
      std::vector<Ref> items(in.opcode - 0x84);
      for (size_t i = items.size(); i-- > 0;) items[i] = pop(in);
      push(add_list(PickleKind::kTuple, std::move(items)));
      break;
    }
    case 'a': { const Ref value = pop(in); add_items(top(in), {value}, in); break; }
    case 's': { const Ref value = pop(in), key = pop(in); add_items(top(in), {key, value}, in); break; }
    case 'e': case 'u': case 0x90: { std::vector<Ref> items = pop_to_mark(in); add_items(top(in), std::move(items), in); break; }
    case 'c': push(add_string(PickleKind::kGlobal, std::string(in.bytes) + "." + std::string(in.second))); break;
    case 0x93: {
      const Ref name = pop(in), module = pop(in);
      if (kind(name) != PickleKind::kString || kind(module) != PickleKind::kString) reader_.fail(in.position, "STACK_GLOBAL takes two strings");
      push(add_string(PickleKind::kGlobal, text(module) + "." + text(name)));
      break;
    }
    case 'Q': { const Ref id = pop(in); push(persistent_load(id, in)); break; }
    case 'R': { const Ref arguments = pop(in), callable = pop(in); push(reduce(callable, arguments, in)); break; }
    case 0x81: { const Ref arguments = pop(in), type = pop(in); push(add_object(type, arguments)); break; }
    case 0x92: { pop(in); const Ref arguments = pop(in), type = pop(in); push(add_object(type, arguments)); break; }
    case 'b': {
      const Ref state = pop(in), target = top(in);
      if (kind(target) == PickleKind::kObject) lists_[nodes_[target].index][2] = state;
      break;  // a dict's attributes (OrderedDict._metadata) and a tensor's state are not kept
    }
    case 'i': {
      const Ref type = add_string(PickleKind::kGlobal, std::string(in.bytes) + "." + std::string(in.second));
      push(add_object(type, add_list(PickleKind::kTuple, pop_to_mark(in))));
      break;
    }
    case 'o': {
      std::vector<Ref> items = pop_to_mark(in);
      if (items.empty()) reader_.fail(in.position, "OBJ without a class");
      const Ref type = items.front();
      items.erase(items.begin());
      push(add_object(type, add_list(PickleKind::kTuple, std::move(items))));
      break;
    }
    case 'P': reader_.fail(in.position, "text persistent ids are not torch.save's");
    case 0x82: case 0x83: case 0x84: reader_.fail(in.position, "copyreg extension codes are not supported");
    case 0x97: case 0x98: reader_.fail(in.position, "out-of-band buffers are not supported");
    default: reader_.fail(in.position, "unexpected opcode " + hex(in.opcode));
  }
}

// APPEND(S) to a list, SETITEM(S) to a dict, ADDITEMS to a set; a stub (a subclass of dict or
// list, such as yacs' CfgNode) takes them without keeping them.
void Unpickler::add_items(Ref target, std::vector<Ref> values, const PickleInstruction& in) {
  const bool to_dict = in.opcode == 's' || in.opcode == 'u' || in.opcode == 'd';
  const PickleKind expected = to_dict ? PickleKind::kDict : in.opcode == 0x90 ? PickleKind::kSet : PickleKind::kList;
  if (kind(target) == PickleKind::kObject) return;
  if (kind(target) != expected) reader_.fail(in.position, hex(in.opcode) + " adds items to " + describe(target));
  if (to_dict && values.size() % 2 != 0) reader_.fail(in.position, "a dict's items come in key-value pairs");
  std::vector<Ref>& items = lists_[nodes_[target].index];
  items.insert(items.end(), values.begin(), values.end());
}

// Calls of the functions state dicts are made of; anything else becomes a stub.
Unpickler::Ref Unpickler::reduce(Ref callable, Ref arguments, const PickleInstruction& in) {
  if (kind(callable) != PickleKind::kGlobal || kind(arguments) != PickleKind::kTuple) {
    return add_object(callable, arguments);
  }
  const std::string name = text(callable);
  const std::vector<Ref> args = items(arguments);  // a copy: adding values may move the original
  if (name == "collections.OrderedDict" && args.size() <= 1) {
    const Ref dict = add_list(PickleKind::kDict, {});
    if (args.empty()) return dict;
    if (kind(args[0]) != PickleKind::kList && kind(args[0]) != PickleKind::kTuple) return add_object(callable, arguments);
    std::vector<Ref> pairs;
    for (Ref pair : items(args[0])) {
      if ((kind(pair) != PickleKind::kTuple && kind(pair) != PickleKind::kList) || items(pair).size() != 2) {
        reader_.fail(in.position, "OrderedDict items must be (key, value) pairs, got " + describe(pair));
      }
      pairs.insert(pairs.end(), items(pair).begin(), items(pair).end());
    }
    lists_[nodes_[dict].index] = std::move(pairs);
    return dict;
  }
  if (name == "torch._utils._rebuild_tensor_v2" || name == "torch._utils._rebuild_tensor") {
    return rebuild_tensor(arguments, in);
  }
  if ((name == "torch._utils._rebuild_parameter" || name == "torch._utils._rebuild_parameter_with_state") &&
      !args.empty() && kind(args[0]) == PickleKind::kTensor) {
    return args[0];  // a Parameter is its data here
  }
  // Tensor subclasses: (function, class, its arguments, state); the function once more.
  if (name == "torch._tensor._rebuild_from_type_v2" && args.size() >= 3 && kind(args[0]) == PickleKind::kGlobal &&
      text(args[0]) != name) {
    return reduce(args[0], args[2], in);
  }
  return add_object(callable, arguments);
}

int64_t Unpickler::int_item(Ref tuple, size_t index, const char* what, const PickleInstruction& in) const {
  const Ref item = items(tuple)[index];
  if (kind(item) != PickleKind::kInt) reader_.fail(in.position, std::string(what) + " must be an int, got " + describe(item));
  return integer(item);
}

// torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, hooks[,
// metadata]): a view of the storage, which must hold every element it addresses.
Unpickler::Ref Unpickler::rebuild_tensor(Ref arguments, const PickleInstruction& in) {
  const std::vector<Ref> args = items(arguments);
  if (args.size() < 4 || kind(args[0]) != PickleKind::kStorage) {
    reader_.fail(in.position, "a tensor must be rebuilt from (storage, offset, size, stride, ...)");
  }
  PickledTensor tensor{nodes_[args[0]].index, int_item(arguments, 1, "a tensor's storage offset", in), {}, {}};
  for (const auto& [ref, out, what] : {std::tuple{args[2], &tensor.sizes, "size"}, std::tuple{args[3], &tensor.strides, "stride"}}) {
    if (kind(ref) != PickleKind::kTuple || items(ref).size() > kMaxDims) {
      reader_.fail(in.position, std::string("a tensor's ") + what + " must be a tuple of at most 64 ints, got " + describe(ref));
    }
    for (const size_t i : c10::irange(items(ref).size())) {
      out->push_back(int_item(ref, i, "a tensor's size and stride", in));
      if (out->back() < 0) reader_.fail(in.position, std::string("negative tensor ") + what + " " + std::to_string(out->back()));
    }
  }
  if (tensor.sizes.size() != tensor.strides.size()) reader_.fail(in.position, "a tensor's size and stride differ in length");
  // The last element it addresses: offset + sum (size - 1) * stride, without overflow.
  const PickledStorage& storage = storages_[tensor.storage];
  int64_t last = tensor.offset, numel = 1;
  bool overflow = tensor.offset < 0;
  for (const size_t d : c10::irange(tensor.sizes.size())) {
    int64_t step = 0;
    overflow |= __builtin_mul_overflow(tensor.sizes[d], numel, &numel);
    if (tensor.sizes[d] > 0) overflow |= __builtin_mul_overflow(tensor.sizes[d] - 1, tensor.strides[d], &step) || __builtin_add_overflow(last, step, &last);
  }
  if (overflow || (numel > 0 ? last >= storage.numel : tensor.offset > storage.numel)) {
    reader_.fail(in.position, "a tensor of size " + c10::str(c10::IntArrayRef(tensor.sizes)) + ", stride " +
                                  c10::str(c10::IntArrayRef(tensor.strides)) + " at offset " + std::to_string(tensor.offset) +
                                  " reaches beyond its storage '" + storage.key + "' of " + std::to_string(storage.numel) + " elements");
  }
  tensors_.push_back(std::move(tensor));
  return add(PickleKind::kTensor, 0, static_cast<uint32_t>(tensors_.size() - 1));
}

// torch.save's persistent ids: ("storage", torch.<Type>Storage, key, location, numel).
Unpickler::Ref Unpickler::persistent_load(Ref id, const PickleInstruction& in) {
  const bool shaped = kind(id) == PickleKind::kTuple && items(id).size() == 5;
  if (!shaped || kind(items(id)[0]) != PickleKind::kString || text(items(id)[0]) != "storage" ||
      kind(items(id)[1]) != PickleKind::kGlobal || kind(items(id)[2]) != PickleKind::kString) {
    reader_.fail(in.position, "unsupported persistent id " + describe(id) + " (torch.save's are ('storage', type, key, location, size))");
  }
  PickledStorage storage{text(items(id)[2]), c10::kFloat, int_item(id, 4, "a storage's size", in)};
  if (!storage_dtype(text(items(id)[1]), storage.dtype)) {
    reader_.fail(in.position, "storage type " + text(items(id)[1]) + " is not supported");
  }
  int64_t bytes = 0;
  if (storage.numel < 0 || __builtin_mul_overflow(storage.numel, static_cast<int64_t>(c10::elementSize(storage.dtype)), &bytes)) {
    reader_.fail(in.position, "storage '" + storage.key + "' declares " + std::to_string(storage.numel) + " elements");
  }
  const auto [found, added] = storage_by_key_.emplace(storage.key, static_cast<uint32_t>(storages_.size()));
  if (added) {
    storages_.push_back(storage);
  } else if (storages_[found->second].dtype != storage.dtype || storages_[found->second].numel != storage.numel) {
    reader_.fail(in.position, "storage '" + storage.key + "' is declared twice with different types or sizes");
  }
  return add(PickleKind::kStorage, 0, found->second);
}

std::string Unpickler::describe(Ref ref) const {
  switch (kind(ref)) {
    case PickleKind::kNone: return "None";
    case PickleKind::kBool: return "a bool";
    case PickleKind::kInt: return "an int";
    case PickleKind::kFloat: return "a float";
    case PickleKind::kString: return "a string";
    case PickleKind::kBytes: return "bytes";
    case PickleKind::kTuple: return "a tuple";
    case PickleKind::kList: return "a list";
    case PickleKind::kDict: return "a dict";
    case PickleKind::kSet: return "a set";
    case PickleKind::kGlobal: return "the global " + text(ref);
    case PickleKind::kStorage: return "a storage";
    case PickleKind::kTensor: return "a tensor";
    case PickleKind::kObject: {
      const Ref type = items(ref)[0];
      return kind(type) == PickleKind::kGlobal ? "a " + text(type) + " object" : "an object";
    }
  }
  return "a value";
}

}  // namespace slideformer::io::detail
