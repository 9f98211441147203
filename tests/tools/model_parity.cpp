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
#include <torch/serialize.h>
#include <torch/torch.h>

#include <fstream>
#include <iostream>
#include <iterator>
#include <algorithm>
#include <map>
#include <set>

#include "slideformer/io/safetensors.h"
#include "slideformer/io/weight_mapping.h"
#include "slideformer/nn/export.h"

namespace {

using namespace slideformer::nn;

// The preset's model as a Module and as a Classifier (one object).
std::pair<std::shared_ptr<torch::nn::Module>, Classifier*> build(const std::string& preset) {
  const auto slide = preset_names();
  if (std::find(slide.begin(), slide.end(), preset) != slide.end()) {
    SlideTransformer model(slideformer::nn::preset(preset));
    return {model.ptr(), model.get()};
  }
  MViT model(mvit_preset(preset));
  return {model.ptr(), model.get()};
}

c10::IValue read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  return torch::pickle_load(bytes);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 4 && std::string(argv[2]) == "--state") {
    try {
      torch::manual_seed(0);
      slideformer::io::save_safetensors(argv[3], slideformer::io::module_state(*build(argv[1]).first));
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
    const std::vector<char> bytes = torch::pickle_save(logits);
    std::ofstream(argv[4], std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (std::string(argv[5]) != "-") to_torchscript(*model).save(argv[5]);
  } catch (const std::exception& e) {
    std::cerr << "model_parity: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
