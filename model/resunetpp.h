// model/resunetpp.h — the ResUNet++ network (Jha et al., 2019) as a graph, with the PyTorch
// module paths of the reference definition as parameter names (see docs/design.md).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "runtime/graph.h"
#include "runtime/param_store.h"

namespace rpp {

// The blocks of the network, each appending its ops and parameters under a module path `s`.
// Public so that tests can differentiate single blocks.
class ResUNetBlocks {
 public:
  explicit ResUNetBlocks(GraphBuilder& b) : b_(b) {}

  int conv(const std::string& s, int x, int cout, int k, int stride = 1, int pad = -1, int dil = 1) {
    const int cin = int(b_.graph().tensor(x).shape[3]);
    if (pad < 0) pad = (k / 2) * dil;
    int w = b_.param(s + ".weight", {k, k, cin, cout});  // HWIO
    int bias = b_.param(s + ".bias", {cout});
    return b_.conv2d(s, x, w, bias, stride, pad, dil);
  }
  int bn(const std::string& s, int x) {
    const int64_t c = b_.graph().tensor(x).shape[3];
    int g = b_.param(s + ".weight", {c});
    int beta = b_.param(s + ".bias", {c});
    int rm = b_.buffer(s + ".running_mean", {c});
    int rv = b_.buffer(s + ".running_var", {c});
    int nbt = b_.buffer(s + ".num_batches_tracked", {}, DType::I64);
    return b_.batchnorm(s, x, g, beta, rm, rv, nbt);
  }
  int relu(const std::string& s, int x) { return b_.relu(s, x); }

  // Squeeze-and-excitation, reduction 8: x * sigmoid(W2 relu(W1 avgpool(x))).
  int se(const std::string& s, int x) {
    const int c = int(b_.graph().tensor(x).shape[3]);
    int p = b_.global_avg_pool(s, x);
    int w1 = b_.param(s + ".net.0.weight", {c / 8, c});
    int h = b_.relu(s + ".net.1", b_.linear(s + ".net.0", p, w1));
    int w2 = b_.param(s + ".net.2.weight", {c, c / 8});
    int a = b_.sigmoid(s + ".net.3", b_.linear(s + ".net.2", h, w2));
    return b_.scale_channels(s, x, a);
  }

  int stem(const std::string& s, int x, int cout) {
    int a = conv(s + ".c1.0", x, cout, 3);
    a = relu(s + ".c1.2", bn(s + ".c1.1", a));
    a = conv(s + ".c1.3", a, cout, 3);
    int sc = bn(s + ".c2.1", conv(s + ".c2.0", x, cout, 1, 1, 0));
    return se(s + ".attn", b_.add(s, a, sc));
  }

  int resblock(const std::string& s, int x, int cout, int stride) {
    int a = relu(s + ".c1.1", bn(s + ".c1.0", x));
    a = conv(s + ".c1.2", a, cout, 3, stride);
    a = relu(s + ".c1.4", bn(s + ".c1.3", a));
    a = conv(s + ".c1.5", a, cout, 3);
    int sc = bn(s + ".c2.1", conv(s + ".c2.0", x, cout, 1, stride, 0));
    return se(s + ".attn", b_.add(s, a, sc));
  }

  int aspp(const std::string& s, int x, int cout) {
    const int rates[4] = {1, 6, 12, 18};
    int sum = -1;
    for (int i = 0; i < 4; ++i) {
      const std::string br = s + ".c" + std::to_string(i + 1);
      int y = bn(br + ".1", conv(br + ".0", x, cout, 3, 1, rates[i], rates[i]));
      sum = sum < 0 ? y : b_.add(s, sum, y);
    }
    return conv(s + ".c5", sum, cout, 1, 1, 0);
  }

  // g: the encoder skip at 2H, x: the decoder input at H. Returns gc_conv(g_conv(g) + x_conv(x)) * x.
  int attention(const std::string& s, int g, int x) {
    const int cx = int(b_.graph().tensor(x).shape[3]);
    int gp = conv(s + ".g_conv.2", relu(s + ".g_conv.1", bn(s + ".g_conv.0", g)), cx, 3);
    gp = b_.maxpool2(s + ".g_conv.3", gp);
    int xc = conv(s + ".x_conv.2", relu(s + ".x_conv.1", bn(s + ".x_conv.0", x)), cx, 3);
    int sum = b_.add(s, gp, xc);
    int gc = conv(s + ".gc_conv.2", relu(s + ".gc_conv.1", bn(s + ".gc_conv.0", sum)), cx, 3);
    return b_.mul(s, gc, x);
  }

  int decoder(const std::string& s, int g, int x, int cout) {
    int d = b_.upsample2(s + ".up", attention(s + ".a1", g, x));
    d = b_.concat(s, d, g);
    return resblock(s + ".r1", d, cout, 1);
  }

 private:
  GraphBuilder& b_;
};


struct ModelConfig {
  std::vector<int> filters{16, 32, 64, 128, 256};  // stem, encoder 1..3, bridge (ASPP)
  int in_channels = 3;
  // Graph construction, not architecture (not stored in checkpoints): rewrite BN -> ReLU -> Conv
  // chains into fused nodes (runtime/fusion.h). Same numbers on the CPU, less memory.
  bool fuse = true;
};

struct ModelGraph {
  Graph graph;
  int image = -1;   // input (N, H, W, in_channels), values in [0, 1]
  int target = -1;  // input (N, H, W, 1), 0/1 (training graphs only)
  int logits = -1;  // (N, H, W, 1)
  int loss = -1;    // scalar (training graphs only)
};

// Forward graph for a batch of n images of h x w (multiples of 8). A training graph uses batch
// statistics in BatchNorm and ends in the loss; an inference graph uses running statistics and
// marks the logits as output. With cfg.fuse the BN -> ReLU -> Conv chains and the SE blocks' MLPs
// are fused, and the two ASPP blocks: in an inference graph their four conv-BN branches and their
// sum, in a training graph the four BN applications and the sum. Autodiff and
// the optimiser are appended by the caller.
ModelGraph build_resunetpp(const ModelConfig& cfg, int n, int h, int w, bool training,
                           LossKind loss = LossKind::BCEDice);

// PyTorch-default initialisation of every Param and Buffer of g into store, seeded:
// conv and linear weights kaiming-uniform(a = sqrt(5)), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in));
// conv biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BN weight 1, bias 0, running mean 0, var 1.
void init_params(const Graph& g, ParamStore& store, uint64_t seed);

// Filter counts as text, "16,32,64,128,256" (checkpoint metadata, --filters): exactly five
// positive integers. `what` names the source in the error message.
std::vector<int> parse_filters(const std::string& text, const std::string& what);
std::string filters_string(const std::vector<int>& filters);

// cfg with `fuse` set for the executor of `device` (runtime/executor.h device strings): on for
// CUDA, whose fused nodes are meant to apply BN-ReLU while loading, off for the CPU, whose fused
// nodes stage BN-ReLU in the workspace and recompute it in backward (slower there; see
// docs/design.md, "Fusion"). Both graphs give the same results.
ModelConfig config_for_device(ModelConfig cfg, const std::string& device);

// Number of trainable scalars in g.
int64_t count_params(const Graph& g);

}  // namespace rpp
