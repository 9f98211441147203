#include "commands.h"

#include <c10/util/Type.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/script.h>

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <stdexcept>
#include <vector>

#include <nlohmann/json.hpp>

#include "atomic_file.h"
#include "checkpoint.h"
#include "image_data.h"
#include "inference.h"
#include "slideformer/nn/export.h"

namespace slideformer::app {

namespace {

// The extra file of an exported TorchScript model that holds its data config.
constexpr const char* kDataConfigFile = "data_config.json";

std::string shape_text(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

std::string first_line(const std::string& text) { return text.substr(0, text.find('\n')); }

// The last non-empty line: TorchScript errors end with the exception's own message.
// torch::jit::load, once the archive is known to be sound (torch_archive_is_sound).
torch::jit::Module load_torchscript(const std::string& path, torch::jit::ExtraFilesMap& extra) {
  const std::string damaged = path + ": not a loadable TorchScript model (truncated or corrupt?)";
  if (!torch_archive_is_sound(path)) throw std::runtime_error(damaged);
  try {
    return torch::jit::load(path, c10::nullopt, extra);
  } catch (const c10::Error&) {
    throw std::runtime_error(damaged);
  }
}

std::string last_line(const std::string& text) {
  const size_t end = text.find_last_not_of("\n ");
  if (end == std::string::npos) return text;
  const size_t start = text.rfind('\n', end);
  return text.substr(start == std::string::npos ? 0 : start + 1, end + 1 - (start == std::string::npos ? 0 : start + 1));
}

double accuracy_of(const at::Tensor& predictions, const Dataset& data) {
  return predictions.eq(data.labels).to(at::kDouble).mean().item<double>();
}

void write_outputs(const at::Tensor& predictions, const at::Tensor& logits, const TestSetOutputs& outputs) {
  if (!outputs.predictions.empty()) {
    std::string text;
    const auto* p = predictions.data_ptr<int64_t>();
    for (int64_t i = 0; i < predictions.numel(); ++i) text += std::to_string(p[i]) + "\n";
    write_file_atomically(outputs.predictions, "predictions", text);
  }
  if (!outputs.logits.empty()) {
    const at::Tensor all = logits.contiguous();
    write_file_atomically(outputs.logits, "logits", [&](std::ostream& out) {
      out.write(reinterpret_cast<const char*>(all.data_ptr<float>()), all.numel() * sizeof(float));
    });
  }
}

// Predicted classes of the test set, writing the requested outputs.
at::Tensor classify_test_set(const std::function<at::Tensor(const at::Tensor&)>& logits_of,
                             const Dataset& test, const TestSetOutputs& outputs) {
  std::vector<at::Tensor> logits;
  const at::Tensor predictions = predict_classes(
      [&](const at::Tensor& unit) { return logits.emplace_back(logits_of(unit)); }, test);
  write_outputs(predictions, outputs.logits.empty() ? at::Tensor() : at::cat(logits), outputs);
  return predictions;
}

}  // namespace

namespace {

void print_summary_row(const std::string& name, const at::Tensor& out, int64_t parameters) {
  fmt::print("{:<28} {:<22} {:>14L}\n", name, shape_text(out), parameters);
}

int64_t all_parameters(const torch::nn::Module& module) { return nn::count_parameters(module, false); }

// "<name> (<Type>)": the layer's class without its namespace and "Impl".
std::string layer_label(const std::string& name, const torch::nn::Module& layer) {
  std::string type = c10::demangle(typeid(layer).name());
  type = type.substr(type.rfind(':') + 1);
  return fmt::format("{} ({})", name, type.substr(0, type.size() - 4));
}

void print_summary_totals(const torch::nn::Module& model) {
  fmt::print("total_params {}\ntrainable_params {}\n", all_parameters(model), nn::count_parameters(model, true));
}

}  // namespace

int summary(ModelConfig config, int64_t image_size) {
  if (image_size > 0) {
    config.set_image_size(image_size);
    check_model_config(config, "--image-size " + std::to_string(image_size));
  }
  const Model model = build_model(config);
  const int64_t channels = config.in_channels(), size = config.image_size();
  fmt::print("model {} ({}, {}x{}x{} images, {} classes)\n", model_name(config), config.family().name, channels, size,
             size, config.num_classes());
  model.module->eval();
  torch::NoGradGuard no_grad;
  fmt::print("{:<28} {:<22} {:>14}\n", "layer", "output shape", "parameters");
  // The model's own walk (layers()), each layer's output as it passes.
  at::Tensor x = model->forward_tokens(
      at::zeros({1, channels, size, size}),
      [&](const std::string& name, torch::nn::Module& layer, const at::Tensor& out) {
        print_summary_row(layer_label(name, layer), out, all_parameters(layer));
      });
  x = model->forward_head(x);
  print_summary_row("norm, mean, head", x, all_parameters(*model->norm) + all_parameters(*model->head));
  print_summary_totals(*model.module);
  return 0;
}

int video_summary(const std::string& preset, int64_t image_size) {
  if (image_size > 0) {
    throw std::runtime_error("--image-size: a video preset takes clips of its own size, got --image-size " +
                             std::to_string(image_size) + " with --preset " + preset);
  }
  const nn::VideoMViTOptions o = nn::video_mvit_preset(preset);
  nn::VideoMViT model(o);
  model->eval();
  torch::NoGradGuard no_grad;
  fmt::print("model {} (video MViT, {}x{}x{}x{} clips, {} classes)\n", preset, o.in_channels(), o.frames(),
             o.image_size(), o.image_size(), o.num_classes());
  fmt::print("{:<28} {:<22} {:>14}\n", "layer", "output shape", "parameters");
  const at::Tensor clip = at::zeros({1, o.in_channels(), o.frames(), o.image_size(), o.image_size()});
  print_summary_row(layer_label("patch_embed", *model->patch_embed), model->patch_embed(clip),
                    all_parameters(*model->patch_embed));
  // The blocks' token shapes, from tokens of the right shape (the class token first): the values
  // do not matter, so the positions need not be added here.
  std::vector<int64_t> grid = model->token_grid();
  at::Tensor tokens = at::zeros({1, 1 + c10::multiply_integers(grid), o.embed_dim()});
  int64_t listed = all_parameters(*model->patch_embed);
  for (size_t i = 0; i < model->blocks->size(); ++i) {
    auto block = model->blocks->ptr<nn::MViTBlockImpl>(i);
    std::tie(tokens, grid) = block->forward_tokens(tokens, grid);
    print_summary_row(layer_label("block_" + std::to_string(i), *block), tokens, all_parameters(*block));
    listed += all_parameters(*block);
  }
  const int64_t head = all_parameters(*model->norm) + all_parameters(*model->head);
  // The head on the class token of the walked tokens: the logits' shape without a second forward.
  print_summary_row("norm, class token, head", model->head(model->norm(tokens).select(1, 0)), head);
  fmt::print("{:<28} {:<22} {:>14L}\n", "class token, positions", "", all_parameters(*model) - listed - head);
  print_summary_totals(*model);
  return 0;
}

namespace {

bool is_directory(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

// Rows true class, columns predicted, headed by the class names (up to 40 classes).
void print_confusion(const at::Tensor& labels, const at::Tensor& predictions, const std::vector<std::string>& names) {
  const int64_t classes = static_cast<int64_t>(names.size());
  if (classes > 40) {
    fmt::print("(confusion matrix of {} classes not printed: --predictions writes every prediction)\n", classes);
    return;
  }
  const at::Tensor confusion =
      at::bincount(labels * classes + predictions, {}, classes * classes).view({classes, classes});
  size_t width = 6;
  for (const std::string& name : names) width = std::max(width, std::min<size_t>(name.size(), 12));
  auto cell = [&](const std::string& text) { return fmt::format("{:>{}}", text.substr(0, 12), width + 1); };
  fmt::print("confusion matrix (rows: true class, columns: predicted)\n{}", cell(""));
  for (const std::string& name : names) fmt::print("{}", cell(name));
  fmt::print("\n");
  for (int64_t r = 0; r < classes; ++r) {
    fmt::print("{}", cell(names[r]));
    for (int64_t c = 0; c < classes; ++c) fmt::print("{}", cell(std::to_string(confusion[r][c].item<int64_t>())));
    fmt::print("\n");
  }
}

// evaluate() on a folder of images.
int evaluate_folder(LoadedModel& loaded, const std::string& dir, int64_t limit, const TestSetOutputs& outputs,
                    bool skip_bad_images) {
  const data::DataConfig config = loaded.data_config.empty() ? fashion_data_config(loaded.model_config)
                                                             : data::DataConfig::from_json(loaded.data_config, dir);
  const data::ImageFolder folder = open_folder(dir, limit);
  if (folder.classes() != config.class_names) {
    throw std::runtime_error(fmt::format("{}: its {} class folders are not the {} classes the model was trained on "
                                         "(first: {})", dir, folder.classes().size(), config.class_names.size(),
                                         config.class_names.empty() ? "none" : config.class_names.front()));
  }
  at::set_num_threads(1);  // the loader's threads decode, the model runs between batches
  auto loader = eval_loader(folder, config, 2, skip_bad_images);
  const Scored scored = score(*loader, at::arange(folder.size(), at::kLong),
                              [&](const at::Tensor& images) { return loaded.model(images); });
  at::set_num_threads(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  const int64_t n = scored.labels.numel(), top = std::min<int64_t>(5, loaded.model->num_classes());
  const at::Tensor predictions = n ? scored.logits.argmax(1) : at::empty({0}, at::kLong);
  const double accuracy = n ? predictions.eq(scored.labels).to(at::kDouble).mean().item<double>() : 0.0;
  const double top5 = n ? std::get<1>(scored.logits.topk(top, 1)).eq(scored.labels.unsqueeze(1)).any(1)
                              .to(at::kDouble).mean().item<double>() : 0.0;
  write_outputs(predictions, scored.logits, outputs);
  fmt::print("model {}: accuracy {:.2f}%, top-{} {:.2f}% ({} images in {}{})\n", model_name(loaded.model_config),
             100 * accuracy, top, 100 * top5, n, dir,
             scored.skipped ? fmt::format(", {} bad images skipped", scored.skipped) : "");
  print_confusion(scored.labels, predictions, config.class_names);
  return 0;
}

}  // namespace

int evaluate(const std::string& checkpoint, const std::string& data_dir, int64_t limit,
             const TestSetOutputs& outputs, bool skip_bad_images) {
  LoadedModel loaded = load_model(checkpoint);
  if (!data_dir.empty() && (is_directory(data_dir + "/val") || !loaded.data_config.empty())) {
    return evaluate_folder(loaded, is_directory(data_dir + "/val") ? data_dir + "/val" : data_dir, limit, outputs,
                           skip_bad_images);
  }
  if (data_dir.empty() && !loaded.data_config.empty()) {
    if (loaded.config.data_dir.empty() && loaded.config.val_dir.empty()) {
      throw std::runtime_error(checkpoint + ": imported weights come with no data: give --data (a folder of "
                               "<class>/<image>)");
    }
    const std::string val = loaded.config.val_dir.empty() ? loaded.config.data_dir + "/val" : loaded.config.val_dir;
    return evaluate_folder(loaded, val, limit, outputs, skip_bad_images);
  }
  const Dataset test =
      load_fashion_mnist(data_dir.empty() ? loaded.config.data_dir : data_dir, false, limit);
  check_data_fits(loaded.model_config, test);
  const at::Tensor predictions = classify_test_set(
      [&](const at::Tensor& unit) { return loaded.model(normalise(*loaded.model.classifier, unit)); }, test, outputs);
  fmt::print("model {}: test accuracy {:.2f}% ({} images)\n", model_name(loaded.model_config),
             100 * accuracy_of(predictions, test), test.labels.numel());
  print_confusion(test.labels, predictions, fashion_data_config(loaded.model_config).class_names);
  return 0;
}

int export_model(const std::string& checkpoint, const std::string& out, bool features) {
  struct stat checkpoint_info {}, out_info {};
  if (stat(checkpoint.c_str(), &checkpoint_info) == 0 && stat(out.c_str(), &out_info) == 0 &&
      checkpoint_info.st_dev == out_info.st_dev && checkpoint_info.st_ino == out_info.st_ino) {
    throw std::runtime_error(out + ": --out is the checkpoint itself (it would be replaced by the model)");
  }
  LoadedModel loaded = load_model(checkpoint);
  const std::string data_config = exported_data_config(loaded.model_config, loaded.data_config);
  const nn::Classifier& model = *loaded.model.classifier;
  try {
    write_file_atomically(out, "the model", [&](std::ostream& stream) {
      (features ? nn::to_torchscript_features(model) : nn::to_torchscript(model))
          .save(stream, {{kDataConfigFile, data_config}});
    });
  } catch (const c10::Error& e) {
    throw std::runtime_error(out + ": cannot write the model (" + first_line(e.what_without_backtrace()) + ")");
  }
  fmt::print("exported {} ({}) to {}: input (N, {}, {}, {}) floats in [0, 1], output {}\n",
             checkpoint, model_name(loaded.model_config), out, loaded.model->in_channels(),
             loaded.model->image_size(), loaded.model->image_size(),
             features ? "the stage outputs (N, C_i, H_i, W_i)" : "logits");
  return 0;
}

namespace {

bool ends_with(const std::string& text, const std::string& suffix) {
  return text.size() >= suffix.size() && text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// An exported model as a function of [0, 1] images, and the data config it carries (JSON; empty
// for models exported before the config travelled with them): a TorchScript module (the config
// is its extra file), or an AOTInductor package (.pt2, python -m slideformer export --format aoti;
// the config is its metadata) run by AOTIModelPackageLoader.
struct ExportedModel {
  std::function<c10::IValue(const at::Tensor&)> forward;
  std::string data_config;
};

ExportedModel load_exported_model(const std::string& path) {
  if (ends_with(path, ".pt2")) {
    std::shared_ptr<torch::inductor::AOTIModelPackageLoader> package;
    try {
      package = std::make_shared<torch::inductor::AOTIModelPackageLoader>(path);
    } catch (const c10::Error& e) {
      throw std::runtime_error(path + ": not a loadable AOTInductor package (truncated or corrupt?)");
    }
    const auto metadata = package->get_metadata();
    const auto config = metadata.find(kDataConfigFile);
    auto forward = [package](const at::Tensor& images) {
      std::vector<at::Tensor> outputs = package->run({images});
      return outputs.size() == 1 ? c10::IValue(outputs[0]) : c10::IValue(outputs);
    };
    return {forward, config == metadata.end() ? "" : config->second};
  }
  torch::jit::ExtraFilesMap extra{{kDataConfigFile, ""}};
  auto model = std::make_shared<torch::jit::Module>(load_torchscript(path, extra));
  if (!model->find_method("forward")) {
    // Checkpoints are TorchScript archives too, of values without methods.
    throw std::runtime_error(model->hasattr("format")
                                 ? path + ": is a slideformer checkpoint, not an exported model (export it first)"
                                 : path + ": a TorchScript archive without a forward method");
  }
  model->eval();
  return {[model](const at::Tensor& images) { return model->forward({images}); }, extra[kDataConfigFile]};
}

}  // namespace

int predict(const std::string& model_path, const std::string& data_dir, int64_t limit,
            const TestSetOutputs& outputs) {
  struct stat info {};
  if (stat(model_path.c_str(), &info) != 0) {
    throw std::runtime_error(model_path + ": cannot open the model (" + std::strerror(errno) + ")");
  }
  if (S_ISDIR(info.st_mode)) throw std::runtime_error(model_path + ": is a directory, not a model file");
  const auto model = load_exported_model(model_path).forward;
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

namespace slideformer::app {

namespace {

// The files to predict: each file given, and the images below each directory given.
std::vector<std::string> expand_inputs(const std::vector<std::string>& inputs) {
  std::vector<std::string> files;
  for (const std::string& input : inputs) {
    if (is_directory(input)) {
      const std::vector<std::string> found = data::list_images(input);
      if (found.empty()) throw std::runtime_error(input + ": no .jpg, .jpeg or .png files in the directory");
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(input);
    }
  }
  return files;
}

}  // namespace

int predict_images(const std::string& model_path, const std::vector<std::string>& inputs, int64_t top, bool json) {
  const ExportedModel model = load_exported_model(model_path);
  if (model.data_config.empty()) {
    throw std::runtime_error(model_path + ": the model holds no data config (" + kDataConfigFile +
                             "): export it again with this version of slideformer");
  }
  const data::DataConfig config = data::DataConfig::from_json(model.data_config, model_path);
  // The exported model normalises its [0, 1] input itself.
  data::ImageTransform transform = data::ImageTransform::eval(config);
  transform.normalize(false);
  const std::vector<std::string> files = expand_inputs(inputs);
  top = std::min<int64_t>(top, static_cast<int64_t>(config.class_names.size()));
  int64_t failed = 0;
  constexpr size_t kBatch = 32;
  torch::NoGradGuard no_grad;
  for (size_t start = 0; start < files.size(); start += kBatch) {
    std::vector<at::Tensor> images;
    std::vector<std::string> names;
    for (size_t i = start; i < std::min(files.size(), start + kBatch); ++i) {
      try {
        images.push_back(transform(files[i]));
        names.push_back(files[i]);
      } catch (const data::ImageError& error) {
        fmt::print(stderr, "slideformer: error: {}\n", error.what());
        ++failed;
      }
    }
    if (images.empty()) continue;
    const at::Tensor probabilities = model.forward(at::stack(images)).toTensor().to(at::kFloat).softmax(1);
    const auto [values, indices] = probabilities.topk(top, 1);
    for (size_t i = 0; i < names.size(); ++i) {
      nlohmann::ordered_json classes = nlohmann::ordered_json::array();
      std::string line = names[i] + ":";
      for (int64_t k = 0; k < top; ++k) {
        const int64_t c = indices[i][k].item<int64_t>();
        const double p = values[i][k].item<double>();
        classes.push_back({{"class", config.class_names[c]}, {"index", c}, {"probability", p}});
        line += fmt::format("{} {} {:.4f}", k ? "," : "", config.class_names[c], p);
      }
      fmt::print("{}\n", json ? nlohmann::ordered_json{{"file", names[i]}, {"top", classes}}.dump() : line);
    }
  }
  std::fflush(stdout);
  return failed ? 1 : 0;
}

}  // namespace slideformer::app
