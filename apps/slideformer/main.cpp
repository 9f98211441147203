// slideformer: train, evaluate, export and run Slide-Transformer models from C++.
#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <thread>

#include "bench.h"
#include "checkpoint.h"
#include "commands.h"
#include "crash_report.h"
#include "image_data.h"
#include "pretrained.h"
#include "python_export.h"
#include "recipe.h"
#include "slideformer/nn/options.h"
#include "training.h"
#include "video_demo.h"

namespace {

// Checks of command-line values whose messages name the expected and the actual value (CLI11
// puts the option's name first): "--epochs: must be an integer in [1, 1000000], got 0".
CLI::Validator integer_in(int64_t low, int64_t high) {
  const std::string expected = high == std::numeric_limits<int64_t>::max()
                                   ? fmt::format("an integer >= {}", low)
                                   : fmt::format("an integer in [{}, {}]", low, high);
  return CLI::Validator(
      [=](std::string& input) -> std::string {
        int64_t value = 0;
        const char* end = input.data() + input.size();
        const auto [stop, error] = std::from_chars(input.data(), end, value);
        if (error == std::errc() && stop == end && value >= low && value <= high) return "";
        return fmt::format("must be {}, got '{}'", expected, input);
      },
      "INT");
}

CLI::Validator any_integer() {
  return CLI::Validator(
      [](std::string& input) -> std::string {
        int64_t value = 0;
        const char* end = input.data() + input.size();
        const auto [stop, error] = std::from_chars(input.data(), end, value);
        return error == std::errc() && stop == end ? "" : fmt::format("must be an integer, got '{}'", input);
      },
      "INT");
}

// A finite number with `fits(value)`, described by `expected` ("> 0", "in [0, 1]").
CLI::Validator number(const std::string& expected, bool (*fits)(double)) {
  return CLI::Validator(
      [=](std::string& input) -> std::string {
        char* stop = nullptr;
        const double value = input.empty() ? NAN : std::strtod(input.c_str(), &stop);
        if (stop == input.c_str() + input.size() && std::isfinite(value) && fits(value)) return "";
        return fmt::format("must be a number {}, got '{}'", expected, input);
      },
      "NUMBER");
}

constexpr int64_t kMaxInt = std::numeric_limits<int64_t>::max();

bool in_unit_interval(double v) { return v > 0 && v <= 1; }

using namespace slideformer::app;

bool is_video_preset(const std::string& name) {
  const std::vector<std::string> video = slideformer::nn::video_mvit_preset_names();
  return std::find(video.begin(), video.end(), name) != video.end();
}

// summary takes the image presets and the video ones.
std::vector<std::string> summary_presets() {
  std::vector<std::string> names = preset_names();
  for (const std::string& name : slideformer::nn::video_mvit_preset_names()) names.push_back(name);
  return names;
}

// The commands and the values their options set.
struct CommandLine {
  CLI::App app{"slideformer: train, evaluate, export and run Slide-Transformer and MViTv2 models"};
  const CLI::Validator positive = integer_in(1, kMaxInt), non_negative = integer_in(0, kMaxInt);
  const CLI::Validator threads_range = integer_in(1, 1024);
  const std::vector<std::string> presets = preset_names();

  std::string preset, train_preset = "fashion", out, data_dir = kDefaultDataDir, checkpoint, model_path;
  TestSetOutputs outputs;
  int64_t image_size = 0, limit = 0;
  TrainRun run;
  ImportRun import_run;
  bool skip_bad_images = false;
  std::string export_format = "torchscript", python;
  bool export_features = false;
  std::vector<std::string> predict_inputs;
  int64_t top = 5;
  bool json = false;
  BenchConfig bench_config;
  VideoDemoConfig video_demo{kDefaultDataDir};

  CLI::App *summary_cmd = nullptr, *train_cmd = nullptr, *import_cmd = nullptr, *eval_cmd = nullptr,
           *export_cmd = nullptr, *predict_cmd = nullptr, *bench_cmd = nullptr,
           *video_demo_cmd = nullptr;
  CLI::Option* summary_checkpoint = nullptr;
};

void add_summary(CommandLine& cl) {
  cl.summary_cmd = cl.app.add_subcommand("summary", "layers, output shapes and parameter counts");
  auto* summary_model = cl.summary_cmd->add_option_group("model", "one of");
  summary_model->add_option("--preset", cl.preset, "model preset (image or video)")
      ->check(CLI::IsMember(summary_presets()));
  cl.summary_checkpoint = summary_model->add_option("--checkpoint", cl.checkpoint, "the model of this checkpoint.pt");
  summary_model->require_option(1);
  cl.summary_cmd->add_option("--image-size", cl.image_size, "input size (default: the model's)")->check(integer_in(1, 4096));
}

// train: the model and its data.
void add_train_data_options(CommandLine& cl, CLI::App* train_cmd) {
  TrainConfig& config = cl.run.config;
  train_cmd->add_option("--preset", cl.train_preset, "model preset")->check(CLI::IsMember(cl.presets))->capture_default_str();
  train_cmd->add_option("--out", cl.run.out_dir, "output directory (checkpoint.pt, metrics.jsonl, curves.png)")->required();
  train_cmd->add_option("--data", config.data_dir, "directory of the IDX .gz files, or of image folders train/ and "
                                                    "val/ (<class>/<image>, docs/data.md)")->capture_default_str();
  train_cmd->add_option("--train-dir", config.train_dir, "folder of training images, <class>/<image> (with --val-dir)");
  train_cmd->add_option("--val-dir", config.val_dir, "folder of validation images, <class>/<image>");
  train_cmd->add_option("--image-size", config.image_size, "image folders: the model's input size (default: the preset's)")
      ->check(integer_in(1, 4096));
  train_cmd->add_option("--crop-pct", config.crop_pct, "image folders: evaluation resizes the short side to "
                                                       "image-size / crop-pct, then crops the center")
      ->capture_default_str()->check(number("in (0, 1]", in_unit_interval));
  train_cmd->add_flag("--skip-bad-images", config.skip_bad_images, "image folders: leave out (and count) images that "
                                                                   "cannot be read, instead of stopping");
  train_cmd->add_option("--limit", config.limit, "use only the first N images of each split")->check(cl.non_negative);
}

// train: the optimisation.
void add_train_recipe_options(CommandLine& cl, CLI::App* train_cmd) {
  TrainConfig& config = cl.run.config;
  train_cmd->add_option("--epochs", config.epochs, "epochs of the schedule")->capture_default_str()->check(integer_in(1, 1000000));
  train_cmd->add_option("--batch-size", config.batch_size, "images per step")->capture_default_str()->check(cl.positive);
  train_cmd->add_option("--lr", config.lr, "peak learning rate (AdamW, warm-up + cosine)")->capture_default_str()->check(number("> 0", [](double v) { return v > 0; }));
  train_cmd->add_option("--weight-decay", config.weight_decay, "AdamW weight decay of linear and conv weights")->capture_default_str()->check(number(">= 0", [](double v) { return v >= 0; }));
  train_cmd->add_option("--label-smoothing", config.label_smoothing, "label smoothing of the loss")->capture_default_str()->check(number("in [0, 1]", [](double v) { return v >= 0 && v <= 1; }));
  train_cmd->add_flag("--augment,!--no-augment", config.augment, "random crop and flip (image folders: "
                                                                  "RandomResizedCrop and flip; default off)");
  train_cmd->add_option("--amp", config.amp, "mixed precision: the forward under autocast to bfloat16 (bf16) or "
                                             "float16 with a loss scale (fp16)")
      ->capture_default_str()->check(CLI::IsMember({"none", "bf16", "fp16"}));
  train_cmd->add_option("--seed", config.seed, "random seed")->capture_default_str()->check(any_integer());
  train_cmd->add_option("--init", config.init, "start from the weights of this file (a checkpoint.pt, or a "
                                               "safetensors / torch.save file of the --from family)");
  train_cmd->add_option("--from", config.init_from, "with --init: whose names the file has")
      ->check(CLI::IsMember({"slideformer", "slide-transformer", "timm"}))->capture_default_str();
  train_cmd->add_option("--freeze-stages", config.freeze_stages, "keep the patch embedding and the first N stages "
                                                                 "as they are")
      ->capture_default_str()->check(cl.non_negative);
  train_cmd->add_option("--lr-decay", config.lr_decay, "layer-wise learning-rate decay: depth d of L blocks learns "
                                                       "at lr * decay^(L + 1 - d)")
      ->capture_default_str()->check(number("in (0, 1]", in_unit_interval));
}

// train: how this invocation runs (threads, processes, resuming).
void add_train_run_options(CommandLine& cl, CLI::App* train_cmd) {
  TrainRun& run = cl.run;
  train_cmd->add_option("--threads", run.threads, "intra-op threads")->capture_default_str()->check(cl.threads_range);
  train_cmd->add_option("--stop-after", run.stop_after, "end this run after N epochs (resume later)")->check(cl.non_negative);
  train_cmd->add_flag("--resume", run.resume, "continue from OUT/checkpoint.pt");
  train_cmd->add_option("--nproc", run.nproc, "data-parallel processes on this machine (--batch-size is split over them)")
      ->capture_default_str()->check(integer_in(1, 1024));
  train_cmd->add_option("--master-port", run.master_port, "with --nproc: rendezvous port of 127.0.0.1 (0: a free one)")
      ->capture_default_str()->check(integer_in(0, 65535));
  train_cmd->add_option("--timeout", run.timeout_seconds, "seconds the processes wait for each other (rendezvous, each step)")
      ->capture_default_str()->check(integer_in(1, 86400));
  train_cmd->add_option("--bucket-kb", run.bucket_kib, "with several processes: gradients are all-reduced in buckets of "
                                                       "this many KiB (the first at most 1024)")
      ->capture_default_str()->check(integer_in(1, 1 << 30));
  train_cmd->add_option("--save-gradients", run.save_gradients, "write the first step's (all-reduced) gradients "
                                                                 "to this file: dict(torch.load(FILE)) in Python");
}

void add_train(CommandLine& cl) {
  cl.train_cmd = cl.app.add_subcommand("train", "train a preset on Fashion-MNIST or on folders of images");
  add_train_data_options(cl, cl.train_cmd);
  add_train_recipe_options(cl, cl.train_cmd);
  add_train_run_options(cl, cl.train_cmd);
}

void add_import(CommandLine& cl) {
  ImportRun& import_run = cl.import_run;
  cl.import_cmd = cl.app.add_subcommand("import", "a checkpoint.pt of published weights (docs/pretrained.md)");
  CLI::App* import_cmd = cl.import_cmd;
  import_cmd->add_option("--from", import_run.source, "whose weights: the official Slide-Transformer code, timm's "
                                                      "MViTv2, or this program's safetensors export")
      ->check(CLI::IsMember({"slide-transformer", "timm", "slideformer"}))->required();
  import_cmd->add_option("file", import_run.file, "the weights: a .safetensors or torch.save file")->required();
  import_cmd->add_option("--preset", import_run.preset, "the model to fill (optional for a slideformer safetensors "
                                                        "export, which names its model)")->check(CLI::IsMember(cl.presets));
  import_cmd->add_option("--out", import_run.out_dir, "output directory (checkpoint.pt)")->required();
  import_cmd->add_option("--entry", import_run.entry, "torch.save files: the key of the state dict (model, "
                                                      "state_dict, state_dict_ema, ...)");
  import_cmd->add_option("--class-names", import_run.class_names, "text file of the class names, one a line "
                                                                  "(default: 0, 1, ...)");
  import_cmd->add_option("--crop-pct", import_run.crop_pct, "eval transform's crop fraction (default: the "
                                                            "source's: timm 0.9, slide-transformer 0.875)")
      ->check(number("in (0, 1]", in_unit_interval));
}

// The test-set options eval and predict share: where the test set is, how much of it, and the
// files of predictions and logits (for comparing the two commands).
CLI::Option* add_test_set_options(CommandLine& cl, CLI::App* command, const std::string& data_help) {
  CLI::Option* data = command->add_option("--data", cl.data_dir, data_help);
  command->add_option("--limit", cl.limit, "use only the first N test images")->check(cl.non_negative);
  command->add_option("--predictions", cl.outputs.predictions, "write the predicted classes here");
  command->add_option("--logits", cl.outputs.logits, "write the logits here (raw float32, N x classes)");
  return data;
}

void add_eval(CommandLine& cl) {
  cl.eval_cmd = cl.app.add_subcommand("eval", "test accuracy (top-5 for image folders) and confusion matrix of a checkpoint");
  cl.eval_cmd->add_option("--checkpoint", cl.checkpoint, "checkpoint.pt")->required();
  add_test_set_options(cl, cl.eval_cmd, "directory of the IDX .gz files, or an image folder (its val/ when it has "
                                        "one) (default: the training data's)");
  cl.eval_cmd->add_flag("--skip-bad-images", cl.skip_bad_images, "leave out (and count) images that cannot be read");
}

void add_export(CommandLine& cl) {
  cl.export_cmd = cl.app.add_subcommand("export", "write a deployable model of a checkpoint");
  CLI::App* export_cmd = cl.export_cmd;
  export_cmd->add_option("--checkpoint", cl.checkpoint, "checkpoint.pt")->required();
  export_cmd->add_option("--out", cl.out, "output file (.pt, .onnx or .pt2)")->required();
  export_cmd->add_option("--format", cl.export_format, "torchscript (C++), safetensors (the weights), or onnx / aoti "
                                                       "(run by the Python package)")
      ->check(CLI::IsMember({"torchscript", "safetensors", "onnx", "aoti"}))->capture_default_str();
  export_cmd->add_flag("--features", cl.export_features, "torchscript: a backbone returning the stage outputs "
                                                         "(N, C_i, H_i, W_i) instead of logits");
  export_cmd->add_option("--python", cl.python, "Python interpreter for onnx / aoti (default: $SLIDEFORMER_PYTHON, "
                                                "else the build's Python, else python3)");
}

void add_predict(CommandLine& cl) {
  cl.predict_cmd = cl.app.add_subcommand("predict", "the top classes of image files, or the test accuracy of an exported model");
  CLI::App* predict_cmd = cl.predict_cmd;
  predict_cmd->add_option("--model", cl.model_path, "exported .pt (TorchScript) or .pt2 (AOTInductor) file")->required();
  predict_cmd->add_option("inputs", cl.predict_inputs, "image files or directories of images (none: the accuracy on "
                                                       "Fashion-MNIST's test set)");
  predict_cmd->add_option("--top", cl.top, "classes printed per image")->capture_default_str()->check(integer_in(1, 1000));
  predict_cmd->add_flag("--json", cl.json, "one JSON object per image");
  add_test_set_options(cl, predict_cmd, "directory of the IDX .gz files")->capture_default_str();
}

void add_bench(CommandLine& cl) {
  BenchConfig& bench_config = cl.bench_config;
  bench_config.threads = cl.run.threads;
  cl.bench_cmd = cl.app.add_subcommand("bench", "forward and training-step throughput, FLOPs, fraction of the at::mm rate");
  CLI::App* bench_cmd = cl.bench_cmd;
  bench_cmd->add_option("--preset", bench_config.preset, "model preset")->check(CLI::IsMember(slideformer::nn::preset_names()))->capture_default_str();
  bench_cmd->add_option("--batch-size", bench_config.batch_size, "images per step")->capture_default_str()->check(cl.positive);
  bench_cmd->add_option("--threads", bench_config.threads, "intra-op threads")->capture_default_str()->check(cl.threads_range);
  bench_cmd->add_option("--rounds", bench_config.rounds, "timed rounds (medians)")->capture_default_str()->check(cl.positive);
  bench_cmd->add_flag("--json", bench_config.json, "print one JSON line");
}

void add_video_demo(CommandLine& cl) {
  VideoDemoConfig& demo = cl.video_demo;
  demo.threads = cl.run.threads;
  cl.video_demo_cmd = cl.app.add_subcommand("video-demo", "train a small video MViT on moving Fashion-MNIST clips "
                                                          "and compare it with a single-frame model");
  CLI::App* cmd = cl.video_demo_cmd;
  cmd->add_option("--data", demo.data_dir, "directory of the IDX .gz files")->capture_default_str();
  cmd->add_option("--train-clips", demo.train_clips, "training clips")->capture_default_str()->check(cl.positive);
  cmd->add_option("--test-clips", demo.test_clips, "test clips")->capture_default_str()->check(cl.positive);
  cmd->add_option("--epochs", demo.epochs, "epochs of each model")->capture_default_str()->check(integer_in(1, 1000));
  cmd->add_option("--batch-size", demo.batch_size, "clips per step")->capture_default_str()->check(cl.positive);
  cmd->add_option("--lr", demo.learning_rate, "peak learning rate")->capture_default_str()
      ->check(number("> 0", [](double v) { return v > 0; }));
  cmd->add_option("--seed", demo.seed, "seed of the clips and the models")->capture_default_str();
  cmd->add_option("--threads", demo.threads, "intra-op threads")->capture_default_str()->check(cl.threads_range);
  cmd->add_option("--out", demo.out, "write the video model as TorchScript here");
}

// The record of the train options the user gave: the command line is the one place that knows
// the options' spellings.
GivenOptions given_train_options(const CLI::App& train_cmd) {
  GivenOptions given;
  given.preset = train_cmd.count("--preset") > 0;
  given.threads = train_cmd.count("--threads") > 0;
  given.nproc = train_cmd.count("--nproc") > 0;
  visit_recipe_fields([&](const RecipeField& field, auto) {
    if (field.option != nullptr && train_cmd.count(field.option) > 0) given.recipe.insert(field.key);
  });
  return given;
}

int run_export(CommandLine& cl) {
  if (cl.export_features && cl.export_format != "torchscript") {
    throw std::runtime_error("--features: only the torchscript format exports the stage outputs, not " +
                             cl.export_format);
  }
  if (cl.export_format == "torchscript") return export_model(cl.checkpoint, cl.out, cl.export_features);
  if (cl.export_format == "safetensors") return export_safetensors(cl.checkpoint, cl.out);
  const CheckpointState state = read_checkpoint_state(cl.checkpoint);
  export_with_python(cl.checkpoint, cl.out, cl.export_format, exported_data_config(state.model, state.data_config),
                     python_interpreter(cl.python));
  return 0;
}

// Runs the command the command line chose.
int run_command(CommandLine& cl, int argc, char** argv) {
  if (*cl.summary_cmd) {
    if (is_video_preset(cl.preset)) return video_summary(cl.preset, cl.image_size);
    return summary(*cl.summary_checkpoint ? read_checkpoint_state(cl.checkpoint).model : preset_model(cl.preset),
                   cl.image_size);
  }
  if (*cl.train_cmd) {
    cl.run.model = preset_model(cl.train_preset);
    cl.run.argv.assign(argv, argv + argc);
    cl.run.given = given_train_options(*cl.train_cmd);
    return train(cl.run);
  }
  if (*cl.eval_cmd) {
    return evaluate(cl.checkpoint, cl.eval_cmd->count("--data") ? cl.data_dir : "", cl.limit, cl.outputs,
                    cl.skip_bad_images);
  }
  if (*cl.export_cmd) return run_export(cl);
  if (*cl.bench_cmd) return bench(cl.bench_config);
  if (*cl.video_demo_cmd) return video_demo(cl.video_demo);
  if (*cl.import_cmd) return import_checkpoint(cl.import_run);
  if (*cl.predict_cmd) {
    return cl.predict_inputs.empty() ? predict(cl.model_path, cl.data_dir, cl.limit, cl.outputs)
                                     : predict_images(cl.model_path, cl.predict_inputs, cl.top, cl.json);
  }
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  report_crashes("slideformer");
  CommandLine cl;
  cl.app.require_subcommand(1);
  cl.app.failure_message([](const CLI::App*, const CLI::Error& error) {
    return fmt::format("slideformer: error: {} (see --help)\n", error.what());
  });
  cl.run.threads = std::max(1u, std::thread::hardware_concurrency());
  add_summary(cl);
  add_train(cl);
  add_import(cl);
  add_eval(cl);
  add_export(cl);
  add_predict(cl);
  add_bench(cl);
  add_video_demo(cl);
  CLI11_PARSE(cl.app, argc, argv);
  try {
    return run_command(cl, argc, argv);
  } catch (const c10::Error& e) {
    fmt::print(stderr, "slideformer: error: {}\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    fmt::print(stderr, "slideformer: error: {}\n", e.what());
  }
  return 1;
}
