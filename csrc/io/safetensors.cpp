#include "slideformer/io/safetensors.h"

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <numeric>
#include <unordered_set>

#include "io/byte_source.h"

namespace slideformer::io {

namespace {

using detail::ByteSource;
using Json = nlohmann::ordered_json;

// The reference implementation's limit: a larger header is refused before it is read.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

const std::pair<const char*, c10::ScalarType> kDtypes[] = {
    {"F64", c10::kDouble},  {"F32", c10::kFloat},   {"F16", c10::kHalf},     {"BF16", c10::kBFloat16},
    {"I64", c10::kLong},    {"I32", c10::kInt},     {"I16", c10::kShort},    {"I8", c10::kChar},
    {"U64", c10::kUInt64},  {"U32", c10::kUInt32},  {"U16", c10::kUInt16},   {"U8", c10::kByte},
    {"BOOL", c10::kBool},   {"C64", c10::kComplexFloat},
    {"F8_E4M3", c10::kFloat8_e4m3fn}, {"F8_E4M3FNUZ", c10::kFloat8_e4m3fnuz},
    {"F8_E5M2", c10::kFloat8_e5m2},   {"F8_E5M2FNUZ", c10::kFloat8_e5m2fnuz}};

struct Entry {
  std::string name;
  c10::ScalarType dtype = c10::kFloat;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // within the data
};

struct Header {
  std::vector<Entry> entries;
  Metadata metadata;
  uint64_t data_start = 0, data_size = 0;
};

struct NestingError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The header's JSON, at most three levels deep (tensor -> field -> shape entry), names once each.
Json parse_json(const ByteSource& source, const std::string& text) {
  std::unordered_set<std::string> names;
  const Json::parser_callback_t check = [&](int depth, Json::parse_event_t event, Json& value) {
    if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) && depth >= 3) {
      throw NestingError("the header nests deeper than a safetensors header does");
    }
    if (event == Json::parse_event_t::key && depth == 1 && !names.insert(value.get<std::string>()).second) {
      throw NestingError("the header names '" + value.get<std::string>() + "' twice");
    }
    return true;
  };
  try {
    return Json::parse(text, check);
  } catch (const NestingError& error) {
    source.fail(error.what());
  } catch (const Json::exception& error) {
    source.fail(std::string("the header is not valid JSON (") + error.what() + ")");
  }
}

uint64_t unsigned_field(const ByteSource& source, const Json& value, const std::string& what) {
  if (!value.is_number_unsigned() || value.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) {
    source.fail(what + " must be a non-negative integer, got " + value.dump().substr(0, 40));
  }
  return value.get<uint64_t>();
}

Entry parse_entry(const ByteSource& source, const std::string& name, const Json& value) {
  const std::string what = "tensor '" + name + "'";
  if (!value.is_object() || !value.contains("dtype") || !value.contains("shape") || !value.contains("data_offsets")) {
    source.fail(what + ": a tensor's header entry must have dtype, shape and data_offsets");
  }
  Entry entry{name};
  const Json& dtype = value["dtype"];
  const auto known = std::find_if(std::begin(kDtypes), std::end(kDtypes), [&](const auto& d) { return dtype.is_string() && dtype.get<std::string>() == d.first; });
  if (known == std::end(kDtypes)) source.fail(what + " has an unknown dtype " + dtype.dump().substr(0, 40));
  entry.dtype = known->second;
  const Json& shape = value["shape"];
  const Json& offsets = value["data_offsets"];
  if (!shape.is_array()) source.fail(what + ": shape must be a list of sizes");
  if (!offsets.is_array() || offsets.size() != 2) source.fail(what + ": data_offsets must be [begin, end]");
  int64_t bytes = static_cast<int64_t>(c10::elementSize(entry.dtype));
  for (const Json& size : shape) {
    entry.shape.push_back(static_cast<int64_t>(unsigned_field(source, size, what + ": a size")));
    if (__builtin_mul_overflow(bytes, entry.shape.back(), &bytes)) source.fail(what + ": its shape holds more than 2^63 bytes");
  }
  entry.begin = unsigned_field(source, offsets[0], what + ": data_offsets");
  entry.end = unsigned_field(source, offsets[1], what + ": data_offsets");
  if (entry.end < entry.begin || entry.end - entry.begin != static_cast<uint64_t>(bytes)) {
    source.fail(what + ": data_offsets [" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "] hold " +
                (entry.end < entry.begin ? std::string("a negative number of") : std::to_string(entry.end - entry.begin)) +
                " bytes, its dtype " + known->first + " and shape " + c10::str(c10::IntArrayRef(entry.shape)) +
                " need " + std::to_string(bytes));
  }
  return entry;
}

// The tensors must tile the data: sorted by offset, each starts where the previous one ended and
// the last ends with the file (the format forbids gaps; overlaps would alias).
void check_layout(const ByteSource& source, const Header& header) {
  std::vector<size_t> order(header.entries.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return std::tie(header.entries[a].begin, header.entries[a].end) < std::tie(header.entries[b].begin, header.entries[b].end);
  });
  uint64_t covered = 0;
  const Entry* previous = nullptr;
  for (size_t index : order) {
    const Entry& entry = header.entries[index];
    if (entry.end > header.data_size) {
      source.fail("truncated: tensor '" + entry.name + "' (bytes " + std::to_string(entry.begin) + " to " +
                  std::to_string(entry.end) + " of the data) goes beyond the end of the file (the data has " +
                  std::to_string(header.data_size) + " bytes)");
    }
    if (entry.begin < covered) {
      source.fail("tensors '" + previous->name + "' and '" + entry.name + "' overlap (data bytes " +
                  std::to_string(previous->begin) + " to " + std::to_string(previous->end) + " and " +
                  std::to_string(entry.begin) + " to " + std::to_string(entry.end) + ")");
    }
    if (entry.begin > covered) {
      source.fail("data bytes " + std::to_string(covered) + " to " + std::to_string(entry.begin) + " belong to no tensor");
    }
    covered = entry.end, previous = &entry;
  }
  if (covered != header.data_size) {
    source.fail("data bytes " + std::to_string(covered) + " to " + std::to_string(header.data_size) + " belong to no tensor");
  }
}

Header read_header(const ByteSource& source) {
  uint8_t length_bytes[8];
  if (source.size() < 8) source.fail("truncated: " + std::to_string(source.size()) + " bytes, not even the 8-byte header length");
  source.read(0, length_bytes, 8, "the header length");
  const uint64_t length = detail::little_endian(length_bytes, 8);
  if (length > source.size() - 8) {
    source.fail("the header length " + std::to_string(length) + " goes beyond the end of the file (" +
                std::to_string(source.size()) + " bytes)");
  }
  if (length > kMaxHeaderBytes) source.fail("the header length " + std::to_string(length) + " exceeds the format's 100 MB limit");
  std::string text(length, '\0');
  source.read(8, text.data(), length, "the header");
  const Json json = parse_json(source, text);
  if (!json.is_object()) source.fail("the header is not a JSON object");
  Header header{{}, {}, 8 + length, source.size() - 8 - length};
  for (const auto& [name, value] : json.items()) {
    if (name != "__metadata__") {
      header.entries.push_back(parse_entry(source, name, value));
      continue;
    }
    if (!value.is_object()) source.fail("__metadata__ must map strings to strings");
    for (const auto& [key, text_value] : value.items()) {
      if (!text_value.is_string()) source.fail("__metadata__ '" + key + "' is not a string");
      header.metadata.emplace_back(key, text_value.get<std::string>());
    }
  }
  check_layout(source, header);
  return header;
}

SafetensorsContents read_contents(const ByteSource& source) {
  const Header header = read_header(source);
  SafetensorsContents contents{{}, header.metadata};
  for (const Entry& entry : header.entries) {
    at::Tensor tensor = at::empty(entry.shape, at::TensorOptions().dtype(entry.dtype));
    source.read(header.data_start + entry.begin, tensor.data_ptr(), entry.end - entry.begin,
                ("tensor '" + entry.name + "'").c_str());
    contents.tensors.emplace_back(entry.name, std::move(tensor));
  }
  return contents;
}

const char* dtype_name(const std::string& file, const std::string& name, c10::ScalarType type) {
  for (const auto& [text, dtype] : kDtypes) {
    if (dtype == type) return text;
  }
  throw WeightFileError(file, "tensor '" + name + "' has dtype " + c10::toString(type) + ", which safetensors cannot hold");
}

// The file to `sink`: header then data, tensors ordered by decreasing element size.
void write_contents(const std::string& file, const NamedTensors& tensors, const Metadata& metadata,
                    const detail::ByteSink& sink) {
  std::vector<std::pair<std::string, at::Tensor>> laid_out;
  std::unordered_set<std::string> names;
  for (const auto& [name, tensor] : tensors) {
    if (!tensor.defined() || tensor.layout() != c10::kStrided) throw WeightFileError(file, "tensor '" + name + "' is not a dense tensor");
    if (name == "__metadata__" || !names.insert(name).second) throw WeightFileError(file, "tensor name '" + name + "' is reserved or repeated");
    laid_out.emplace_back(name, tensor.detach().cpu().contiguous());
  }
  std::stable_sort(laid_out.begin(), laid_out.end(), [](const auto& a, const auto& b) {
    return a.second.element_size() > b.second.element_size();
  });
  Json header = Json::object();
  if (!metadata.empty()) {
    Json& entries = header["__metadata__"] = Json::object();
    for (const auto& [key, value] : metadata) entries[key] = value;
  }
  uint64_t offset = 0;
  for (const auto& [name, tensor] : laid_out) {
    const uint64_t bytes = tensor.nbytes();
    header[name] = {{"dtype", dtype_name(file, name, tensor.scalar_type())}, {"shape", tensor.sizes().vec()},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text;
  try {
    text = header.dump(-1, ' ', false, Json::error_handler_t::strict);
  } catch (const Json::exception&) {
    throw WeightFileError(file, "a tensor name or metadata entry is not valid UTF-8");
  }
  text.append((8 - text.size() % 8) % 8, ' ');  // the data starts 8-byte aligned
  uint8_t length[8];
  for (const int i : c10::irange(8)) length[i] = static_cast<uint8_t>(text.size() >> (8 * i));
  sink(length, 8);
  sink(text.data(), text.size());
  for (const auto& [name, tensor] : laid_out) {
    if (tensor.nbytes() > 0) sink(tensor.data_ptr(), tensor.nbytes());
  }
}

}  // namespace

SafetensorsContents read_safetensors(const std::string& path) { return read_contents(*detail::open_file(path)); }

SafetensorsContents read_safetensors(const void* data, size_t size, const std::string& name) {
  return read_contents(*detail::memory_source(data, size, name));
}

void save_safetensors(const std::string& path, const NamedTensors& tensors, const Metadata& metadata) {
  detail::write_file_atomically(path, [&](const detail::ByteSink& sink) { write_contents(path, tensors, metadata, sink); });
}

std::string safetensors_bytes(const NamedTensors& tensors, const Metadata& metadata) {
  std::string bytes;
  write_contents("safetensors", tensors, metadata, [&](const void* data, size_t count) {
    bytes.append(static_cast<const char*>(data), count);
  });
  return bytes;
}

}  // namespace slideformer::io
