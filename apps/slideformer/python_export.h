#pragma once
// Export formats that the Python package produces (ONNX, AOTInductor): the program runs
// `PYTHON -m slideformer export ...` with an argument vector (no shell), giving the child this
// process's op library (SLIDEFORMER_LIBRARY) and, next to a build tree, the source tree's package.
#include <string>

namespace slideformer::app {

// The interpreter to run: `requested` when not empty, else $SLIDEFORMER_PYTHON, else the Python
// the build was configured with, else python3 from PATH.
std::string python_interpreter(const std::string& requested);

// Writes the model of `checkpoint` to `out` in `format` ("onnx" or "aoti") with `data_config`
// (JSON: class names, input size, mean, std, crop_pct) inside, as the TorchScript export has it. Throws
// std::runtime_error when the interpreter cannot run or the export fails (its own message is on
// stderr above ours).
void export_with_python(const std::string& checkpoint, const std::string& out, const std::string& format,
                        const std::string& data_config, const std::string& python);

}  // namespace slideformer::app
