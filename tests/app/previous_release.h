#pragma once
// Weights as the previous release saved them, for the tests that its checkpoints still load:
// Module::save's layout, but with SlideTransformer's position table a tensor of the model itself
// ("absolute_position") instead of the "weight" of an "absolute_position" module.
#include <torch/nn/module.h>
#include <torch/serialize/output-archive.h>

#include "slideformer/nn/modules.h"

namespace slideformer::testing {

inline void save_as_previous_release(const torch::nn::Module& model, torch::serialize::OutputArchive& archive) {
  const auto* slide = dynamic_cast<const nn::SlideTransformerImpl*>(&model);
  if (!slide || !slide->absolute_position) return model.save(archive);
  archive.write("absolute_position", slide->absolute_position->weight);
  for (const auto& child : model.named_children()) {
    if (child.key() == "absolute_position") continue;
    torch::serialize::OutputArchive child_archive(archive.compilation_unit());
    child.value()->save(child_archive);
    archive.write(child.key(), child_archive);
  }
}

// A model that saves itself as the previous release did (for save_checkpoint).
class PreviousRelease : public torch::nn::Module {
 public:
  explicit PreviousRelease(const torch::nn::Module& model) : model_(model) {}
  void save(torch::serialize::OutputArchive& archive) const override { save_as_previous_release(model_, archive); }

 private:
  const torch::nn::Module& model_;
};

}  // namespace slideformer::testing
