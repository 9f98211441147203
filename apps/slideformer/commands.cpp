#include "commands.h"

#include <c10/util/Type.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <stdexcept>
#include <vector>

#include "slideformer/nn/export.h"
#include "training.h"

namespace slideformer::app {

namespace {

const char* const kClasses[] = {"T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                                "Sandal",  "Shirt",   "Sneaker",  "Bag",   "Boot"};

std::string shape_text(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// The last non-empty line: TorchScript errors end with the exception's own message.
std::string last_line(const std::string& text) {
  const size_t end = text.find_last_not_of("\n ");
  if (end == std::string::npos) return text;
  const size_t start = text.rfind('\n', end);
  return text.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1));
}

double accuracy_of(const at::Tensor& predictions, const Dataset& data) {
  return predictions.eq(data.labels).to(at::kDouble).mean().item<double>();
}

// Predicted classes of the test set, writing the requested outputs.
at::Tensor classify_test_set(const std::function<at::Tensor(const at::Tensor&)>& logits_of,
                             const Dataset& test, const TestSetOutputs& outputs) {
  std::vector<at::Tensor> logits;
  const at::Tensor predictions = predict_classes(
      [&](const at::Tensor& unit) { return logits.emplace_back(logits_of(unit)); }, test);
  if (!outputs.predictions.empty()) {
    std::ofstream out(outputs.predictions);
    const auto* p = predictions.data_ptr<int64_t>();
    for (int64_t i = 0; i < predictions.numel(); ++i) out << p[i] << "\n";
    if (!out) throw std::runtime_error(outputs.predictions + ": cannot write predictions");
  }
  if (!outputs.logits.empty()) {
    const at::Tensor all = at::cat(logits).contiguous();
    std::ofstream out(outputs.logits, std::ios::binary);
    out.write(reinterpret_cast<const char*>(all.data_ptr<float>()), all.numel() * sizeof(float));
    if (!out) throw std::runtime_error(outputs.logits + ": cannot write logits");
  }
  return predictions;
}

}  // namespace

int summary(ModelConfig config, int64_t image_size) {
  if (image_size > 0) {
    config.set_image_size(image_size);
    check_model_config(config, "--image-size " + std::to_string(image_size));
  }
  const Model model = build_model(config);
  const int64_t channels = config.in_channels(), size = config.image_size();
  fmt::print("model {} ({}, {}x{}x{} images, {} classes)\n", model_name(config), config.family, channels, size,
             size, config.num_classes());
  model.module->eval();
  torch::NoGradGuard no_grad;
  fmt::print("{:<28} {:<22} {:>14}\n", "layer", "output shape", "parameters");
  auto row = [](const std::string& name, const at::Tensor& out, int64_t parameters) {
    fmt::print("{:<28} {:<22} {:>14L}\n", name, shape_text(out), parameters);
  };
  auto count = [](const torch::nn::Module& module) { return nn::count_parameters(module, false); };
  // The model's own walk (layers()), each layer's output as it passes.
  at::Tensor x = model->forward_features(
      at::zeros({1, channels, size, size}),
      [&](const std::string& name, torch::nn::Module& layer, const at::Tensor& out) {
        std::string type = c10::demangle(typeid(layer).name());
        type = type.substr(type.rfind(':') + 1);
        row(fmt::format("{} ({})", name, type.substr(0, type.size() - 4)), out, count(layer));  // "...Impl"
      });
  x = model->forward_head(x);
  row("norm, mean, head", x, count(*model->norm) + count(*model->head));
  fmt::print("total_params {}\ntrainable_params {}\n", nn::count_parameters(*model.module, false),
             nn::count_parameters(*model.module, true));
  return 0;
}

int evaluate(const std::string& checkpoint, const std::string& data_dir, int64_t limit,
             const TestSetOutputs& outputs) {
  LoadedModel loaded = load_model(checkpoint);
  const Dataset test =
      load_fashion_mnist(data_dir.empty() ? loaded.config.data_dir : data_dir, false, limit);
  check_data_fits(loaded.model_config, test);
  const at::Tensor predictions = classify_test_set(
      [&](const at::Tensor& unit) { return loaded.model(normalise(*loaded.model.classifier, unit)); }, test, outputs);
  const int64_t classes = loaded.model->num_classes();
  const at::Tensor confusion =
      at::bincount(test.labels * classes + predictions, {}, classes * classes).view({classes, classes});
  fmt::print("model {}: test accuracy {:.2f}% ({} images)\n", model_name(loaded.model_config),
             100 * accuracy_of(predictions, test), test.labels.numel());
  fmt::print("confusion matrix (rows: true class, columns: predicted)\n{:>10}", "");
  for (int64_t c = 0; c < classes; ++c) fmt::print("{:>9}", c < 10 ? kClasses[c] : std::to_string(c));
  fmt::print("\n");
  for (int64_t r = 0; r < classes; ++r) {
    fmt::print("{:>10}", r < 10 ? kClasses[r] : std::to_string(r));
    for (int64_t c = 0; c < classes; ++c) fmt::print("{:>9}", confusion[r][c].item<int64_t>());
    fmt::print("\n");
  }
  return 0;
}

int export_model(const std::string& checkpoint, const std::string& out) {
  struct stat checkpoint_info {}, out_info {};
  if (stat(checkpoint.c_str(), &checkpoint_info) == 0 && stat(out.c_str(), &out_info) == 0 &&
      checkpoint_info.st_dev == out_info.st_dev && checkpoint_info.st_ino == out_info.st_ino) {
    throw std::runtime_error(out + ": --out is the checkpoint itself (it would be replaced by the model)");
  }
  LoadedModel loaded = load_model(checkpoint);
  // Through a temporary file and a rename: a failed export replaces nothing.
  const std::string temporary = out + ".tmp";
  auto fail = [&](const std::string& reason) {
    std::remove(temporary.c_str());
    throw std::runtime_error(out + ": cannot write the model (" + reason + ")");
  };
  const int fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(std::strerror(errno));
  ::close(fd);
  try {
    nn::to_torchscript(*loaded.model.classifier).save(temporary);
  } catch (const c10::Error& e) {
    fail(first_line(e.what_without_backtrace()));
  }
  if (std::rename(temporary.c_str(), out.c_str()) != 0) fail(std::strerror(errno));
  fmt::print("exported {} ({}) to {}: input (N, {}, {}, {}) floats in [0, 1], output logits\n",
             checkpoint, model_name(loaded.model_config), out, loaded.model->in_channels(),
             loaded.model->image_size(), loaded.model->image_size());
  return 0;
}

namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// An exported model as a function of [0, 1] images: a TorchScript module, or an AOTInductor
// package (.pt2, python -m slideformer export --format aoti) run by AOTIModelPackageLoader.
std::function<c10::IValue(const at::Tensor&)> load_exported_model(const std::string& path) {
  if (ends_with(path, ".pt2")) {
    std::shared_ptr<torch::inductor::AOTIModelPackageLoader> package;
    try {
      package = std::make_shared<torch::inductor::AOTIModelPackageLoader>(path);
    } catch (const c10::Error& e) {
      throw std::runtime_error(path + ": not a loadable AOTInductor package (truncated or corrupt?)");
    }
    return [package](const at::Tensor& images) {
      std::vector<at::Tensor> outputs = package->run({images});
      return outputs.size() == 1 ? c10::IValue(outputs[0]) : c10::IValue(outputs);
    };
  }
  auto model = std::make_shared<torch::jit::Module>();
  try {
    *model = torch::jit::load(path);
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": not a loadable TorchScript model (truncated or corrupt?)");
  }
  if (!model->find_method("forward")) {
    // Checkpoints are TorchScript archives too, of values without methods.
    throw std::runtime_error(model->hasattr("format")
                                 ? path + ": is a slideformer checkpoint, not an exported model (export it first)"
                                 : path + ": a TorchScript archive without a forward method");
  }
  model->eval();
  return [model](const at::Tensor& images) { return model->forward({images}); };
}

}  // namespace

int predict(const std::string& model_path, const std::string& data_dir, int64_t limit,
            const TestSetOutputs& outputs) {
  struct stat info {};
  if (stat(model_path.c_str(), &info) != 0) {
    throw std::runtime_error(model_path + ": cannot open the model (" + std::strerror(errno) + ")");
  }
  if (S_ISDIR(info.st_mode)) throw std::runtime_error(model_path + ": is a directory, not a model file");
  const auto model = load_exported_model(model_path);
  const Dataset test = load_fashion_mnist(data_dir, false, limit);
  auto logits_of = [&](const at::Tensor& unit) {
    c10::IValue output;
    try {
      output = model(unit);
    } catch (const std::exception& e) {  // c10::Error, or the interpreter's JITException
      const auto* error = dynamic_cast<const c10::Error*>(&e);
      throw std::runtime_error(fmt::format("{}: the model failed on {} images: {}", model_path, shape_text(unit),
                                           last_line(error ? error->what_without_backtrace() : e.what())));
    }
    if (!output.isTensor() || output.toTensor().dim() != 2 || output.toTensor().size(0) != unit.size(0) ||
        !output.toTensor().is_floating_point()) {
      throw std::runtime_error(fmt::format(
          "{}: the model returned {} for {} images, expected (N, classes) floating-point logits", model_path,
          output.isTensor() ? "a tensor of shape " + shape_text(output.toTensor()) + " (" +
                                  std::string(c10::toString(output.toTensor().scalar_type())) + ")"
                            : "a " + output.tagKind(),
          shape_text(unit)));
    }
    return output.toTensor().to(at::kFloat);
  };
  const at::Tensor predictions = classify_test_set(logits_of, test, outputs);
  fmt::print("exported model {}: test accuracy {:.2f}% ({} images)\n", model_path,
             100 * accuracy_of(predictions, test), test.labels.numel());
  return 0;
}

}  // namespace slideformer::app
