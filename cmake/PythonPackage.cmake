# The CMake side of `pip install` (pyproject.toml, scikit-build-core): builds against the torch
# that the building Python imports (so pip must not isolate the build: --no-build-isolation) and
# installs the library (plus headers and the find_package files) into the package, as
# slideformer/lib/libslideformer.so, where `import slideformer` loads it.
execute_process(
  COMMAND "${Python_EXECUTABLE}" -c "import torch; print(torch.utils.cmake_prefix_path)"
  OUTPUT_VARIABLE SLIDEFORMER_TORCH_PREFIX OUTPUT_STRIP_TRAILING_WHITESPACE
  ERROR_VARIABLE torch_error RESULT_VARIABLE torch_result)
if(torch_result)
  message(FATAL_ERROR
    "slideformer builds against the torch already installed, but ${Python_EXECUTABLE} cannot "
    "import torch (${torch_error}). Install with `pip install --no-build-isolation .` from an "
    "environment that has torch 2.11 (an isolated build would download another torch).")
endif()
list(APPEND CMAKE_PREFIX_PATH "${SLIDEFORMER_TORCH_PREFIX}")
set(CMAKE_INSTALL_LIBDIR slideformer/lib)
set(CMAKE_INSTALL_INCLUDEDIR slideformer/include)
set(CMAKE_INSTALL_BINDIR slideformer/bin)
