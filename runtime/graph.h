// runtime/graph.h — the graph IR: a small closed set of ops over named tensors.
//
// A Graph is a list of tensors (shape + role) and a list of nodes in execution order. Builders
// append forward nodes with shape inference; autodiff (runtime/autodiff.h) appends the backward
// nodes and the optimiser update; the planner (runtime/planner.h) places every non-persistent
// tensor in one arena; an executor runs the nodes in order. The graph knows nothing of ResUNet++.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "runtime/tensor.h"

namespace rpp {

enum class OpKind : uint8_t {
  // forward
  Conv2d,         // in: x, w(HWIO), b[, r]     out: y (+ r: a residual added by fuse_conv_add)
                  // (conv.max_pool: out: maxpool2(y)[, argmax], fuse_conv_pool;
                  //  conv.multiply: out: y * r[, y], fuse_conv_mul)
  BatchNorm,      // in: x, gamma, beta, running_mean, running_var, num_batches_tracked
                  // out: y, save_mean, save_invstd (training) | y (eval)
  Relu,           // in: x                      out: y
  Add,            // in: a, b                   out: y
  Mul,            // in: a, b                   out: y
  ScaleChannels,  // in: x (N,H,W,C), s (N,C)   out: y
  GlobalAvgPool,  // in: x (N,H,W,C)            out: y (N,C)
  Linear,         // in: x (N,I), w (O,I)       out: y (N,O)
  Sigmoid,        // in: x                      out: y
  MaxPool2,       // in: x                      out: y (training: y, argmax (U8, y's shape): window position 0..3)
  Upsample2,      // in: x                      out: y
  Concat,         // in: a, b                   out: y (channels of a, then b)
  // fused forward ops (written by runtime/fusion.h, never by the builder)
  BatchNormStats, // in: x, running_mean, running_var, num_batches_tracked   out: mean, invstd
                  // (training: batch statistics, running update; eval: from the running ones)
  BnReluConv2d,   // in: x, gamma, beta, mean, invstd, w(HWIO), b[, r]   out: conv(relu(bn(x))) (+ r)
                  // (conv.max_pool: as Conv2d)
  SeExcite,       // in: p (N,C), w1 (C/r,C), w2 (C,C/r)   out: s = sigmoid(w2 relu(w1 p)) (the SE's MLP)
  BnApplySum,     // training: in: per branch x, gamma, beta, mean, invstd (saved statistics)
                  // out: sum over the branches of bn(x), added in branch order (the ASPP block)
  UpsampleConcat, // in: a (N,H,W,Ca), b (N,2H,2W,Cb)   out: concat(upsample2(a), b) (N,2H,2W,Ca+Cb)
  ConvBnSum,      // inference only (eval BN): in: x, then per branch w(HWIO), b, gamma, beta,
                  // running_mean, running_var   out: sum over the branches of bn(conv(x)), added
                  // in branch order (the ASPP block); Node::branches holds each branch's shape
  Loss,           // in: logits, target         out: loss (scalar)
  // backward
  Conv2dBwdData,    // in: dy, w              out: dx
  Conv2dBwdFilter,  // in: x, dy              out: dw, db
  BatchNormBwd,     // in: x, dy, gamma, save_mean, save_invstd   out: dx, dgamma, dbeta
  ReluBwd,          // in: y, dy              out: dx     (y > 0 exactly where x > 0)
  SigmoidBwd,       // in: y, dy              out: dx
  ScaleChannelsBwd, // in: x, dy              out: ds     (dx is a ScaleChannels node)
  GlobalAvgPoolBwd, // in: dy                 out: dx
  LinearBwd,        // in: x, w, dy           out: dx, dw
  MaxPool2Bwd,      // in: argmax, dy         out: dx (x's shape)
  Upsample2Bwd,     // in: dy                 out: dx
  ConcatBwd,        // in: dy                 out: da, db
  LossBwd,          // in: logits, target     out: dlogits (for dloss = 1)
  BnReluConv2dBwdData,   // in: dz, w, x, gamma, beta, mean, invstd   out: d(bn output), ReLU-masked
  BnReluConv2dBwdFilter, // in: x, gamma, beta, mean, invstd, dz      out: dw, db
  SeExciteBwd,           // in: p, w1, w2, s, ds   out: dp, dw1, dw2 (relu(w1 p) recomputed)
  UpsampleConcatBwd,     // in: dy   out: da (the sum of its four copies' gradients, as upsample2_bwd), db
  ConvSumBwdData,        // in: per branch dy, w(HWIO)   out: dx = the sum of the branches' conv backward-data,
                         // added in branch order (the ASPP block's input gradient); Node::branches
                         // holds each branch's shape (written by fuse_aspp_backward_data)
  // optimiser
  ClipGradNorm,     // in: every parameter gradient (scaled in place when over the limit)  out: none
  OptimizerUpdate,  // in: param, grad, state... (updated in place)   out: none
};
const char* op_name(OpKind k);
// Forward ops (including the loss) come before every backward and optimiser op in OpKind.
inline bool is_forward(OpKind k) { return k <= OpKind::Loss; }

enum class TensorKind : uint8_t {
  Input,       // fed by the caller before each run (images, masks)
  Param,       // trainable, persistent
  Buffer,      // persistent, not trainable (BN running statistics, counters)
  OptState,    // persistent optimiser state (momentum, Adam moments)
  Activation,  // produced and consumed within one run: forward values, saved statistics
  Gradient,    // produced and consumed within one run: gradients, including parameter gradients
};
inline bool is_persistent(TensorKind k) {
  return k == TensorKind::Param || k == TensorKind::Buffer || k == TensorKind::OptState;
}

enum class LossKind : uint8_t { BCE, Dice, BCEDice };
enum class OptimizerKind : uint8_t { SGD, Adam, AdamW, Nadam };
const char* loss_name(LossKind k);
const char* optimizer_name(OptimizerKind k);

struct TensorInfo {
  std::string name;  // persistent tensors: checkpoint name; others: a readable debug name
  Shape shape;
  DType dtype = DType::F32;
  TensorKind kind = TensorKind::Activation;
  bool requires_grad = false;
  bool is_output = false;  // kept alive to the end of the run and readable afterwards
};

// Per-node attributes: only the fields of the node's op are meaningful.
// Forward Conv2d / BnReluConv2d only:
// max_pool (fuse_conv_pool): the node's output is the 2x2 max pool of the convolution's (out[0],
// and in training out[1], the pool's argmax); the convolution's own output is no tensor.
// multiply (fuse_conv_mul): the input in the residual slot multiplies the convolution's output
// instead of being added (out[0] = conv * m; in training out[1] is the convolution's own output,
// which the product's backward reads).
struct ConvAttrs {
  cpu::Conv2dShape shape;
  bool max_pool = false;
  bool multiply = false;
};
struct BNAttrs { double momentum = 0.1, eps = 1e-5; bool training = true; };
struct LossAttrs { LossKind kind = LossKind::BCEDice; };
struct OptAttrs { OptimizerKind kind = OptimizerKind::Adam; };
// ConvBnSum, ConvSumBwdData: the convolution of each branch (same n, h, w, cin, cout, kernel, stride and output
// size; padding and dilation per branch). conv.shape is branches[0].
struct BranchAttrs { std::vector<cpu::Conv2dShape> shapes; };

struct Node {
  OpKind op;
  std::vector<int> in, out;
  std::string name;  // the module path that created it, e.g. "c2.c1.2"
  ConvAttrs conv;
  BNAttrs bn;
  LossAttrs loss;
  OptAttrs opt;
  int64_t flops = 0;  // multiply-adds count 2
  BranchAttrs branches;
  // UpsampleConcat only (view_upsample_concats, runtime/fusion.h): the output is never stored. Its
  // readers compute each value from the node's inputs where they read it, and an executor that
  // cannot materialises it for that reader alone; the node itself runs no kernel.
  bool view = false;
};

// Where a forward convolution node takes a residual (fuse_conv_add) or a multiplier
// (fuse_conv_mul): Conv2d in[3], BnReluConv2d in[7]; 0 for other ops, which take neither.
inline size_t residual_slot(OpKind k) { return k == OpKind::Conv2d ? 3 : k == OpKind::BnReluConv2d ? 7 : 0; }
// The node's residual input (added to the convolution's output), or -1 when it has none.
inline int residual_input(const Node& n) {
  const size_t at = residual_slot(n.op);
  return at > 0 && n.in.size() > at && !n.conv.multiply ? n.in[at] : -1;
}
// The node's multiplier input (conv.multiply), or -1 when it has none.
inline int multiplier_input(const Node& n) {
  const size_t at = residual_slot(n.op);
  return at > 0 && n.in.size() > at && n.conv.multiply ? n.in[at] : -1;
}

// In-place candidates: the inputs (indices into n.in) whose bytes the node's output out_index may
// take over when that input is read by no later node (the planner decides). Only ops whose every
// kernel reads each element of that input before writing the same element of the output, and no
// other element of it afterwards, list one.
std::vector<int> inplace_inputs(const Node& n, size_t out_index);

class Graph {
 public:
  int add_tensor(TensorInfo t);
  int add_node(Node n);
  const TensorInfo& tensor(int id) const { return tensors_.at(size_t(id)); }
  TensorInfo& tensor(int id) { return tensors_.at(size_t(id)); }
  const Node& node(int i) const { return nodes_.at(size_t(i)); }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const std::vector<Node>& nodes() const { return nodes_; }
  int num_tensors() const { return int(tensors_.size()); }
  int num_nodes() const { return int(nodes_.size()); }
  // Id of the persistent tensor with this name, or -1.
  int find(const std::string& name) const;
  // Ids of all tensors of a kind, in creation order.
  std::vector<int> of_kind(TensorKind k) const;
  int64_t forward_flops() const;  // sum over forward nodes
  // Replaces the node list (graph rewrites such as runtime/fusion.h). Tensors stay; one that no
  // node writes any more gets no storage in a plan.
  void set_nodes(std::vector<Node> nodes);

 private:
  std::vector<TensorInfo> tensors_;
  std::vector<Node> nodes_;
};

// Per tensor: the index of the view node (Node::view) whose output it is, or -1.
std::vector<int> view_nodes_by_tensor(const Graph& g);

// Appends forward ops with shape inference. Names of persistent tensors are given by the caller.
class GraphBuilder {
 public:
  explicit GraphBuilder(Graph& g, bool training) : g_(g), training_(training) {}
  Graph& graph() { return g_; }
  bool training() const { return training_; }

  int input(const std::string& name, Shape shape);
  int param(const std::string& name, Shape shape);
  int buffer(const std::string& name, Shape shape, DType dtype = DType::F32);

  int conv2d(const std::string& scope, int x, int w, int b, int stride, int pad, int dil);
  int batchnorm(const std::string& scope, int x, int gamma, int beta, int rmean, int rvar, int nbt);
  int relu(const std::string& scope, int x);
  int add(const std::string& scope, int a, int b);
  int mul(const std::string& scope, int a, int b);
  int scale_channels(const std::string& scope, int x, int s);
  int global_avg_pool(const std::string& scope, int x);
  int linear(const std::string& scope, int x, int w);
  int sigmoid(const std::string& scope, int x);
  int maxpool2(const std::string& scope, int x);
  int upsample2(const std::string& scope, int x);
  int concat(const std::string& scope, int a, int b);
  int loss(const std::string& scope, int logits, int target, LossKind kind);

 private:
  int activation(const std::string& name, Shape shape, bool requires_grad);
  bool rg(int id) const { return g_.tensor(id).requires_grad; }
  Graph& g_;
  bool training_;
};

}  // namespace rpp
