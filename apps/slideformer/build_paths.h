#pragma once
// Paths of the build the program comes from, compiled into build_paths.cpp alone: a small source
// whose command line carries them (apps/CMakeLists.txt). ccache, which every clone on a machine
// shares, misses on a source whose command line names the clone's own paths.

namespace slideformer::app::build_paths {

// The source tree's Python package (python/), which a program of a build tree exports with.
extern const char* const source_python_dir;
// The Python the build was configured with; empty when there was none.
extern const char* const default_python;

}  // namespace slideformer::app::build_paths
