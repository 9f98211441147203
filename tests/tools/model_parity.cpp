// Helper of tests/python/test_model_parity.py: builds a preset of either family (seed 0), loads a
// {name: tensor} dict saved by torch.save under this library's parameter names (every parameter
// must be there, and nothing else but buffers; "-" keeps the initialisation), runs the C++ model
// on a batch of normalised images and writes the logits (torch::pickle_save, readable by
// torch.load) and the model's TorchScript export. With a source family as sixth argument, the
// weights file is instead any weight file of that family, imported by the library
// (slideformer::io::import_weights: safetensors or torch.save, mapped by the family's table).
//   model_parity <preset> <weights.pt or -> <images.pt> <logits.pt> <export.pt or -> [<family>]
// Or it writes the names and shapes a preset's weights have (its state, as safetensors):
//   model_parity <preset> --state <out.safetensors>
// Or, for the C++ / Python parity of every preset, it runs the preset (seed 0) on the "images" of
// a dict saved by torch.save, in eval mode and then in train mode after torch::manual_seed(
// "seed"), in float32 and then in float64, where it back-propagates sum(train logits *
// "cotangent"); it writes {"state", "float32": {"eval", "train"}, "float64": {"eval", "train",
// "gradients"}} (state and gradients by parameter name):
//   model_parity <preset> --gradients <inputs.pt> <out.pt>
// Or, for the C++ / Python parity at any input size, it runs in eval mode the model (seed 0) of a
// preset or of a model description (JSON, {"family": ..., "options": {...}}) on each tensor of the
// "images" list of a dict saved by torch.save (any sizes), and writes {"state", "logits": [...],
// "features": [[stage outputs], ...]} (the logits and Classifier::forward_features, per image batch):
//   model_parity <preset or description> --features <inputs.pt> <out.pt>
// Or, for the video MViT presets against torchvision (test_video_mvit.py), it builds the preset for
// clips of <frames> x <size> x <size> (seed 0, eval), loads every parameter from the weights dict,
// and writes its logits for the clips and its export:
//   model_parity <video preset> --video <frames> <size> <weights.pt> <clips.pt> <logits.pt> <export.pt>
// Or it writes a checkpoint as format v1 did (a preset name, no model description, the weights
// under the previous release's names: previous_release.h) holding a model
// (seed 0) of the preset's v1-era version `index` (the library's list, newest first):
//   model_parity <preset> --v1-checkpoint <index> <out.pt>
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <algorithm>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "../app/previous_release.h"
#include "model_config.h"
#include "slideformer/io/safetensors.h"
#include "slideformer/io/weight_mapping.h"
#include "slideformer/nn/export.h"
#include "slideformer/nn/description.h"

namespace {

using namespace slideformer::nn;

// The model of a preset, or of a description (JSON, starting with '{'), as a Module and as a
// Classifier (one object).
slideformer::app::Model build(const std::string& model) {
  return slideformer::app::build_model(model.rfind('{', 0) == 0
                                           ? slideformer::app::model_config_from_json(model, "description")
                                           : slideformer::app::preset_model(model));
}

c10::IValue read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes);
}

c10::impl::GenericDict tensor_dict() { return c10::impl::GenericDict(c10::StringType::get(), c10::TensorType::get()); }

void write(const std::string& path, const c10::IValue& value) {
  const std::vector<char> bytes = torch::pickle_save(value);
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out.flush()) throw std::runtime_error(path + ": cannot write");
}

// The model's eval and train-mode logits for `images` (train mode after torch::manual_seed(seed)),
// and, with `cotangent` defined, every parameter's gradient of sum(train logits * cotangent).
c10::impl::GenericDict run_model(torch::nn::Module& module, Classifier& model, const at::Tensor& images,
                                 int64_t seed, const at::Tensor& cotangent) {
  c10::impl::GenericDict result(c10::StringType::get(), c10::AnyType::get());
  module.eval();
  {
    torch::NoGradGuard no_grad;
    result.insert("eval", model.forward(images));
  }
  module.train();
  torch::manual_seed(static_cast<uint64_t>(seed));
  const at::Tensor train_logits = model.forward(images);
  result.insert("train", train_logits.detach());
  if (cotangent.defined()) {
    (train_logits * cotangent).sum().backward();
    c10::impl::GenericDict gradients = tensor_dict();
    for (const auto& item : module.named_parameters()) {
      if (item.value().grad().defined()) gradients.insert(item.key(), item.value().grad());
    }
    result.insert("gradients", gradients);
  }
  return result;
}

c10::impl::GenericDict state_of(const torch::nn::Module& module) {
  c10::impl::GenericDict state = tensor_dict();
  for (const auto& item : module.named_parameters()) state.insert(item.key(), item.value().detach().clone());
  for (const auto& item : module.named_buffers()) state.insert(item.key(), item.value().clone());
  return state;
}

// The --features mode (see the top of this file).
void write_features(const std::string& model_name, const std::string& inputs_path, const std::string& out_path) {
  const c10::impl::GenericDict inputs = read(inputs_path).toGenericDict();
  torch::manual_seed(0);
  const auto [module, model] = build(model_name);
  module->eval();
  torch::NoGradGuard no_grad;
  c10::List<at::Tensor> logits;
  c10::impl::GenericList features(c10::ListType::ofTensors());
  for (const c10::IValue& images : inputs.at("images").toListRef()) {
    logits.push_back(model->forward(images.toTensor()));
    features.push_back(c10::List<at::Tensor>(model->forward_features(images.toTensor())));
  }
  c10::impl::GenericDict result(c10::StringType::get(), c10::AnyType::get());
  result.insert("state", state_of(*module));
  result.insert("logits", logits);
  result.insert("features", features);
  write(out_path, result);
}

// The --gradients mode (see the top of this file): float32 logits, then float64 logits and
// gradients (float64 on both sides compares the gradients exactly enough that a max-pooling
// whose float32 argmax flips between two near-equal values cannot hide a real difference).
void write_gradients(const std::string& preset, const std::string& inputs_path, const std::string& out_path) {
  const c10::impl::GenericDict inputs = read(inputs_path).toGenericDict();
  torch::manual_seed(0);
  const auto [module, model] = build(preset);
  const c10::impl::GenericDict state = state_of(*module);
  const at::Tensor images = inputs.at("images").toTensor();
  const int64_t seed = inputs.at("seed").toInt();
  c10::impl::GenericDict result(c10::StringType::get(), c10::AnyType::get());
  result.insert("state", state);
  result.insert("float32", run_model(*module, *model, images, seed, at::Tensor()));
  {  // Module::to(kDouble) would convert the index buffers too
    torch::NoGradGuard no_grad;
    for (auto& tensor : module->parameters()) tensor.set_data(tensor.to(at::kDouble));
    for (auto& tensor : module->buffers()) {
      if (tensor.is_floating_point()) tensor.set_data(tensor.to(at::kDouble));
    }
  }
  result.insert("float64", run_model(*module, *model, images.to(at::kDouble), seed,
                                     inputs.at("cotangent").toTensor().to(at::kDouble)));
  write(out_path, result);
}

// The --v1-checkpoint mode (see the top of this file).
void write_v1_checkpoint(const std::string& preset, size_t index, const std::string& out_path) {
  const nlohmann::json versions = nlohmann::json::parse(v1_presets()).at(preset);
  if (index >= versions.size()) throw std::runtime_error(preset + " has " + std::to_string(versions.size()) + " v1 versions");
  torch::manual_seed(0);
  const auto model = slideformer::app::build_model(
      slideformer::app::model_config_from_json(versions[index].dump(), "v1 preset " + preset));
  torch::serialize::OutputArchive archive, model_archive;
  archive.write("format", c10::IValue(std::string("slideformer-checkpoint-v1")));
  archive.write("preset", c10::IValue(preset));
  slideformer::testing::save_as_previous_release(*model.module, model_archive);
  archive.write("model", model_archive);
  archive.save_to(out_path);
}

// The tensors of a dict saved by torch.save, by name.
std::map<std::string, at::Tensor> read_tensors(const std::string& path) {
  std::map<std::string, at::Tensor> tensors;
  for (const auto& item : read(path).toGenericDict()) tensors[item.key().toStringRef()] = item.value().toTensor();
  return tensors;
}

// The --video mode (see the top of this file): every parameter from the dict, nothing else in it.
void run_video(char** argv) {
  torch::manual_seed(0);
  VideoMViT model(video_mvit_preset(argv[1]).frames(std::stol(argv[3])).image_size(std::stol(argv[4])));
  model->eval();
  std::map<std::string, at::Tensor> weights = read_tensors(argv[5]);
  torch::NoGradGuard no_grad;
  for (auto& item : model->named_parameters()) {
    const auto found = weights.find(item.key());
    if (found == weights.end()) throw std::runtime_error("weights lack '" + item.key() + "'");
    if (found->second.sizes() != item.value().sizes()) {
      throw std::runtime_error(item.key() + ": shape " + c10::str(found->second.sizes()) + ", the model has " +
                               c10::str(item.value().sizes()));
    }
    item.value().copy_(found->second);
    weights.erase(found);
  }
  if (!weights.empty()) throw std::runtime_error("unknown weight '" + weights.begin()->first + "'");
  write(argv[7], model->forward(read(argv[6]).toTensor()));
  to_torchscript(model).save(argv[8]);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 9 && std::string(argv[2]) == "--video") {
    try {
      run_video(argv);
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "model_parity: " << e.what() << "\n";
      return 1;
    }
  }
  if (argc == 4 && std::string(argv[2]) == "--state") {
    try {
      torch::manual_seed(0);
      slideformer::io::save_safetensors(argv[3], slideformer::io::module_state(*build(argv[1]).module));
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "model_parity: " << e.what() << "\n";
      return 1;
    }
  }
  if (argc == 5 && (std::string(argv[2]) == "--gradients" || std::string(argv[2]) == "--v1-checkpoint" ||
                    std::string(argv[2]) == "--features")) {
    try {
      if (std::string(argv[2]) == "--gradients") {
        write_gradients(argv[1], argv[3], argv[4]);
      } else if (std::string(argv[2]) == "--features") {
        write_features(argv[1], argv[3], argv[4]);
      } else {
        write_v1_checkpoint(argv[1], std::stoul(argv[3]), argv[4]);
      }
      return 0;
    } catch (const std::exception& e) {
      std::cerr << "model_parity: " << e.what() << "\n";
      return 1;
    }
  }
  if (argc != 6 && argc != 7) {
    std::cerr << "usage: model_parity <preset> <weights.pt or -> <images.pt> <logits.pt> <export.pt> [<family>]\n";
    return 2;
  }
  try {
    torch::manual_seed(0);
    const auto [module, model] = build(argv[1]);
    module->eval();
    if (argc == 7) slideformer::io::import_weights(*module, argv[2], slideformer::io::weight_source(argv[6]));
    const bool load = argc == 6 && std::string(argv[2]) != "-";
    std::set<std::string> unused;
    std::map<std::string, at::Tensor> weights;
    if (load) {
      for (const auto& item : read(argv[2]).toGenericDict()) {
        weights[item.key().toStringRef()] = item.value().toTensor();
        unused.insert(item.key().toStringRef());
      }
    }
    torch::NoGradGuard no_grad;
    auto copy = [&](const std::string& name, at::Tensor& target, bool required) {
      const auto found = weights.find(name);
      if (found == weights.end()) {
        if (required) throw std::runtime_error("weights lack '" + name + "'");
        return;
      }
      if (found->second.sizes() != target.sizes()) {
        throw std::runtime_error(name + ": shape " + c10::str(found->second.sizes()) + ", the model has " +
                                 c10::str(target.sizes()));
      }
      target.copy_(found->second);
      unused.erase(name);
    };
    for (auto& item : module->named_parameters()) copy(item.key(), item.value(), load);
    for (auto& item : module->named_buffers()) copy(item.key(), item.value(), false);
    if (!unused.empty()) throw std::runtime_error("unknown weight '" + *unused.begin() + "'");
    const at::Tensor logits = model->forward(read(argv[3]).toTensor());
    write(argv[4], logits);
    if (std::string(argv[5]) != "-") to_torchscript(*model).save(argv[5]);
  } catch (const std::exception& e) {
    std::cerr << "model_parity: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
