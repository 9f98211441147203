#pragma once
// Image files for the data tests, made here: JPEG (TurboJPEG) and PNG (libpng) encoders, and
// Fashion-MNIST's pictures as a source of real images.
#include <ATen/Tensor.h>

#include <cstdint>
#include <string>

namespace slideformer::testing {

// Encodes a (H, W, C) uint8 image, C = 1 or 3 (4:2:0 for colour).
std::string encode_jpeg(const at::Tensor& pixels, int quality = 90);
std::string encode_png(const at::Tensor& pixels);
void write_file(const std::string& path, const std::string& bytes);

// The first `count` Fashion-MNIST training images (count, 28, 28) uint8 and their labels.
std::pair<at::Tensor, at::Tensor> fashion_mnist(int64_t count);

// A Fashion-MNIST picture made into a varied file: an odd size (nearest neighbour), gray or
// tinted RGB, by `index`.
at::Tensor varied_picture(const at::Tensor& picture, int64_t index);

// root/<label>/<nnnn>.{jpg,png}: `count` Fashion-MNIST images of the first `classes` classes
// (varied_picture, JPEG and PNG alternating). Returns the number of files written.
int64_t write_fashion_folder(const std::string& root, int64_t count, int64_t classes);

}  // namespace slideformer::testing
