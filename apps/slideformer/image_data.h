#pragma once
// The program's side of image folders (slideformer::data): which folders a run trains on, the
// model's input taken from the data, loaders for training and scoring, and the data config
// stored in checkpoints and exported models.
#include <ATen/Tensor.h>

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "model_config.h"
#include "slideformer/data.h"

namespace slideformer::app {

struct TrainConfig;

// The train and validation folders of a run.
struct ImageFolders {
  std::string train, val;
};

// --train-dir / --val-dir, else <--data>/train and <--data>/val when <--data>/train is a
// directory; nullopt for a run on Fashion-MNIST's IDX files.
std::optional<ImageFolders> image_folders(const TrainConfig& config);

// A folder (ImageFolder layout), limited to `limit` images spread over it (0: all).
data::ImageFolder open_folder(const std::string& root, int64_t limit);

// 1 when every image of an evenly spread sample of the folder is gray, else 3.
int64_t detect_channels(const data::ImageFolder& folder);

// The input a model trained on `classes` expects: its channels, size, mean and std.
data::DataConfig data_config_for(const ModelConfig& model, std::vector<std::string> classes, double crop_pct);

// Fashion-MNIST's classes and the 28 x 28 input of a model trained on its IDX files.
data::DataConfig fashion_data_config(const ModelConfig& model);

// The data config (JSON) that an exported model of a checkpoint carries: the checkpoint's own
// `data_config`, or Fashion-MNIST's for a run on the IDX files.
std::string exported_data_config(const ModelConfig& model, const std::string& data_config);

// The model's input channels and classes set to the data's (mean and std follow the channels).
void fit_model_to_data(ModelConfig& model, int64_t channels, int64_t classes, int64_t image_size);

// Loaders of the program: `threads` decoding threads.
std::unique_ptr<data::Loader> train_loader(const data::ImageFolder& folder, const data::DataConfig& config,
                                           bool augment, int64_t threads, uint64_t seed, bool skip_bad_images);
std::unique_ptr<data::Loader> eval_loader(const data::ImageFolder& folder, const data::DataConfig& config,
                                          int64_t threads, bool skip_bad_images);

// Logits (N, classes) of the samples `indices` of an eval loader's folder, in batches of
// `batch_size`, and the labels of the images that loaded (skipped ones are counted).
struct Scored {
  at::Tensor logits, labels;
  int64_t skipped = 0;
};
Scored score(data::Loader& loader, const at::Tensor& indices, const std::function<at::Tensor(const at::Tensor&)>& logits_of,
             int64_t batch_size = 128);

}  // namespace slideformer::app
