#pragma once
// Paths of this build and checkout for the tests, compiled into test_paths.cpp alone: a small
// source whose command line carries them (tests/CMakeLists.txt). ccache, which every clone on a
// machine shares, misses on a source whose command line names the clone's own paths.

namespace slideformer::test_paths {

// The program of tests/distributed/worker.cpp (one rank of the multi-process tests).
extern const char* const distributed_worker;
// tests/io/data: the weight files of tests/io/make_fixtures.py.
extern const char* const io_test_data;

}  // namespace slideformer::test_paths
