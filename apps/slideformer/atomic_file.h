#pragma once
// Every file the program writes (checkpoints, metrics, plots' inputs, gradients, exported models,
// predictions and logits) is written whole or not at all: to `path`.tmp first, flushed to the disk,
// renamed over `path`, and the directory flushed. After a crash or a kill at any moment the file is
// the old one or the new one, whole, and a failed write leaves the old one in place.
#include <functional>
#include <ostream>
#include <string>

namespace slideformer::app {

// Writes what `write` puts into the stream to `path`. Throws std::runtime_error
// "<path>: cannot write <what> (<reason>)" when the file cannot be created, written, flushed or
// renamed (the temporary file is then removed), and passes on what `write` throws.
void write_file_atomically(const std::string& path, const std::string& what,
                           const std::function<void(std::ostream&)>& write);

void write_file_atomically(const std::string& path, const std::string& what, const std::string& bytes);

// The bytes of `path` ("" when it cannot be read).
std::string read_text(const std::string& path);

}  // namespace slideformer::app
