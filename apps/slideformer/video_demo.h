#pragma once
// `slideformer video-demo`: the video task made here (moving Fashion-MNIST clips,
// slideformer/data/moving_clips.h) learnt by a small video MViT and by the same model seeing one
// frame, to show what the motion adds.
#include <cstdint>
#include <string>

namespace slideformer::app {

struct VideoDemoConfig {
  std::string data_dir;          // Fashion-MNIST's IDX files
  int64_t train_clips = 8000;    // made from the training images
  int64_t test_clips = 2000;     // made from the test images (other garments)
  int64_t epochs = 4;
  int64_t batch_size = 32;
  double learning_rate = 1e-3;
  uint64_t seed = 0;
  int64_t threads = 1;
  std::string out;               // TorchScript of the video model, when set
};

// Trains the `moving_mvit` preset on the clips and its single-frame twin (frames = 1) on each
// clip's middle frame, prints both test accuracies and the margin; 0 on success.
int video_demo(const VideoDemoConfig& config);

}  // namespace slideformer::app
