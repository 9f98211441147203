#pragma once
// A fresh directory per test under /tmp, removed afterwards. POSIX calls, not std::filesystem:
// libtorch.so exports its own copies of std::filesystem functions, and remove_all crashes.
#include <ftw.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace slideformer::testing {

class ScratchDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char name[] = "/tmp/slideformer_test_XXXXXX";
    ASSERT_NE(mkdtemp(name), nullptr);
    dir_ = name;
  }
  void TearDown() override {
    nftw(dir_.c_str(), [](const char* path, const struct stat*, int, FTW*) { return std::remove(path); },
         16, FTW_DEPTH | FTW_PHYS);
  }
  std::string dir() const { return dir_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_;
};

// Runs `statement`, expecting a std::runtime_error whose message is exactly `expected`.
#define EXPECT_RUNTIME_ERROR(statement, expected)                                 \
  do {                                                                            \
    try {                                                                         \
      (void)(statement);                                                          \
      ADD_FAILURE() << "no exception; expected: " << (expected);                  \
    } catch (const std::runtime_error& e) {                                       \
      EXPECT_EQ(std::string(e.what()), (expected));                               \
    }                                                                             \
  } while (0)

}  // namespace slideformer::testing
