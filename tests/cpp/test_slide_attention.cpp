// slide_attention on CPU: the cases of slide_attention_cases.h (parity with the conv2d and
// brute-force gather references, optional inputs, strides, half types, finite differences,
// determinism, errors) on CPU tensors, plus CPU-only checks: poisoned allocations, Meta, and the
// index maps of ops/common/slide_math.h.
#include <ATen/ATen.h>
#include <c10/core/Allocator.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <array>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "ops/common/slide_math.h"
#include "slide_attention_cases.h"
#include "slideformer/ops.h"
#include "test_helpers.h"

namespace {

using namespace slideformer::testing::slide;
using slideformer::testing::expect_close;
const at::Device kCpu(at::kCPU);

class SlideAttentionParity : public ::testing::TestWithParam<ParityParam> {};

TEST_P(SlideAttentionParity, Float64ForwardAndGradientsMatchReference) {
  check_parity_float64(GetParam(), kCpu);
}

INSTANTIATE_TEST_SUITE_P(Shapes, SlideAttentionParity,
                         ::testing::Combine(::testing::ValuesIn(parity_cases()),
                                            ::testing::Values(std::string("zeros"),
                                                              std::string("clamp")),
                                            ::testing::Bool()),
                         parity_param_name);

TEST(SlideAttention, EachOptionalInputAloneAndExplicitScale) {
  check_each_optional_input_alone_and_explicit_scale(kCpu);
}


// Fills every new CPU allocation with all-ones bytes (a NaN in float and double) while alive,
// so a kernel that reads scratch or outputs it never wrote produces NaN.
class PoisonedCpuAllocations final : public c10::Allocator {
 public:
  PoisonedCpuAllocations() : wrapped_(c10::GetAllocator(at::kCPU)) {
    c10::SetAllocator(at::kCPU, this, kPriority);
  }
  ~PoisonedCpuAllocations() override { c10::SetAllocator(at::kCPU, wrapped_, kPriority); }
  c10::DataPtr allocate(size_t bytes) override {
    c10::DataPtr data = wrapped_->allocate(bytes);
    if (bytes > 0) std::memset(data.get(), 0xFF, bytes);
    return data;
  }
  c10::DeleterFnPtr raw_deleter() const override { return wrapped_->raw_deleter(); }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  static constexpr uint8_t kPriority = 100;
  c10::Allocator* wrapped_;
};

TEST(SlideAttention, ReadsNoMemoryItDidNotWrite) {
  const PoisonedCpuAllocations poison;
  for (const Case& c : {Case{1, 2, 2, 3, 3, 5, 1}, Case{1, 2, 7, 9, 16, 3, 3}}) {
    for (const std::string border : {"zeros", "clamp"}) {
      SCOPED_TRACE(border);
      expect_matches_reference(make_leaves(c, {true, true, true}), c, border, 1e-10);
    }
  }
}

TEST(SlideAttention, PermutedInputsAsAModulePassesThem) {
  check_permuted_inputs_as_a_module_passes_them(kCpu);
}

TEST(SlideAttention, HalfTypesCloseToFloat64) { check_half_types_close_to_float64(kCpu); }

TEST(SlideAttention, FiniteDifferenceGradcheckAllSixInputs) {
  check_finite_difference_gradients_all_six_inputs(kCpu);
}

// The CPU fast path (zeros border, k = 3, shift weight) in float32, rows of several full vector
// tiles and a ragged one, B and H > 1, at dilations 1 and 2: output and all six gradients against
// float64 on the same (rounded) inputs, per element.
TEST(SlideAttention, FastPathFloat32FullTilesMatchFloat64) {
  for (int64_t dilation : {1, 2}) {
    const Case c{2, 2, 6, 35, 8, 3, dilation};
    SCOPED_TRACE(::testing::PrintToString(c));
    expect_dtype_matches_float64(c, "zeros", {true, true, true}, at::kFloat, 64);
  }
}

// The general kernel in float32 with channel chunks of 1, 2 and 4 vectors (D <= 16, 17-32, > 32
// with AVX-512; 8, 16 and 32 lanes with AVX2), both borders, with a pure shift and with the mixing.
TEST(SlideAttention, GeneralKernelFloat32ChannelChunksMatchFloat64) {
  for (int64_t d : {12, 24, 40}) {
    for (const std::string border : {"zeros", "clamp"}) {
      const Case c{1, 2, 5, 7, d, 5, 1};
      SCOPED_TRACE(::testing::PrintToString(c) + " " + border);
      expect_dtype_matches_float64(c, border, {true, false, true}, at::kFloat, 64);
      expect_dtype_matches_float64(c, border, {true, true, true}, at::kFloat, 64);
    }
  }
}

// The fast path's backward with an explicit scale (a negative one too), against the reference.
TEST(SlideAttention, FastPathExplicitScaleMatchesReference) {
  const Case c{2, 2, 4, 19, 3, 3, 1};
  for (double scale : {0.4, -1.3}) {
    const Leaves l = make_leaves(c, {true, true, true}, at::kDouble, 3);
    SCOPED_TRACE(scale);
    expect_matches_reference(l, c, "zeros", 1e-10, scale);
  }
}

// Finite differences through the fast path at dilation 1 (the shared check runs dilation 2).
TEST(SlideAttention, FastPathFiniteDifferencesAtDilationOne) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  at::manual_seed(12);
  slideformer::testing::expect_gradients_match_finite_differences(
      [](const std::vector<at::Tensor>& x) {
        return slide(x[0], x[1], x[2], 3, 1, x[3], x[4], x[5], "zeros");
      },
      {at::randn({2, 2, 3, 18, 2}, opts).requires_grad_(),
       at::randn({2, 2, 3, 18, 2}, opts).requires_grad_(),
       at::randn({2, 2, 3, 18, 2}, opts).requires_grad_(),
       at::randn({2, 9}, opts).requires_grad_(),
       (at::eye(9, opts) + 0.3 * at::randn({2, 9, 9}, opts)).requires_grad_(),
       at::randn({2, 9}, opts).requires_grad_()});
}

TEST(SlideAttention, EmptyMapsGiveEmptyOutputsAndZeroParameterGradients) {
  check_empty_maps(kCpu);
}

TEST(SlideAttention, ParameterGradientsOnlyWhereAsked) {
  check_parameter_gradients_only_where_asked(kCpu);
}

TEST(SlideAttention, BackwardIsDeterministic) { check_backward_deterministic(kCpu); }

TEST(SlideAttention, DoubleBackwardSaysUnsupported) {
  check_double_backward_says_unsupported(kCpu);
}

TEST(SlideAttention, BackwardChecksGradOutputOutputAndLogsumexp) {
  check_backward_bad_inputs(kCpu, at::Device(at::kMeta));
}

// No tensor argument, so no dispatch key: the refusal is still the op's own, for every schema.
TEST(SlideAttention, EveryTensorUndefinedNamesTheQuery) {
  const std::map<std::string, c10::IValue> others = {
      {"kernel_size", int64_t{3}}, {"dilation", int64_t{1}}, {"border", "zeros"},
      {"scale", c10::IValue()}, {"compute_param_grads", c10::List<bool>({true, true, true})}};
  for (const char* name : {"slideformer::slide_attention", "slideformer::_slide_attention_forward",
                           "slideformer::_slide_attention_backward"}) {
    SCOPED_TRACE(name);
    EXPECT_THROW_MSG(slideformer::testing::call_with_every_tensor_undefined(name, others),
                     "slideformer::slide_attention: query must be a defined tensor, got None");
  }
}

TEST(SlideAttentionMeta, ShapesWithoutData) {
  const auto meta = at::TensorOptions().device(at::kMeta);
  const at::Tensor q = at::empty({2, 3, 5, 7, 4}, meta);
  const at::Tensor out = slide(q, q, q, 3, 2, at::empty({3, 9}, meta), at::empty({4, 9, 9}, meta),
                               at::empty({4, 9}, meta), "clamp");
  EXPECT_TRUE(out.is_meta());
  EXPECT_EQ(out.sizes(), q.sizes());
}


class SlideAttentionBadInput : public ::testing::TestWithParam<BadInput> {};

TEST_P(SlideAttentionBadInput, MessageNamesOpArgumentExpectedAndActual) {
  EXPECT_THROW_MSG(GetParam().call(), "slideformer::slide_attention: " + GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(Cases, SlideAttentionBadInput,
                         ::testing::ValuesIn(bad_inputs(kCpu, at::Device(at::kMeta))),
                         [](const auto& info) { return info.param.name; });


// The inverse maps that backward gathers over list exactly the (pixel, slot) pairs whose forward
// map reads each position, for both borders and every geometry up to these sizes.
TEST(SlideMath, InverseMapsListExactlyTheForwardReaders) {
  using namespace slideformer::ops::math;
  for (SlideBorder border : {SlideBorder::kZeros, SlideBorder::kClamp}) {
    for (int64_t length = 1; length <= 17; ++length) {
      for (int64_t ks = 1; ks <= 9; ks += 2) {
        for (int64_t dilation = 1; dilation <= 4; ++dilation) {
          const SlideAxis axis{length, ks, dilation};
          std::vector<std::set<std::pair<int64_t, int64_t>>> forward(length);
          for (int64_t i = 0; i < length; ++i) {
            for (int64_t j = 0; j < ks; ++j) {
              const int64_t t = neighbor_position(border, i, j, axis);
              if (t >= 0) forward[t].insert({i, j});
            }
          }
          for (int64_t t = 0; t < length; ++t) {
            std::set<std::pair<int64_t, int64_t>> inverse;
            for (int64_t e = 0; e < reader_count(border, t, axis); ++e) {
              const AxisReader r = axis_reader(border, t, e, axis);
              if (r.pixel >= 0) {
                EXPECT_TRUE(inverse.insert({r.pixel, r.slot}).second);
              }
            }
            EXPECT_EQ(inverse, forward[t]) << "border " << int(border) << " L=" << length
                                           << " k=" << ks << " dilation=" << dilation << " t=" << t;
          }
        }
      }
    }
  }
}

TEST(SlideMath, ClampWindowsStayInsideAndHoldTheirPixel) {
  using namespace slideformer::ops::math;
  for (int64_t length = 1; length <= 20; ++length) {
    for (int64_t ks = 1; ks <= 7; ks += 2) {
      for (int64_t dilation = 1; dilation <= 3; ++dilation) {
        const SlideAxis axis{length, ks, dilation};
        for (int64_t i = 0; i < length; ++i) {
          bool holds_itself = false;
          int64_t valid = 0;
          for (int64_t j = 0; j < ks; ++j) {
            const int64_t t = neighbor_position(SlideBorder::kClamp, i, j, axis);
            holds_itself |= t == i;
            if (t >= 0) {
              ++valid;
              EXPECT_EQ(t % dilation, i % dilation);
            }
          }
          EXPECT_TRUE(holds_itself);
          // Every slot is valid unless the sub-axis is shorter than the window.
          const int64_t sub_length = (length - i % dilation + dilation - 1) / dilation;
          EXPECT_EQ(valid, std::min(ks, sub_length));
        }
      }
    }
  }
}

// The CUDA kernel stages a tile plus a halo of (k / 2) * dilation (zeros) or (k - 1) * dilation
// (clamp) positions and reads slot j at window_first_position + j * dilation there: every slot,
// even one past the map, must lie inside that halo, and the in-map ones must agree with
// neighbor_position.
TEST(SlideMath, WindowSlotsStepByDilationFromTheFirstPositionInsideTheHalo) {
  using namespace slideformer::ops::math;
  for (SlideBorder border : {SlideBorder::kZeros, SlideBorder::kClamp}) {
    for (int64_t length = 1; length <= 17; ++length) {
      for (int64_t ks = 1; ks <= 9; ks += 2) {
        for (int64_t dilation = 1; dilation <= 4; ++dilation) {
          const SlideAxis axis{length, ks, dilation};
          const int64_t halo = (border == SlideBorder::kZeros ? ks / 2 : ks - 1) * dilation;
          for (int64_t i = 0; i < length; ++i) {
            const int64_t first = window_first_position(border, i, axis);
            EXPECT_GE(first, i - halo);
            EXPECT_LE(first + (ks - 1) * dilation, i + halo);
            for (int64_t j = 0; j < ks; ++j) {
              const int64_t position = first + j * dilation;
              EXPECT_EQ(neighbor_position(border, i, j, axis),
                        position >= 0 && position < length ? position : -1)
                  << "border " << int(border) << " L=" << length << " k=" << ks
                  << " dilation=" << dilation << " i=" << i << " j=" << j;
            }
          }
        }
      }
    }
  }
}

TEST(SlideMath, MixingAndItsAdjointAreTransposes) {
  using namespace slideformer::ops::math;
  const int64_t k2 = 9;
  at::manual_seed(5);
  const at::Tensor W = at::randn({k2, k2}, at::kDouble), g = at::randn({k2}, at::kDouble);
  const at::Tensor coeffs = at::randn({k2}, at::kDouble);
  const double* w = W.data_ptr<double>();
  // sum_n coeffs_n (sum_m W[n,m] g_m) == sum_m g_m (sum_n coeffs_n W[n,m])
  double forward = 0, adjoint = 0;
  for (int64_t n = 0; n < k2; ++n) {
    // Slots laid out as 3 rows of 3: slot m = (m / 3, m % 3) at g[m].
    const WindowSlots<double> window{g.data_ptr<double>(), 3, 1};
    const double shifted = mix_shifted<double>(w + n * k2, 1, window, 3, 0.25);
    EXPECT_NEAR(shifted, (W[n] * g).sum().item<double>() + 0.25, 1e-12);
    forward += coeffs[n].item<double>() * (shifted - 0.25);
  }
  for (int64_t m = 0; m < k2; ++m) {
    adjoint +=
        g[m].item<double>() * mix_shifted_adjoint<double>(w + m, k2, coeffs.data_ptr<double>(), k2);
  }
  EXPECT_NEAR(forward, adjoint, 1e-12);
}

}  // namespace
