#pragma once
// Image datasets by path: the ImageFolder layout (root/<class>/<image>, as torchvision's
// ImageFolder, timm's train.py and every ImageNet copy use) and a file-list form.
#include <ATen/Tensor.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>
#include <vector>

namespace slideformer::data {

struct Sample {
  std::string path;
  int64_t label = 0;
};

struct ImageFolderOptions {
  // A class folder with no image is an error unless this is set (it keeps its class index).
  TORCH_ARG(bool, allow_empty_classes) = false;
};

// Samples and class names. Errors (std::runtime_error) name the directory or file at fault.
class ImageFolder {
 public:
  // root/<class>/**/<image>: classes are the sub-directories of root, sorted by name (byte order);
  // images are the files ending in .jpg, .jpeg or .png (any case) anywhere below a class folder,
  // sorted by path; other files are skipped and counted. Symbolic links are followed, each
  // directory visited once (a link back up the tree is not a loop).
  explicit ImageFolder(const std::string& root, ImageFolderOptions options = {});
  // A text file of "<path> <label>" lines (separated by the last run of spaces or tabs, so paths
  // may contain spaces; blank lines and lines starting with '#' are skipped). Relative paths are
  // relative to `root` (default: the list file's directory). Labels are class names; when every
  // label is a non-negative integer they are class indices instead (classes 0..max, named by
  // their number).
  static ImageFolder from_list(const std::string& list_file, const std::string& root = "");
  // Samples and class names given directly.
  ImageFolder(std::vector<Sample> samples, std::vector<std::string> classes);

  int64_t size() const { return static_cast<int64_t>(samples_.size()); }
  const Sample& sample(int64_t index) const { return samples_.at(static_cast<size_t>(index)); }
  const std::vector<Sample>& samples() const { return samples_; }
  const std::vector<std::string>& classes() const { return classes_; }
  // Files below root that are not images (ImageFolder layout; 0 for the other forms).
  int64_t skipped_files() const { return skipped_files_; }
  // Every label as an int64 tensor (N).
  at::Tensor labels() const;

 private:
  ImageFolder() = default;
  std::vector<Sample> samples_;
  std::vector<std::string> classes_;
  int64_t skipped_files_ = 0;
};

// Whether the file name ends in .jpg, .jpeg or .png (any case).
bool has_image_extension(const std::string& name);

// The image files below `dir` (sub-directories included, symbolic links followed, each directory
// once), sorted by path. std::runtime_error naming `dir` when it cannot be read.
std::vector<std::string> list_images(const std::string& dir);

}  // namespace slideformer::data
