// Absolute position encodings (learned and fixed sinusoidal) and MViTv2's decomposed relative
// position term. (Swin's relative-position bias lives in MultiHeadAttention.)
#include "nn/init.h"
#include "nn/script.h"
#include "nn/size_cache.h"
#include "slideformer/nn/modules.h"

namespace slideformer::nn {

AbsolutePositionEmbeddingImpl::AbsolutePositionEmbeddingImpl(AbsolutePositionEmbeddingOptions options_)
    : options(std::move(options_)), size_cache_(std::make_shared<SizeCache>()) {
  reset();
}

AbsolutePositionEmbeddingImpl::AbsolutePositionEmbeddingImpl(const at::Tensor& table)
    : options(table.size(1), table.size(2), table.size(3)), shared_table_(table),
      size_cache_(std::make_shared<SizeCache>()) {
  TORCH_CHECK(table.dim() == 4 && table.size(0) == 1,
              "slideformer::AbsolutePositionEmbedding: table must be (1, rows, cols, dim), got shape ",
              table.sizes());
  reset();
}

void AbsolutePositionEmbeddingImpl::reset() {
  TORCH_CHECK(options.rows() > 0 && options.cols() > 0 && options.dim() > 0,
              "slideformer::AbsolutePositionEmbedding: rows, cols and dim must be positive, got ",
              options.rows(), ", ", options.cols(), " and ", options.dim());
  if (shared_table_.defined()) {
    // Keeps the table's requires_grad (a frozen table stays frozen however often it is wrapped).
    weight = register_parameter("weight", shared_table_, shared_table_.requires_grad());
  } else {
    weight = register_parameter("weight", at::empty({1, options.rows(), options.cols(), options.dim()}));
    init::trunc_normal_(weight, 0.02);
  }
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

// (B, heads, qy*qx, ky*kx): the query map's relative terms along each axis, summed.
at::Tensor decomposed_bias(const at::Tensor& q, const at::Tensor& height_rows, const at::Tensor& width_rows,
                           int64_t qy, int64_t qx, int64_t ky, int64_t kx) {
  const int64_t batch = q.size(0), heads = q.size(1), d = q.size(3);
  const at::Tensor r = q.reshape({batch, heads, qy, qx, d});
  const at::Tensor rel_h = at::einsum("bnyxc,ykc->bnyxk", {r, height_rows.view({qy, ky, d})});
  const at::Tensor rel_w = at::einsum("bnyxc,xkc->bnyxk", {r, width_rows.view({qx, kx, d})});
  return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape({batch, heads, qy * qx, ky * kx});
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
  const int64_t length = 2 * std::max(q, k) - 1;
  height = register_parameter("height", at::empty({length, options.head_dim()}));
  width = register_parameter("width", at::empty({length, options.head_dim()}));
  init::trunc_normal_(height, 0.02);
  init::trunc_normal_(width, 0.02);
  index = register_buffer("index", decomposed_index(q, k));
}

void DecomposedRelativePositionImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::DecomposedRelativePosition(query_size=" << options.query_size()
         << ", key_size=" << options.key_size() << ", head_dim=" << options.head_dim() << ")";
}

at::Tensor DecomposedRelativePositionImpl::forward(const at::Tensor& q) {
  const int64_t qs = options.query_size(), ks = options.key_size(), d = options.head_dim();
  TORCH_CHECK(q.dim() == 4 && q.size(2) == qs * qs && q.size(3) == d,
              "slideformer::DecomposedRelativePosition: queries must be (B, heads, ", qs * qs, ", ", d,
              "), got shape ", q.sizes());
  return decomposed_bias(q, height.index_select(0, index.view(-1)), width.index_select(0, index.view(-1)), qs, qs, ks,
                         ks);
}

at::Tensor DecomposedRelativePositionImpl::forward(const at::Tensor& q, int64_t query_rows, int64_t query_cols,
                                                   int64_t key_rows, int64_t key_cols) {
  const int64_t qs = options.query_size(), ks = options.key_size(), d = options.head_dim();
  if (query_rows == qs && query_cols == qs && key_rows == ks && key_cols == ks) return forward(q);
  TORCH_CHECK(q.dim() == 4 && q.size(2) == query_rows * query_cols && q.size(3) == d,
              "slideformer::DecomposedRelativePosition: queries must be (B, heads, ", query_rows * query_cols, ", ",
              d, ") for a ", query_rows, "x", query_cols, " query map, got shape ", q.sizes());
  // Each axis' table resized to the offsets of this map, and its rows for the (query, key) pairs.
  auto rows_of = [&](const at::Tensor& table, int64_t axis, int64_t queries, int64_t keys) {
    const int64_t length = 2 * std::max(queries, keys) - 1;
    const at::Tensor resized = size_cache_->derived({axis, length}, table, [&] { return resized_table(table, length); });
    const at::Tensor rows =
        size_cache_->constant({queries, keys}, table.device(), [&] { return decomposed_index(queries, keys).view(-1); });
    return resized.index_select(0, rows);
  };
  return decomposed_bias(q, rows_of(height, 0, query_rows, key_rows), rows_of(width, 1, query_cols, key_cols),
                         query_rows, query_cols, key_rows, key_cols);
}

// forward(q, query rows, query cols, key rows, key cols): the table rows gathered with the index
// buffer at the options' maps; for any other, each table resized linearly and its rows for that
// map's offsets computed (resized_table and decomposed_index above, op for op).
torch::jit::Module DecomposedRelativePositionImpl::script_form() const {
  torch::jit::Module module("DecomposedRelativePosition");
  script::add_parameter(module, "height", height);
  script::add_parameter(module, "width", width);
  script::add_buffer(module, "index", index);
  const std::string qs = std::to_string(options.query_size()), ks = std::to_string(options.key_size()),
                    d = std::to_string(options.head_dim());
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

def forward(self, q: Tensor, qy: int, qx: int, ky: int, kx: int) -> Tensor:
    if qy == )" + qs + " and qx == " + qs + " and ky == " + ks + " and kx == " + ks + R"(:
        height = torch.index_select(self.height, 0, self.index.view(-1))
        width = torch.index_select(self.width, 0, self.index.view(-1))
    else:
        height = self.rows_of(self.height, qy, ky)
        width = self.rows_of(self.width, qx, kx)
    b, n = q.size(0), q.size(1)
    r = q.reshape(b, n, qy, qx, )" + d + R"()
    rel_h = torch.einsum("bnyxc,ykc->bnyxk", [r, height.view(qy, ky, )" + d + R"()])
    rel_w = torch.einsum("bnyxc,xkc->bnyxk", [r, width.view(qx, kx, )" + d + R"()])
    return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, n, qy * qx, ky * kx)
)");
  return module;
}

}  // namespace slideformer::nn
