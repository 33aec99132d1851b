// runtime/graph.cpp — graph containers and the forward builder with shape inference.
#include "runtime/graph.h"

namespace rpp {

const char* op_name(OpKind k) {
  switch (k) {
    case OpKind::Conv2d: return "conv2d";
    case OpKind::BatchNorm: return "batchnorm";
    case OpKind::Relu: return "relu";
    case OpKind::Add: return "add";
    case OpKind::Mul: return "mul";
    case OpKind::ScaleChannels: return "scale_channels";
    case OpKind::GlobalAvgPool: return "global_avg_pool";
    case OpKind::Linear: return "linear";
    case OpKind::Sigmoid: return "sigmoid";
    case OpKind::MaxPool2: return "maxpool2";
    case OpKind::Upsample2: return "upsample2";
    case OpKind::Concat: return "concat";
    case OpKind::BatchNormStats: return "batchnorm_stats";
    case OpKind::BnReluConv2d: return "bn_relu_conv2d";
    case OpKind::ConvBnSum: return "conv_bn_sum";
    case OpKind::UpsampleConcat: return "upsample_concat";
    case OpKind::UpsampleConcatBwd: return "upsample_concat_bwd";
    case OpKind::SeExcite: return "se_excite";
    case OpKind::BnApplySum: return "bn_apply_sum";
    case OpKind::SeExciteBwd: return "se_excite_bwd";
    case OpKind::ConvSumBwdData: return "conv_sum_bwd_data";
    case OpKind::Loss: return "loss";
    case OpKind::Conv2dBwdData: return "conv2d_bwd_data";
    case OpKind::Conv2dBwdFilter: return "conv2d_bwd_filter";
    case OpKind::BatchNormBwd: return "batchnorm_bwd";
    case OpKind::ReluBwd: return "relu_bwd";
    case OpKind::SigmoidBwd: return "sigmoid_bwd";
    case OpKind::ScaleChannelsBwd: return "scale_channels_bwd";
    case OpKind::GlobalAvgPoolBwd: return "global_avg_pool_bwd";
    case OpKind::LinearBwd: return "linear_bwd";
    case OpKind::MaxPool2Bwd: return "maxpool2_bwd";
    case OpKind::Upsample2Bwd: return "upsample2_bwd";
    case OpKind::ConcatBwd: return "concat_bwd";
    case OpKind::LossBwd: return "loss_bwd";
    case OpKind::BnReluConv2dBwdData: return "bn_relu_conv2d_bwd_data";
    case OpKind::BnReluConv2dBwdFilter: return "bn_relu_conv2d_bwd_filter";
    case OpKind::ClipGradNorm: return "clip_grad_norm";
    case OpKind::OptimizerUpdate: return "optimizer_update";
  }
  return "?";
}

const char* loss_name(LossKind k) {
  switch (k) {
    case LossKind::BCE: return "bce";
    case LossKind::Dice: return "dice";
    case LossKind::BCEDice: return "bce+dice";
  }
  return "?";
}

const char* optimizer_name(OptimizerKind k) {
  switch (k) {
    case OptimizerKind::SGD: return "sgd";
    case OptimizerKind::Adam: return "adam";
    case OptimizerKind::AdamW: return "adamw";
    case OptimizerKind::Nadam: return "nadam";
  }
  return "?";
}

int Graph::add_tensor(TensorInfo t) {
  tensors_.push_back(std::move(t));
  return int(tensors_.size()) - 1;
}

int Graph::add_node(Node n) {
  for (int id : n.in) RPP_CHECK(id >= 0 && id < num_tensors(), "node ", n.name, " reads tensor ", id);
  for (int id : n.out) RPP_CHECK(id >= 0 && id < num_tensors(), "node ", n.name, " writes tensor ", id);
  nodes_.push_back(std::move(n));
  return int(nodes_.size()) - 1;
}

void Graph::set_nodes(std::vector<Node> nodes) {
  for (const Node& n : nodes) {
    for (int id : n.in) RPP_CHECK(id >= 0 && id < num_tensors(), "node ", n.name, " reads tensor ", id);
    for (int id : n.out) RPP_CHECK(id >= 0 && id < num_tensors(), "node ", n.name, " writes tensor ", id);
  }
  nodes_ = std::move(nodes);
}

int Graph::find(const std::string& name) const {
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (is_persistent(tensors_[i].kind) && tensors_[i].name == name) return int(i);
  return -1;
}

std::vector<int> Graph::of_kind(TensorKind k) const {
  std::vector<int> ids;
  for (size_t i = 0; i < tensors_.size(); ++i)
    if (tensors_[i].kind == k) ids.push_back(int(i));
  return ids;
}

int64_t Graph::forward_flops() const {
  int64_t f = 0;
  for (const Node& n : nodes_)
    if (is_forward(n.op)) f += n.flops;
  return f;
}

// ---------------------------------------------------------------------------------------------

int GraphBuilder::input(const std::string& name, Shape shape) {
  TensorInfo t;
  t.name = name;
  t.shape = std::move(shape);
  t.kind = TensorKind::Input;
  return g_.add_tensor(std::move(t));
}

int GraphBuilder::param(const std::string& name, Shape shape) {
  RPP_CHECK(g_.find(name) < 0, "duplicate parameter name ", name);
  TensorInfo t;
  t.name = name;
  t.shape = std::move(shape);
  t.kind = TensorKind::Param;
  t.requires_grad = training_;
  return g_.add_tensor(std::move(t));
}

int GraphBuilder::buffer(const std::string& name, Shape shape, DType dtype) {
  RPP_CHECK(g_.find(name) < 0, "duplicate buffer name ", name);
  TensorInfo t;
  t.name = name;
  t.shape = std::move(shape);
  t.dtype = dtype;
  t.kind = TensorKind::Buffer;
  return g_.add_tensor(std::move(t));
}

int GraphBuilder::activation(const std::string& name, Shape shape, bool requires_grad) {
  TensorInfo t;
  t.name = name;
  t.shape = std::move(shape);
  t.kind = TensorKind::Activation;
  t.requires_grad = requires_grad && training_;
  return g_.add_tensor(std::move(t));
}

static void expect_rank(const TensorInfo& t, size_t rank, const std::string& scope) {
  if (t.shape.size() != rank)
    fail(scope, ": tensor ", t.name, " has shape ", shape_str(t.shape), ", expected rank ", rank);
}

int GraphBuilder::conv2d(const std::string& scope, int x, int w, int b, int stride, int pad, int dil) {
  const Shape xs = g_.tensor(x).shape;
  const Shape ws = g_.tensor(w).shape;  // HWIO
  expect_rank(g_.tensor(x), 4, scope);
  expect_rank(g_.tensor(w), 4, scope);
  if (ws[2] != xs[3])
    fail(scope, ": conv weight ", shape_str(ws), " expects ", ws[2], " input channels, got ", xs[3]);
  cpu::Conv2dShape s;
  s.n = int(xs[0]); s.h = int(xs[1]); s.w = int(xs[2]); s.cin = int(xs[3]);
  s.kh = int(ws[0]); s.kw = int(ws[1]); s.cout = int(ws[3]);
  s.stride = stride; s.pad = pad; s.dil = dil;
  if (s.ho() <= 0 || s.wo() <= 0) fail(scope, ": conv output would be empty for input ", shape_str(xs));
  if (b >= 0 && g_.tensor(b).shape != Shape{s.cout}) fail(scope, ": conv bias shape mismatch");
  int y = activation(scope + ".out", {s.n, s.ho(), s.wo(), s.cout}, rg(x) || rg(w));
  Node n{OpKind::Conv2d, {x, w, b}, {y}, scope, {}, {}, {}, {}, 0, {}};
  n.conv.shape = s;
  n.flops = 2ll * s.n * s.ho() * s.wo() * s.cout * s.kh * s.kw * s.cin;
  g_.add_node(std::move(n));
  return y;
}

int GraphBuilder::batchnorm(const std::string& scope, int x, int gamma, int beta, int rmean, int rvar,
                            int nbt) {
  const Shape xs = g_.tensor(x).shape;
  const int64_t c = xs.back();
  for (int p : {gamma, beta, rmean, rvar})
    if (g_.tensor(p).shape != Shape{c}) fail(scope, ": batchnorm parameter ", g_.tensor(p).name, " is not [", c, "]");
  int y = activation(scope + ".out", xs, true);
  Node n{OpKind::BatchNorm, {x, gamma, beta, rmean, rvar, nbt}, {y}, scope, {}, {}, {}, {}, 0, {}};
  n.bn.training = training_;
  if (training_) {
    n.out.push_back(activation(scope + ".save_mean", {c}, false));
    n.out.push_back(activation(scope + ".save_invstd", {c}, false));
  }
  n.flops = 4 * numel(xs);
  g_.add_node(std::move(n));
  return y;
}

namespace {
Node simple(OpKind k, std::vector<int> in, int out, const std::string& scope, int64_t flops) {
  Node n{k, std::move(in), {out}, scope, {}, {}, {}, {}, flops, {}};
  return n;
}
}  // namespace

int GraphBuilder::relu(const std::string& scope, int x) {
  int y = activation(scope + ".relu", g_.tensor(x).shape, rg(x));
  g_.add_node(simple(OpKind::Relu, {x}, y, scope, numel(g_.tensor(x).shape)));
  return y;
}

int GraphBuilder::add(const std::string& scope, int a, int b) {
  if (g_.tensor(a).shape != g_.tensor(b).shape)
    fail(scope, ": add of ", shape_str(g_.tensor(a).shape), " and ", shape_str(g_.tensor(b).shape));
  int y = activation(scope + ".add", g_.tensor(a).shape, rg(a) || rg(b));
  g_.add_node(simple(OpKind::Add, {a, b}, y, scope, numel(g_.tensor(a).shape)));
  return y;
}

int GraphBuilder::mul(const std::string& scope, int a, int b) {
  if (g_.tensor(a).shape != g_.tensor(b).shape)
    fail(scope, ": mul of ", shape_str(g_.tensor(a).shape), " and ", shape_str(g_.tensor(b).shape));
  int y = activation(scope + ".mul", g_.tensor(a).shape, rg(a) || rg(b));
  g_.add_node(simple(OpKind::Mul, {a, b}, y, scope, numel(g_.tensor(a).shape)));
  return y;
}

int GraphBuilder::scale_channels(const std::string& scope, int x, int s) {
  const Shape xs = g_.tensor(x).shape;
  expect_rank(g_.tensor(x), 4, scope);
  if (g_.tensor(s).shape != Shape{xs[0], xs[3]}) fail(scope, ": channel scale shape mismatch");
  int y = activation(scope + ".scale", xs, rg(x) || rg(s));
  g_.add_node(simple(OpKind::ScaleChannels, {x, s}, y, scope, numel(xs)));
  return y;
}

int GraphBuilder::global_avg_pool(const std::string& scope, int x) {
  const Shape xs = g_.tensor(x).shape;
  expect_rank(g_.tensor(x), 4, scope);
  int y = activation(scope + ".pool", {xs[0], xs[3]}, rg(x));
  g_.add_node(simple(OpKind::GlobalAvgPool, {x}, y, scope, numel(xs)));
  return y;
}

int GraphBuilder::linear(const std::string& scope, int x, int w) {
  const Shape xs = g_.tensor(x).shape;
  const Shape ws = g_.tensor(w).shape;  // (O, I)
  expect_rank(g_.tensor(x), 2, scope);
  if (ws.size() != 2 || ws[1] != xs[1]) fail(scope, ": linear weight ", shape_str(ws), " vs input ", shape_str(xs));
  int y = activation(scope + ".linear", {xs[0], ws[0]}, rg(x) || rg(w));
  g_.add_node(simple(OpKind::Linear, {x, w}, y, scope, 2 * xs[0] * ws[0] * ws[1]));
  return y;
}

int GraphBuilder::sigmoid(const std::string& scope, int x) {
  int y = activation(scope + ".sigmoid", g_.tensor(x).shape, rg(x));
  g_.add_node(simple(OpKind::Sigmoid, {x}, y, scope, 4 * numel(g_.tensor(x).shape)));
  return y;
}

int GraphBuilder::maxpool2(const std::string& scope, int x) {
  const Shape xs = g_.tensor(x).shape;
  expect_rank(g_.tensor(x), 4, scope);
  if (xs[1] % 2 || xs[2] % 2) fail(scope, ": 2x2 max pool needs even height and width, got ", shape_str(xs));
  const Shape ys{xs[0], xs[1] / 2, xs[2] / 2, xs[3]};
  int y = activation(scope + ".maxpool", ys, rg(x));
  Node n = simple(OpKind::MaxPool2, {x}, y, scope, numel(xs));
  if (training_) {  // backward reads the window indices (1 byte per output), not x
    const int arg = activation(scope + ".argmax", ys, false);
    g_.tensor(arg).dtype = DType::U8;
    n.out.push_back(arg);
  }
  g_.add_node(std::move(n));
  return y;
}

int GraphBuilder::upsample2(const std::string& scope, int x) {
  const Shape xs = g_.tensor(x).shape;
  expect_rank(g_.tensor(x), 4, scope);
  int y = activation(scope + ".up", {xs[0], xs[1] * 2, xs[2] * 2, xs[3]}, rg(x));
  g_.add_node(simple(OpKind::Upsample2, {x}, y, scope, 0));
  return y;
}

int GraphBuilder::concat(const std::string& scope, int a, int b) {
  Shape as = g_.tensor(a).shape;
  const Shape bs = g_.tensor(b).shape;
  if (as.size() != 4 || bs.size() != 4 || as[0] != bs[0] || as[1] != bs[1] || as[2] != bs[2])
    fail(scope, ": concat of ", shape_str(as), " and ", shape_str(bs));
  as[3] += bs[3];
  int y = activation(scope + ".concat", as, rg(a) || rg(b));
  g_.add_node(simple(OpKind::Concat, {a, b}, y, scope, 0));
  return y;
}

int GraphBuilder::loss(const std::string& scope, int logits, int target, LossKind kind) {
  if (g_.tensor(logits).shape != g_.tensor(target).shape)
    fail(scope, ": logits ", shape_str(g_.tensor(logits).shape), " vs target ", shape_str(g_.tensor(target).shape));
  int y = activation(scope, {}, rg(logits));
  g_.tensor(y).is_output = true;
  Node n = simple(OpKind::Loss, {logits, target}, y, scope, 8 * numel(g_.tensor(logits).shape));
  n.loss.kind = kind;
  g_.add_node(std::move(n));
  return y;
}

std::vector<int> view_nodes_by_tensor(const Graph& g) {
  std::vector<int> v(size_t(g.num_tensors()), -1);
  for (int i = 0; i < g.num_nodes(); ++i)
    if (g.node(i).view)
      for (int t : g.node(i).out) v[size_t(t)] = i;
  return v;
}

std::vector<int> inplace_inputs(const Node& n, size_t out_index) {
  if (out_index != 0) return {};
  switch (n.op) {
    case OpKind::Add:
    case OpKind::Mul: return {0, 1};
    case OpKind::Relu:
    case OpKind::ScaleChannels: return {0};  // x (N,H,W,C); s (N,C) is not of the output's shape
    case OpKind::ReluBwd:
    case OpKind::SigmoidBwd: return {1};  // dy
    // dx over dy: every kernel forms the per-channel sums over dy first, then each dx from its dy.
    case OpKind::BatchNormBwd: return {1};
    default: return {};
  }
}

}  // namespace rpp
