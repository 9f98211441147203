// The main of the GoogleTest programs: gtest_main's, plus --skipped-suite-exit-code=N, which ctest
// passes (tests/gtest_suites.cmake): a run in which every selected case skipped and none failed
// exits with N, ctest's SKIP_RETURN_CODE, so that a suite of CUDA cases on a machine without a GPU
// is reported as skipped rather than passed. By hand the program exits as gtest_main's does.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

int main(int argc, char** argv) {
  const std::string flag = "--skipped-suite-exit-code=";
  int skipped_exit_code = 0;
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument.rfind(flag, 0) == 0) {
      skipped_exit_code = std::atoi(argument.c_str() + flag.size());
    } else {
      argv[kept++] = argv[i];
    }
  }
  argc = kept;
  argv[argc] = nullptr;
  testing::InitGoogleTest(&argc, argv);
  const int result = RUN_ALL_TESTS();
  const testing::UnitTest& run = *testing::UnitTest::GetInstance();
  if (result == 0 && skipped_exit_code != 0 && run.skipped_test_count() > 0 && run.successful_test_count() == 0) {
    return skipped_exit_code;
  }
  return result;
}
