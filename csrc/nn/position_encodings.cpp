// Absolute position encodings (learned and fixed sinusoidal) and MViTv2's decomposed relative
// position term. (Swin's relative-position bias lives in MultiHeadAttention.)
#include <c10/util/accumulate.h>

#include "nn/init.h"
#include "nn/script.h"
#include "nn/size_cache.h"
#include "slideformer/nn/modules.h"

namespace slideformer::nn {

AbsolutePositionEmbeddingImpl::AbsolutePositionEmbeddingImpl(AbsolutePositionEmbeddingOptions options_)
    : options(std::move(options_)), size_cache_(std::make_shared<SizeCache>()) {
  reset();
}

void AbsolutePositionEmbeddingImpl::reset() {
  TORCH_CHECK(options.rows() > 0 && options.cols() > 0 && options.dim() > 0,
              "slideformer::AbsolutePositionEmbedding: rows, cols and dim must be positive, got ",
              options.rows(), ", ", options.cols(), " and ", options.dim());
  weight = register_parameter("weight", at::empty({1, options.rows(), options.cols(), options.dim()}));
  init::trunc_normal_(weight, 0.02);
}

void AbsolutePositionEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::AbsolutePositionEmbedding(rows=" << options.rows()
         << ", cols=" << options.cols() << ", dim=" << options.dim() << ")";
}

at::Tensor AbsolutePositionEmbeddingImpl::table(int64_t rows, int64_t cols) const {
  if (rows == options.rows() && cols == options.cols()) return weight;
  return size_cache_->derived({rows, cols}, weight, [&] {
    // (1, R, C, dim) -> (1, dim, R, C), resized as timm's resample_abs_pos_embed does by default.
    const at::Tensor grid = weight.permute({0, 3, 1, 2});
    return at::_upsample_bicubic2d_aa(grid, {rows, cols}, /*align_corners=*/false).permute({0, 2, 3, 1});
  });
}

at::Tensor AbsolutePositionEmbeddingImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) > 0 && x.size(2) > 0 && x.size(3) == options.dim(),
              "slideformer::AbsolutePositionEmbedding: input must be (B, Y, X, ", options.dim(),
              ") (the table is for ", options.rows(), "x", options.cols(), " and resized for other maps), got shape ",
              x.sizes());
  return x + table(x.size(1), x.size(2));
}

torch::jit::Module AbsolutePositionEmbeddingImpl::script_form() const {
  torch::jit::Module module("AbsolutePositionEmbedding");
  script::add_parameter(module, "weight", weight);
  script::define(module, R"(
def forward(self, x: Tensor) -> Tensor:
    if x.size(1) == )" + std::to_string(options.rows()) + " and x.size(2) == " + std::to_string(options.cols()) + R"(:
        return x + self.weight
    grid = torch._upsample_bicubic2d_aa(self.weight.permute(0, 3, 1, 2), [x.size(1), x.size(2)], False, None, None)
    return x + grid.permute(0, 2, 3, 1)
)");
  return module;
}

SinusoidalPositionEncodingImpl::SinusoidalPositionEncodingImpl(SinusoidalPositionEncodingOptions options_)
    : options(std::move(options_)) {
  reset();
}

void SinusoidalPositionEncodingImpl::reset() {
  TORCH_CHECK(options.dim() > 0 && options.dim() % 4 == 0,
              "slideformer::SinusoidalPositionEncoding: dim must be a positive multiple of 4, got ",
              options.dim());
  TORCH_CHECK(options.temperature() > 0, "slideformer::SinusoidalPositionEncoding: temperature must be "
              "positive, got ", options.temperature());
}

void SinusoidalPositionEncodingImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::SinusoidalPositionEncoding(dim=" << options.dim()
         << ", temperature=" << options.temperature() << ")";
}

// The TorchScript form below computes the same, op for op.
at::Tensor SinusoidalPositionEncodingImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(3) == options.dim(),
              "slideformer::SinusoidalPositionEncoding: input must be (B, Y, X, ", options.dim(),
              "), got shape ", x.sizes());
  const int64_t quarter = options.dim() / 4, rows = x.size(1), cols = x.size(2);
  const at::Tensor omega = at::pow(options.temperature(), at::arange(quarter, x.options()) / -quarter);
  const at::Tensor r = at::arange(rows, x.options()).unsqueeze(1) * omega;
  const at::Tensor c = at::arange(cols, x.options()).unsqueeze(1) * omega;
  const at::Tensor row_part = at::cat({r.sin(), r.cos()}, 1).unsqueeze(1).expand({-1, cols, -1});
  const at::Tensor col_part = at::cat({c.sin(), c.cos()}, 1).unsqueeze(0).expand({rows, -1, -1});
  return x + at::cat({row_part, col_part}, -1);
}

torch::jit::Module SinusoidalPositionEncodingImpl::script_form() const {
  torch::jit::Module module("SinusoidalPositionEncoding");
  const std::string quarter = std::to_string(options.dim() / 4);
  script::define(module, R"(
def forward(self, x: Tensor) -> Tensor:
    rows, cols = x.size(1), x.size(2)
    omega = torch.pow()" + script::literal(options.temperature()) + ", torch.arange(" + quarter +
                             ", dtype=x.dtype, device=x.device) / -" + quarter + R"()
    r = torch.arange(rows, dtype=x.dtype, device=x.device).unsqueeze(1) * omega
    c = torch.arange(cols, dtype=x.dtype, device=x.device).unsqueeze(1) * omega
    row_part = torch.cat([torch.sin(r), torch.cos(r)], 1).unsqueeze(1).expand(-1, cols, -1)
    col_part = torch.cat([torch.sin(c), torch.cos(c)], 1).unsqueeze(0).expand(rows, -1, -1)
    return x + torch.cat([row_part, col_part], -1)
)");
  return module;
}

namespace {

// Rows of a table of 2 max(q, k) - 1 offsets for q queries and k keys along one axis: offsets
// scaled to the larger map, in float32 as MViTv2 computes them, then truncated. (q, k) int64.
at::Tensor decomposed_index(int64_t q, int64_t k) {
  const double q_ratio = std::max(static_cast<double>(k) / q, 1.0);
  const double k_ratio = std::max(static_cast<double>(q) / k, 1.0);
  const at::Tensor offsets = at::arange(q, at::kLong).unsqueeze(-1) * q_ratio -
                             at::arange(k, at::kLong).unsqueeze(0) * k_ratio + (k - 1) * k_ratio;
  return offsets.to(at::kLong);
}

// A (length, d) table resized linearly to `target` rows (align_corners false), as timm's
// checkpoint_filter_fn resizes MViTv2's tables.
at::Tensor resized_table(const at::Tensor& table, int64_t target) {
  if (table.size(0) == target) return table;
  return at::upsample_linear1d(table.t().unsqueeze(0), {target}, /*align_corners=*/false).squeeze(0).t();
}

// Letters of the grid axes in the einsum equations, last axis last: "yx" or "tyx".
std::string axis_letters(size_t rank) { return std::string("tyx").substr(3 - rank); }

// (B, heads, prod(query_grid), prod(key_grid)): the queries' relative terms along each axis (the
// table rows of that axis' (query, key) pairs, one (queries, keys * d) tensor per axis), summed.
at::Tensor decomposed_bias(const at::Tensor& q, const std::vector<at::Tensor>& axis_rows, at::IntArrayRef query_grid,
                           at::IntArrayRef key_grid) {
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(3);
  const size_t rank = query_grid.size();
  const std::string letters = axis_letters(rank);
  std::vector<int64_t> map_shape{batch, heads};
  map_shape.insert(map_shape.end(), query_grid.begin(), query_grid.end());
  std::vector<int64_t> query_shape = map_shape;
  query_shape.push_back(d);
  const at::Tensor r = q.reshape(query_shape);
  at::Tensor sum;
  for (size_t a = 0; a < rank; ++a) {
    const std::string equation = "bn" + letters + "c," + letters[a] + "kc->bn" + letters + "k";
    at::Tensor term = at::einsum(equation, {r, axis_rows[a].view({query_grid[a], key_grid[a], d})});
    std::vector<int64_t> shape = map_shape;  // the key axis a at its place among the key axes
    for (size_t b = 0; b < rank; ++b) shape.push_back(b == a ? key_grid[a] : 1);
    term = term.view(shape);
    sum = sum.defined() ? sum + term : term;
  }
  return sum.reshape({batch, heads, c10::multiply_integers(query_grid), c10::multiply_integers(key_grid)});
}

}  // namespace

DecomposedRelativePositionImpl::DecomposedRelativePositionImpl(DecomposedRelativePositionOptions options_)
    : options(std::move(options_)), size_cache_(std::make_shared<SizeCache>()) {
  reset();
}

void DecomposedRelativePositionImpl::reset() {
  const int64_t q = options.query_size(), k = options.key_size();
  TORCH_CHECK(q > 0 && k > 0 && options.head_dim() > 0,
              "slideformer::DecomposedRelativePosition: query_size, key_size and head_dim must be "
              "positive, got ", q, ", ", k, " and ", options.head_dim());
  const int64_t qt = options.query_frames(), kt = options.key_frames();
  TORCH_CHECK((qt == 0 && kt == 0) || (qt > 0 && kt > 0), "slideformer::DecomposedRelativePosition: "
              "query_frames and key_frames must both be 0 (no time axis) or both positive, got ", qt, " and ", kt);
  auto table = [&](const char* name, int64_t queries, int64_t keys) {
    at::Tensor t = register_parameter(name, at::empty({2 * std::max(queries, keys) - 1, options.head_dim()}));
    init::trunc_normal_(t, 0.02);
    return t;
  };
  height = table("height", q, k);
  width = table("width", q, k);
  if (qt > 0) time = table("time", qt, kt);
  index = register_buffer("index", decomposed_index(q, k));
  if (qt > 0) time_index = register_buffer("time_index", decomposed_index(qt, kt));
}

void DecomposedRelativePositionImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::DecomposedRelativePosition(query_size=" << options.query_size()
         << ", key_size=" << options.key_size() << ", head_dim=" << options.head_dim();
  if (has_time()) stream << ", query_frames=" << options.query_frames() << ", key_frames=" << options.key_frames();
  stream << ")";
}

std::vector<int64_t> DecomposedRelativePositionImpl::query_grid() const {
  const int64_t s = options.query_size();
  return has_time() ? std::vector<int64_t>{options.query_frames(), s, s} : std::vector<int64_t>{s, s};
}

std::vector<int64_t> DecomposedRelativePositionImpl::key_grid() const {
  const int64_t s = options.key_size();
  return has_time() ? std::vector<int64_t>{options.key_frames(), s, s} : std::vector<int64_t>{s, s};
}

std::vector<at::Tensor> DecomposedRelativePositionImpl::tables() const {
  return has_time() ? std::vector<at::Tensor>{time, height, width} : std::vector<at::Tensor>{height, width};
}

at::Tensor DecomposedRelativePositionImpl::forward(const at::Tensor& q) {
  const std::vector<int64_t> qg = query_grid(), kg = key_grid();
  const int64_t queries = c10::multiply_integers(qg), d = options.head_dim();
  TORCH_CHECK(q.dim() == 4 && q.size(2) == queries && q.size(3) == d,
              "slideformer::DecomposedRelativePosition: queries must be (B, heads, ", queries, ", ", d,
              "), got shape ", q.sizes());
  std::vector<at::Tensor> rows;
  const std::vector<at::Tensor> axis_tables = tables();
  for (size_t a = 0; a < axis_tables.size(); ++a) {
    const at::Tensor& rows_index = has_time() && a == 0 ? time_index : index;
    rows.push_back(axis_tables[a].index_select(0, rows_index.view(-1)));
  }
  return decomposed_bias(q, rows, qg, kg);
}

at::Tensor DecomposedRelativePositionImpl::forward(const at::Tensor& q, at::IntArrayRef query_grid_,
                                                   at::IntArrayRef key_grid_) {
  const std::vector<int64_t> qg = query_grid(), kg = key_grid();
  TORCH_CHECK(query_grid_.size() == qg.size() && key_grid_.size() == kg.size(),
              "slideformer::DecomposedRelativePosition: the grids must have ", qg.size(), " axes, got ",
              query_grid_, " and ", key_grid_);
  if (query_grid_ == at::IntArrayRef(qg) && key_grid_ == at::IntArrayRef(kg)) return forward(q);
  const int64_t queries = c10::multiply_integers(query_grid_), d = options.head_dim();
  TORCH_CHECK(q.dim() == 4 && q.size(2) == queries && q.size(3) == d,
              "slideformer::DecomposedRelativePosition: queries must be (B, heads, ", queries, ", ", d,
              ") for a ", query_grid_, " query grid, got shape ", q.sizes());
  // Each axis' table resized to the offsets of this grid, and its rows for the (query, key) pairs.
  const std::vector<at::Tensor> axis_tables = tables();
  std::vector<at::Tensor> rows;
  for (size_t a = 0; a < axis_tables.size(); ++a) {
    const int64_t queries_a = query_grid_[a], keys_a = key_grid_[a], length = 2 * std::max(queries_a, keys_a) - 1;
    const int64_t axis = static_cast<int64_t>(a + 3 - axis_tables.size());  // 0 time, 1 height, 2 width
    const at::Tensor& table = axis_tables[a];
    const at::Tensor resized =
        size_cache_->derived({axis, length}, table, [&] { return resized_table(table, length); });
    const at::Tensor index_rows = size_cache_->constant(
        {queries_a, keys_a}, table.device(), [&] { return decomposed_index(queries_a, keys_a).view(-1); });
    rows.push_back(resized.index_select(0, index_rows));
  }
  return decomposed_bias(q, rows, query_grid_, key_grid_);
}

// forward(q, query grid, key grid): the table rows gathered with the index buffers at the options'
// grids; for any other, each table resized linearly and its rows for that grid's offsets computed
// (resized_table and decomposed_index above, op for op).
torch::jit::Module DecomposedRelativePositionImpl::script_form() const {
  torch::jit::Module module("DecomposedRelativePosition");
  script::add_parameter(module, "height", height);
  script::add_parameter(module, "width", width);
  script::add_buffer(module, "index", index);
  if (has_time()) {
    script::add_parameter(module, "time", time);
    script::add_buffer(module, "time_index", time_index);
  }
  const std::vector<int64_t> qg = query_grid(), kg = key_grid();
  const size_t rank = qg.size();
  const std::string letters = axis_letters(rank), d = std::to_string(options.head_dim());
  const std::vector<std::string> names = has_time() ? std::vector<std::string>{"time", "height", "width"}
                                                     : std::vector<std::string>{"height", "width"};
  std::string native_rows, resized_rows, terms, sum;
  for (size_t a = 0; a < rank; ++a) {
    const std::string n = std::to_string(a), table = "self." + names[a];
    const std::string rows_index = names[a] == "time" ? "self.time_index" : "self.index";
    native_rows += "        rows_" + n + " = torch.index_select(" + table + ", 0, " + rows_index + ".view(-1))\n";
    resized_rows += "        rows_" + n + " = self.rows_of(" + table + ", qg[" + n + "], kg[" + n + "])\n";
    std::string key_axes;  // the key axis a at its place among the key axes
    for (size_t b = 0; b < rank; ++b) key_axes += ", " + (b == a ? "kg[" + n + "]" : std::string("1"));
    terms += "    rel_" + n + " = torch.einsum(\"bn" + letters + "c," + letters[a] + "kc->bn" + letters +
             "k\", [r, rows_" + n + ".view(qg[" + n + "], kg[" + n + "], " + d + ")]).view([b, n] + qg + [" +
             key_axes.substr(2) + "])\n";
    sum += (a ? " + rel_" : "rel_") + n;
  }
  std::string keys = "kg[0]";
  for (size_t a = 1; a < rank; ++a) keys += " * kg[" + std::to_string(a) + "]";
  script::define(module, R"(
def rows_of(self, table: Tensor, queries: int, keys: int) -> Tensor:
    length = 2 * max(queries, keys) - 1
    if table.size(0) != length:
        table = torch.upsample_linear1d(table.t().unsqueeze(0), [length], False, None).squeeze(0).t()
    q_ratio = max(keys / queries, 1.0)
    k_ratio = max(queries / keys, 1.0)
    query_offsets = torch.arange(queries, device=table.device).unsqueeze(-1) * q_ratio
    offsets = query_offsets - torch.arange(keys, device=table.device).unsqueeze(0) * k_ratio + (keys - 1) * k_ratio
    return torch.index_select(table, 0, offsets.to(self.index.dtype).view(-1))

def forward(self, q: Tensor, qg: List[int], kg: List[int]) -> Tensor:
    if qg == )" + script::int_list(qg) + " and kg == " + script::int_list(kg) + ":\n" + native_rows +
                             "    else:\n" + resized_rows + R"(    b, n = q.size(0), q.size(1)
    r = q.reshape([b, n] + qg + [)" + d + "])\n" + terms +
                             "    return (" + sum + ").reshape(b, n, q.size(2), " + keys + ")\n");
  return module;
}

}  // namespace slideformer::nn
