#include <gtest/gtest.h>

#include <csignal>

#include "crash_report.h"

namespace {

// The report names the program and the signal, and prints a stack; the process still dies of
// the signal (the death test's child).
TEST(CrashReportDeathTest, AFatalSignalPrintsTheStackAndStillKills) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        slideformer::app::report_crashes("crash-test");
        std::raise(SIGSEGV);
      },
      testing::KilledBySignal(SIGSEGV), "crash-test: fatal signal 11 \\(SEGV\\), native stack:\n.*\\[0x");
}

}  // namespace
