#include "pretrained.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <stdexcept>
#include <unordered_map>

#include "checkpoint.h"
#include "image_data.h"
#include "inference.h"
#include "slideformer/io/safetensors.h"
#include "slideformer/io/weight_mapping.h"
#include "slideformer/nn/description.h"

namespace slideformer::app {

namespace {

constexpr const char* kModelConfigKey = "model_config";
constexpr const char* kDataConfigKey = "data_config";

// The family of models a source's mapping table fills.
const nn::ModelFamily& family_of_source(io::WeightSource source) {
  return nn::model_family(source == io::WeightSource::kTimm ? nn::kMViTFamily : nn::kSlideTransformerFamily,
                          io::weight_source_name(source));
}

std::vector<std::string> read_class_names(const std::string& path, int64_t classes) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("--class-names " + path + ": cannot open the file");
  std::vector<std::string> names;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) names.push_back(line);
  }
  if (static_cast<int64_t>(names.size()) != classes) {
    throw std::runtime_error(fmt::format("--class-names {}: {} names, the model has {} classes", path, names.size(),
                                         classes));
  }
  return names;
}

std::vector<std::string> numbered_classes(int64_t classes) {
  std::vector<std::string> names;
  for (int64_t c = 0; c < classes; ++c) names.push_back(std::to_string(c));
  return names;
}

std::string metadata_value(const io::Metadata& metadata, const std::string& key) {
  for (const auto& [name, value] : metadata) {
    if (name == key) return value;
  }
  return "";
}

// The model and data configs of an import: the preset's, or those a slideformer safetensors file
// carries.
struct ImportedModel {
  ModelConfig model;
  std::string data_config;  // "" for a preset, and for a model trained on Fashion-MNIST's IDX files
  bool described = false;   // by the file's metadata
};

ImportedModel imported_model(const ImportRun& run, io::WeightSource source) {
  if (!run.preset.empty()) {
    ImportedModel imported{preset_model(run.preset), "", false};
    if (source != io::WeightSource::kSlideformer && &imported.model.family() != &family_of_source(source)) {
      throw std::runtime_error(fmt::format("--preset {}: --from {} imports into the {} presets, not into a model of "
                                           "family '{}'", run.preset, io::weight_source_name(source),
                                           source == io::WeightSource::kTimm ? "mvitv2_*" : "slide_swin_*",
                                           imported.model.family().name));
    }
    return imported;
  }
  if (source != io::WeightSource::kSlideformer ||
      io::detect_weight_file_format(run.file) != io::WeightFileFormat::kSafetensors) {
    throw std::runtime_error("--preset is needed: only a safetensors file of `slideformer export` describes its model");
  }
  const io::Metadata metadata = io::read_safetensors(run.file).metadata;
  const std::string model_json = metadata_value(metadata, kModelConfigKey);
  if (model_json.empty()) {
    throw std::runtime_error(run.file + ": its metadata has no model_config (not written by `slideformer export`): "
                             "give --preset");
  }
  return {model_config_from_json(model_json, run.file + " (model_config)"), metadata_value(metadata, kDataConfigKey),
          true};
}

bool file_exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

}  // namespace

int import_checkpoint(const ImportRun& run) {
  const io::WeightSource source = io::weight_source(run.source);
  ImportedModel imported = imported_model(run, source);
  const std::string checkpoint_path = run.out_dir + "/checkpoint.pt";
  if (file_exists(checkpoint_path)) {
    throw std::runtime_error(checkpoint_path + ": a checkpoint is already there (import into another --out)");
  }
  const Model model = build_model(imported.model);
  io::import_weights(*model.module, run.file, source, run.entry);

  CheckpointState state;
  state.model = imported.model;
  const int64_t classes = imported.model.num_classes();
  // A model of ours trained on Fashion-MNIST's IDX files stays one; any other gets a data config.
  const bool idx_model = imported.described && imported.data_config.empty();
  if ((imported.data_config.empty() && !idx_model) || !run.class_names.empty() || run.crop_pct > 0) {
    const double default_crop = source == io::WeightSource::kTimm ? 0.9 : 0.875;
    std::vector<std::string> names;
    if (!run.class_names.empty()) {
      names = read_class_names(run.class_names, classes);
    } else if (!imported.data_config.empty()) {
      names = data::DataConfig::from_json(imported.data_config, run.file).class_names;
    } else {
      names = numbered_classes(classes);
    }
    imported.data_config = data_config_for(imported.model, names, run.crop_pct > 0 ? run.crop_pct : default_crop).to_json();
  }
  state.data_config = imported.data_config;
  if (!state.data_config.empty()) {
    state.config.data_dir = "";  // no data: eval needs --data
    state.config.crop_pct = data::DataConfig::from_json(state.data_config, run.file).crop_pct;
  }
  state.rng_state = at::detail::getDefaultCPUGenerator().get_state();

  std::error_code error;
  std::filesystem::create_directories(run.out_dir, error);
  if (error) throw std::runtime_error("--out " + run.out_dir + ": cannot create the directory (" + error.message() + ")");
  torch::optim::AdamW optimizer(model.module->parameters());
  save_checkpoint(checkpoint_path, state, *model.module, optimizer);
  fmt::print("imported {} ({} weights) into {} ({}, {} classes): {}\n", run.file, io::weight_source_name(source),
             model_name(imported.model), imported.model.family().name, classes, checkpoint_path);
  return 0;
}

int export_safetensors(const std::string& checkpoint, const std::string& out) {
  const LoadedModel loaded = load_model(checkpoint);
  const io::NamedTensors state = io::module_state(*loaded.model.module);
  io::Metadata metadata{{"format", "slideformer"}, {kModelConfigKey, model_config_to_json(loaded.model_config)}};
  // A model trained on Fashion-MNIST's IDX files has none (its classes and input are the data's).
  if (!loaded.data_config.empty()) metadata.emplace_back(kDataConfigKey, loaded.data_config);
  io::save_safetensors(out, state, metadata);
  fmt::print("exported {} ({}) to {}: {} tensors under the model's names (safetensors)\n", checkpoint,
             model_name(loaded.model_config), out, state.size());
  return 0;
}

namespace {

// The tensors of `file` under the model's names: a checkpoint of this program (its own model
// built and loaded), else a weight file mapped from its family.
io::NamedTensors initial_tensors(const torch::nn::Module& model, const std::string& file, io::WeightSource source) {
  if (source == io::WeightSource::kSlideformer &&
      io::detect_weight_file_format(file) == io::WeightFileFormat::kTorchSave) {
    std::optional<LoadedModel> checkpoint;
    try {
      checkpoint = load_model(file);
    } catch (const std::runtime_error&) {
      // Not a checkpoint of this program: a torch.save state dict under the library's names.
    }
    if (checkpoint) return io::module_state(*checkpoint->model.module);
  }
  return io::map_weights(source, io::read_weights(file), io::shapes_of(io::module_state(model)), file);
}

bool is_head(const std::string& name) { return name == "head.weight" || name == "head.bias"; }

}  // namespace

std::string load_initial_weights(const Model& model, const std::string& file, const std::string& source_name) {
  const io::WeightSource source = io::weight_source(source_name);
  io::NamedTensors tensors = initial_tensors(*model.module, file, source);
  const int64_t classes = model->num_classes();
  std::string report = fmt::format("--init {}: {} weights loaded", file, io::weight_source_name(source));
  for (const auto& [name, tensor] : tensors) {
    if (name == "head.weight" && tensor.dim() == 2 && tensor.size(0) != classes &&
        tensor.size(1) == model->head->options.in_features()) {
      report = fmt::format("--init {}: {} weights loaded; head re-initialised ({} classes in the file, {} here)", file,
                           io::weight_source_name(source), tensor.size(0), classes);
      tensors.erase(std::remove_if(tensors.begin(), tensors.end(), [](const auto& item) { return is_head(item.first); }),
                    tensors.end());
      tensors.emplace_back("head.weight", model->head->weight);
      tensors.emplace_back("head.bias", model->head->bias);
      break;
    }
  }
  io::load_module_state(*model.module, tensors, file);
  return report;
}

namespace {

// The model's layers() in forward order with their depth (see parameter_groups), and L.
struct LayerDepths {
  std::vector<std::pair<std::string, int64_t>> layers;
  int64_t blocks = 0;
};

LayerDepths layer_depths(const nn::NamedLayers& layers) {
  LayerDepths depths;
  for (const auto& [name, module] : layers) {
    if (name.rfind("block_", 0) == 0) {
      depths.layers.emplace_back(name, ++depths.blocks);
    } else {
      depths.layers.emplace_back(name, name.rfind("merge_", 0) == 0 ? depths.blocks + 1 : 0);
    }
  }
  return depths;
}

// "block_<stage>_<i>" -> stage; -1 for other layers.
int64_t stage_of(const std::string& layer) {
  if (layer.rfind("block_", 0) != 0) return -1;
  return std::stoll(layer.substr(6, layer.find('_', 6) - 6));
}

}  // namespace

void freeze_stages(const Model& model, int64_t stages) {
  const nn::NamedLayers layers = model->layers();
  int64_t stage_count = 0;
  for (const auto& layer : layers) stage_count = std::max(stage_count, stage_of(layer.first) + 1);
  if (stages < 0 || stages >= stage_count) {
    throw std::runtime_error(fmt::format("--freeze-stages {}: the model has {} stages, so it must be in [0, {}] (the "
                                         "last stage and the head always train)", stages, stage_count, stage_count - 1));
  }
  if (stages == 0) return;
  for (const auto& [name, module] : layers) {
    if (stage_of(name) >= stages) break;
    for (at::Tensor& parameter : module->parameters()) parameter.set_requires_grad(false);
  }
}

ParameterGroups parameter_groups(const Model& model, double weight_decay, double lr_decay) {
  const nn::NamedLayers layers = model->layers();
  const LayerDepths depths = layer_depths(layers);
  const int64_t top = depths.blocks + 1;
  std::unordered_map<const c10::TensorImpl*, int64_t> depth_of;
  if (lr_decay < 1) {
    for (size_t i = 0; i < layers.size(); ++i) {
      for (const at::Tensor& p : layers[i].second->parameters()) depth_of.emplace(p.unsafeGetTensorImpl(), depths.layers[i].second);
    }
  }
  // (depth, not decayed) -> parameters: the decayed group of a depth first, as before lr decay
  // existed (resumed checkpoints' optimizer state follows the group order). Without lr decay
  // every parameter is at the top depth.
  std::map<std::pair<int64_t, bool>, std::vector<at::Tensor>> grouped;
  const std::vector<std::string> undecayed = model->no_weight_decay();
  for (const auto& item : model.module->named_parameters()) {
    const at::Tensor& p = item.value();
    if (!p.requires_grad()) continue;
    const std::string& name = item.key();
    const bool is_layer_weight = name.size() > 7 && name.compare(name.size() - 7, 7, ".weight") == 0 && p.dim() >= 2 &&
                                 std::find(undecayed.begin(), undecayed.end(), name) == undecayed.end();
    const auto depth = depth_of.find(p.unsafeGetTensorImpl());
    grouped[{depth == depth_of.end() ? top : depth->second, !is_layer_weight}].push_back(p);
  }
  ParameterGroups out;
  for (auto& [key, parameters] : grouped) {
    out.groups.emplace_back(std::move(parameters), std::make_unique<torch::optim::AdamWOptions>(
                                                       torch::optim::AdamWOptions().weight_decay(key.second ? 0.0 : weight_decay)));
    out.lr_scales.push_back(std::pow(lr_decay, static_cast<double>(top - key.first)));
  }
  return out;
}

}  // namespace slideformer::app
