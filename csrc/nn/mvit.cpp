// PoolingAttention, MViTBlock and the MViT classifiers (image MViTv2, torchvision's video MViT;
// docs/modules.md): one code for (Y, X) and (T, Y, X) token grids.
#include <c10/util/accumulate.h>
#include <torch/nn/functional/pooling.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>

#include "nn/init.h"
#include "nn/layers.h"
#include "nn/script.h"
#include "slideformer/nn/description.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"
#include "slideformer/ops.h"

namespace slideformer::nn {

namespace {

// Size along an axis pooled with an odd kernel, padding kernel / 2 and `stride`.
int64_t pooled_size(int64_t size, int64_t stride) { return (size + stride - 1) / stride; }

std::vector<int64_t> pooled_grid(at::IntArrayRef grid, at::IntArrayRef stride) {
  std::vector<int64_t> out;
  for (size_t a = 0; a < grid.size(); ++a) out.push_back(pooled_size(grid[a], stride[a]));
  return out;
}

std::vector<int64_t> halves(at::IntArrayRef kernel) {
  std::vector<int64_t> out;
  for (int64_t k : kernel) out.push_back(k / 2);
  return out;
}

// Whether a kernel and stride change anything (else the pooling is left out).
bool pools(at::IntArrayRef kernel, at::IntArrayRef stride) {
  return c10::multiply_integers(kernel) > 1 || c10::multiply_integers(stride) > 1;
}

// `given`, or `fill` along each of `rank` axes when it is empty.
std::vector<int64_t> per_axis(const std::vector<int64_t>& given, int64_t fill, size_t rank) {
  return given.empty() ? std::vector<int64_t>(rank, fill) : given;
}

std::string number(int64_t value) { return std::to_string(value); }

// "a, b, c": a grid in TorchScript argument lists.
std::string sizes(at::IntArrayRef values) {
  std::string out;
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + number(values[i]);
  return out;
}

// The grid of a (B, *grid, C) map `map` of `rank` grid axes, as a TorchScript List[int].
std::string grid_of_map_source(const std::string& map, size_t rank) {
  std::string out;
  for (size_t a = 1; a <= rank; ++a) out += (a > 1 ? ", " : "") + map + ".size(" + std::to_string(a) + ")";
  return "[" + out + "]";
}

// pooled_grid() of the TorchScript List[int] `grid`.
std::string pooled_grid_source(const std::string& grid, at::IntArrayRef stride) {
  std::string out;
  for (size_t a = 0; a < stride.size(); ++a) {
    const std::string size = grid + "[" + std::to_string(a) + "]";
    out += (a ? ", " : "") +
           (stride[a] == 1 ? size : "(" + size + " + " + number(stride[a] - 1) + ") // " + number(stride[a]));
  }
  return "[" + out + "]";
}

// The permutations between (N, *grid, C) and (N, C, *grid).
std::vector<int64_t> channels_first(size_t rank) {
  std::vector<int64_t> order{0, static_cast<int64_t>(rank) + 1};
  for (size_t a = 1; a <= rank; ++a) order.push_back(static_cast<int64_t>(a));
  return order;
}

std::vector<int64_t> channels_last(size_t rank) {
  std::vector<int64_t> order{0};
  for (size_t a = 2; a <= rank + 1; ++a) order.push_back(static_cast<int64_t>(a));
  order.push_back(1);
  return order;
}

// Max or average pooling of a (N, C, *grid) map, 2 or 3 grid axes.
at::Tensor grid_pool(const at::Tensor& map, PoolMode mode, at::IntArrayRef kernel, at::IntArrayRef stride) {
  const std::vector<int64_t> padding = halves(kernel);
  if (kernel.size() == 2) {
    return mode == PoolMode::kMax ? at::max_pool2d(map, kernel, stride, padding)
                                  : at::avg_pool2d(map, kernel, stride, padding);
  }
  return mode == PoolMode::kMax ? at::max_pool3d(map, kernel, stride, padding)
                                : at::avg_pool3d(map, kernel, stride, padding);
}

// Its TorchScript twin.
std::string grid_pool_source(const std::string& map, PoolMode mode, at::IntArrayRef kernel, at::IntArrayRef stride) {
  const std::string rank = number(static_cast<int64_t>(kernel.size()));
  const std::string common = map + ", " + script::int_list(kernel) + ", " + script::int_list(stride) + ", " +
                             script::int_list(halves(kernel));
  if (mode == PoolMode::kMax) {
    return "torch.max_pool" + rank + "d(" + common + ", " + script::int_list(std::vector<int64_t>(kernel.size(), 1)) +
           ", False)";
  }
  return "torch.avg_pool" + rank + "d(" + common + ", False, True, None)";
}

// The shortcut's pooling to the queries' grid: kernel stride + 1 where the stride is > 1.
std::vector<int64_t> shortcut_kernel(at::IntArrayRef stride) {
  std::vector<int64_t> kernel;
  for (int64_t s : stride) kernel.push_back(s > 1 ? s + 1 : 1);
  return kernel;
}

// The grid of an input of PoolingAttention / MViTBlock, checked: an image map (B, Y, X, dim) or a
// clip (B, T, Y, X, dim) of any size, or with a class token the (B, 1 + N, dim) tokens of the
// options' grid.
std::vector<int64_t> input_grid(const at::Tensor& x, const PoolingAttentionOptions& o, const char* what) {
  const size_t rank = o.input_size().size();
  if (o.class_token()) {
    const int64_t tokens = 1 + c10::multiply_integers(o.input_size());
    TORCH_CHECK(x.dim() == 3 && x.size(1) == tokens && x.size(2) == o.dim(), "slideformer::", what,
                ": input must be (B, ", tokens, ", ", o.dim(), ") tokens (the class token, then the ",
                at::IntArrayRef(o.input_size()), " grid), got shape ", x.sizes());
    return o.input_size();
  }
  bool positive = x.dim() == static_cast<int64_t>(rank) + 2;
  for (size_t a = 1; positive && a <= rank; ++a) positive = x.size(static_cast<int64_t>(a)) > 0;
  TORCH_CHECK(positive && x.size(-1) == o.dim(), "slideformer::", what, ": input must be (B, ",
              rank == 3 ? "T, " : "", "Y, X, ", o.dim(), "), got shape ", x.sizes());
  return x.sizes().slice(1, rank).vec();
}

}  // namespace

DepthwiseConvImpl::DepthwiseConvImpl(DepthwiseConvOptions options_) : options(std::move(options_)) { reset(); }

void DepthwiseConvImpl::reset() {
  const auto& k = options.kernel();
  TORCH_CHECK((k.size() == 2 || k.size() == 3) && options.stride().size() == k.size() && options.channels() > 0,
              "slideformer::DepthwiseConv: kernel and stride must both have 2 or 3 entries and channels must be "
              "positive, got kernel ", at::IntArrayRef(k), ", stride ", at::IntArrayRef(options.stride()),
              " and channels ", options.channels());
  std::vector<int64_t> shape{options.channels(), 1};
  shape.insert(shape.end(), k.begin(), k.end());
  weight = register_parameter("weight", at::empty(shape));
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));  // Conv2d / Conv3d's default
}

void DepthwiseConvImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::DepthwiseConv(channels=" << options.channels()
         << ", kernel=" << at::IntArrayRef(options.kernel()) << ", stride=" << at::IntArrayRef(options.stride()) << ")";
}

std::vector<int64_t> DepthwiseConvImpl::padding() const { return halves(options.kernel()); }

at::Tensor DepthwiseConvImpl::forward(const at::Tensor& x) {
  const std::vector<int64_t> dilation(options.kernel().size(), 1);
  if (options.kernel().size() == 2) {
    return at::conv2d(x, weight, {}, options.stride(), padding(), dilation, options.channels());
  }
  return at::conv3d(x, weight, {}, options.stride(), padding(), dilation, options.channels());
}

PoolingAttentionImpl::PoolingAttentionImpl(PoolingAttentionOptions options_) : options(std::move(options_)) {
  reset();
}

std::vector<int64_t> PoolingAttentionImpl::kernel_q() const { return per_axis(options.kernel_q(), 3, options.input_size().size()); }
std::vector<int64_t> PoolingAttentionImpl::kernel_kv() const { return per_axis(options.kernel_kv(), 3, options.input_size().size()); }
std::vector<int64_t> PoolingAttentionImpl::stride_q() const { return per_axis(options.stride_q(), 1, options.input_size().size()); }
std::vector<int64_t> PoolingAttentionImpl::stride_kv() const { return per_axis(options.stride_kv(), 1, options.input_size().size()); }
std::vector<int64_t> PoolingAttentionImpl::query_grid() const { return pooled_grid(options.input_size(), stride_q()); }
std::vector<int64_t> PoolingAttentionImpl::key_grid() const { return pooled_grid(options.input_size(), stride_kv()); }

void PoolingAttentionImpl::reset() {
  const auto& o = options;
  const size_t rank = o.input_size().size();
  TORCH_CHECK(o.heads() > 0 && o.dim_out() % o.heads() == 0,
              "slideformer::PoolingAttention: dim_out must be a positive multiple of heads, got dim_out ",
              o.dim_out(), " and heads ", o.heads());
  TORCH_CHECK(rank == 2 || rank == 3, "slideformer::PoolingAttention: input_size must be (Y, X) or (T, Y, X), got ",
              at::IntArrayRef(o.input_size()));
  TORCH_CHECK(o.dim() > 0 && *std::min_element(o.input_size().begin(), o.input_size().end()) > 0,
              "slideformer::PoolingAttention: dim and input_size must be positive, got ", o.dim(), " and ",
              at::IntArrayRef(o.input_size()));
  const std::pair<const char*, std::vector<int64_t>> kernels[] = {{"kernel_q", o.kernel_q()}, {"kernel_kv", o.kernel_kv()}};
  for (const auto& [name, kernel] : kernels) {
    TORCH_CHECK(kernel.empty() || kernel.size() == rank, "slideformer::PoolingAttention: ", name,
                " must have one entry per axis of input_size (", rank, "), got ", at::IntArrayRef(kernel));
    for (int64_t k : kernel) {
      TORCH_CHECK(k >= 1 && k % 2 == 1, "slideformer::PoolingAttention: ", name,
                  " must be odd and positive along every axis, got ", at::IntArrayRef(kernel));
    }
  }
  const std::pair<const char*, std::vector<int64_t>> strides[] = {{"stride_q", o.stride_q()}, {"stride_kv", o.stride_kv()}};
  for (const auto& [name, stride] : strides) {
    TORCH_CHECK((stride.empty() || stride.size() == rank) &&
                    std::all_of(stride.begin(), stride.end(), [](int64_t s) { return s >= 1; }),
                "slideformer::PoolingAttention: ", name, " must have one entry >= 1 per axis of input_size (", rank,
                "), got ", at::IntArrayRef(stride));
  }
  const int64_t head_dim = o.dim_out() / o.heads();
  qkv = register_module("qkv", init::linear(o.dim(), 3 * o.dim_out(), o.qkv_bias()));
  proj = register_module("proj", init::linear(o.dim_out(), o.dim_out()));
  if (o.mode() == PoolMode::kConv) {
    if (pools(kernel_q(), stride_q())) {
      pool_q = register_module("pool_q", DepthwiseConv(DepthwiseConvOptions(head_dim, kernel_q(), stride_q())));
      norm_q = register_module("norm_q", layer_norm(head_dim, o.norm_eps()));
    }
    if (pools(kernel_kv(), stride_kv())) {
      pool_k = register_module("pool_k", DepthwiseConv(DepthwiseConvOptions(head_dim, kernel_kv(), stride_kv())));
      norm_k = register_module("norm_k", layer_norm(head_dim, o.norm_eps()));
      pool_v = register_module("pool_v", DepthwiseConv(DepthwiseConvOptions(head_dim, kernel_kv(), stride_kv())));
      norm_v = register_module("norm_v", layer_norm(head_dim, o.norm_eps()));
    }
  }
  if (o.relative_position()) {
    // Square tables over the larger spatial side (torchvision's), a time table for (T, Y, X).
    const std::vector<int64_t> q = query_grid(), k = key_grid();
    DecomposedRelativePositionOptions table(std::max(q[rank - 2], q[rank - 1]), std::max(k[rank - 2], k[rank - 1]),
                                            head_dim);
    if (rank == 3) table.query_frames(q[0]).key_frames(k[0]);
    relative_position = register_module("relative_position", DecomposedRelativePosition(table));
  }
}

void PoolingAttentionImpl::pretty_print(std::ostream& stream) const {
  const char* modes[] = {"conv", "max", "avg"};
  stream << "slideformer::nn::PoolingAttention(dim=" << options.dim() << ", dim_out=" << options.dim_out()
         << ", heads=" << options.heads() << ", input_size=" << at::IntArrayRef(options.input_size())
         << ", kernel_q=" << at::IntArrayRef(kernel_q()) << ", kernel_kv=" << at::IntArrayRef(kernel_kv())
         << ", stride_q=" << at::IntArrayRef(stride_q()) << ", stride_kv=" << at::IntArrayRef(stride_kv())
         << ", mode=" << modes[static_cast<int>(options.mode())]
         << ", relative_position=" << options.relative_position()
         << ", residual_pooling=" << options.residual_pooling() << ", class_token=" << options.class_token() << ")";
}

namespace {

// (B, heads, [1 +] prod(grid), d) -> (B, heads, [1 +] prod(pooled grid), d): pooled per head over
// the grid, the class token (first) left out of the pooling and put back before the norm.
at::Tensor pool(const at::Tensor& t, const PoolingAttentionOptions& o, at::IntArrayRef kernel, at::IntArrayRef stride,
                DepthwiseConv conv, torch::nn::LayerNorm norm, at::IntArrayRef grid) {
  if (!pools(kernel, stride)) return t;
  const int64_t batch = t.size(0), heads = t.size(1), d = t.size(3);
  const at::Tensor grid_tokens = o.class_token() ? t.narrow(2, 1, t.size(2) - 1) : t;
  std::vector<int64_t> shape{batch * heads};
  shape.insert(shape.end(), grid.begin(), grid.end());
  shape.push_back(d);
  at::Tensor map = grid_tokens.reshape(shape).permute(channels_first(grid.size()));
  map = o.mode() == PoolMode::kConv ? conv(map) : grid_pool(map, o.mode(), kernel, stride);
  at::Tensor out = map.reshape({batch, heads, d, -1}).transpose(2, 3);
  if (o.class_token()) out = at::cat({t.narrow(2, 0, 1), out}, 2);
  return norm ? norm(out) : out;
}

// The TorchScript twin of pool() applied to `input` on `grid` (a List[int] of the TorchScript
// source: any grid).
std::string pool_source(torch::jit::Module& module, const std::string& name, const std::string& input,
                        const PoolingAttentionOptions& o, at::IntArrayRef kernel, at::IntArrayRef stride,
                        const DepthwiseConv& conv, const torch::nn::LayerNorm& norm) {
  if (!pools(kernel, stride)) return input;
  const int64_t d = o.dim_out() / o.heads();
  const std::string grid_tokens = o.class_token() ? input + "[:, :, 1:]" : input;
  const std::string map = grid_tokens + ".reshape([b * " + number(o.heads()) + "] + grid + [" + number(d) +
                          "]).permute(" + sizes(channels_first(kernel.size())) + ")";
  const std::string pooled =
      o.mode() == PoolMode::kConv
          ? script::convolution(module, "pool_" + name, conv->weight, {}, stride, conv->padding(),
                                std::vector<int64_t>(kernel.size(), 1), d, map)
          : grid_pool_source(map, o.mode(), kernel, stride);
  std::string out = pooled + ".reshape(b, " + number(o.heads()) + ", " + number(d) + ", -1).transpose(2, 3)";
  if (o.class_token()) out = "torch.cat([" + input + "[:, :, :1], " + out + "], 2)";
  return norm ? script::layer_norm(module, "norm_" + name, *norm, out) : out;
}

}  // namespace

at::Tensor PoolingAttentionImpl::forward(const at::Tensor& x) {
  return forward_tokens(x, input_grid(x, options, "PoolingAttention")).first;
}

// Any grid: the relative-position tables are resized to the pooled grids (see
// DecomposedRelativePosition); at input_size everything is as the options describe.
std::pair<at::Tensor, std::vector<int64_t>> PoolingAttentionImpl::forward_tokens(const at::Tensor& x,
                                                                                 at::IntArrayRef grid) {
  const auto& o = options;
  const int64_t batch = x.size(0), heads = o.heads(), head_dim = o.dim_out() / heads;
  const int64_t tokens = c10::multiply_integers(grid) + (o.class_token() ? 1 : 0);
  const std::vector<at::Tensor> qkv_out = apply_linear(qkv, x)
                                              .view({batch, tokens, 3, heads, head_dim})
                                              .permute({2, 0, 3, 1, 4})
                                              .unbind();
  const at::Tensor q = pool(qkv_out[0], o, kernel_q(), stride_q(), pool_q, norm_q, grid);
  const at::Tensor k = pool(qkv_out[1], o, kernel_kv(), stride_kv(), pool_k, norm_k, grid);
  const at::Tensor v = pool(qkv_out[2], o, kernel_kv(), stride_kv(), pool_v, norm_v, grid);
  const std::vector<int64_t> q_grid = pooled_grid(grid, stride_q()), k_grid = pooled_grid(grid, stride_kv());
  // Without the class token's query row and key column (zero there).
  const at::Tensor grid_q = o.class_token() ? q.narrow(2, 1, q.size(2) - 1) : q;
  std::optional<at::Tensor> bias;
  if (relative_position) {
    bias = relative_position->forward(grid_q, q_grid, k_grid);
    if (o.class_token()) bias = at::constant_pad_nd(*bias, {1, 0, 1, 0});
  }
  at::Tensor out = slideformer::attention(q, k, v, bias);
  if (o.residual_pooling()) out = out + (o.class_token() ? at::constant_pad_nd(grid_q, {0, 0, 1, 0}) : q);
  std::vector<int64_t> shape{batch};
  if (o.class_token()) {
    shape.push_back(out.size(2));
  } else {
    shape.insert(shape.end(), q_grid.begin(), q_grid.end());
  }
  shape.push_back(o.dim_out());
  return {apply_linear(proj, out.transpose(1, 2).reshape(shape)), q_grid};
}

// Any grid, as forward_tokens: forward(x) of a map, forward(x, grid) of class token + grid tokens.
torch::jit::Module PoolingAttentionImpl::script_form() const {
  const auto& o = options;
  torch::jit::Module module("PoolingAttention");
  const int64_t head_dim = o.dim_out() / o.heads();
  const std::string grid_q = o.class_token() ? "q[:, :, 1:]" : "q";
  std::string code = "def forward(self, x: Tensor" + std::string(o.class_token() ? ", grid: List[int]" : "") +
                     ") -> Tensor:\n    b = x.size(0)\n";
  if (!o.class_token()) code += "    grid = " + grid_of_map_source("x", o.input_size().size()) + "\n";
  code += "    qkv = " + script::linear(module, "qkv", *qkv, "x") + ".reshape(b, -1, 3, " + number(o.heads()) + ", " +
          number(head_dim) + ").permute(2, 0, 3, 1, 4)\n";
  code += "    q = " + pool_source(module, "q", "qkv[0]", o, kernel_q(), stride_q(), pool_q, norm_q) + "\n";
  code += "    k = " + pool_source(module, "k", "qkv[1]", o, kernel_kv(), stride_kv(), pool_k, norm_k) + "\n";
  code += "    v = " + pool_source(module, "v", "qkv[2]", o, kernel_kv(), stride_kv(), pool_v, norm_v) + "\n";
  code += "    qg = " + pooled_grid_source("grid", stride_q()) + "\n";
  std::string bias = "None";
  if (relative_position) {
    code += "    kg = " + pooled_grid_source("grid", stride_kv()) + "\n";
    bias = script::submodule(module, "relative_position", *relative_position, grid_q + ", qg, kg");
    if (o.class_token()) bias = "torch.constant_pad_nd(" + bias + ", [1, 0, 1, 0], 0.)";
  }
  code += "    a = slideformer.attention(q, k, v, " + bias + ", False, None)\n";
  if (o.residual_pooling()) {
    code += "    a = a + " + (o.class_token() ? "torch.constant_pad_nd(" + grid_q + ", [0, 0, 1, 0], 0.)" : grid_q) + "\n";
  }
  const std::string shape = o.class_token() ? "b, -1, " + number(o.dim_out()) : "[b] + qg + [" + number(o.dim_out()) + "]";
  code += "    return " + script::linear(module, "proj", *proj, "a.transpose(1, 2).reshape(" + shape + ")") + "\n";
  script::define(module, code);
  return module;
}

MViTBlockImpl::MViTBlockImpl(MViTBlockOptions options_) : options(std::move(options_)) { reset(); }

void MViTBlockImpl::reset() {
  const PoolingAttentionOptions& a = options.attention();
  const int64_t inner = options.widen_in_attention() ? a.dim_out() : a.dim();
  norm1 = register_module("norm1", layer_norm(a.dim(), a.norm_eps()));
  if (a.dim() != a.dim_out()) shortcut_proj = register_module("shortcut_proj", init::linear(a.dim(), a.dim_out()));
  attn = register_module("attn", PoolingAttention(PoolingAttentionOptions(a).dim_out(inner)));
  norm2 = register_module("norm2", layer_norm(inner, a.norm_eps()));
  mlp = register_module("mlp", Mlp(MlpOptions(inner, static_cast<int64_t>(inner * options.mlp_ratio())).out_dim(
                                   inner == a.dim_out() ? 0 : a.dim_out())));
}

void MViTBlockImpl::pretty_print(std::ostream& stream) const {
  const PoolingAttentionOptions& a = options.attention();
  stream << "slideformer::nn::MViTBlock(dim=" << a.dim() << ", dim_out=" << a.dim_out()
         << ", heads=" << a.heads() << ", stride_q=" << at::IntArrayRef(attn->stride_q())
         << ", stride_kv=" << at::IntArrayRef(attn->stride_kv()) << ", drop_path=" << options.drop_path()
         << ", widen_in_attention=" << options.widen_in_attention() << ")";
}

at::Tensor MViTBlockImpl::forward(const at::Tensor& x) {
  return forward_tokens(x, input_grid(x, options.attention(), "MViTBlock")).first;
}

std::pair<at::Tensor, std::vector<int64_t>> MViTBlockImpl::forward_tokens(const at::Tensor& x, at::IntArrayRef grid) {
  const bool widen_first = options.widen_in_attention(), class_token = options.attention().class_token();
  const std::vector<int64_t> stride = attn->stride_q();
  const at::Tensor normed = norm1(x);
  auto [attended, q_grid] = attn->forward_tokens(normed, grid);
  at::Tensor shortcut = shortcut_proj && widen_first ? apply_linear(shortcut_proj, normed) : x;
  if (c10::multiply_integers(stride) > 1) {  // to the pooled queries' grid
    const size_t rank = grid.size();
    const std::vector<int64_t> kernel = shortcut_kernel(stride);
    at::Tensor map = shortcut;
    if (class_token) {
      std::vector<int64_t> shape{x.size(0)};
      shape.insert(shape.end(), grid.begin(), grid.end());
      shape.push_back(shortcut.size(-1));
      map = shortcut.narrow(1, 1, shortcut.size(1) - 1).reshape(shape);
    }
    map = grid_pool(map.permute(channels_first(rank)), PoolMode::kMax, kernel, stride).permute(channels_last(rank));
    shortcut = class_token ? at::cat({shortcut.narrow(1, 0, 1), map.flatten(1, static_cast<int64_t>(rank))}, 1) : map;
  }
  const at::Tensor y = shortcut + functional::drop_path(attended, options.drop_path(), is_training());
  const at::Tensor normed2 = norm2(y);
  const at::Tensor residual = shortcut_proj && !widen_first ? apply_linear(shortcut_proj, normed2) : y;
  return {residual + functional::drop_path(mlp(normed2), options.drop_path(), is_training()), q_grid};
}

torch::jit::Module MViTBlockImpl::script_form() const {
  const PoolingAttentionOptions& a = options.attention();
  const bool widen_first = options.widen_in_attention();
  const std::vector<int64_t> stride = attn->stride_q();
  torch::jit::Module module("MViTBlock");
  // As PoolingAttention's: forward(x) of a map, forward(x, grid) with a class token.
  const std::string grid_argument = a.class_token() ? ", grid" : "";
  std::string code = "def forward(self, x: Tensor" + std::string(a.class_token() ? ", grid: List[int]" : "") +
                     ") -> Tensor:\n    h = " +
                     script::layer_norm(module, "norm1", *norm1, "x") + "\n    s = " +
                     (shortcut_proj && widen_first ? script::linear(module, "shortcut_proj", *shortcut_proj, "h")
                                                   : std::string("x")) + "\n";
  if (c10::multiply_integers(stride) > 1) {
    const size_t rank = stride.size();
    const std::string map = a.class_token() ? "s[:, 1:].reshape([s.size(0)] + grid + [-1])" : "s";
    std::string pooled = grid_pool_source(map + ".permute(" + sizes(channels_first(rank)) + ")", PoolMode::kMax,
                                          shortcut_kernel(stride), stride) + ".permute(" + sizes(channels_last(rank)) + ")";
    if (a.class_token()) pooled = "torch.cat([s[:, :1], " + pooled + ".flatten(1, " + number(static_cast<int64_t>(rank)) + ")], 1)";
    code += "    s = " + pooled + "\n";
  }
  code += "    x = s + " + script::submodule(module, "attn", *attn, "h" + grid_argument) + "\n";
  code += "    h = " + script::layer_norm(module, "norm2", *norm2, "x") + "\n";
  const std::string residual =
      shortcut_proj && !widen_first ? script::linear(module, "shortcut_proj", *shortcut_proj, "h") : "x";
  code += "    return " + residual + " + " + script::submodule(module, "mlp", *mlp, "h") + "\n";
  script::define(module, code);
  return module;
}

MViTImpl::MViTImpl(MViTOptions options_) : HierarchicalClassifier(std::move(options_)) { reset(); }

void MViTImpl::reset() {
  const auto& o = options;
  validate(o, OptionCheck("slideformer::MViT"));
  const size_t num_stages = o.depths().size();
  patch_embed = register_module(
      "patch_embed", PatchEmbed(PatchEmbedOptions(o.in_channels(), o.embed_dim(), o.patch_size())
                                    .overlapping(true).norm(false)));
  int64_t map = pooled_size(o.image_size(), o.patch_size());
  reset_position_encodings(o.position_encoding() == PositionEncoding::kLearned,
                           o.position_encoding() == PositionEncoding::kSinusoidal, map);
  stages = register_module("stages", torch::nn::ModuleList());
  const std::vector<std::vector<double>> drop_path = drop_path_rates();
  int64_t dim = o.embed_dim(), stride_kv = o.stride_kv();
  for (size_t s = 0; s < num_stages; ++s) {
    const int64_t dim_out = o.embed_dim() << s, stride_q = s > 0 ? 2 : 1;
    if (s > 0) stride_kv = std::max<int64_t>(stride_kv / 2, 1);
    torch::nn::ModuleList stage;
    for (int64_t i = 0; i < o.depths()[s]; ++i) {
      const int64_t stride = i == 0 ? stride_q : 1;
      stage->push_back(MViTBlock(
          MViTBlockOptions(PoolingAttentionOptions(dim, dim_out, o.heads()[s], {map, map})
                               .kernel_q({o.kernel_size(), o.kernel_size()})
                               .kernel_kv({o.kernel_size(), o.kernel_size()})
                               .stride_q({stride, stride})
                               .stride_kv({stride_kv, stride_kv})
                               .mode(o.pool_mode())
                               .relative_position(o.relative_position())
                               .residual_pooling(o.residual_pooling())
                               .norm_eps(o.norm_eps()))
              .mlp_ratio(o.mlp_ratio())
              .drop_path(drop_path[s][i])));
      dim = dim_out;
      if (i == 0) map = pooled_size(map, stride_q);
    }
    stages->push_back(stage);
  }
  norm = register_module("norm", layer_norm(dim, o.norm_eps()));
  head = register_module("head", init::linear(dim, o.num_classes()));
}

void MViTImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::MViT(image_size=" << options.image_size() << ", embed_dim=" << options.embed_dim()
         << ", stages=" << options.depths().size() << ", classes=" << options.num_classes() << ")";
}

VideoMViTImpl::VideoMViTImpl(VideoMViTOptions options_) : options(std::move(options_)) { reset(); }

std::vector<int64_t> VideoMViTImpl::token_grid() const {
  const auto& o = options;
  const int64_t extent[] = {o.frames(), o.image_size(), o.image_size()};
  std::vector<int64_t> grid;  // Conv3d's output, padding kernel / 2
  for (size_t a = 0; a < 3; ++a) {
    const int64_t k = o.patch_kernel()[a];
    grid.push_back((extent[a] + 2 * (k / 2) - k) / o.patch_stride()[a] + 1);
  }
  return grid;
}

void VideoMViTImpl::reset() {
  const auto& o = options;
  const size_t num_stages = o.depths().size();
  TORCH_CHECK(num_stages > 0 && o.heads().size() == num_stages,
              "slideformer::VideoMViT: depths and heads must have one entry per stage, got ", o.depths().size(),
              " and ", o.heads().size());
  const std::pair<const char*, std::vector<int64_t>> triples[] = {{"patch_kernel", o.patch_kernel()},
      {"patch_stride", o.patch_stride()}, {"kernel", o.kernel()}, {"stride_kv", o.stride_kv()}};
  for (const auto& [name, values] : triples) {
    TORCH_CHECK(values.size() == 3 && *std::min_element(values.begin(), values.end()) >= 1,
                "slideformer::VideoMViT: ", name, " must be three positive sizes (T, Y, X), got ", at::IntArrayRef(values));
  }
  TORCH_CHECK(o.frames() >= 1 && o.image_size() >= 1 && o.in_channels() >= 1 && o.num_classes() >= 1 && o.embed_dim() >= 1,
              "slideformer::VideoMViT: frames, image_size, in_channels, num_classes and embed_dim must be positive, got ",
              o.frames(), ", ", o.image_size(), ", ", o.in_channels(), ", ", o.num_classes(), " and ", o.embed_dim());
  patch_embed = register_module(
      "patch_embed", torch::nn::Conv3d(torch::nn::Conv3dOptions(o.in_channels(), o.embed_dim(), o.patch_kernel())
                                           .stride(o.patch_stride()).padding(halves(o.patch_kernel()))));
  std::vector<int64_t> grid = token_grid();
  class_token = register_parameter("class_token", at::empty({o.embed_dim()}));
  init::trunc_normal_(class_token, 0.02);
  if (!o.v2()) {  // MViTv1's learned positions
    spatial_position = register_parameter("spatial_position", at::empty({grid[1] * grid[2], o.embed_dim()}));
    temporal_position = register_parameter("temporal_position", at::empty({grid[0], o.embed_dim()}));
    class_position = register_parameter("class_position", at::empty({o.embed_dim()}));
    for (auto& table : {spatial_position, temporal_position, class_position}) init::trunc_normal_(table, 0.02);
  }
  blocks = register_module("blocks", torch::nn::ModuleList());
  const std::vector<std::vector<double>> drop_path = drop_path_schedule(o.depths(), o.drop_path_rate());
  std::vector<int64_t> stride_kv = o.stride_kv();
  const std::vector<int64_t> unpooled{1, 1, 1};
  int64_t dim = o.embed_dim();
  for (size_t s = 0; s < num_stages; ++s) {
    if (s > 0) {
      for (size_t a = 1; a < 3; ++a) stride_kv[a] = std::max<int64_t>(stride_kv[a] / 2, 1);
    }
    for (int64_t i = 0; i < o.depths()[s]; ++i) {
      const bool strided = s > 0 && i == 0, last_of_stage = i + 1 == o.depths()[s] && s + 1 < num_stages;
      const std::vector<int64_t> stride_q = strided ? std::vector<int64_t>{1, 2, 2} : unpooled;
      // MViTv2 widens in the attention of a stage's first block, MViTv1 in the MLP of its last.
      const int64_t dim_out = o.v2() ? o.embed_dim() << s : (last_of_stage ? dim * 2 : dim);
      blocks->push_back(MViTBlock(
          MViTBlockOptions(PoolingAttentionOptions(dim, dim_out, o.heads()[s], grid)
                               .kernel_q(o.v2() || strided ? o.kernel() : unpooled)
                               .kernel_kv(o.kernel())
                               .stride_q(stride_q)
                               .stride_kv(stride_kv)
                               .relative_position(o.v2())
                               .residual_pooling(o.v2())
                               .class_token(true)
                               .norm_eps(o.norm_eps()))
              .mlp_ratio(o.mlp_ratio())
              .drop_path(drop_path[s][i])
              .widen_in_attention(o.v2())));
      dim = dim_out;
      grid = pooled_grid(grid, stride_q);
    }
  }
  norm = register_module("norm", layer_norm(dim, o.norm_eps()));
  head_dropout = register_module("head_dropout", torch::nn::Dropout(o.head_dropout()));
  head = register_module("head", init::linear(dim, o.num_classes()));
}

void VideoMViTImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::VideoMViT(frames=" << options.frames() << ", image_size=" << options.image_size()
         << ", embed_dim=" << options.embed_dim() << ", blocks=" << blocks->size() << ", v2=" << options.v2()
         << ", classes=" << options.num_classes() << ")";
}

namespace {

// MViTv1's positions of the class token and the (T, Y, X) grid: (1 + T*Y*X, C).
at::Tensor learned_positions(const VideoMViTImpl& model) {
  const int64_t frames = model.temporal_position.size(0), places = model.spatial_position.size(0);
  return at::cat({model.class_position.unsqueeze(0),
                  model.temporal_position.repeat_interleave(places, 0) + model.spatial_position.repeat({frames, 1})});
}

}  // namespace

at::Tensor VideoMViTImpl::forward(const at::Tensor& clips) {
  const auto& o = options;
  TORCH_CHECK(clips.dim() == 5 && clips.size(1) == o.in_channels() && clips.size(2) == o.frames() &&
                  clips.size(3) == o.image_size() && clips.size(4) == o.image_size(),
              "slideformer::VideoMViT: clips must be (B, ", o.in_channels(), ", ", o.frames(), ", ", o.image_size(),
              ", ", o.image_size(), "), got shape ", clips.sizes());
  at::Tensor x = patch_embed(clips).flatten(2).transpose(1, 2);
  x = at::cat({class_token.expand({x.size(0), 1, -1}), x}, 1);
  if (!o.v2()) x = x + learned_positions(*this);
  std::vector<int64_t> grid = token_grid();
  for (const auto& block : *blocks) std::tie(x, grid) = block->as<MViTBlock>()->forward_tokens(x, grid);
  return head(head_dropout(norm(x).select(1, 0)));
}

torch::jit::Module VideoMViTImpl::script_form() const {
  const auto& o = options;
  torch::jit::Module module("VideoMViT");
  const std::vector<int64_t> stats_shape{1, o.in_channels(), 1, 1, 1};
  script::add_buffer(module, "input_mean", at::tensor(o.input_mean(), at::kFloat).view(stats_shape));
  script::add_buffer(module, "input_std", at::tensor(o.input_std(), at::kFloat).view(stats_shape));
  script::add_parameter(module, "class_token", class_token);
  const auto& conv = patch_embed->options;
  std::string code = "def forward(self, x: Tensor) -> Tensor:\n    x = " +
                     script::convolution(module, "patch_embed", patch_embed->weight, patch_embed->bias,
                                         *conv.stride(), halves(*conv.kernel_size()), {1, 1, 1}, 1,
                                         "(x - self.input_mean) / self.input_std") +
                     ".flatten(2).transpose(1, 2)\n    x = torch.cat([self.class_token.expand(x.size(0), 1, -1), x], 1)\n";
  if (!o.v2()) {
    script::add_parameter(module, "positions", learned_positions(*this));
    code += "    x = x + self.positions\n";
  }
  for (size_t i = 0; i < blocks->size(); ++i) {
    const MViTBlockImpl& block = *blocks->ptr<MViTBlockImpl>(i);
    code += "    x = " + script::submodule(module, "block_" + number(static_cast<int64_t>(i)), block,
                                           "x, " + script::int_list(block.options.attention().input_size())) + "\n";
  }
  code += "    return " + script::linear(module, "head", *head, script::layer_norm(module, "norm", *norm, "x") +
                                          ".select(1, 0)") + "\n";
  script::define(module, code);
  return module;
}

}  // namespace slideformer::nn
