#pragma once
// Slide-Transformer's formulation of slide attention in aten ops, on the device of its inputs:
// a depthwise conv2d makes the k*k shifted copies of K and V (output channel c*k2 + n is copy n
// of channel c), then einsum, softmax, einsum. The peer the fused op is measured against.
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

namespace slideformer::bench {

// x = q, k, v (B, H, Y, X, D), shift_weight (D, k2, k2) = I + learned part, shift_bias (D, k2),
// key_bias (H, k2). two_path: as the reference training code, a frozen one-hot depthwise conv
// plus a learnable one (weight W - I, with the bias); otherwise the merged single conv (weight
// W), the cheaper of the two.
inline at::Tensor slide_composite(const std::vector<at::Tensor>& x, int64_t kernel_size,
                                  bool two_path) {
  const at::Tensor &q = x[0], &shift_weight = x[3], &shift_bias = x[4], &key_bias = x[5];
  const int64_t B = q.size(0), H = q.size(1), Y = q.size(2), X = q.size(3), D = q.size(4);
  const int64_t k2 = kernel_size * kernel_size;
  const at::Tensor eye = at::eye(k2, q.options().requires_grad(false));
  const at::Tensor one_hot = eye.view({k2, 1, kernel_size, kernel_size}).repeat({D, 1, 1, 1});
  const at::Tensor weight =
      (two_path ? shift_weight - eye : shift_weight).reshape({D * k2, 1, kernel_size, kernel_size});
  auto shifted = [&](const at::Tensor& t) {
    at::Tensor planes = t.permute({0, 1, 4, 2, 3}).reshape({B * H, D, Y, X});
    at::Tensor copies =
        at::conv2d(planes, weight, shift_bias.reshape(-1), 1, kernel_size / 2, 1, D);
    if (two_path) copies = copies + at::conv2d(planes, one_hot, {}, 1, kernel_size / 2, 1, D);
    return copies.view({B, H, D, k2, Y, X});
  };
  const at::Tensor keys = shifted(x[1]) + key_bias.view({1, H, 1, k2, 1, 1});
  const at::Tensor logits =
      at::einsum("bhyxc,bhcnyx->bhyxn", {q, keys}) * (1.0 / std::sqrt(double(D)));
  return at::einsum("bhyxn,bhcnyx->bhyxc", {at::softmax(logits, -1), shifted(x[2])});
}

}  // namespace slideformer::bench
