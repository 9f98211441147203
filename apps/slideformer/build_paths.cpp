#include "build_paths.h"

namespace slideformer::app::build_paths {

const char* const source_python_dir = SLIDEFORMER_SOURCE_PYTHON_DIR;
const char* const default_python = SLIDEFORMER_DEFAULT_PYTHON;

}  // namespace slideformer::app::build_paths
