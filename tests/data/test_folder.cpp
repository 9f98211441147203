// ImageFolder and the file-list form: what is found, in which order, and the errors.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image_files.h"
#include "scratch_dir.h"
#include "slideformer/data/folder.h"

namespace slideformer::data {
namespace {

using testing::write_file;

class Folder : public slideformer::testing::ScratchDirTest {
 protected:
  void make(const std::string& name) { ASSERT_EQ(::mkdir(path(name).c_str(), 0755), 0) << name; }
  void expect_error(const std::function<void()>& f, const std::string& expected_start) {
    try {
      f();
      ADD_FAILURE() << "no error; expected " << expected_start;
    } catch (const std::runtime_error& error) {
      EXPECT_EQ(std::string(error.what()).rfind(expected_start, 0), 0u) << error.what();
    }
  }
};

TEST_F(Folder, FindsImagesOfSortedClassesInAnyCaseAndCountsOtherFiles) {
  make("root");
  make("root/zebra");
  make("root/ant");
  make("root/ant/nested");
  for (const char* file : {"root/zebra/b.JPG", "root/zebra/a.Png", "root/ant/x.jpeg", "root/ant/nested/y.jpg",
                           "root/ant/notes.txt", "root/ant/z.gif", "root/README"}) {
    write_file(path(file), "x");
  }
  // A link back up the tree is followed once, not looped in.
  ASSERT_EQ(::symlink(path("root").c_str(), path("root/ant/nested/loop").c_str()), 0);
  const ImageFolder folder(path("root"));
  ASSERT_EQ(folder.classes(), (std::vector<std::string>{"ant", "zebra"}));
  std::vector<std::string> paths;
  for (const Sample& s : folder.samples()) paths.push_back(s.path.substr(dir().size() + 1) + ":" + std::to_string(s.label));
  EXPECT_EQ(paths, (std::vector<std::string>{"root/ant/nested/y.jpg:0", "root/ant/x.jpeg:0", "root/zebra/a.Png:1",
                                             "root/zebra/b.JPG:1"}));
  EXPECT_EQ(folder.skipped_files(), 3);
  EXPECT_EQ(folder.labels().sizes(), at::IntArrayRef({4}));
}

TEST_F(Folder, MissingEmptyAndImagelessFoldersAreErrorsNamingThem) {
  expect_error([&] { ImageFolder(path("nowhere")); }, path("nowhere") + ": no such directory");
  make("empty");
  expect_error([&] { ImageFolder(path("empty")); }, path("empty") + ": no class folders");
  make("root");
  make("root/cat");
  make("root/dog");
  write_file(path("root/cat/1.jpg"), "x");
  write_file(path("root/dog/readme.txt"), "x");
  expect_error([&] { ImageFolder(path("root")); }, path("root/dog") + ": a class folder without images");
  const ImageFolder tolerant(path("root"), ImageFolderOptions().allow_empty_classes(true));
  EXPECT_EQ(tolerant.classes().size(), 2u);
  EXPECT_EQ(tolerant.size(), 1);
  write_file(path("file"), "x");
  expect_error([&] { ImageFolder(path("file")); }, path("file") + ": not a directory");
}

TEST_F(Folder, FileListsTakeNamesOrIndicesAndPathsWithSpaces) {
  write_file(path("names.txt"), "# path label\nimages/a b.jpg cat\n\n/abs/c.png\tdog\nimages/d.jpg  cat\r\n");
  const ImageFolder named = ImageFolder::from_list(path("names.txt"));
  EXPECT_EQ(named.classes(), (std::vector<std::string>{"cat", "dog"}));
  ASSERT_EQ(named.size(), 3);
  EXPECT_EQ(named.sample(0).path, path("images/a b.jpg"));
  EXPECT_EQ(named.sample(1).path, "/abs/c.png");
  EXPECT_EQ(named.sample(1).label, 1);
  EXPECT_EQ(named.sample(2).label, 0);
  write_file(path("indices.txt"), "a.jpg 2\nb.jpg 10\n");
  const ImageFolder indexed = ImageFolder::from_list(path("indices.txt"), "/data");
  EXPECT_EQ(indexed.classes().size(), 11u);
  EXPECT_EQ(indexed.sample(1).label, 10);
  EXPECT_EQ(indexed.sample(0).path, "/data/a.jpg");
  write_file(path("bad.txt"), "a.jpg 1\nnolabel\n");
  expect_error([&] { ImageFolder::from_list(path("bad.txt")); }, path("bad.txt") + ": line 2: expected \"<path> <label>\"");
  expect_error([&] { ImageFolder::from_list(path("none.txt")); }, path("none.txt") + ": cannot open the list");
  expect_error([&] { ImageFolder({{"x.jpg", 3}}, {"a", "b"}); }, "x.jpg: label 3 is outside the 2 classes");
}

}  // namespace
}  // namespace slideformer::data
