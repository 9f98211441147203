// PoolingAttention, MViTBlock and the MViT classifier (MViTv2, docs/modules.md).
#include <torch/nn/functional/pooling.h>

#include "nn/init.h"
#include "nn/layers.h"
#include "nn/script.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"
#include "slideformer/ops.h"

namespace slideformer::nn {

namespace {

// Side of a square map pooled with an odd kernel, padding kernel / 2 and `stride`.
int64_t pooled_size(int64_t size, int64_t stride) { return (size + stride - 1) / stride; }

torch::nn::LayerNorm layer_norm(int64_t dim, double eps) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim}).eps(eps));
}

std::string ints(int64_t a, int64_t b) { return "[" + std::to_string(a) + ", " + std::to_string(b) + "]"; }

}  // namespace

PoolingAttentionImpl::PoolingAttentionImpl(PoolingAttentionOptions options_) : options(std::move(options_)) {
  reset();
}

int64_t PoolingAttentionImpl::query_size() const { return pooled_size(options.input_size(), options.stride_q()); }

int64_t PoolingAttentionImpl::key_size() const { return pooled_size(options.input_size(), options.stride_kv()); }

void PoolingAttentionImpl::reset() {
  const auto& o = options;
  TORCH_CHECK(o.heads() > 0 && o.dim_out() % o.heads() == 0,
              "slideformer::PoolingAttention: dim_out must be a positive multiple of heads, got dim_out ",
              o.dim_out(), " and heads ", o.heads());
  TORCH_CHECK(o.dim() > 0 && o.input_size() > 0, "slideformer::PoolingAttention: dim and input_size must be "
              "positive, got ", o.dim(), " and ", o.input_size());
  TORCH_CHECK(o.kernel_size() >= 1 && o.kernel_size() % 2 == 1,
              "slideformer::PoolingAttention: kernel_size must be odd and positive, got ", o.kernel_size());
  TORCH_CHECK(o.stride_q() >= 1 && o.stride_kv() >= 1, "slideformer::PoolingAttention: stride_q and "
              "stride_kv must be >= 1, got ", o.stride_q(), " and ", o.stride_kv());
  const int64_t head_dim = o.dim_out() / o.heads();
  qkv = register_module("qkv", init::linear(o.dim(), 3 * o.dim_out(), o.qkv_bias()));
  proj = register_module("proj", init::linear(o.dim_out(), o.dim_out()));
  if (o.mode() == PoolMode::kConv) {
    auto conv = [&](int64_t stride) {
      return torch::nn::Conv2d(torch::nn::Conv2dOptions(head_dim, head_dim, o.kernel_size())
                                   .stride(stride).padding(o.kernel_size() / 2).groups(head_dim).bias(false));
    };
    if (o.kernel_size() > 1 || o.stride_q() > 1) {
      pool_q = register_module("pool_q", conv(o.stride_q()));
      norm_q = register_module("norm_q", layer_norm(head_dim, o.norm_eps()));
    }
    if (o.kernel_size() > 1 || o.stride_kv() > 1) {
      pool_k = register_module("pool_k", conv(o.stride_kv()));
      norm_k = register_module("norm_k", layer_norm(head_dim, o.norm_eps()));
      pool_v = register_module("pool_v", conv(o.stride_kv()));
      norm_v = register_module("norm_v", layer_norm(head_dim, o.norm_eps()));
    }
  }
  if (o.relative_position()) {
    relative_position = register_module(
        "relative_position",
        DecomposedRelativePosition(DecomposedRelativePositionOptions(query_size(), key_size(), head_dim)));
  }
}

void PoolingAttentionImpl::pretty_print(std::ostream& stream) const {
  const char* modes[] = {"conv", "max", "avg"};
  stream << "slideformer::nn::PoolingAttention(dim=" << options.dim() << ", dim_out=" << options.dim_out()
         << ", heads=" << options.heads() << ", input_size=" << options.input_size()
         << ", kernel_size=" << options.kernel_size() << ", stride_q=" << options.stride_q()
         << ", stride_kv=" << options.stride_kv() << ", mode=" << modes[static_cast<int>(options.mode())]
         << ", relative_position=" << options.relative_position()
         << ", residual_pooling=" << options.residual_pooling() << ")";
}

namespace {

// (B, heads, Y*X, d) -> (B, heads, Y'*X', d): pooled per head over the Y x X map.
at::Tensor pool(const at::Tensor& t, const PoolingAttentionOptions& o, int64_t stride, torch::nn::Conv2d conv,
                torch::nn::LayerNorm norm, int64_t rows, int64_t cols) {
  const int64_t k = o.kernel_size();
  if (k == 1 && stride == 1) return t;
  const int64_t batch = t.size(0), heads = t.size(1), d = t.size(3);
  at::Tensor map = t.reshape({batch * heads, rows, cols, d}).permute({0, 3, 1, 2});
  if (o.mode() == PoolMode::kConv) {
    map = conv(map);
  } else if (o.mode() == PoolMode::kMax) {
    map = at::max_pool2d(map, {k, k}, {stride, stride}, {k / 2, k / 2});
  } else {
    map = at::avg_pool2d(map, {k, k}, {stride, stride}, {k / 2, k / 2});
  }
  const at::Tensor out = map.reshape({batch, heads, d, -1}).transpose(2, 3);
  return norm ? norm(out) : out;
}

// The TorchScript twin of pool() applied to `input`, a map of `rows` x `cols` (variables of the
// TorchScript source).
std::string pool_source(torch::jit::Module& module, const std::string& name, const std::string& input,
                        const PoolingAttentionOptions& o, int64_t stride, const torch::nn::Conv2d& conv,
                        const torch::nn::LayerNorm& norm) {
  const int64_t k = o.kernel_size(), d = o.dim_out() / o.heads();
  if (k == 1 && stride == 1) return input;
  const std::string map = input + ".reshape(b * " + std::to_string(o.heads()) + ", rows, cols, " + std::to_string(d) +
                          ").permute(0, 3, 1, 2)";
  std::string pooled;
  if (o.mode() == PoolMode::kConv) {
    pooled = script::conv2d(module, "pool_" + name, *conv, map);
  } else if (o.mode() == PoolMode::kMax) {
    pooled = "torch.max_pool2d(" + map + ", " + ints(k, k) + ", " + ints(stride, stride) + ", " +
             ints(k / 2, k / 2) + ", [1, 1], False)";
  } else {
    pooled = "torch.avg_pool2d(" + map + ", " + ints(k, k) + ", " + ints(stride, stride) + ", " +
             ints(k / 2, k / 2) + ", False, True, None)";
  }
  const std::string out = pooled + ".reshape(b, " + std::to_string(o.heads()) + ", " + std::to_string(d) +
                          ", -1).transpose(2, 3)";
  return norm ? script::layer_norm(module, "norm_" + name, *norm, out) : out;
}

}  // namespace

// Any map size: the relative-position tables are resized to the pooled maps (see
// DecomposedRelativePosition); at input_size everything is as the options describe.
at::Tensor PoolingAttentionImpl::forward(const at::Tensor& x) {
  const auto& o = options;
  TORCH_CHECK(x.dim() == 4 && x.size(1) > 0 && x.size(2) > 0 && x.size(3) == o.dim(),
              "slideformer::PoolingAttention: input must be (B, Y, X, ", o.dim(), "), got shape ", x.sizes());
  const int64_t batch = x.size(0), rows = x.size(1), cols = x.size(2), heads = o.heads(), head_dim = o.dim_out() / heads;
  const std::vector<at::Tensor> qkv_out = apply_linear(qkv, x)
                                              .view({batch, rows * cols, 3, heads, head_dim})
                                              .permute({2, 0, 3, 1, 4})
                                              .unbind();
  const at::Tensor q = pool(qkv_out[0], o, o.stride_q(), pool_q, norm_q, rows, cols);
  const at::Tensor k = pool(qkv_out[1], o, o.stride_kv(), pool_k, norm_k, rows, cols);
  const at::Tensor v = pool(qkv_out[2], o, o.stride_kv(), pool_v, norm_v, rows, cols);
  const int64_t q_rows = pooled_size(rows, o.stride_q()), q_cols = pooled_size(cols, o.stride_q());
  std::optional<at::Tensor> bias;
  if (relative_position) {
    bias = relative_position->forward(q, q_rows, q_cols, pooled_size(rows, o.stride_kv()), pooled_size(cols, o.stride_kv()));
  }
  at::Tensor out = slideformer::attention(q, k, v, bias);
  if (o.residual_pooling()) out = out + q;
  return apply_linear(proj, out.transpose(1, 2).reshape({batch, q_rows, q_cols, o.dim_out()}));
}

// Any map size, as forward.
torch::jit::Module PoolingAttentionImpl::script_form() const {
  const auto& o = options;
  torch::jit::Module module("PoolingAttention");
  const int64_t head_dim = o.dim_out() / o.heads();
  auto pooled = [](const std::string& side, int64_t stride) {  // pooled_size() as TorchScript
    return "(" + side + " + " + std::to_string(stride - 1) + ") // " + std::to_string(stride);
  };
  std::string code = "def forward(self, x: Tensor) -> Tensor:\n    b, rows, cols = x.size(0), x.size(1), x.size(2)\n" +
                     ("    qkv = " + script::linear(module, "qkv", *qkv, "x")) + ".view(b, rows * cols, 3, " +
                     std::to_string(o.heads()) + ", " + std::to_string(head_dim) + ").permute(2, 0, 3, 1, 4)\n";
  code += "    q = " + pool_source(module, "q", "qkv[0]", o, o.stride_q(), pool_q, norm_q) + "\n";
  code += "    k = " + pool_source(module, "k", "qkv[1]", o, o.stride_kv(), pool_k, norm_k) + "\n";
  code += "    v = " + pool_source(module, "v", "qkv[2]", o, o.stride_kv(), pool_v, norm_v) + "\n";
  code += "    qy, qx = " + pooled("rows", o.stride_q()) + ", " + pooled("cols", o.stride_q()) + "\n";
  const std::string bias =
      relative_position ? script::submodule(module, "relative_position", *relative_position,
                                            "q, qy, qx, " + pooled("rows", o.stride_kv()) + ", " +
                                                pooled("cols", o.stride_kv()))
                        : "None";
  code += "    a = slideformer.attention(q, k, v, " + bias + ", False, None)\n";
  if (o.residual_pooling()) code += "    a = a + q\n";
  code += "    return " + script::linear(module, "proj", *proj,
                                         "a.transpose(1, 2).reshape(b, qy, qx, " + std::to_string(o.dim_out()) + ")") +
          "\n";
  script::define(module, code);
  return module;
}

MViTBlockImpl::MViTBlockImpl(MViTBlockOptions options_) : options(std::move(options_)) { reset(); }

void MViTBlockImpl::reset() {
  const PoolingAttentionOptions& a = options.attention();
  norm1 = register_module("norm1", layer_norm(a.dim(), a.norm_eps()));
  if (a.dim() != a.dim_out()) shortcut_proj = register_module("shortcut_proj", init::linear(a.dim(), a.dim_out()));
  attn = register_module("attn", PoolingAttention(a));
  norm2 = register_module("norm2", layer_norm(a.dim_out(), a.norm_eps()));
  mlp = register_module(
      "mlp", Mlp(MlpOptions(a.dim_out(), static_cast<int64_t>(a.dim_out() * options.mlp_ratio()))));
}

void MViTBlockImpl::pretty_print(std::ostream& stream) const {
  const PoolingAttentionOptions& a = options.attention();
  stream << "slideformer::nn::MViTBlock(dim=" << a.dim() << ", dim_out=" << a.dim_out()
         << ", heads=" << a.heads() << ", stride_q=" << a.stride_q() << ", stride_kv=" << a.stride_kv()
         << ", drop_path=" << options.drop_path() << ")";
}

at::Tensor MViTBlockImpl::forward(const at::Tensor& x) {
  const int64_t stride = options.attention().stride_q();
  const at::Tensor normed = norm1(x);
  at::Tensor shortcut = shortcut_proj ? apply_linear(shortcut_proj, normed) : x;
  if (stride > 1) {  // to the pooled queries' map
    shortcut = at::max_pool2d(shortcut.permute({0, 3, 1, 2}), {stride + 1, stride + 1}, {stride, stride},
                              {(stride + 1) / 2, (stride + 1) / 2})
                   .permute({0, 2, 3, 1});
  }
  const at::Tensor y = shortcut + functional::drop_path(attn(normed), options.drop_path(), is_training());
  return y + functional::drop_path(mlp(norm2(y)), options.drop_path(), is_training());
}

torch::jit::Module MViTBlockImpl::script_form() const {
  const int64_t stride = options.attention().stride_q();
  torch::jit::Module module("MViTBlock");
  std::string code = "def forward(self, x: Tensor) -> Tensor:\n    h = " +
                     script::layer_norm(module, "norm1", *norm1, "x") + "\n    s = " +
                     (shortcut_proj ? script::linear(module, "shortcut_proj", *shortcut_proj, "h") : std::string("x")) + "\n";
  if (stride > 1) {
    code += "    s = torch.max_pool2d(s.permute(0, 3, 1, 2), " + ints(stride + 1, stride + 1) + ", " +
            ints(stride, stride) + ", " + ints((stride + 1) / 2, (stride + 1) / 2) +
            ", [1, 1], False).permute(0, 2, 3, 1)\n";
  }
  code += "    x = s + " + script::submodule(module, "attn", *attn, "h") + "\n";
  code += "    return x + " +
          script::submodule(module, "mlp", *mlp, script::layer_norm(module, "norm2", *norm2, "x")) + "\n";
  script::define(module, code);
  return module;
}

MViTImpl::MViTImpl(MViTOptions options_) : options(std::move(options_)) { reset(); }

void MViTImpl::reset() {
  const auto& o = options;
  const size_t num_stages = o.depths().size();
  TORCH_CHECK(num_stages > 0 && o.heads().size() == num_stages,
              "slideformer::MViT: depths and heads must have one entry per stage, got ", o.depths().size(),
              " and ", o.heads().size());
  TORCH_CHECK(o.patch_size() >= 1 && o.image_size() >= o.patch_size(), "slideformer::MViT: patch_size must be in "
              "[1, image_size ", o.image_size(), "], got ", o.patch_size());
  patch_embed = register_module(
      "patch_embed", PatchEmbed(PatchEmbedOptions(o.in_channels(), o.embed_dim(), o.patch_size())
                                    .overlapping(true).norm(false)));
  int64_t map = pooled_size(o.image_size(), o.patch_size());
  if (o.position_encoding() == PositionEncoding::kLearned) {
    absolute_position = register_module(
        "absolute_position", AbsolutePositionEmbedding(AbsolutePositionEmbeddingOptions(map, map, o.embed_dim())));
  } else if (o.position_encoding() == PositionEncoding::kSinusoidal) {
    sinusoidal_position = register_module(
        "sinusoidal_position", SinusoidalPositionEncoding(SinusoidalPositionEncodingOptions(o.embed_dim())));
  }
  stages = register_module("stages", torch::nn::ModuleList());
  int64_t total_blocks = 0;
  for (int64_t depth : o.depths()) total_blocks += depth;
  int64_t block_index = 0, dim = o.embed_dim(), stride_kv = o.stride_kv();
  for (size_t s = 0; s < num_stages; ++s) {
    const int64_t dim_out = o.embed_dim() << s, stride_q = s > 0 ? 2 : 1;
    if (s > 0) stride_kv = std::max<int64_t>(stride_kv / 2, 1);
    torch::nn::ModuleList stage;
    for (int64_t i = 0; i < o.depths()[s]; ++i, ++block_index) {
      const double drop = total_blocks > 1 ? o.drop_path_rate() * block_index / (total_blocks - 1) : 0.0;
      stage->push_back(MViTBlock(
          MViTBlockOptions(PoolingAttentionOptions(dim, dim_out, o.heads()[s], map)
                               .kernel_size(o.kernel_size())
                               .stride_q(i == 0 ? stride_q : 1)
                               .stride_kv(stride_kv)
                               .mode(o.pool_mode())
                               .relative_position(o.relative_position())
                               .residual_pooling(o.residual_pooling())
                               .norm_eps(o.norm_eps()))
              .mlp_ratio(o.mlp_ratio())
              .drop_path(drop)));
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

NamedLayers MViTImpl::layers() const {
  NamedLayers out{{"patch_embed", patch_embed.ptr()}};
  if (absolute_position) out.emplace_back("absolute_position", absolute_position.ptr());
  if (sinusoidal_position) out.emplace_back("sinusoidal_position", sinusoidal_position.ptr());
  for (size_t s = 0; s < stages->size(); ++s) {
    const auto& stage = *stages->ptr(s)->as<torch::nn::ModuleList>();
    for (size_t i = 0; i < stage.size(); ++i) {
      out.emplace_back("block_" + std::to_string(s) + "_" + std::to_string(i), stage.ptr(i));
    }
  }
  return out;
}

}  // namespace slideformer::nn
