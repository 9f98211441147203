#pragma once

namespace slideformer::app {

// On a fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) writes "<program>: fatal signal N
// (name), native stack:" and the stack to stderr, then dies of the signal as it would have: a crash
// in a rank, in CI or on a user's machine, leaves a trace to start from.
void report_crashes(const char* program);

}  // namespace slideformer::app
