#pragma once
// The library's two model families in the registry (registry.h): their names, the visitors over
// their options, their validate(). A model's JSON description, {"family": "slide_transformer" |
// "mvit", "options": {...}}, names the options as these visitors do (docs/modules.md): what a
// checkpoint stores, and what the Python package builds its models and presets from.
#include <array>
#include <string>
#include <type_traits>
#include <vector>

#include "slideformer/nn/options.h"
#include "slideformer/nn/registry.h"

namespace slideformer::nn {

inline constexpr const char* kSlideTransformerFamily = "slide_transformer";
inline constexpr const char* kMViTFamily = "mvit";

// The JSON names of the enumerations, in enumerator order.
inline constexpr std::array<const char*, 2> kAttentionKindNames = {"slide", "global"};
inline constexpr std::array<const char*, 3> kPoolModeNames = {"conv", "max", "avg"};
inline constexpr std::array<const char*, 3> kPositionEncodingNames = {"none", "learned", "sinusoidal"};

// The JSON names of an enumeration's values (ErasedOptionVisit finds them beside the type).
std::vector<std::string> enum_names(AttentionKind);
std::vector<std::string> enum_names(PoolMode);
std::vector<std::string> enum_names(PositionEncoding);

// Calls visit(name, field) for every option, in declaration order: the one list of names the
// writers and readers of descriptions share. An option added to SlideTransformerOptions is added
// here; a description written before it then lacks the key, so readers need a value that means
// "as before this option existed" (the family's ModelFamily::added_later).
template <typename Options, typename Visit>
std::enable_if_t<std::is_same_v<std::decay_t<Options>, SlideTransformerOptions>> for_each_option(Options& o,
                                                                                                 Visit&& visit) {
  visit("image_size", o.image_size());
  visit("in_channels", o.in_channels());
  visit("num_classes", o.num_classes());
  visit("patch_size", o.patch_size());
  visit("stem_channels", o.stem_channels());
  visit("overlapping_patches", o.overlapping_patches());
  visit("embed_dim", o.embed_dim());
  visit("absolute_position_embedding", o.absolute_position_embedding());
  visit("sinusoidal_position_encoding", o.sinusoidal_position_encoding());
  visit("depths", o.depths());
  visit("heads", o.heads());
  visit("stage_kinds", o.stage_kinds());
  visit("kernel_size", o.kernel_size());
  visit("dilation", o.dilation());
  visit("border", o.border());
  visit("mlp_ratio", o.mlp_ratio());
  visit("drop_path_rate", o.drop_path_rate());
  visit("input_mean", o.input_mean());
  visit("input_std", o.input_std());
}

// The same for MViTOptions (family "mvit").
template <typename Options, typename Visit>
std::enable_if_t<std::is_same_v<std::decay_t<Options>, MViTOptions>> for_each_option(Options& o, Visit&& visit) {
  visit("image_size", o.image_size());
  visit("in_channels", o.in_channels());
  visit("num_classes", o.num_classes());
  visit("patch_size", o.patch_size());
  visit("embed_dim", o.embed_dim());
  visit("depths", o.depths());
  visit("heads", o.heads());
  visit("kernel_size", o.kernel_size());
  visit("stride_kv", o.stride_kv());
  visit("pool_mode", o.pool_mode());
  visit("position_encoding", o.position_encoding());
  visit("relative_position", o.relative_position());
  visit("residual_pooling", o.residual_pooling());
  visit("mlp_ratio", o.mlp_ratio());
  visit("drop_path_rate", o.drop_path_rate());
  visit("norm_eps", o.norm_eps());
  visit("input_mean", o.input_mean());
  visit("input_std", o.input_std());
}

// Throws std::runtime_error "<source>: model option '<name>' must be ..." (OptionCheck) for
// options the module does not take: what the modules' reset(), the description readers and,
// through the registry, Python check.
void validate(const SlideTransformerOptions& options, const OptionCheck& check);
void validate(const MViTOptions& options, const OptionCheck& check);

// The architectures each preset name denoted when checkpoints stored only a preset name (format
// v1), frozen whatever the presets become: {"preset": [description, ...]} (JSON; fashion changed
// twice then, so it has three).
std::string v1_presets();

// Everything a reader of descriptions needs, as one JSON object: "families" (the registered
// names), "presets" (name -> description, every family), "defaults" (family -> the default
// options), "added_later" (family -> ModelFamily::added_later) and "v1_presets" as above. The
// Python package reads it through the operator slideformer::model_catalog(), and validates
// descriptions through slideformer::validate_model_description(description, source).
std::string model_catalog();

}  // namespace slideformer::nn
