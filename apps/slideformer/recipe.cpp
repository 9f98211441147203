#include "recipe.h"

#include <fmt/format.h>

#include <stdexcept>

namespace slideformer::app {

TrainConfig resumed_recipe(const TrainConfig& given, const TrainConfig& saved, const GivenOptions& given_options,
                           const std::string& checkpoint) {
  TrainConfig resumed = saved;
  visit_recipe_fields([&](const RecipeField& field, auto member) {
    if constexpr (kIsTrainConfigMember<decltype(member)>) {
      if (!given_options.has(field)) return;
      if (field.on_resume == OnResume::kMayChange) {
        resumed.*member = given.*member;
      } else if (given.*member != saved.*member) {
        throw std::runtime_error(fmt::format(
            "{}: {} {} differs from the checkpoint's {} (a resumed run keeps its settings: leave {} out, or "
            "train into another --out)", checkpoint, field.option, given.*member, saved.*member, field.option));
      }
    }
  });
  return resumed;
}

}  // namespace slideformer::app
