// MultiHeadAttention and SlideAttention modules.
#include "nn/init.h"
#include "nn/layers.h"
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
    : options(std::move(options_)) {
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

at::Tensor MultiHeadAttentionImpl::forward(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 3 && x.size(2) == options.dim(),
              "slideformer::MultiHeadAttention: input must be (B, N, ", options.dim(),
              "), got shape ", x.sizes());
  const int64_t batch = x.size(0), tokens = x.size(1), heads = options.heads();
  const at::Tensor bias = relative_position_bias();
  TORCH_CHECK(!bias.defined() || bias.size(-1) == tokens,
              "slideformer::MultiHeadAttention: the relative-position table is for ",
              bias.defined() ? bias.size(-1) : 0, " tokens (a ", options.relative_position_size(),
              "x", options.relative_position_size(), " map), got ", tokens, " tokens");
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

}  // namespace slideformer::nn
