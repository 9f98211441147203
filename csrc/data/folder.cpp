// ImageFolder: directory walk (POSIX, following symbolic links, each directory once) and the
// file-list form.
#include "slideformer/data/folder.h"

#include <ATen/ATen.h>
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>

namespace slideformer::data {

namespace {

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw std::runtime_error(path + ": " + problem);
}

using DirectoryId = std::pair<dev_t, ino_t>;

// The entries of a directory (names, without . and ..), sorted.
std::vector<std::string> list_directory(const std::string& path) {
  DIR* dir = opendir(path.c_str());
  if (!dir) fail(path, std::string("cannot read the directory (") + std::strerror(errno) + ")");
  std::vector<std::string> names;
  while (const dirent* entry = readdir(dir)) {
    const std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(dir);
  std::sort(names.begin(), names.end());
  return names;
}

struct Walk {
  std::set<DirectoryId> visited;
  int64_t skipped = 0;

  // Appends the images below `dir` (sorted by path, depth first) with `label`.
  void images(const std::string& dir, int64_t label, std::vector<Sample>& out) {
    for (const std::string& name : list_directory(dir)) {
      const std::string path = dir + "/" + name;
      struct stat info {};
      if (stat(path.c_str(), &info) != 0) {  // a broken link
        ++skipped;
        continue;
      }
      if (S_ISDIR(info.st_mode)) {
        if (visited.insert({info.st_dev, info.st_ino}).second) images(path, label, out);
      } else if (S_ISREG(info.st_mode) && has_image_extension(name)) {
        out.push_back({path, label});
      } else {
        ++skipped;
      }
    }
  }
};

bool is_index(const std::string& text) {
  return !text.empty() && text.size() < 10 && std::all_of(text.begin(), text.end(), [](char c) { return c >= '0' && c <= '9'; });
}

std::string directory_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

}  // namespace

bool has_image_extension(const std::string& name) {
  const size_t dot = name.rfind('.');
  if (dot == std::string::npos) return false;
  std::string extension = name.substr(dot + 1);
  std::transform(extension.begin(), extension.end(), extension.begin(), [](unsigned char c) { return std::tolower(c); });
  return extension == "jpg" || extension == "jpeg" || extension == "png";
}

ImageFolder::ImageFolder(const std::string& root, ImageFolderOptions options) {
  struct stat info {};
  if (stat(root.c_str(), &info) != 0) {
    fail(root, std::string("no such directory (") + std::strerror(errno) + "; expected " + root + "/<class>/<image>)");
  }
  if (!S_ISDIR(info.st_mode)) fail(root, "not a directory (expected " + root + "/<class>/<image>)");
  Walk walk;
  walk.visited.insert({info.st_dev, info.st_ino});
  for (const std::string& name : list_directory(root)) {
    const std::string path = root + "/" + name;
    struct stat entry {};
    if (stat(path.c_str(), &entry) == 0 && S_ISDIR(entry.st_mode)) {
      if (!walk.visited.insert({entry.st_dev, entry.st_ino}).second) continue;
      const size_t before = samples_.size();
      walk.images(path, static_cast<int64_t>(classes_.size()), samples_);
      if (samples_.size() == before && !options.allow_empty_classes()) {
        fail(path, "a class folder without images (.jpg, .jpeg or .png files)");
      }
      classes_.push_back(name);
    } else {
      ++walk.skipped;  // files next to the class folders
    }
  }
  if (classes_.empty()) fail(root, "no class folders (expected " + root + "/<class>/<image>)");
  if (samples_.empty()) fail(root, "no images in the class folders");
  skipped_files_ = walk.skipped;
}

ImageFolder ImageFolder::from_list(const std::string& list_file, const std::string& root) {
  std::ifstream in(list_file);
  if (!in) fail(list_file, std::string("cannot open the list (") + std::strerror(errno) + ")");
  const std::string base = root.empty() ? directory_of(list_file) : root;
  std::vector<std::pair<std::string, std::string>> entries;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos || line[0] == '#') continue;
    const size_t label_start = line.find_last_of(" \t");
    const size_t path_end = label_start == std::string::npos ? std::string::npos : line.find_last_not_of(" \t", label_start);
    if (label_start == std::string::npos || path_end == std::string::npos) {
      fail(list_file, "line " + std::to_string(number) + ": expected \"<path> <label>\", got \"" + line.substr(0, 200) + "\"");
    }
    std::string path = line.substr(0, path_end + 1);
    if (path[0] != '/') path = base + "/" + path;
    entries.emplace_back(path, line.substr(label_start + 1));
  }
  if (entries.empty()) fail(list_file, "lists no images");
  ImageFolder folder;
  const bool indices = std::all_of(entries.begin(), entries.end(), [](const auto& e) { return is_index(e.second); });
  std::map<std::string, int64_t> index_of;
  if (indices) {
    int64_t max_label = 0;
    for (const auto& entry : entries) max_label = std::max<int64_t>(max_label, std::stoll(entry.second));
    for (int64_t c = 0; c <= max_label; ++c) folder.classes_.push_back(std::to_string(c));
  } else {
    for (const auto& entry : entries) index_of.emplace(entry.second, 0);
    for (auto& [name, index] : index_of) {
      index = static_cast<int64_t>(folder.classes_.size());
      folder.classes_.push_back(name);
    }
  }
  for (const auto& [path, label] : entries) {
    folder.samples_.push_back({path, indices ? std::stoll(label) : index_of.at(label)});
  }
  return folder;
}

ImageFolder::ImageFolder(std::vector<Sample> samples, std::vector<std::string> classes)
    : samples_(std::move(samples)), classes_(std::move(classes)) {
  for (const Sample& sample : samples_) {
    if (sample.label < 0 || sample.label >= static_cast<int64_t>(classes_.size())) {
      fail(sample.path, "label " + std::to_string(sample.label) + " is outside the " +
                            std::to_string(classes_.size()) + " classes");
    }
  }
}

std::vector<std::string> list_images(const std::string& dir) {
  struct stat info {};
  if (stat(dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) fail(dir, "no such directory");
  Walk walk;
  walk.visited.insert({info.st_dev, info.st_ino});
  std::vector<Sample> found;
  walk.images(dir, 0, found);
  std::vector<std::string> paths;
  for (Sample& sample : found) paths.push_back(std::move(sample.path));
  return paths;
}

at::Tensor ImageFolder::labels() const {
  at::Tensor labels = at::empty({size()}, at::kLong);
  int64_t* out = labels.data_ptr<int64_t>();
  for (const Sample& sample : samples_) *out++ = sample.label;
  return labels;
}

}  // namespace slideformer::data
