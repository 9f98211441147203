// The program's files and child processes: write_file_atomically (atomic_file.h) leaves the old
// file or the new one, whole, and says why it failed; run_child (slideformer/distributed/process.h) passes its arguments
// as they are, without a shell.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <stdexcept>
#include <string>

#include "atomic_file.h"
#include "scratch_dir.h"
#include "slideformer/distributed/process.h"

namespace slideformer::app {
namespace {

using distributed::ChildProcess;
using distributed::ChildStatus;
using distributed::find_on_path;
using distributed::run_child;
using ProgramFilesTest = slideformer::testing::ScratchDirTest;

bool exists(const std::string& path) { return access(path.c_str(), F_OK) == 0; }

TEST_F(ProgramFilesTest, AFileIsReplacedWhole) {
  const std::string file = path("metrics.jsonl");
  write_file_atomically(file, "the metrics", "old\n");
  write_file_atomically(file, "the metrics", [](std::ostream& out) { out << "new " << 1 << "\n"; });
  EXPECT_EQ(read_text(file), "new 1\n");
  EXPECT_FALSE(exists(file + ".tmp"));
}

TEST_F(ProgramFilesTest, AWriterThatFailsLeavesTheOldFile) {
  const std::string file = path("checkpoint.pt");
  write_file_atomically(file, "the checkpoint", "old");
  try {
    write_file_atomically(file, "the checkpoint", [](std::ostream& out) {
      out << "half";
      throw std::invalid_argument("the writer gave up");
    });
    ADD_FAILURE() << "no exception";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "the writer gave up");
  }
  EXPECT_EQ(read_text(file), "old");
  EXPECT_FALSE(exists(file + ".tmp"));
}

// A write that the system refuses half-way (here: past RLIMIT_FSIZE, as a full disk would) is
// reported with its reason, and the old file stays.
TEST_F(ProgramFilesTest, AWriteTheSystemRefusesIsReportedAndLeavesTheOldFile) {
  const std::string file = path("logits");
  write_file_atomically(file, "logits", "old");
  rlimit saved {};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = saved;
  small.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  std::string message;
  try {
    write_file_atomically(file, "logits", std::string(10000, 'x'));
  } catch (const std::runtime_error& e) {
    message = e.what();
  }
  setrlimit(RLIMIT_FSIZE, &saved);
  std::signal(SIGXFSZ, previous_handler);
  EXPECT_EQ(message, file + ": cannot write logits (File too large)");
  EXPECT_EQ(read_text(file), "old");
  EXPECT_FALSE(exists(file + ".tmp"));
}

TEST_F(ProgramFilesTest, AnUnwritablePlaceIsReported) {
  EXPECT_RUNTIME_ERROR(write_file_atomically(path("absent/p.txt"), "predictions", "1\n"),
                       path("absent/p.txt") + ": cannot write predictions (No such file or directory)");
  EXPECT_RUNTIME_ERROR(write_file_atomically(dir(), "the model", "m"), dir() + ": cannot write the model (Is a directory)");
  EXPECT_FALSE(exists(dir() + ".tmp"));
}

TEST_F(ProgramFilesTest, AChildGetsItsArgumentsAsTheyAreWithoutAShell) {
  const std::string tricky = "a b; touch pwned $(touch pwned) `touch pwned` 'q\" *";
  ChildProcess child;
  child.argv = {"sh", "-c", "printf '%s|%s' \"$1\" \"$SLIDEFORMER_TEST_VALUE\" > out.txt", "sh", tricky};
  child.environment = {"SLIDEFORMER_TEST_VALUE=" + tricky};
  child.directory = dir();
  const ChildStatus status = run_child(child);
  EXPECT_TRUE(status.succeeded());
  EXPECT_EQ(read_text(path("out.txt")), tricky + "|" + tricky);
  EXPECT_FALSE(exists(path("pwned")));
}

TEST_F(ProgramFilesTest, AChildsFailureAndStderrAreKept) {
  ChildProcess child;
  child.argv = {"sh", "-c", "echo oops >&2; exit 3"};
  child.directory = dir();
  child.stderr_file = "child.log";
  child.quiet = true;
  const ChildStatus status = run_child(child);
  EXPECT_FALSE(status.succeeded());
  EXPECT_TRUE(status.exited);
  EXPECT_EQ(status.code, 3);
  EXPECT_EQ(read_text(path("child.log")), "oops\n");

  child.argv = {"sh", "-c", "kill -TERM $$"};
  const ChildStatus killed = run_child(child);
  EXPECT_FALSE(killed.exited);
  EXPECT_EQ(killed.signal, SIGTERM);

  child.argv = {path("no-such-program")};
  EXPECT_EQ(run_child(child).error, ENOENT);
}

TEST(FindOnPath, FindsExecutablesOnly) {
  EXPECT_EQ(find_on_path("sh").rfind('/'), find_on_path("sh").size() - 3);
  EXPECT_EQ(find_on_path("no-such-program-anywhere"), "");
}

}  // namespace
}  // namespace slideformer::app
