#pragma once
// The files of a training run's output directory besides the checkpoint: metrics.jsonl,
// curves.dat and curves.png (drawn by gnuplot when it is installed), and --save-gradients' file.
#include <string>

namespace torch::nn {
class Module;
}

namespace slideformer::app {

// Creates `out_dir` if needed and makes sure a file can be written there before any work;
// removes a temporary checkpoint a killed run left behind (never a valid one: atomic_file.h).
void prepare_out_dir(const std::string& out_dir, const std::string& checkpoint_path);

// Removes a previous run's metrics and plot files.
void remove_metrics_files(const std::string& out_dir);

// metrics.jsonl and curves.dat (epoch, train loss, test accuracy) of the completed epochs, from
// the history the checkpoint holds: a run killed between its checkpoint and these files, and
// resumed, leaves them as an uninterrupted run would.
void write_metrics_files(const std::string& out_dir, const std::string& metrics);

// curves.png from curves.dat, drawn by gnuplot (when installed) in the output directory; a failure
// is reported on stderr, training goes on.
void write_plot(const std::string& out_dir);

// The parameters' gradients as a pickled tuple of (name, tensor) pairs, which torch.load reads
// without unpickling any class (a typed dict would need weights_only=False).
void save_gradients(const std::string& path, const torch::nn::Module& module);

}  // namespace slideformer::app
