// MultiHeadAttention and SlideAttention modules.
#include <cmath>

#include "nn/init.h"
#include "nn/layers.h"
#include "nn/script.h"
#include "nn/size_cache.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"
#include "slideformer/ops.h"

namespace slideformer::nn {

namespace {
// The input and output projections both attention modules have.
template <typename Impl>
void register_projections(Impl& module, int64_t dim, bool qkv_bias) {
  module.qkv = module.register_module("qkv", init::linear(dim, 3 * dim, qkv_bias));
  module.proj = module.register_module("proj", init::linear(dim, dim));
}
}  // namespace

MultiHeadAttentionImpl::MultiHeadAttentionImpl(MultiHeadAttentionOptions options_)
    : options(std::move(options_)), size_cache_(std::make_shared<SizeCache>()) {
  reset();
}

void MultiHeadAttentionImpl::reset() {
  TORCH_CHECK(options.heads() > 0 && options.dim() % options.heads() == 0,
              "slideformer::MultiHeadAttention: dim must be a positive multiple of heads, got dim ",
              options.dim(), " and heads ", options.heads());
  register_projections(*this, options.dim(), options.qkv_bias());
  const int64_t size = options.relative_position_size();
  if (size > 0) {
    relative_position_table = register_parameter(
        "relative_position_table", at::empty({(2 * size - 1) * (2 * size - 1), options.heads()}));
    init::trunc_normal_(relative_position_table, 0.02);
    relative_position_index =
        register_buffer("relative_position_index", functional::relative_position_index(size));
  }
}

void MultiHeadAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::MultiHeadAttention(dim=" << options.dim()
         << ", heads=" << options.heads()
         << ", relative_position_size=" << options.relative_position_size() << ")";
}

at::Tensor MultiHeadAttentionImpl::relative_position_bias() const {
  if (!relative_position_table.defined()) return {};
  const int64_t tokens = relative_position_index.size(0);
  return relative_position_table.index_select(0, relative_position_index.view(-1))
      .view({tokens, tokens, options.heads()})
      .permute({2, 0, 1})
      .unsqueeze(0);
}

at::Tensor MultiHeadAttentionImpl::relative_position_bias(int64_t rows, int64_t cols) const {
  const int64_t size = options.relative_position_size(), heads = options.heads();
  if (!relative_position_table.defined() || (rows == size && cols == size)) return relative_position_bias();
  const at::Tensor index = size_cache_->constant({rows, cols}, relative_position_table.device(), [&] {
    return functional::relative_position_index(rows, cols).view(-1);
  });
  return size_cache_->derived({rows, cols}, relative_position_table, [&] {
    // ((2R-1)^2, heads) -> (1, heads, 2R-1, 2R-1), resized as timm's resize_rel_pos_bias_table_simple.
    const at::Tensor grid = relative_position_table.t().reshape({1, heads, 2 * size - 1, 2 * size - 1});
    const at::Tensor resized = at::upsample_bicubic2d(grid, {2 * rows - 1, 2 * cols - 1}, /*align_corners=*/false);
    return resized.reshape({heads, -1}).index_select(1, index).view({1, heads, rows * cols, rows * cols});
  });
}

at::Tensor MultiHeadAttentionImpl::forward(const at::Tensor& x, int64_t rows, int64_t cols) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options.dim(),
              "slideformer::MultiHeadAttention: input must be (B, N, ", options.dim(),
              "), got shape ", x.sizes());
  const int64_t batch = x.size(0), tokens = x.size(1), heads = options.heads();
  if (rows == 0 && cols == 0) {  // a square map
    rows = cols = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(tokens))));
  }
  const int64_t size = options.relative_position_size();
  TORCH_CHECK(!relative_position_table.defined() || (rows > 0 && cols > 0 && rows * cols == tokens),
              "slideformer::MultiHeadAttention: the relative-position table is for ", size * size, " tokens (a ",
              size, "x", size, " map, resized for other maps), got ", tokens, " tokens, not a ", rows, "x", cols,
              " map: give the map's rows and cols");
  const at::Tensor bias = relative_position_bias(rows, cols);
  // (B, N, 3C) -> 3 x (B, heads, N, d), strided views straight into the operator.
  // unbind, not three selects: its backward stacks the three gradients in one copy, where each
  // select would zero a full-size buffer and the three would then be added.
  const int64_t head_dim = options.dim() / heads;
  const std::vector<at::Tensor> qkv_out = apply_linear(qkv, x)
                                              .view({batch, tokens, 3, heads, head_dim})
                                              .permute({2, 0, 3, 1, 4})
                                              .unbind();
  const at::Tensor out = slideformer::attention(qkv_out[0], qkv_out[1], qkv_out[2],
                                                bias.defined() ? std::optional<at::Tensor>(bias)
                                                               : std::nullopt);
  return apply_linear(proj, out.transpose(1, 2).reshape({batch, tokens, options.dim()}));
}

namespace {
// The TorchScript twin of MultiHeadAttentionImpl::relative_position_bias(rows, cols) for a map
// other than the table's: the index of the map (functional::relative_position_index), the table
// resized bicubically, gathered.
std::string resized_bias_source(int64_t size, int64_t heads) {
  const std::string h = std::to_string(heads), side = std::to_string(2 * size - 1);
  return R"(
def resized_bias(self, rows: int, cols: int) -> Tensor:
    table = self.relative_position_table
    y = torch.arange(rows, device=table.device).repeat_interleave(cols)
    x = torch.arange(cols, device=table.device).repeat([rows])
    index = (y.unsqueeze(1) - y.unsqueeze(0) + (rows - 1)) * (2 * cols - 1) + (x.unsqueeze(1) - x.unsqueeze(0) + (cols - 1))
    grid = table.t().reshape(1, )" + h + ", " + side + ", " + side + R"()
    resized = torch.upsample_bicubic2d(grid, [2 * rows - 1, 2 * cols - 1], False, None, None)
    return torch.index_select(resized.reshape()" + h + R"(, -1), 1, index.view(-1)).view(1, )" + h +
         R"(, rows * cols, rows * cols)
)";
}
}  // namespace

// forward(x, rows, cols) of the flattened rows x cols map: the bias stored gathered for the
// table's own map, resized for any other.
torch::jit::Module MultiHeadAttentionImpl::script_form() const {
  torch::jit::Module module("MultiHeadAttention");
  const at::Tensor bias = relative_position_bias();
  std::string bias_source, bias_argument = "None";
  if (bias.defined()) {
    const int64_t size = options.relative_position_size();
    script::add_buffer(module, "attn_bias", bias);
    script::add_buffer(module, "relative_position_table", relative_position_table);
    script::define(module, resized_bias_source(size, options.heads()));
    bias_source = "    bias = self.attn_bias\n    if rows != " + std::to_string(size) + " or cols != " +
                  std::to_string(size) + ":\n        bias = self.resized_bias(rows, cols)\n";
    bias_argument = "bias";
  }
  const std::string heads = std::to_string(options.heads()), dim = std::to_string(options.dim());
  script::define(module, R"(
def forward(self, x: Tensor, rows: int, cols: int) -> Tensor:
    b, n = x.size(0), x.size(1)
    qkv = )" + script::linear(module, "qkv", *qkv, "x") + ".view(b, n, 3, " + heads + ", " +
                             std::to_string(options.dim() / options.heads()) + R"().permute(2, 0, 3, 1, 4)
)" + bias_source + "    a = slideformer.attention(qkv[0], qkv[1], qkv[2], " + bias_argument + R"(, False, None)
    return )" + script::linear(module, "proj", *proj, "a.transpose(1, 2).reshape(b, n, " + dim + ")") + "\n");
  return module;
}

SlideAttentionImpl::SlideAttentionImpl(SlideAttentionOptions options_)
    : options(std::move(options_)) {
  reset();
}

void SlideAttentionImpl::reset() {
  TORCH_CHECK(options.heads() > 0 && options.dim() % options.heads() == 0,
              "slideformer::SlideAttention: dim must be a positive multiple of heads, got dim ",
              options.dim(), " and heads ", options.heads());
  const int64_t head_dim = options.dim() / options.heads();
  const int64_t window = options.kernel_size() * options.kernel_size();
  register_projections(*this, options.dim(), options.qkv_bias());
  key_bias = register_parameter("key_bias", at::empty({options.heads(), window}));
  init::trunc_normal_(key_bias, 0.02);
  // The reference's frozen one-hot depthwise conv: a parameter that never trains.
  identity_weight = register_parameter(
      "identity_weight", at::eye(window).expand({head_dim, window, window}).clone(),
      /*requires_grad=*/false);
  identity_bias = register_parameter("identity_bias", at::empty({head_dim, window}));
  shift_weight = register_parameter("shift_weight", at::empty({head_dim, window, window}));
  shift_bias = register_parameter("shift_bias", at::empty({head_dim, window}));
  for (auto* t : {&identity_bias, &shift_weight, &shift_bias})
    init::default_depthwise_conv_(*t, options.kernel_size());
}

void SlideAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::SlideAttention(dim=" << options.dim()
         << ", heads=" << options.heads() << ", kernel_size=" << options.kernel_size()
         << ", dilation=" << options.dilation() << ", border=" << options.border()
         << (is_reparameterized() ? ", reparameterized" : "") << ")";
}

bool SlideAttentionImpl::is_reparameterized() const {
  return !identity_weight.any().item<bool>() && !identity_bias.any().item<bool>();
}

at::Tensor SlideAttentionImpl::effective_shift_weight() const { return identity_weight + shift_weight; }

at::Tensor SlideAttentionImpl::effective_shift_bias() const { return identity_bias + shift_bias; }

// The fixed path moves into the learnable one and is zeroed: the parameters alone hold the merged
// state, so clone(), torch::save/load and the export carry it (the sums stay exact: x + 0 = x).
void SlideAttentionImpl::reparameterize() {
  at::NoGradGuard no_grad;
  shift_weight.add_(identity_weight);
  identity_weight.zero_();
  shift_bias.add_(identity_bias);
  identity_bias.zero_();
}

at::Tensor SlideAttentionImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4 && x.size(3) == options.dim(),
              "slideformer::SlideAttention: input must be (B, Y, X, ", options.dim(),
              "), got shape ", x.sizes());
  const int64_t batch = x.size(0), rows = x.size(1), cols = x.size(2), heads = options.heads();
  // Head-major channels (head, {q, k, v}, d) -> 3 x (B, heads, Y, X, d) strided views (unbind:
  // see MultiHeadAttentionImpl::forward).
  const int64_t head_dim = options.dim() / heads;
  const std::vector<at::Tensor> qkv_out = apply_linear(qkv, x)
                                              .view({batch, rows, cols, heads, 3, head_dim})
                                              .permute({4, 0, 3, 1, 2, 5})
                                              .unbind();
  const at::Tensor out = slideformer::slide_attention(
      qkv_out[0], qkv_out[1], qkv_out[2],
      SlideAttentionFuncOptions(options.kernel_size())
          .dilation(options.dilation())
          .border(options.border())
          .key_bias(key_bias)
          .shift_weight(effective_shift_weight())
          .shift_bias(effective_shift_bias()));
  return apply_linear(proj, out.permute({0, 2, 3, 1, 4}).reshape({batch, rows, cols, options.dim()}));
}

torch::jit::Module SlideAttentionImpl::script_form() const {
  torch::jit::Module module("SlideAttention");
  script::add_parameter(module, "key_bias", key_bias);
  script::add_parameter(module, "shift_weight", effective_shift_weight());  // paths merged
  script::add_parameter(module, "shift_bias", effective_shift_bias());
  module.register_attribute("border", c10::StringType::get(), options.border());
  const std::string dim = std::to_string(options.dim());
  script::define(module, R"(
def forward(self, x: Tensor) -> Tensor:
    b, y, w = x.size(0), x.size(1), x.size(2)
    qkv = )" + script::linear(module, "qkv", *qkv, "x") + ".view(b, y, w, " + std::to_string(options.heads()) +
                             ", 3, " + std::to_string(options.dim() / options.heads()) + R"().permute(4, 0, 3, 1, 2, 5)
    a = slideformer.slide_attention(qkv[0], qkv[1], qkv[2], )" + std::to_string(options.kernel_size()) + ", " +
                             std::to_string(options.dilation()) + R"(,
        self.key_bias, self.shift_weight, self.shift_bias, self.border, None)
    return )" + script::linear(module, "proj", *proj, "a.permute(0, 2, 3, 1, 4).reshape(b, y, w, " + dim + ")") + "\n");
  return module;
}

}  // namespace slideformer::nn
