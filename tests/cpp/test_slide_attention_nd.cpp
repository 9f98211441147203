// slide_attention_nd from C++ (the op's contract is tested from Python in
// tests/python/test_slide_attention_nd.py, against composites of aten ops): the refusal of
// undefined tensors by every schema, the Meta kernels' shapes, and a 1-D map equal to the 2-D
// operator on a (L, 1) map with the (k, 1) window.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <string>

#include "ops/common/dispatch.h"
#include "ops/slide_attention_nd.h"
#include "slideformer/ops.h"
#include "test_helpers.h"

namespace {

using slideformer::ops::SlideNd;
using slideformer::ops::SlideNdForward;

const auto& nd_op() {
  static auto op = slideformer::ops::typed_op<SlideNd>("slideformer::slide_attention_nd");
  return op;
}

// No tensor argument, so no dispatch key: the refusal is still the op's own, for every schema.
TEST(SlideAttentionNd, EveryTensorUndefinedNamesTheQuery) {
  const std::map<std::string, c10::IValue> others = {
      {"kernel_size", c10::List<int64_t>({3})},
      {"dilation", c10::List<int64_t>({1})},
      {"border", "zeros"},
      {"causal", true},
      {"scale", c10::IValue()},
      {"compute_param_grads", c10::List<bool>({true, true, true})}};
  for (const char* name : {"slideformer::slide_attention_nd",
                           "slideformer::_slide_attention_nd_forward",
                           "slideformer::_slide_attention_nd_backward"}) {
    SCOPED_TRACE(name);
    EXPECT_THROW_MSG(slideformer::testing::call_with_every_tensor_undefined(name, others),
                     "slideformer::slide_attention_nd: query must be a defined tensor, got None");
  }
}

TEST(SlideAttentionNdMeta, ShapesWithoutData) {
  static auto forward =
      slideformer::ops::typed_op<SlideNdForward>("slideformer::_slide_attention_nd_forward");
  const auto meta = at::TensorOptions().device(at::kMeta);
  const at::Tensor q = at::empty({2, 3, 4, 5, 7, 8}, meta);
  const auto [out, lse] = forward.call(q, q, q, {3, 1, 5}, {1}, at::empty({3, 15}, meta),
                                       at::empty({8, 15, 15}, meta), at::empty({8, 15}, meta),
                                       "clamp", true, std::nullopt);
  EXPECT_EQ(out.sizes(), q.sizes());
  EXPECT_EQ(lse.sizes(), q.sizes().slice(0, 5));
  EXPECT_EQ(lse.scalar_type(), at::kFloat);
  EXPECT_THROW_MSG(forward.call(q, q, q, {3, 3}, {1}, std::nullopt, std::nullopt, std::nullopt,
                                "zeros", false, std::nullopt),
                   "slideformer::slide_attention_nd: kernel_size must have 1 or 3 entries (one per "
                   "map axis), got 2 ([3, 3])");
}

// The 2-D operator on a (L, 1) map with window k, clamp border (of each row of its k x k window
// only the first column slot reads something, the column itself; the others are masked) equals
// the 1-D one.
TEST(SlideAttentionNd, OneAxisEqualsTheImageOperatorOnAColumn) {
  at::manual_seed(0);
  const auto f64 = at::TensorOptions().dtype(at::kDouble);
  const at::Tensor q = at::randn({2, 3, 9, 4}, f64), k = at::randn_like(q), v = at::randn_like(q);
  const at::Tensor ours = nd_op().call(q, k, v, {3}, {2}, std::nullopt, std::nullopt,
                                       std::nullopt, "clamp", false, std::nullopt);
  const at::Tensor image = slideformer::slide_attention(
      q.unsqueeze(3), k.unsqueeze(3), v.unsqueeze(3),
      slideformer::SlideAttentionFuncOptions(3).dilation(2).border("clamp"));
  slideformer::testing::expect_close(ours, image.squeeze(3), 1e-12, 1e-12, "output");
}

}  // namespace
