// TorchScript export of a SlideTransformer: one torch::jit::Module per block, whose forward is
// TorchScript source calling the slideformer operators, with copies of the trained weights.
#include "slideformer/nn/export.h"

#include <c10/util/StringUtil.h>
#include <torch/csrc/jit/frontend/resolver.h>

#include <sstream>

namespace slideformer::nn {

namespace {

using torch::jit::Module;

// Resolves `torch` to the aten builtins (as the default resolver does) and `slideformer` to our
// operators, so the source below can call slideformer.slide_attention(...). Saved modules print
// these calls as ops.slideformer.*, which torch::jit::load resolves once the library is loaded.
struct OpResolver : torch::jit::Resolver {
  std::shared_ptr<torch::jit::SugaredValue> resolveValue(const std::string& name,
                                                         torch::jit::GraphFunction&,
                                                         const torch::jit::SourceRange&) override {
    if (name == "torch") return std::make_shared<torch::jit::BuiltinModule>("aten");
    if (name == "slideformer") return std::make_shared<torch::jit::BuiltinModule>("slideformer");
    return nullptr;
  }
  c10::TypePtr resolveType(const std::string&, const torch::jit::SourceRange&) override {
    return nullptr;
  }
};

void define(Module& module, const std::string& source) {
  module.define(source, std::make_shared<OpResolver>());
}

// Copies of the weights: the exported module must not share storage with the live model.
void add_parameter(Module& module, const std::string& name, const at::Tensor& value) {
  module.register_parameter(name, value.detach().clone(), /*is_buffer=*/false);
}

void add_int(Module& module, const std::string& name, int64_t value) {
  module.register_attribute(name, c10::IntType::get(), value);
}

void add_layer_norm(Module& module, const std::string& prefix, const torch::nn::LayerNorm& norm) {
  add_parameter(module, prefix + "_weight", norm->weight);
  add_parameter(module, prefix + "_bias", norm->bias);
}

void add_linear(Module& module, const std::string& prefix, const torch::nn::Linear& linear) {
  add_parameter(module, prefix + "_weight", linear->weight);
  if (linear->bias.defined()) add_parameter(module, prefix + "_bias", linear->bias);
}

// Registers a convolution's weight and bias as `name`_weight / `name`_bias and returns the
// TorchScript call applying it to x, with the stride and padding the layer itself was built with.
std::string add_conv2d(Module& module, const std::string& name, const torch::nn::Conv2dImpl& conv) {
  add_parameter(module, name + "_weight", conv.weight);
  add_parameter(module, name + "_bias", conv.bias);
  const auto& stride = *conv.options.stride();
  const auto& padding = *std::get<torch::ExpandingArray<2>>(conv.options.padding());
  std::ostringstream call;
  call << "torch.conv2d(x, self." << name << "_weight, self." << name << "_bias, [" << stride[0]
       << ", " << stride[1] << "], [" << padding[0] << ", " << padding[1] << "])";
  return call.str();
}

// The residual MLP half of a block, shared by both block kinds.
constexpr const char* kMlpHalf = R"(
    h = torch.layer_norm(x, [self.dim], self.norm2_weight, self.norm2_bias, 1e-05)
    h = torch.gelu(torch.linear(h, self.fc1_weight, self.fc1_bias))
    return x + torch.linear(h, self.fc2_weight, self.fc2_bias)
)";

constexpr const char* kSlideBlock = R"(
def forward(self, x: Tensor) -> Tensor:
    b, y, w = x.size(0), x.size(1), x.size(2)
    h = torch.layer_norm(x, [self.dim], self.norm1_weight, self.norm1_bias, 1e-05)
    qkv = torch.linear(h, self.qkv_weight, self.qkv_bias)
    qkv = qkv.view(b, y, w, self.heads, 3, self.dim // self.heads).permute(4, 0, 3, 1, 2, 5)
    a = slideformer.slide_attention(qkv[0], qkv[1], qkv[2], self.kernel_size,
        self.dilation, self.key_bias, self.shift_weight, self.shift_bias, self.border, None)
    a = a.permute(0, 2, 3, 1, 4).reshape(b, y, w, self.dim)
    x = x + torch.linear(a, self.proj_weight, self.proj_bias)
)";

constexpr const char* kGlobalBlock = R"(
def forward(self, x: Tensor) -> Tensor:
    b, y, w = x.size(0), x.size(1), x.size(2)
    h = torch.layer_norm(x, [self.dim], self.norm1_weight, self.norm1_bias, 1e-05)
    t = h.reshape(b, y * w, self.dim)
    qkv = torch.linear(t, self.qkv_weight, self.qkv_bias)
    qkv = qkv.view(b, y * w, 3, self.heads, self.dim // self.heads).permute(2, 0, 3, 1, 4)
    a = slideformer.attention(qkv[0], qkv[1], qkv[2], $BIAS, False, None)
    a = a.transpose(1, 2).reshape(b, y, w, self.dim)
    x = x + torch.linear(a, self.proj_weight, self.proj_bias)
)";

constexpr const char* kMerging = R"(
def forward(self, x: Tensor) -> Tensor:
    x = torch.constant_pad_nd(x, [0, 0, 0, x.size(2) % 2, 0, x.size(1) % 2])
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    x = torch.layer_norm(x, [4 * self.dim], self.norm_weight, self.norm_bias, 1e-05)
    return torch.linear(x, self.reduction_weight, None)
)";

Module export_block(const TransformerBlockImpl& block, const std::string& name) {
  Module module(name);
  add_int(module, "dim", block.options.dim());
  add_int(module, "heads", block.options.heads());
  add_layer_norm(module, "norm1", block.norm1);
  add_layer_norm(module, "norm2", block.norm2);
  add_linear(module, "fc1", block.mlp->fc1);
  add_linear(module, "fc2", block.mlp->fc2);
  if (block.slide_attention) {
    const SlideAttentionImpl& attn = *block.slide_attention;
    add_linear(module, "qkv", attn.qkv);
    add_linear(module, "proj", attn.proj);
    add_parameter(module, "key_bias", attn.key_bias);
    add_parameter(module, "shift_weight", attn.effective_shift_weight());  // paths merged
    add_parameter(module, "shift_bias", attn.effective_shift_bias());
    add_int(module, "kernel_size", attn.options.kernel_size());
    add_int(module, "dilation", attn.options.dilation());
    module.register_attribute("border", c10::StringType::get(), attn.options.border());
    define(module, std::string(kSlideBlock) + kMlpHalf);
  } else {
    const MultiHeadAttentionImpl& attn = *block.global_attention;
    add_linear(module, "qkv", attn.qkv);
    add_linear(module, "proj", attn.proj);
    const at::Tensor bias = attn.relative_position_bias();
    std::string source = kGlobalBlock;
    if (bias.defined()) {  // the table is constant at inference: store it gathered
      module.register_buffer("attn_bias", bias.detach().clone());
      c10::ReplaceAll(source, "$BIAS", "self.attn_bias");
    } else {
      c10::ReplaceAll(source, "$BIAS", "None");
    }
    define(module, source + kMlpHalf);
  }
  return module;
}

Module export_merging(const PatchMergingImpl& merging, const std::string& name) {
  Module module(name);
  add_int(module, "dim", merging.options.dim());
  add_layer_norm(module, "norm", merging.norm);
  add_linear(module, "reduction", merging.reduction);
  define(module, kMerging);
  return module;
}

}  // namespace

torch::jit::Module to_torchscript(const SlideTransformer& model) {
  const SlideTransformerOptions& options = model->options;
  const int64_t channels = options.in_channels();
  TORCH_CHECK(static_cast<int64_t>(options.input_mean().size()) == channels &&
                  static_cast<int64_t>(options.input_std().size()) == channels,
              "slideformer::to_torchscript: input_mean and input_std need one entry per input "
              "channel (", channels, "), got ", options.input_mean().size(), " and ",
              options.input_std().size());
  Module root("SlideTransformer");
  root.register_buffer("input_mean", torch::tensor(options.input_mean(), at::kFloat).view({1, channels, 1, 1}));
  root.register_buffer("input_std", torch::tensor(options.input_std(), at::kFloat).view({1, channels, 1, 1}));
  std::ostringstream code;
  code << "def forward(self, images: Tensor) -> Tensor:\n"
       << "    x = (images - self.input_mean) / self.input_std\n";
  const PatchEmbedImpl& embed = *model->patch_embed;
  if (embed.stem) {  // Sequential(conv, GELU, conv, GELU)
    int convs = 0;
    for (const auto& layer : embed.stem->children()) {
      if (const auto* conv = layer->as<torch::nn::Conv2d>()) {
        const std::string call = add_conv2d(root, "stem" + std::to_string(convs++), *conv);
        code << "    x = torch.gelu(" << call << ")\n";
      }
    }
  }
  code << "    x = " << add_conv2d(root, "embed", *embed.projection) << "\n"
       << "    x = torch.layer_norm(x.permute(0, 2, 3, 1), [" << options.embed_dim()
       << "], self.embed_norm_weight, self.embed_norm_bias, 1e-05)\n";
  add_layer_norm(root, "embed_norm", embed.norm);
  if (model->absolute_position.defined()) {
    add_parameter(root, "absolute_position", model->absolute_position);
    code << "    x = x + self.absolute_position\n";
  }
  add_layer_norm(root, "norm", model->norm);
  add_linear(root, "head", model->head);
  for (size_t s = 0; s < model->stages->size(); ++s) {
    const auto& stage = *model->stages->ptr(s)->as<torch::nn::ModuleList>();
    for (size_t i = 0; i < stage.size(); ++i) {
      const std::string name = "block_" + std::to_string(s) + "_" + std::to_string(i);
      root.register_module(name, export_block(*stage.ptr(i)->as<TransformerBlock>(), name));
      code << "    x = self." << name << ".forward(x)\n";
    }
    if (s < model->mergings->size()) {
      const std::string name = "merge_" + std::to_string(s);
      root.register_module(name, export_merging(*model->mergings->ptr(s)->as<PatchMerging>(), name));
      code << "    x = self." << name << ".forward(x)\n";
    }
  }
  code << "    x = torch.layer_norm(x, [" << model->norm->options.normalized_shape()[0]
       << "], self.norm_weight, self.norm_bias, 1e-05)\n"
       << "    return torch.linear(x.mean([1, 2]), self.head_weight, self.head_bias)\n";
  define(root, code.str());
  root.eval();
  return root;
}

}  // namespace slideformer::nn
