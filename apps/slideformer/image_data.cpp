#include "image_data.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <numeric>

#include "recipe.h"

namespace slideformer::app {

namespace {

bool is_directory(const std::string& path) {
  struct stat info {};
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

const char* const kFashionClasses[] = {"T-shirt", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal",  "Shirt",   "Sneaker",  "Bag",   "Boot"};

// `values` repeated or averaged to `channels` entries.
std::vector<double> per_channel(const std::vector<double>& values, int64_t channels) {
  if (static_cast<int64_t>(values.size()) == channels) return values;
  const double mean = std::accumulate(values.begin(), values.end(), 0.0) / std::max<size_t>(values.size(), 1);
  return std::vector<double>(static_cast<size_t>(channels), mean);
}

}  // namespace

std::optional<ImageFolders> image_folders(const TrainConfig& config) {
  if (!config.train_dir.empty()) {
    if (config.val_dir.empty()) throw std::runtime_error("--train-dir " + config.train_dir + ": --val-dir is needed too");
    return ImageFolders{config.train_dir, config.val_dir};
  }
  if (!is_directory(config.data_dir + "/train")) return std::nullopt;
  return ImageFolders{config.data_dir + "/train", config.data_dir + "/val"};
}

data::ImageFolder open_folder(const std::string& root, int64_t limit) {
  data::ImageFolder folder(root);
  if (limit <= 0 || limit >= folder.size()) return folder;
  std::vector<data::Sample> kept;
  for (int64_t i = 0; i < limit; ++i) kept.push_back(folder.sample(i * folder.size() / limit));
  return data::ImageFolder(std::move(kept), folder.classes());
}

int64_t detect_channels(const data::ImageFolder& folder) {
  const int64_t samples = std::min<int64_t>(folder.size(), 64);
  for (int64_t i = 0; i < samples; ++i) {
    const std::string& path = folder.sample(i * folder.size() / samples).path;
    const std::string bytes = data::read_file_bytes(path);
    if (data::read_image_info(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path).channels != 1) return 3;
  }
  return 1;
}

data::DataConfig data_config_for(const ModelConfig& model, std::vector<std::string> classes, double crop_pct) {
  data::DataConfig config;
  config.class_names = std::move(classes);
  config.channels = model.in_channels();
  config.image_size = model.image_size();
  config.mean = model.input_mean();
  config.std = model.input_std();
  config.crop_pct = crop_pct;
  config.check();
  return config;
}

data::DataConfig fashion_data_config(const ModelConfig& model) {
  std::vector<std::string> classes(std::begin(kFashionClasses), std::end(kFashionClasses));
  if (model.num_classes() != 10) {
    classes.clear();
    for (int64_t c = 0; c < model.num_classes(); ++c) classes.push_back(std::to_string(c));
  }
  return data_config_for(model, classes, 1.0);
}

std::string exported_data_config(const ModelConfig& model, const std::string& data_config) {
  return data_config.empty() ? fashion_data_config(model).to_json() : data_config;
}

void fit_model_to_data(ModelConfig& model, int64_t channels, int64_t classes, int64_t image_size) {
  model.set_input_normalization(per_channel(model.input_mean(), channels), per_channel(model.input_std(), channels));
  model.set_in_channels(channels);
  model.set_num_classes(classes);
  if (image_size > 0) model.set_image_size(image_size);
}

std::unique_ptr<data::Loader> train_loader(const data::ImageFolder& folder, const data::DataConfig& config,
                                           bool augment, int64_t threads, uint64_t seed, bool skip_bad_images) {
  // Without --augment the training images are the eval transform's: the same pictures every epoch.
  data::ImageTransform transform = augment ? data::ImageTransform::train(config) : data::ImageTransform::eval(config);
  return std::make_unique<data::Loader>(
      folder, transform, data::LoaderOptions().threads(threads).seed(seed).skip_bad_images(skip_bad_images));
}

std::unique_ptr<data::Loader> eval_loader(const data::ImageFolder& folder, const data::DataConfig& config,
                                          int64_t threads, bool skip_bad_images) {
  return std::make_unique<data::Loader>(folder, data::ImageTransform::eval(config),
                                        data::LoaderOptions().threads(threads).skip_bad_images(skip_bad_images));
}

Scored score(data::Loader& loader, const at::Tensor& indices, const std::function<at::Tensor(const at::Tensor&)>& logits_of,
             int64_t batch_size) {
  std::vector<at::Tensor> plan;
  for (int64_t start = 0; start < indices.numel(); start += batch_size) {
    plan.push_back(indices.narrow(0, start, std::min(batch_size, indices.numel() - start)));
  }
  loader.start_epoch(0, plan);
  // Without it each batch's logits would keep the batch's whole autograd graph until the end.
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> logits, labels;
  Scored scored;
  while (auto batch = loader.next()) {
    scored.skipped += static_cast<int64_t>(batch->errors.size());
    if (batch->images.size(0) == 0) continue;
    logits.push_back(logits_of(batch->images));
    labels.push_back(batch->labels);
  }
  scored.logits = logits.empty() ? at::empty({0, 0}) : at::cat(logits);
  scored.labels = labels.empty() ? at::empty({0}, at::kLong) : at::cat(labels);
  return scored;
}

}  // namespace slideformer::app
