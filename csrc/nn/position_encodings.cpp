// Absolute position encodings (learned and fixed sinusoidal) and MViTv2's decomposed relative
// position term. (Swin's relative-position bias lives in MultiHeadAttention.)
#include "nn/init.h"
#include "nn/script.h"
#include "slideformer/nn/modules.h"

namespace slideformer::nn {

AbsolutePositionEmbeddingImpl::AbsolutePositionEmbeddingImpl(AbsolutePositionEmbeddingOptions options_)
    : options(std::move(options_)) {
  reset();
}

AbsolutePositionEmbeddingImpl::AbsolutePositionEmbeddingImpl(const at::Tensor& table)
    : options(table.size(1), table.size(2), table.size(3)), shared_table_(table) {
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

at::Tensor AbsolutePositionEmbeddingImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(1) == options.rows() && x.size(2) == options.cols() &&
                  x.size(3) == options.dim(),
              "slideformer::AbsolutePositionEmbedding: input must be (B, ", options.rows(), ", ",
              options.cols(), ", ", options.dim(), "), got shape ", x.sizes());
  return x + weight;
}

torch::jit::Module AbsolutePositionEmbeddingImpl::script_form() const {
  torch::jit::Module module("AbsolutePositionEmbedding");
  script::add_parameter(module, "weight", weight);
  script::define(module, "def forward(self, x: Tensor) -> Tensor:\n    return x + self.weight\n");
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

DecomposedRelativePositionImpl::DecomposedRelativePositionImpl(DecomposedRelativePositionOptions options_)
    : options(std::move(options_)) {
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
  // Offsets scaled to the larger map, in float32 as MViTv2 computes them, then truncated.
  const double q_ratio = std::max(static_cast<double>(k) / q, 1.0);
  const double k_ratio = std::max(static_cast<double>(q) / k, 1.0);
  const at::Tensor offsets = at::arange(q, at::kLong).unsqueeze(-1) * q_ratio -
                             at::arange(k, at::kLong).unsqueeze(0) * k_ratio + (k - 1) * k_ratio;
  index = register_buffer("index", offsets.to(at::kLong));
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
  const int64_t batch = q.size(0), heads = q.size(1);
  const at::Tensor r = q.reshape({batch, heads, qs, qs, d});
  const at::Tensor rel_h = at::einsum("bnyxc,ykc->bnyxk", {r, height.index_select(0, index.view(-1)).view({qs, ks, d})});
  const at::Tensor rel_w = at::einsum("bnyxc,xkc->bnyxk", {r, width.index_select(0, index.view(-1)).view({qs, ks, d})});
  return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape({batch, heads, qs * qs, ks * ks});
}

torch::jit::Module DecomposedRelativePositionImpl::script_form() const {
  torch::jit::Module module("DecomposedRelativePosition");
  script::add_parameter(module, "height", height);
  script::add_parameter(module, "width", width);
  script::add_buffer(module, "index", index);
  const std::string qs = std::to_string(options.query_size()), ks = std::to_string(options.key_size()),
                    d = std::to_string(options.head_dim());
  script::define(module, R"(
def forward(self, q: Tensor) -> Tensor:
    b, n = q.size(0), q.size(1)
    r = q.reshape(b, n, )" + qs + ", " + qs + ", " + d + R"()
    rel_h = torch.einsum("bnyxc,ykc->bnyxk", [r, torch.index_select(self.height, 0, self.index.view(-1)).view()" +
                             qs + ", " + ks + ", " + d + R"()])
    rel_w = torch.einsum("bnyxc,xkc->bnyxk", [r, torch.index_select(self.width, 0, self.index.view(-1)).view()" +
                             qs + ", " + ks + ", " + d + R"()])
    return (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).reshape(b, n, )" + qs + " * " + qs + ", " + ks + " * " + ks + ")\n");
  return module;
}

}  // namespace slideformer::nn
