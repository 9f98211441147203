// main() of the fuzz targets' replay programs (<target>_fuzz_replay), for any compiler: runs
// LLVMFuzzerTestOneInput on every file given (a directory: each file in it, in name order), then on
// --mutations N variants of them from a fixed pseudo-random sequence (bytes flipped, set to
// boundary values, inserted, erased; inputs spliced). A crash or an escaping exception ends the
// program as under libFuzzer, after writing the input to ./crash-input (add it to the corpus once
// fixed). `./run test` replays tests/fuzz/<target>/ this way (the smoke).
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

using Bytes = std::vector<uint8_t>;

const Bytes* current = nullptr;

// On SIGABRT (std::terminate included) and SIGSEGV: the input to ./crash-input, then the default.
void write_current_input(int signal) {
  if (current) {
    const int fd = ::open("crash-input", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      (void)!::write(fd, current->data(), current->size());
      ::close(fd);
    }
  }
  std::signal(signal, SIG_DFL);
  std::raise(signal);
}

int run(const Bytes& input) {
  current = &input;
  const int result = LLVMFuzzerTestOneInput(input.data(), input.size());
  current = nullptr;
  return result;
}

Bytes mutate(const std::vector<Bytes>& inputs, std::mt19937_64& rng) {
  auto below = [&](size_t n) { return n ? static_cast<size_t>(rng() % n) : 0; };
  Bytes bytes = inputs[below(inputs.size())];
  const size_t edits = 1 + below(4);
  for (size_t e = 0; e < edits; ++e) {
    const size_t at = below(bytes.size() + 1);
    switch (below(5)) {
      case 0:
        if (at < bytes.size()) bytes[at] ^= static_cast<uint8_t>(1u << below(8));
        break;
      case 1:
        if (at < bytes.size()) bytes[at] = static_cast<uint8_t>(std::vector<int>{0, 1, 0x7f, 0x80, 0xff}[below(5)]);
        break;
      case 2:
        bytes.insert(bytes.begin() + static_cast<std::ptrdiff_t>(at), static_cast<uint8_t>(rng()));
        break;
      case 3:
        if (at < bytes.size()) bytes.erase(bytes.begin() + static_cast<std::ptrdiff_t>(at));
        break;
      default: {  // the tail of another input from here on
        const Bytes& other = inputs[below(inputs.size())];
        bytes.resize(std::min(at, bytes.size()));
        bytes.insert(bytes.end(), other.begin() + static_cast<std::ptrdiff_t>(std::min(at, other.size())), other.end());
      }
    }
  }
  return bytes;
}

}  // namespace

int main(int argc, char** argv) {
  long mutations = 0;
  std::vector<std::filesystem::path> files;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--mutations" && i + 1 < argc) {
      mutations = std::strtol(argv[++i], nullptr, 10);
    } else if (std::filesystem::is_directory(arg)) {
      std::vector<std::filesystem::path> in_dir;
      for (const auto& entry : std::filesystem::directory_iterator(arg)) in_dir.push_back(entry.path());
      std::sort(in_dir.begin(), in_dir.end());
      files.insert(files.end(), in_dir.begin(), in_dir.end());
    } else {
      files.emplace_back(arg);
    }
  }
  if (files.empty()) {
    std::cerr << "usage: " << argv[0] << " [--mutations N] FILE_OR_DIRECTORY...\n";
    return 2;
  }
  for (int signal : {SIGABRT, SIGSEGV, SIGBUS, SIGFPE}) std::signal(signal, write_current_input);
  std::vector<Bytes> inputs;
  for (const auto& file : files) {
    std::ifstream stream(file, std::ios::binary);
    if (!stream) {
      std::cerr << "cannot read " << file << "\n";
      return 2;
    }
    inputs.emplace_back(std::istreambuf_iterator<char>(stream), std::istreambuf_iterator<char>());
    run(inputs.back());
  }
  std::mt19937_64 rng(20261202);
  for (long m = 0; m < mutations; ++m) {
    const Bytes mutated = mutate(inputs, rng);
    run(mutated);
  }
  std::cout << "replayed " << inputs.size() << " inputs and " << mutations << " mutations\n";
  return 0;
}
