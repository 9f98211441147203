// Uses the installed slideformer the way an outside project would, one library of each component
// (find_package(slideformer COMPONENTS ops nn distributed data)): the ops, a model of the modules,
// and the distributed API (whose header needs no Gloo headers) with a one-rank group.
#include <ATen/ATen.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <slideformer/data.h>
#include <slideformer/distributed.h>
#include <slideformer/nn/modules.h>
#include <slideformer/ops.h>
#include <slideformer/version.h>
#include <torch/nn/modules/linear.h>

#include <iostream>

int main() {
  at::Tensor q = at::randn({1, 2, 5, 8});
  at::Tensor out = slideformer::attention(q, q, q);
  bool ok = out.sizes() == q.sizes() && out.isfinite().all().item<bool>();
  slideformer::nn::MViT model(slideformer::nn::fashion_mvit());
  ok = ok && model->forward(at::rand({2, 1, 28, 28})).sizes() == at::IntArrayRef({2, 10});

  namespace dist = slideformer::distributed;
  // A one-rank group whose store adopts a socket already listening on a free port.
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof(address);
  bind(fd, reinterpret_cast<sockaddr*>(&address), length);
  listen(fd, 8);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  const dist::ProcessGroup group(dist::ProcessGroupOptions().master_port(ntohs(address.sin_port)).listen_fd(fd));
  torch::nn::Linear layer(4, 2);
  dist::DataParallel parallel(layer.ptr(), group);
  parallel.backward(layer(at::ones({3, 4})).sum());
  const dist::DistributedSampler sampler(10, 0, 1, dist::DistributedSamplerOptions(4));
  ok = ok && layer->weight.grad().defined() && sampler.shard(0).numel() == 10 &&
       dist::all_reduce_sum(group, 2.0) == 2.0;
  // The data library: a config's JSON round trip, and a bad file refused with its name.
  const slideformer::data::DataConfig config;
  ok = ok && slideformer::data::DataConfig::from_json(config.to_json(), "config") == config;
  try {
    slideformer::data::decode_image(reinterpret_cast<const uint8_t*>("GIF89a"), 6, "picture.gif");
    ok = false;
  } catch (const slideformer::data::ImageError& error) {
    ok = ok && error.file() == "picture.gif";
  }
  std::cout << slideformer::build_info() << "\n" << (ok ? "consumer ok" : "consumer FAILED") << "\n";
  return ok ? 0 : 1;
}
