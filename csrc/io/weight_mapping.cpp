#include "slideformer/io/weight_mapping.h"

#include <ATen/ops/upsample_linear1d.h>

#include <cmath>
#include <map>
#include <mutex>
#include <regex>
#include <stdexcept>

#include "slideformer/io/module_state.h"

namespace slideformer::io {

namespace {

using Shape = std::vector<int64_t>;

enum class Change { kSame, kReshape, kResizeLinear, kDrop };

struct Row {
  const char* source;
  const char* target;
  Change change;
  // kReshape: the source shape that the model's shape implies (the row's layout change).
  Shape (*source_shape)(const Shape& model);
  int rank;  // the source's rank the row applies to, 0: any
  const char* note;
};

Shape unchanged(const Shape& model) { return model; }
int64_t side(int64_t square) { return static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(square)))); }
// (d, K2, K2) <- (K2 * d, 1, k, k): output channel c * K2 + n, kernel tap (a, b) -> [c, n, a * k + b]
Shape depthwise_weight(const Shape& m) { return m.size() == 3 ? Shape{m[1] * m[0], 1, side(m[2]), side(m[2])} : m; }
// (d, K2) <- (K2 * d): channel c * K2 + n -> [c, n]
Shape depthwise_bias(const Shape& m) { return m.size() == 2 ? Shape{m[0] * m[1]} : m; }
// (heads, K2) <- (1, heads, 1, K2, 1, 1)
Shape key_bias_table(const Shape& m) { return m.size() == 2 ? Shape{1, m[0], 1, m[1], 1, 1} : m; }
// (1, Y, X, C) <- (1, Y * X, C)
Shape token_embedding(const Shape& m) { return m.size() == 4 ? Shape{1, m[1] * m[2], m[3]} : m; }

// The official SlideSwinTransformer (slide_transformer/models/slide_swin.py): stages are
// layers.<s>, their blocks layers.<s>.blocks.<i>, the merging after stage s layers.<s>.downsample.
const Row kSlideTransformerRows[] = {
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn\.dep_conv\.weight)", "stages.$1.$2.attn.identity_weight", Change::kReshape,
     depthwise_weight, 0, "(k*k*d, 1, k, k) -> (d, k*k, k*k): the frozen one-hot shift, [c, n, a*k + b] = w[c*k*k + n, 0, a, b]"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn\.dep_conv\.bias)", "stages.$1.$2.attn.identity_bias", Change::kReshape,
     depthwise_bias, 0, "(k*k*d) -> (d, k*k): [c, n] = b[c*k*k + n]"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn\.dep_conv1\.weight)", "stages.$1.$2.attn.shift_weight", Change::kReshape,
     depthwise_weight, 0, "(k*k*d, 1, k, k) -> (d, k*k, k*k): the learned deformed shift, as dep_conv"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn\.dep_conv1\.bias)", "stages.$1.$2.attn.shift_bias", Change::kReshape,
     depthwise_bias, 0, "(k*k*d) -> (d, k*k), as dep_conv"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table)", "stages.$1.$2.attn.key_bias", Change::kReshape,
     key_bias_table, 6, "slide stages: (1, heads, 1, k*k, 1, 1) -> (heads, k*k), added to every channel of key slot n"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_bias_table)", "stages.$1.$2.attn.relative_position_table",
     Change::kSame, unchanged, 2, "global stages: the Swin table ((2R-1)^2, heads), unchanged"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn\.relative_position_index)", "", Change::kDrop, unchanged, 0,
     "dropped: the model computes it"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.attn_mask)", "", Change::kDrop, unchanged, 0,
     "dropped: the mask of shifted windows (the published models shift none)"},
    {R"(layers\.(\d+)\.blocks\.(\d+)\.((norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)))",
     "stages.$1.$2.$3", Change::kSame, unchanged, 0,
     "unchanged; qkv's output channels are (head, {q, k, v}, d) in slide stages and ({q, k, v}, head, d) in global "
     "ones in both codes"},
    {R"(layers\.(\d+)\.downsample\.((norm|reduction)\.(weight|bias)))", "mergings.$1.$2", Change::kSame, unchanged, 0,
     "patch merging: the same (x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]) concatenation"},
    {R"(absolute_pos_embed)", "absolute_position.weight", Change::kReshape, token_embedding, 0,
     "(1, Y*X, C) -> (1, Y, X, C) (configurations with APE)"},
    {R"(((patch_embed\.(proj|norm))|norm|head)\.(weight|bias))", "$1.$4", Change::kSame, unchanged, 0, "unchanged"},
};

// timm 1.0's MultiScaleVit (timm/models/mvitv2.py); original MViTv2 names are converted first.
const Row kTimmRows[] = {
    {R"(stages\.(\d+)\.blocks\.(\d+)\.shortcut_proj_attn\.(weight|bias))", "stages.$1.$2.shortcut_proj.$3",
     Change::kSame, unchanged, 0, "the residual's projection where a stage widens (timm's expand_attn)"},
    {R"(stages\.(\d+)\.blocks\.(\d+)\.attn\.rel_pos_h)", "stages.$1.$2.attn.relative_position.height",
     Change::kResizeLinear, unchanged, 2, "(2S-1, d); resized linearly to the model's length where it differs, "
     "as timm's checkpoint_filter_fn does"},
    {R"(stages\.(\d+)\.blocks\.(\d+)\.attn\.rel_pos_w)", "stages.$1.$2.attn.relative_position.width",
     Change::kResizeLinear, unchanged, 2, "as rel_pos_h"},
    {R"(stages\.(\d+)\.blocks\.(\d+)\.((norm1|norm2|attn\.(qkv|proj|pool_[qkv]|norm_[qkv])|mlp\.fc1|mlp\.fc2)\.(weight|bias)))",
     "stages.$1.$2.$3", Change::kSame, unchanged, 0,
     "unchanged; qkv's output channels are ({q, k, v}, head, d) in both"},
    {R"(head\.fc\.(weight|bias))", "head.$1", Change::kSame, unchanged, 0, "unchanged"},
    {R"((patch_embed\.proj|norm)\.(weight|bias))", "$1.$2", Change::kSame, unchanged, 0, "unchanged"},
};

const Row kSlideformerRows[] = {
    {R"(absolute_position)", "absolute_position.weight", Change::kSame, unchanged, 0,
     "SlideTransformer's position table, as files written before it was a module name it"},
    {R"(.+)", "$0", Change::kSame, unchanged, 0, "unchanged"}};

struct Table {
  const Row* rows;
  size_t size;
};

Table table_of(WeightSource source) {
  switch (source) {
    case WeightSource::kSlideTransformer: return {kSlideTransformerRows, std::size(kSlideTransformerRows)};
    case WeightSource::kTimm: return {kTimmRows, std::size(kTimmRows)};
    case WeightSource::kSlideformer: break;
  }
  return {kSlideformerRows, std::size(kSlideformerRows)};
}

const std::regex& pattern(const Row& row) {
  static std::map<const Row*, std::regex> compiled;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  auto found = compiled.find(&row);
  if (found == compiled.end()) found = compiled.emplace(&row, std::regex(row.source)).first;
  return found->second;
}

std::string quoted_list(const std::vector<std::string>& names) {
  std::string text;
  for (size_t i = 0; i < names.size() && i < 5; ++i) text += (i ? ", '" : "'") + names[i] + "'";
  if (names.size() > 5) text += " and " + std::to_string(names.size() - 5) + " more";
  return text;
}

}  // namespace

namespace {

// Original MViTv2 names (the "model_state" of its .pyth files) as timm names, the way timm's
// checkpoint_filter_fn converts them: blocks.<n> numbered across stages -> stages.<s>.blocks.<i>
// (the stage depths from the model), blocks' proj -> shortcut_proj_attn, head.projection -> head.fc.
NamedTensors original_mvit_as_timm(const NamedTensors& tensors, const TensorShapes& model) {
  static const std::regex model_block(R"(stages\.(\d+)\.(\d+)\..*)"), original_block(R"(blocks\.(\d+)\.(.*))");
  std::map<int64_t, int64_t> depths;  // stage -> blocks
  for (const auto& item : model) {
    std::smatch match;
    if (std::regex_match(item.first, match, model_block)) {
      int64_t& depth = depths[std::stoll(match[1])];
      depth = std::max<int64_t>(depth, std::stoll(match[2]) + 1);
    }
  }
  std::vector<std::pair<int64_t, int64_t>> position;  // block n -> (stage, index in stage)
  for (const auto& [stage, depth] : depths) {
    for (int64_t i = 0; i < depth; ++i) position.emplace_back(stage, i);
  }
  NamedTensors renamed;
  for (const auto& [name, tensor] : tensors) {
    std::string out = name;
    std::smatch match;
    if (std::regex_match(name, match, original_block) && std::stoull(match[1]) < position.size()) {
      const auto [stage, index] = position[std::stoull(match[1])];
      std::string rest = match[2];
      if (rest.rfind("proj.", 0) == 0) rest = "shortcut_proj_attn." + rest.substr(5);
      out = "stages." + std::to_string(stage) + ".blocks." + std::to_string(index) + "." + rest;
    } else if (name.rfind("head.projection.", 0) == 0) {
      out = "head.fc." + name.substr(16);
    }
    renamed.emplace_back(out, tensor);
  }
  return renamed;
}

// A leading "module." on every name: the state dict of a DataParallel wrapper.
NamedTensors without_wrapper_prefix(const NamedTensors& tensors) {
  for (const auto& item : tensors) {
    if (item.first.rfind("module.", 0) != 0) return tensors;
  }
  NamedTensors stripped;
  for (const auto& [name, tensor] : tensors) stripped.emplace_back(name.substr(7), tensor);
  return stripped;
}

// (L, d) -> (L', d), linear interpolation along L (F.interpolate(mode="linear")).
at::Tensor resize_linear(const at::Tensor& table, int64_t length) {
  const at::Tensor rows = table.to(at::kFloat).t().unsqueeze(0);  // (1, d, L)
  return at::upsample_linear1d(rows, {length}, /*align_corners=*/false).squeeze(0).t().contiguous().to(table.scalar_type());
}

// The row's change applied to one tensor whose model name is `target` (of shape `model`, or
// nullptr where the model has no such tensor).
at::Tensor change(const Row& row, const std::string& name, const at::Tensor& tensor, const std::string& target,
                  const Shape* model, const std::string& file) {
  if (!model) return tensor;  // reported by load_module_state
  if (row.change == Change::kReshape) {
    const Shape expected = row.source_shape(*model);
    if (tensor.sizes() != c10::IntArrayRef(expected)) {
      throw WeightFileError(file, "'" + name + "' has shape " + c10::str(tensor.sizes()) + ", which does not fit the model's '" +
                                      target + "' of shape " + c10::str(c10::IntArrayRef(*model)) + " (that needs " +
                                      c10::str(c10::IntArrayRef(expected)) + ")");
    }
    return tensor.reshape(*model);
  }
  if (row.change == Change::kResizeLinear && tensor.dim() == 2 && model->size() == 2 && tensor.size(1) == (*model)[1] &&
      tensor.size(0) != (*model)[0]) {
    return resize_linear(tensor, (*model)[0]);
  }
  return tensor;
}

}  // namespace

WeightSource weight_source(const std::string& name) {
  for (const WeightSource source : {WeightSource::kSlideformer, WeightSource::kSlideTransformer, WeightSource::kTimm}) {
    if (name == weight_source_name(source)) return source;
  }
  throw std::invalid_argument("unknown weight source '" + name + "' (slideformer, slide-transformer or timm)");
}

const char* weight_source_name(WeightSource source) {
  switch (source) {
    case WeightSource::kSlideTransformer: return "slide-transformer";
    case WeightSource::kTimm: return "timm";
    case WeightSource::kSlideformer: break;
  }
  return "slideformer";
}

std::vector<MappingRow> mapping_table(WeightSource source) {
  const Table table = table_of(source);
  std::vector<MappingRow> rows;
  for (size_t i = 0; i < table.size; ++i) rows.push_back({table.rows[i].source, table.rows[i].target, table.rows[i].note});
  return rows;
}

NamedTensors map_weights(WeightSource source, const NamedTensors& tensors, const TensorShapes& model, const std::string& file) {
  NamedTensors input = without_wrapper_prefix(tensors);
  if (source == WeightSource::kTimm) input = original_mvit_as_timm(input, model);
  const std::map<std::string, Shape> shapes(model.begin(), model.end());
  const Table table = table_of(source);
  NamedTensors out;
  std::vector<std::string> unmapped;
  for (const auto& [name, tensor] : input) {
    const Row* row = nullptr;
    std::smatch match;
    for (size_t i = 0; i < table.size && !row; ++i) {
      const Row& candidate = table.rows[i];
      if ((candidate.rank == 0 || candidate.rank == tensor.dim()) && std::regex_match(name, match, pattern(candidate))) row = &candidate;
    }
    if (!row) {
      unmapped.push_back(name);
      continue;
    }
    if (row->change == Change::kDrop) continue;
    const std::string target = match.format(row->target);
    const auto shape = shapes.find(target);
    out.emplace_back(target, change(*row, name, tensor, target, shape == shapes.end() ? nullptr : &shape->second, file));
  }
  const std::string family = weight_source_name(source);
  if (!unmapped.empty() && 2 * unmapped.size() > input.size()) {  // most of it: another family's file
    throw WeightFileError(file, "not " + family + " weights: " + std::to_string(unmapped.size()) + " of its " +
                                    std::to_string(input.size()) + " tensors are not in the " + family + " table (" +
                                    quoted_list(unmapped) + ")");
  }
  if (!unmapped.empty()) throw WeightFileError(file, "tensors that the " + family + " table does not map: " + quoted_list(unmapped));
  return out;
}

void import_weights(torch::nn::Module& model, const std::string& path, WeightSource source, const std::string& entry) {
  const TensorShapes shapes = shapes_of(module_state(model));
  load_module_state(model, map_weights(source, read_weights(path, entry), shapes, path), path);
}

}  // namespace slideformer::io
