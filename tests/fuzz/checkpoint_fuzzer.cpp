// Fuzz target: the checkpoint loader (apps/slideformer/checkpoint.h). The first byte picks the
// mode: odd, the rest is the file as it is (torch's archive reader underneath); even, the rest
// decides, entry by entry, what a checkpoint archive holds (each entry the reader reads absent,
// of the wrong type, or of the right type with a boundary value; the model description a small
// valid one or text from the input; the weights and optimizer state those of that small model,
// one tensor of the wrong shape, or missing), written with torch's own writer, so the loader's
// checks are reached. Then: read the state, build its model (when small) and load the weights
// and optimizer state. The loader's contract: success, or std::runtime_error "<path>: <problem>".
#include <torch/torch.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>

#include "checkpoint.h"
#include "fuzz_input.h"
#include "model_config.h"

namespace {

using slideformer::app::ModelConfig;
using slideformer::fuzz::FuzzInput;

// A model of a few hundred parameters: one slide stage on 8 x 8 images.
const ModelConfig& small_model() {
  static const ModelConfig config = [] {
    ModelConfig c{slideformer::nn::SlideTransformerOptions()};
    c.options<slideformer::nn::SlideTransformerOptions>().image_size(8).in_channels(1).num_classes(2).patch_size(2).embed_dim(4).depths({1}).heads({1})
        .stage_kinds({slideformer::nn::AttentionKind::kSlide}).mlp_ratio(1.0).drop_path_rate(0.0)
        .input_mean({0.5}).input_std({0.5});
    return c;
  }();
  return config;
}

enum class Kind { kInt, kDouble, kBool, kString };

c10::IValue value_of(Kind kind, const std::string& key, FuzzInput& in) {
  switch (kind) {
    case Kind::kInt:
      return in.pick<int64_t>({1, 2, 0, -1, 3, 100, std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min()});
    case Kind::kDouble:
      return in.pick<double>({1e-3, 0.1, 0.0, -1.0, 1.0, 2.0, std::nan(""), std::numeric_limits<double>::infinity()});
    case Kind::kBool:
      return in.flag();
    case Kind::kString:
      if (key == "format") {
        return std::string(in.pick<const char*>({"slideformer-checkpoint-v2", "slideformer-checkpoint-v1", "slideformer-checkpoint-v3", ""}));
      }
      if (key == "model_config" && in.index(4) != 0) return slideformer::app::model_config_to_json(small_model());
      if (key == "preset" && in.flag()) return std::string(in.pick<const char*>({"fashion", "custom", ""}));
      return in.text(255);
  }
  return c10::IValue();
}

// The small model and its optimizer in one of the states a checkpoint may hold (fresh, one
// parameter of another shape, or after a step). Each is made once and reused: building and
// stepping a model for every input took most of the target's time, and the loader under test
// builds its own model from the description anyway.
struct SmallModelState {
  slideformer::app::Model built;
  std::unique_ptr<torch::optim::AdamW> optimizer;
};

enum class Variant { kFresh, kOneParameterReshaped, kStepped };

const SmallModelState& small_model_state(Variant variant, size_t victim) {
  static std::map<std::pair<Variant, size_t>, SmallModelState> cache;
  const auto key = std::make_pair(variant, variant == Variant::kOneParameterReshaped ? victim : 0);
  if (auto found = cache.find(key); found != cache.end()) return found->second;
  torch::manual_seed(0);
  SmallModelState state{slideformer::app::build_model(small_model()), nullptr};
  const auto& model = state.built.module;
  state.optimizer = std::make_unique<torch::optim::AdamW>(model->parameters());
  if (variant == Variant::kOneParameterReshaped) {  // Module::load takes any shape
    at::Tensor parameter = model->parameters()[victim];
    torch::NoGradGuard no_grad;
    parameter.set_(at::zeros({parameter.numel() + 1}));
  }
  if (variant == Variant::kStepped) {  // the optimizer then holds state
    state.built(torch::rand({2, 1, 8, 8})).sum().backward();
    state.optimizer->step();
  }
  return cache.emplace(key, std::move(state)).first->second;
}

size_t small_model_parameter_count() {
  return small_model_state(Variant::kFresh, 0).built.module->parameters().size();
}

// The weights (or the optimizer state) of the small model, maybe with one tensor off.
void write_state(torch::serialize::OutputArchive& archive, const char* key, FuzzInput& in) {
  const size_t choice = in.index(6);
  if (choice == 0) return;  // absent
  if (choice == 1) {
    archive.write(key, c10::IValue(int64_t{7}));
    return;
  }
  const size_t victim = choice == 2 ? in.index(small_model_parameter_count()) : 0;
  const SmallModelState& state = small_model_state(
      choice == 2 ? Variant::kOneParameterReshaped : choice == 3 ? Variant::kStepped : Variant::kFresh, victim);
  torch::serialize::OutputArchive nested;
  if (std::string(key) == "model") {
    state.built.module->save(nested);
  } else {
    state.optimizer->save(nested);
  }
  archive.write(key, nested);
}

void write_structured(FuzzInput& in, const std::string& path) {
  static const std::pair<const char*, Kind> kEntries[] = {
      {"format", Kind::kString},       {"model_config", Kind::kString},  {"preset", Kind::kString},
      {"metrics", Kind::kString},      {"data_dir", Kind::kString},      {"epochs", Kind::kInt},
      {"batch_size", Kind::kInt},      {"lr", Kind::kDouble},            {"weight_decay", Kind::kDouble},
      {"label_smoothing", Kind::kDouble}, {"augment", Kind::kBool},      {"limit", Kind::kInt},
      {"seed", Kind::kInt},            {"epoch", Kind::kInt},            {"step_in_epoch", Kind::kInt},
      {"global_step", Kind::kInt},     {"epoch_loss_sum", Kind::kDouble}, {"epoch_seconds", Kind::kDouble}};
  torch::serialize::OutputArchive archive;
  for (const auto& [key, kind] : kEntries) {
    switch (in.index(8)) {
      case 0: break;  // absent
      case 1: archive.write(key, kind == Kind::kString ? c10::IValue(int64_t{1}) : c10::IValue(std::string("1"))); break;
      default: archive.write(key, value_of(kind, key, in));
    }
  }
  switch (in.index(5)) {
    case 0: break;
    case 1: archive.write("rng_state", at::zeros({2, 3}, at::kByte)); break;
    case 2: archive.write("rng_state", at::zeros({5}, at::kFloat)); break;
    default: archive.write("rng_state", at::detail::getDefaultCPUGenerator().get_state());
  }
  write_state(archive, "model", in);
  write_state(archive, "optimizer", in);
  archive.save_to(path);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzInput in(data, size);
  const std::string path = slideformer::fuzz::scratch_file("checkpoint.pt", "");
  if (in.byte() & 1) {
    slideformer::fuzz::scratch_file("checkpoint.pt", in.rest());
  } else {
    write_structured(in, path);
  }
  try {
    const slideformer::app::CheckpointState state = slideformer::app::read_checkpoint_state(path);
    // A valid description of a large model is valid: too slow to build here (and the inputs
    // describe slide_transformer models only).
    const auto* slide = state.model.options_if<slideformer::nn::SlideTransformerOptions>();
    if (!slide) return 0;
    const auto& o = *slide;
    int64_t blocks = 0;
    for (int64_t depth : o.depths()) blocks += depth;
    if (o.embed_dim() > 64 || o.image_size() > 64 || blocks > 4 || o.num_classes() > 100 ||
        o.in_channels() > 4 || o.stem_channels() > 64) {
      return 0;
    }
    const auto model = slideformer::app::build_model(state.model).module;
    torch::optim::AdamW optimizer(model->parameters());
    slideformer::app::load_checkpoint_weights(path, *model, &optimizer);
  } catch (const std::runtime_error& error) {
    if (std::string(error.what()).rfind(path + ": ", 0) != 0) std::abort();
  }
  return 0;
}
