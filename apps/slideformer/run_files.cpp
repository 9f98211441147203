#include "run_files.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <torch/torch.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <system_error>
#include <vector>

#include "atomic_file.h"
#include "slideformer/distributed/process.h"

namespace slideformer::app {

using distributed::ChildProcess;
using distributed::ChildStatus;
using distributed::find_on_path;
using distributed::run_child;

namespace {

// Run by gnuplot in the output directory, so that no path enters the program.
constexpr const char* kPlotScript =
    "# Written by slideformer train; gnuplot runs it in this directory.\n"
    "if (strstrt(GPVAL_TERMINALS, 'pngcairo') > 0) {\n"
    "  set terminal pngcairo size 900,400 noenhanced\n"
    "} else {\n"
    "  set terminal png size 900,400 noenhanced\n"
    "}\n"
    "set output 'curves.png'\n"
    "set multiplot layout 1,2\n"
    "set xlabel 'epoch'\n"
    "set grid\n"
    "plot 'curves.dat' using 1:2 with linespoints title 'train loss'\n"
    "plot 'curves.dat' using 1:(100*$3) with linespoints title 'test accuracy (%)'\n"
    "unset multiplot\n";

}  // namespace

void prepare_out_dir(const std::string& out_dir, const std::string& checkpoint_path) {
  std::error_code error;
  std::filesystem::create_directories(out_dir, error);
  struct stat info {};
  if (error || stat(out_dir.c_str(), &info) != 0 || !S_ISDIR(info.st_mode)) {
    throw std::runtime_error(fmt::format("--out {}: cannot create the directory ({})", out_dir,
                                         error ? error.message() : "not a directory"));
  }
  std::string probe = out_dir + "/.slideformer-probe-XXXXXX";
  const int fd = mkstemp(probe.data());
  if (fd < 0) {
    throw std::runtime_error(fmt::format("--out {}: cannot write there ({})", out_dir, std::strerror(errno)));
  }
  ::close(fd);
  std::remove(probe.c_str());
  std::remove((checkpoint_path + ".tmp").c_str());
}

void remove_metrics_files(const std::string& out_dir) {
  for (const char* name : {"metrics.jsonl", "curves.dat", "curves.png", "curves.gp", "curves.log"}) {
    std::remove((out_dir + "/" + name).c_str());
  }
}

void write_metrics_files(const std::string& out_dir, const std::string& metrics) {
  std::string curves;
  std::istringstream lines(metrics);
  for (std::string line; std::getline(lines, line);) {
    const auto record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool valid = record.is_object() && record.contains("epoch") && record["epoch"].is_number_integer() &&
                       record.contains("train_loss") && record["train_loss"].is_number() &&
                       record.contains("test_accuracy") && record["test_accuracy"].is_number();
    if (!valid) {
      throw std::runtime_error(out_dir + "/metrics.jsonl: not a metrics line: " + line.substr(0, 200));
    }
    curves += fmt::format("{} {:.6f} {:.6f}\n", record["epoch"].dump(), record["train_loss"].get<double>(),
                          record["test_accuracy"].get<double>());
  }
  write_file_atomically(out_dir + "/metrics.jsonl", "the metrics", metrics);
  write_file_atomically(out_dir + "/curves.dat", "the curves", curves);
}

void write_plot(const std::string& out_dir) {
  const std::string gnuplot = find_on_path("gnuplot");
  if (gnuplot.empty()) return;  // no plotter: no plot
  write_file_atomically(out_dir + "/curves.gp", "the plot script", kPlotScript);
  ChildProcess child;
  child.argv = {gnuplot, "curves.gp"};
  child.directory = out_dir;
  child.stderr_file = "curves.log";
  child.quiet = true;
  const ChildStatus status = run_child(child);
  if (status.succeeded()) {
    std::remove((out_dir + "/curves.log").c_str());
  } else {
    fmt::print(stderr, "slideformer: warning: gnuplot could not draw {}/curves.png (exit status {}; see curves.log)\n",
               out_dir, status.exited ? status.code : -1);
  }
}

void save_gradients(const std::string& path, const torch::nn::Module& module) {
  std::vector<c10::IValue> gradients;
  for (const auto& parameter : module.named_parameters()) {
    if (parameter.value().grad().defined()) {
      gradients.push_back(c10::ivalue::Tuple::create(parameter.key(), parameter.value().grad()));
    }
  }
  const std::vector<char> bytes = torch::pickle_save(c10::ivalue::Tuple::create(std::move(gradients)));
  write_file_atomically(path, "the gradients", std::string(bytes.begin(), bytes.end()));
}

}  // namespace slideformer::app
