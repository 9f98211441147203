// Mlp, TransformerBlock, PatchEmbed, PatchMerging and the SlideTransformer classifier.
#include <torch/nn/functional/activation.h>

#include "nn/init.h"
#include "nn/layers.h"
#include "nn/script.h"
#include "slideformer/nn/description.h"
#include "slideformer/nn/functional.h"
#include "slideformer/nn/modules.h"

namespace slideformer::nn {

namespace {
// A module whose forward is `body`, indented under def forward(self, x: Tensor) -> Tensor.
torch::jit::Module with_forward(torch::jit::Module module, const std::string& body) {
  script::define(module, "def forward(self, x: Tensor) -> Tensor:\n" + body);
  return module;
}
}  // namespace

MlpImpl::MlpImpl(MlpOptions options_) : options(std::move(options_)) { reset(); }

void MlpImpl::reset() {
  fc1 = register_module("fc1", init::linear(options.dim(), options.hidden_dim()));
  fc2 = register_module("fc2", init::linear(options.hidden_dim(), options.out_dim() > 0 ? options.out_dim() : options.dim()));
}

void MlpImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::Mlp(dim=" << options.dim() << ", hidden_dim=" << options.hidden_dim();
  if (options.out_dim() > 0) stream << ", out_dim=" << options.out_dim();
  stream << ")";
}

at::Tensor MlpImpl::forward(const at::Tensor& x) {
  return apply_linear(fc2, apply_linear(fc1, x, functional::Activation::kGelu));
}

torch::jit::Module MlpImpl::script_form() const {
  torch::jit::Module module("Mlp");
  const std::string hidden = "torch.gelu(" + script::linear(module, "fc1", *fc1, "x") + ")";
  return with_forward(module, "    return " + script::linear(module, "fc2", *fc2, hidden) + "\n");
}

TransformerBlockImpl::TransformerBlockImpl(TransformerBlockOptions options_)
    : options(std::move(options_)) {
  reset();
}

void TransformerBlockImpl::reset() {
  norm1 = register_module("norm1", layer_norm(options.dim()));
  if (options.kind() == AttentionKind::kSlide) {
    slide_attention = register_module(
        "attn", SlideAttention(SlideAttentionOptions(options.dim(), options.heads())
                                   .kernel_size(options.kernel_size())
                                   .dilation(options.dilation())
                                   .border(options.border())));
  } else {
    global_attention = register_module(
        "attn", MultiHeadAttention(MultiHeadAttentionOptions(options.dim(), options.heads())
                                       .relative_position_size(options.relative_position_size())));
  }
  norm2 = register_module("norm2", layer_norm(options.dim()));
  mlp = register_module(
      "mlp", Mlp(MlpOptions(options.dim(),
                            static_cast<int64_t>(options.dim() * options.mlp_ratio()))));
}

void TransformerBlockImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::TransformerBlock(dim=" << options.dim()
         << ", heads=" << options.heads()
         << ", kind=" << (options.kind() == AttentionKind::kSlide ? "slide" : "global")
         << ", drop_path=" << options.drop_path() << ")";
}

at::Tensor TransformerBlockImpl::forward(const at::Tensor& x) {
  const at::Tensor normed = norm1(x);
  at::Tensor attended;
  if (slide_attention) {
    attended = slide_attention(normed);
  } else {  // global attention over the flattened map
    attended = global_attention(normed.flatten(1, 2), x.size(1), x.size(2)).view(x.sizes());
  }
  const at::Tensor y = x + functional::drop_path(attended, options.drop_path(), is_training());
  return y + functional::drop_path(mlp(norm2(y)), options.drop_path(), is_training());
}

torch::jit::Module TransformerBlockImpl::script_form() const {
  torch::jit::Module module("TransformerBlock");
  const std::string normed = script::layer_norm(module, "norm1", *norm1, "x");
  const std::string attended =
      slide_attention ? script::submodule(module, "attn", *slide_attention, normed)
                      : script::submodule(module, "attn", *global_attention,
                                          normed + ".flatten(1, 2), x.size(1), x.size(2)") +
                            ".view(x.size())";
  const std::string mlp_out =
      script::submodule(module, "mlp", *mlp, script::layer_norm(module, "norm2", *norm2, "x"));
  return with_forward(module, "    x = x + " + attended + "\n    return x + " + mlp_out + "\n");
}

PatchEmbedImpl::PatchEmbedImpl(PatchEmbedOptions options_) : options(std::move(options_)) {
  reset();
}

void PatchEmbedImpl::reset() {
  int64_t channels = options.in_channels();
  if (options.stem_channels() > 0) {
    const int64_t width = options.stem_channels();
    auto conv = [](int64_t in, int64_t out) {
      return torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1));
    };
    stem = register_module("stem", torch::nn::Sequential(conv(channels, width), torch::nn::GELU(),
                                                         conv(width, width), torch::nn::GELU()));
    channels = width;
  }
  const int64_t patch = options.patch_size();
  projection = register_module(
      "proj", torch::nn::Conv2d(
                  torch::nn::Conv2dOptions(channels, options.dim(),
                                           options.overlapping() ? 2 * patch - 1 : patch)
                      .stride(patch)
                      .padding(options.overlapping() ? patch - 1 : 0)));
  if (options.norm()) {
    norm = register_module(
        "norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({options.dim()}).eps(options.norm_eps())));
  }
}

void PatchEmbedImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::PatchEmbed(in_channels=" << options.in_channels()
         << ", dim=" << options.dim() << ", patch_size=" << options.patch_size()
         << ", stem_channels=" << options.stem_channels()
         << ", overlapping=" << options.overlapping() << ", norm=" << options.norm() << ")";
}

at::Tensor PatchEmbedImpl::forward(const at::Tensor& images) {
  TORCH_CHECK(images.dim() == 4 && images.size(1) == options.in_channels(),
              "slideformer::PatchEmbed: input must be (B, ", options.in_channels(),
              ", H, W), got shape ", images.sizes());
  const at::Tensor x = stem ? stem->forward(images) : images;
  const at::Tensor map = projection(x).permute({0, 2, 3, 1});
  return norm ? norm(map) : map;
}

torch::jit::Module PatchEmbedImpl::script_form() const {
  torch::jit::Module module("PatchEmbed");
  std::string body;
  if (stem) {  // Sequential(conv, GELU, conv, GELU)
    int convs = 0;
    for (const auto& layer : stem->children()) {
      if (const auto* conv = layer->as<torch::nn::Conv2d>()) {
        body += "    x = torch.gelu(" + script::conv2d(module, "stem" + std::to_string(convs++), *conv, "x") + ")\n";
      }
    }
  }
  body += "    x = " + script::conv2d(module, "proj", *projection, "x") + ".permute(0, 2, 3, 1)\n";
  body += "    return " + (norm ? script::layer_norm(module, "norm", *norm, "x") : std::string("x")) + "\n";
  return with_forward(module, body);
}

PatchMergingImpl::PatchMergingImpl(PatchMergingOptions options_) : options(std::move(options_)) {
  reset();
}

void PatchMergingImpl::reset() {
  norm = register_module("norm", layer_norm(4 * options.dim()));
  reduction = register_module("reduction", init::linear(4 * options.dim(), 2 * options.dim(), false));
}

void PatchMergingImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::PatchMerging(dim=" << options.dim() << ")";
}

at::Tensor PatchMergingImpl::forward(const at::Tensor& x) {
  return apply_linear(reduction, norm(functional::merge_patches(x)));
}

torch::jit::Module PatchMergingImpl::script_form() const {
  torch::jit::Module module("PatchMerging");
  return with_forward(module, R"(
    x = torch.constant_pad_nd(x, [0, 0, 0, x.size(2) % 2, 0, x.size(1) % 2])
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
)" + ("    return " + script::linear(module, "reduction", *reduction, script::layer_norm(module, "norm", *norm, "x")) + "\n"));
}

SlideTransformerImpl::SlideTransformerImpl(SlideTransformerOptions options_) : HierarchicalClassifier(std::move(options_)) {
  reset();
}

void SlideTransformerImpl::reset() {
  validate(options, OptionCheck("slideformer::SlideTransformer"));
  const size_t num_stages = options.depths().size();
  const int64_t patches = options.image_size() / options.patch_size();
  // Initialised before the position table and registered after it: the seed's draws and the
  // parameters' order stay those of the table's time as the model's own tensor.
  PatchEmbed embed(PatchEmbedOptions(options.in_channels(), options.embed_dim(), options.patch_size())
                       .stem_channels(options.stem_channels())
                       .overlapping(options.overlapping_patches()));
  reset_position_encodings(options.absolute_position_embedding(), options.sinusoidal_position_encoding(), patches);
  patch_embed = register_module("patch_embed", std::move(embed));
  stages = register_module("stages", torch::nn::ModuleList());
  mergings = register_module("mergings", torch::nn::ModuleList());

  const std::vector<std::vector<double>> drop_path = drop_path_rates();
  int64_t dim = options.embed_dim();
  int64_t map_size = patches;
  for (size_t s = 0; s < num_stages; ++s) {
    torch::nn::ModuleList stage;
    for (int64_t i = 0; i < options.depths()[s]; ++i) {
      stage->push_back(TransformerBlock(
          TransformerBlockOptions(dim, options.heads()[s], options.stage_kinds()[s])
              .mlp_ratio(options.mlp_ratio())
              .drop_path(drop_path[s][i])
              .kernel_size(options.kernel_size())
              .dilation(options.dilation())
              .border(options.border())
              .relative_position_size(map_size)));
    }
    stages->push_back(stage);
    if (s + 1 < num_stages) {
      mergings->push_back(PatchMerging(PatchMergingOptions(dim)));
      dim *= 2;
      map_size = (map_size + 1) / 2;
    }
  }
  norm = register_module("norm", layer_norm(dim));
  head = register_module("head", init::linear(dim, options.num_classes()));
}

void SlideTransformerImpl::pretty_print(std::ostream& stream) const {
  stream << "slideformer::nn::SlideTransformer(image_size=" << options.image_size()
         << ", embed_dim=" << options.embed_dim() << ", stages=" << options.depths().size()
         << ", classes=" << options.num_classes() << ")";
}

std::vector<std::string> SlideTransformerImpl::no_weight_decay() const {
  if (!absolute_position) return {};
  return {"absolute_position.weight"};
}

void SlideTransformerImpl::reparameterize() {
  for (const auto& module : modules(/*include_self=*/false)) {
    if (auto* slide = module->as<SlideAttention>()) slide->reparameterize();
  }
}

int64_t count_parameters(const torch::nn::Module& module, bool trainable_only) {
  int64_t count = 0;
  for (const auto& p : module.parameters()) {
    if (!trainable_only || p.requires_grad()) count += p.numel();
  }
  return count;
}

}  // namespace slideformer::nn
