#include "ops/common/slide_parameters.h"

#include <ATen/ATen.h>

namespace slideformer::ops {
namespace {

// (D, k2) bias tables in `flat` as the layout places them: heads tables of bias_size entries.
at::Tensor bias_tables_view(const SlideParameterLayout& l, const at::Tensor& flat, int64_t heads,
                            int64_t offset) {
  return flat.as_strided({heads, l.head_dim, l.k2},
                         {l.bias_size, l.bias_channel_step, l.bias_shift_step},
                         flat.storage_offset() + offset);
}

// (D, k2 [n], k2 [m]) weights in `flat` as the layout places them.
at::Tensor weight_view(const SlideParameterLayout& l, const at::Tensor& flat, int64_t offset) {
  return flat.as_strided({l.head_dim, l.k2, l.k2},
                         {l.weight_channel_step, l.weight_shift_step, l.weight_slot_step},
                         flat.storage_offset() + offset);
}

}  // namespace

SlideParameterTables slide_parameter_tables(const SlideParameterLayout& layout,
                                            const at::TensorOptions& options,
                                            const std::optional<at::Tensor>& key_bias,
                                            const std::optional<at::Tensor>& shift_weight,
                                            const std::optional<at::Tensor>& shift_bias) {
  SlideParameterTables t;
  // Padding channels stay 0.
  t.value_bias = at::zeros({layout.bias_size}, options);
  t.key_bias = at::zeros({layout.heads * layout.bias_size}, options);
  const at::Tensor values = bias_tables_view(layout, t.value_bias, 1, 0)[0];  // (D, k2)
  if (given(shift_bias)) values.copy_(*shift_bias);
  const at::Tensor keys = bias_tables_view(layout, t.key_bias, layout.heads, 0);  // (H, D, k2)
  keys.copy_(values.expand_as(keys));
  if (given(key_bias)) keys.add_(key_bias->to(options).unsqueeze(1));
  if (given(shift_weight)) {
    t.weight = at::zeros({layout.weight_size}, options);
    weight_view(layout, t.weight, 0).copy_(*shift_weight);
  }
  return t;
}

SlideParameterGrads unpack_slide_parameter_grads(const SlideParameterLayout& layout,
                                                 const at::Tensor& total, at::ScalarType dtype) {
  auto finish = [&](const at::Tensor& view) { return view.to(dtype).contiguous(); };
  SlideParameterGrads grads;
  if (layout.gradients_wanted[0]) {
    grads.key_bias =
        finish(total.narrow(0, 0, layout.key_bias_grads).view({layout.heads, layout.k2}));
  }
  if (layout.gradients_wanted[1]) {
    grads.shift_weight = finish(weight_view(layout, total, layout.weight_grad(0, 0, 0)));
  }
  if (layout.gradients_wanted[2]) {
    grads.shift_bias = finish(bias_tables_view(layout, total, 1, layout.shift_bias_grad(0, 0))[0]);
  }
  return grads;
}

}  // namespace slideformer::ops
