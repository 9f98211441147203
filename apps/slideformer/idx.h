#pragma once
// Reader of the gzip-compressed IDX files of (Fashion-)MNIST.
#include <ATen/Tensor.h>

#include <string>

namespace slideformer::app {

struct Dataset {
  at::Tensor images;  // uint8 (N, 1, H, W)
  at::Tensor labels;  // int64 (N)
};

// Reads one IDX file (gzip or plain): a uint8 tensor shaped by its header. Throws
// std::runtime_error "<path>: <problem>" for a missing, truncated or corrupt file.
at::Tensor read_idx(const std::string& path, int expected_dims);

// "<dir>/{train,t10k}-images-idx3-ubyte.gz" and the matching labels, checked against each other.
Dataset load_fashion_mnist(const std::string& dir, bool train, int64_t limit = 0);

}  // namespace slideformer::app
