#include "crash_report.h"

#include <execinfo.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <initializer_list>

namespace slideformer::app {

namespace {

const char* program_name = "slideformer";

void write_text(const char* text) {
  const ssize_t written = write(STDERR_FILENO, text, std::strlen(text));
  (void)written;  // nothing left to report a failed write to
}

// Async-signal-safe but for backtrace_symbols_fd, whose library report_crashes loaded beforehand.
void on_fatal_signal(int signal_number) {
  char number[12];
  int length = 0;
  for (int n = signal_number; n > 0 && length < 11; n /= 10) number[length++] = static_cast<char>('0' + n % 10);
  char digits[12];
  for (int i = 0; i < length; ++i) digits[i] = number[length - 1 - i];
  digits[length] = '\0';
  write_text(program_name);
  write_text(": fatal signal ");
  write_text(digits);
  write_text(" (");
  write_text(sigabbrev_np(signal_number) != nullptr ? sigabbrev_np(signal_number) : "?");
  write_text("), native stack:\n");
  void* frames[64];
  backtrace_symbols_fd(frames, backtrace(frames, 64), STDERR_FILENO);
  // SA_RESETHAND restored the default action: die of the signal itself.
  raise(signal_number);
}

}  // namespace

void report_crashes(const char* program) {
  program_name = program;
  void* frame = nullptr;
  backtrace(&frame, 1);  // loads libgcc's unwinder now, not inside the handler
  struct sigaction action {};
  action.sa_handler = on_fatal_signal;
  action.sa_flags = SA_RESETHAND | SA_NODEFER;
  sigemptyset(&action.sa_mask);
  for (int signal_number : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT}) sigaction(signal_number, &action, nullptr);
}

}  // namespace slideformer::app
