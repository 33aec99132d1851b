// runtime/executor_cpu.cpp — one switch over the op set, calling kernels/cpu; also the device
// factory of runtime/executor.h (make_executor), which every build has.
#include "runtime/executor_cpu.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/parallel.h"
#include "runtime/executor_cuda.h"

namespace rpp {

namespace {
// Floats of the staged BN-ReLU input of a fused node (its x, in[0])
// (or of the tensor given), rounded to 64 floats so the conv workspace after it stays aligned.
size_t bn_relu_staging_floats(const Graph& g, const Node& n, int tensor = -1) {
  return (size_t(numel(g.tensor(tensor >= 0 ? tensor : n.in[0]).shape)) + 63) / 64 * 64;
}
// Floats of a convolution's own output where it is no tensor, at the start of its workspace,
// likewise rounded: a pooled convolution's (fuse_conv_pool), an inference graph's multiplied one
// (fuse_conv_mul); 0 for other nodes.
size_t conv_out_floats(const Node& n) {
  if (!n.conv.max_pool && !(n.conv.multiply && n.out.size() == 1)) return 0;
  const cpu::Conv2dShape& s = n.conv.shape;
  return (size_t(s.n) * size_t(s.ho()) * size_t(s.wo()) * size_t(s.cout) + 63) / 64 * 64;
}
}  // namespace

size_t cpu_workspace_bytes(const Graph& g, const Node& n) {
  switch (n.op) {
    case OpKind::Conv2d: return (conv_out_floats(n) + cpu::conv2d_forward_workspace(n.conv.shape)) * sizeof(float);
    case OpKind::Conv2dBwdData: return cpu::conv2d_backward_data_workspace(n.conv.shape) * sizeof(float);
    case OpKind::Conv2dBwdFilter: return cpu::conv2d_backward_filter_workspace(n.conv.shape) * sizeof(float);
    case OpKind::LossBwd: return size_t(numel(g.tensor(n.in[0]).shape)) * sizeof(float);  // Dice part of BCE + Dice
    // The BN-ReLU input is materialised in the workspace, followed by the conv's own workspace.
    case OpKind::BnReluConv2d:
      return (conv_out_floats(n) + bn_relu_staging_floats(g, n) + cpu::conv2d_forward_workspace(n.conv.shape)) *
             sizeof(float);
    case OpKind::BnReluConv2dBwdData: return cpu::conv2d_backward_data_workspace(n.conv.shape) * sizeof(float);
    case OpKind::BnApplySum: return size_t(numel(g.tensor(n.out[0]).shape)) * sizeof(float);  // one branch
    // The upsampled operand (or its gradient), as the unfused graph has it.
    case OpKind::UpsampleConcat:
    case OpKind::UpsampleConcatBwd: {
      const Shape& a = g.tensor(n.op == OpKind::UpsampleConcat ? n.in[0] : n.out[0]).shape;
      return size_t(4 * numel(a)) * sizeof(float);
    }
    // The SE MLP's hidden layer (forward); backward also da and the hidden gradient.
    case OpKind::SeExcite:
    case OpKind::SeExciteBwd: {
      const int64_t rows = g.tensor(n.in[0]).shape[0];
      const Shape& w1 = g.tensor(n.in[1]).shape;  // (hidden, c)
      const int64_t per = n.op == OpKind::SeExcite ? w1[0] : 2 * w1[0] + w1[1];
      return size_t(rows * per) * sizeof(float);
    }
    // One branch's conv output (or input gradient), then the largest of the branches' conv
    // (or backward-data) workspaces.
    case OpKind::ConvBnSum:
    case OpKind::ConvSumBwdData: {
      size_t conv_ws = 0;
      for (const cpu::Conv2dShape& s : n.branches.shapes)
        conv_ws = std::max(conv_ws, n.op == OpKind::ConvBnSum ? cpu::conv2d_forward_workspace(s)
                                                              : cpu::conv2d_backward_data_workspace(s));
      return (bn_relu_staging_floats(g, n, n.out[0]) + conv_ws) * sizeof(float);
    }
    case OpKind::BnReluConv2dBwdFilter:
      return bn_relu_staging_floats(g, n) * sizeof(float) +
             cpu::conv2d_backward_filter_workspace(n.conv.shape) * sizeof(float);
    default: return 0;
  }
}

CpuExecutor::CpuExecutor(const Graph& g, ParamStore& store, PlanMode mode)
    : g_(g), store_(store), plan_(make_plan(g, mode, cpu_workspace_bytes)) {
  for (const TensorInfo& ti : g_.tensors())
    if (!is_persistent(ti.kind) && ti.dtype != DType::F32 && ti.dtype != DType::U8)
      fail("CPU executor: tensor ", ti.name, " is stored in ", dtype_name(ti.dtype),
           "; the CPU backend runs fp32 only (bf16 activations need --device cuda)");
  store_.ensure(g_);
  arena_.assign(plan_.arena_bytes / sizeof(float) + 1, 0.f);
  workspace_.assign(plan_.workspace_bytes / sizeof(float) + 1, 0.f);
  ptr_.assign(size_t(g_.num_tensors()), nullptr);
  view_node_ = view_nodes_by_tensor(g_);
  size_t view_floats = 0;
  for (int t = 0; t < g_.num_tensors(); ++t)
    if (view_node_[size_t(t)] >= 0) view_floats = std::max(view_floats, size_t(numel(g_.tensor(t).shape)));
  view_buffer_.assign(view_floats, 0.f);
  for (int t = 0; t < g_.num_tensors(); ++t) {
    if (view_node_[size_t(t)] >= 0) {
      ptr_[size_t(t)] = view_buffer_.data();
      continue;
    }
    const TensorInfo& ti = g_.tensor(t);
    if (is_persistent(ti.kind))
      ptr_[size_t(t)] = store_.get(ti.name).raw();
    else if (plan_.offset[size_t(t)] >= 0)
      ptr_[size_t(t)] = reinterpret_cast<char*>(arena_.data()) + plan_.offset[size_t(t)];
  }
  for (const Node& n : g_.nodes())
    if (n.op == OpKind::Loss) loss_tensor_ = n.out[0];
}

std::string CpuExecutor::describe() const {
  return "cpu (" + std::to_string(cpu::num_threads()) + " threads)";
}

void CpuExecutor::set_input(int t, const float* host) {
  float* d = data(t);
  if (host != d) std::memcpy(d, host, size_t(numel(g_.tensor(t).shape)) * sizeof(float));
}

void CpuExecutor::read_output(int t, float* host) {
  const float* d = data(t);
  if (host != d) std::memcpy(host, d, size_t(numel(g_.tensor(t).shape)) * sizeof(float));
}

double CpuExecutor::last_loss() {
  return loss_tensor_ >= 0 ? double(*data(loss_tensor_)) : std::numeric_limits<double>::quiet_NaN();
}

float* CpuExecutor::data(int t) {
  void* p = ptr_.at(size_t(t));
  if (!p) fail("tensor ", g_.tensor(t).name, " has no storage in this plan");
  return static_cast<float*>(p);
}

const float* CpuExecutor::data(int t) const { return const_cast<CpuExecutor*>(this)->data(t); }

void CpuExecutor::poison() {
  std::fill(arena_.begin(), arena_.end(), std::numeric_limits<float>::quiet_NaN());
}

void CpuExecutor::set_profiling(bool on) {
  profiling_ = on;
  node_seconds_.assign(size_t(g_.num_nodes()), 0.0);
}

void CpuExecutor::run(const cpu::OptimStep* opt) {
  if (!profiling_) {
    for (int i = 0; i < g_.num_nodes(); ++i) step(i, opt);
    return;
  }
  using clock = std::chrono::steady_clock;
  for (int i = 0; i < g_.num_nodes(); ++i) {
    const auto t0 = clock::now();
    step(i, opt);
    node_seconds_[size_t(i)] += std::chrono::duration<double>(clock::now() - t0).count();
  }
}

// The CPU kernels read stored tensors only, so a view is made (by its own node, with the same
// kernels: the same bits) just before each of its readers.
void CpuExecutor::step(int i, const cpu::OptimStep* opt) {
  const Node& n = g_.node(i);
  if (n.view) return;
  for (int t : n.in)
    if (t >= 0 && view_node_[size_t(t)] >= 0) exec(g_.node(view_node_[size_t(t)]), opt);
  exec(n, opt);
}

void CpuExecutor::exec(const Node& n, const cpu::OptimStep* opt) {
  auto in = [&](size_t i) { return data(n.in[i]); };
  auto out = [&](size_t i) { return data(n.out[i]); };
  auto sh = [&](int t) -> const Shape& { return g_.tensor(t).shape; };
  auto count = [&](int t) { return numel(sh(t)); };
  auto bytes = [&](int t) { return reinterpret_cast<uint8_t*>(data(t)); };  // U8 tensors (max-pool argmax)
  float* ws = workspace_.data();
  // A convolution's residual (fuse_conv_add): added after it, as the add node did.
  auto add_residual = [&] {
    const int r = residual_input(n);
    if (r >= 0) cpu::add(count(n.out[0]), out(0), data(r), out(0));
  };
  // Where a convolution writes its own output: y; for a pooled one (fuse_conv_pool) the start of
  // the workspace, then pooled into its outputs as the pool node did; for a multiplied one
  // (fuse_conv_mul) out[1] in training, else the start of the workspace, then multiplied into y
  // as the Mul node did.
  float* const conv_y = n.conv.multiply && n.out.size() > 1 ? out(1) : conv_out_floats(n) ? ws : nullptr;
  auto finish_output = [&] {
    const cpu::Conv2dShape& cs = n.conv.shape;
    if (n.conv.max_pool)
      cpu::maxpool2_forward(cs.n, cs.ho(), cs.wo(), cs.cout, conv_y, out(0),
                            n.out.size() > 1 ? bytes(n.out[1]) : nullptr);
    if (n.conv.multiply) cpu::mul(count(n.out[0]), conv_y, data(multiplier_input(n)), out(0));
  };
  switch (n.op) {
    case OpKind::Conv2d:
      cpu::conv2d_forward(n.conv.shape, in(0), in(1), in(2), conv_y ? conv_y : out(0), ws + conv_out_floats(n));
      finish_output();
      add_residual();
      break;
    case OpKind::BatchNorm: {
      const Shape& xs = sh(n.in[0]);
      const int c = int(xs.back());
      const int64_t cnt = numel(xs) / c;
      if (n.bn.training) {
        cpu::batchnorm_forward_train(cnt, c, in(0), in(1), in(2), out(0), out(1), out(2), in(3), in(4),
                                     n.bn.momentum, n.bn.eps);
        if (n.in.size() > 5 && n.in[5] >= 0) ++*static_cast<int64_t*>(ptr_[size_t(n.in[5])]);
      } else {
        cpu::batchnorm_forward_eval(cnt, c, in(0), in(1), in(2), in(3), in(4), n.bn.eps, out(0));
      }
      break;
    }
    case OpKind::BatchNormStats: {
      const int c = int(sh(n.in[0]).back());
      if (n.bn.training) {
        cpu::batchnorm_stats_train(count(n.in[0]) / c, c, in(0), out(0), out(1), in(1), in(2), n.bn.momentum,
                                   n.bn.eps);
        if (n.in.size() > 3 && n.in[3] >= 0) ++*static_cast<int64_t*>(ptr_[size_t(n.in[3])]);
      } else {
        cpu::batchnorm_stats_eval(c, in(1), in(2), n.bn.eps, out(0), out(1));
      }
      break;
    }
    case OpKind::BnReluConv2d: {  // in: x, gamma, beta, mean, invstd, w, b
      const int c = int(sh(n.in[0]).back());
      float* staged = ws + conv_out_floats(n);
      cpu::batchnorm_apply(count(n.in[0]) / c, c, in(0), in(1), in(2), in(3), in(4), /*relu=*/true, staged);
      cpu::conv2d_forward(n.conv.shape, staged, in(5), in(6), conv_y ? conv_y : out(0),
                          staged + bn_relu_staging_floats(g_, n));
      finish_output();
      add_residual();
      break;
    }
    case OpKind::ConvBnSum: {  // in: x, then per branch w, b, gamma, beta, running_mean, running_var
      // Each branch as the unfused chain computes it (conv, eval BN, then the add into the sum
      // so far), so the fused and unfused graphs give the same bits.
      const int64_t cnt = count(n.out[0]);
      const int c = int(sh(n.out[0]).back());
      float* branch = ws;
      float* conv_ws = ws + bn_relu_staging_floats(g_, n, n.out[0]);
      for (size_t b = 0; b < n.branches.shapes.size(); ++b) {
        const size_t i = 1 + 6 * b;
        cpu::conv2d_forward(n.branches.shapes[b], in(0), in(i), in(i + 1), branch, conv_ws);
        float* y = b == 0 ? out(0) : branch;
        cpu::batchnorm_forward_eval(cnt / c, c, branch, in(i + 2), in(i + 3), in(i + 4), in(i + 5), n.bn.eps, y);
        if (b > 0) cpu::add(cnt, out(0), branch, out(0));
      }
      break;
    }
    case OpKind::BnApplySum: {  // per branch: x, gamma, beta, mean, invstd; as the unfused BN applies and adds
      const int64_t cnt = count(n.out[0]);
      const int c = int(sh(n.out[0]).back());
      for (size_t i = 0; i + 4 < n.in.size(); i += 5) {
        float* y = i == 0 ? out(0) : ws;
        cpu::batchnorm_apply(cnt / c, c, in(i), in(i + 1), in(i + 2), in(i + 3), in(i + 4), /*relu=*/false, y);
        if (i > 0) cpu::add(cnt, out(0), ws, out(0));
      }
      break;
    }
    case OpKind::SeExcite: {  // in: p, w1, w2   out: s; the unfused chain's kernels in its order
      const int rows = int(sh(n.in[0])[0]), hidden = int(sh(n.in[1])[0]), c = int(sh(n.in[1])[1]);
      cpu::linear_forward(rows, c, hidden, in(0), in(1), ws);
      cpu::relu_forward(int64_t(rows) * hidden, ws, ws);
      cpu::linear_forward(rows, hidden, c, ws, in(2), out(0));
      cpu::sigmoid_forward(int64_t(rows) * c, out(0), out(0));
      break;
    }
    case OpKind::SeExciteBwd: {  // in: p, w1, w2, s, ds   out: dp, dw1, dw2
      const int rows = int(sh(n.in[0])[0]), hidden = int(sh(n.in[1])[0]), c = int(sh(n.in[1])[1]);
      float* r = ws;
      float* da = r + int64_t(rows) * hidden;
      float* dr = da + int64_t(rows) * c;
      cpu::linear_forward(rows, c, hidden, in(0), in(1), r);
      cpu::relu_forward(int64_t(rows) * hidden, r, r);
      cpu::sigmoid_backward(int64_t(rows) * c, in(3), in(4), da);
      cpu::linear_backward(rows, hidden, c, r, in(2), da, dr, out(2));
      cpu::relu_backward(int64_t(rows) * hidden, r, dr, dr);
      cpu::linear_backward(rows, c, hidden, in(0), in(1), dr, out(0), out(1));
      break;
    }
    case OpKind::BnReluConv2dBwdData: {  // in: dz, w, x, gamma, beta, mean, invstd
      const int c = int(sh(n.in[2]).back());
      cpu::conv2d_backward_data(n.conv.shape, in(0), in(1), out(0), ws);
      cpu::bn_relu_mask_inplace(count(n.in[2]) / c, c, in(2), in(3), in(4), in(5), in(6), out(0));
      break;
    }
    case OpKind::BnReluConv2dBwdFilter: {  // in: x, gamma, beta, mean, invstd, dz
      const int c = int(sh(n.in[0]).back());
      cpu::batchnorm_apply(count(n.in[0]) / c, c, in(0), in(1), in(2), in(3), in(4), /*relu=*/true, ws);
      cpu::conv2d_backward_filter(n.conv.shape, ws, in(5), out(0), out(1), ws + bn_relu_staging_floats(g_, n));
      break;
    }
    case OpKind::Relu: cpu::relu_forward(count(n.in[0]), in(0), out(0)); break;
    case OpKind::Add: cpu::add(count(n.in[0]), in(0), in(1), out(0)); break;
    case OpKind::Mul: cpu::mul(count(n.in[0]), in(0), in(1), out(0)); break;
    case OpKind::ScaleChannels: {
      const Shape& xs = sh(n.in[0]);
      cpu::scale_channels(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), in(1), out(0));
      break;
    }
    case OpKind::GlobalAvgPool: {
      const Shape& xs = sh(n.in[0]);
      cpu::global_avg_pool_forward(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), out(0));
      break;
    }
    case OpKind::Linear: {
      const Shape& xs = sh(n.in[0]);
      const Shape& ws_ = sh(n.in[1]);
      cpu::linear_forward(int(xs[0]), int(ws_[1]), int(ws_[0]), in(0), in(1), out(0));
      break;
    }
    case OpKind::Sigmoid: cpu::sigmoid_forward(count(n.in[0]), in(0), out(0)); break;
    case OpKind::MaxPool2: {
      const Shape& xs = sh(n.in[0]);
      uint8_t* argmax = n.out.size() > 1 ? bytes(n.out[1]) : nullptr;
      cpu::maxpool2_forward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), in(0), out(0), argmax);
      break;
    }
    case OpKind::Upsample2: {
      const Shape& xs = sh(n.in[0]);
      cpu::upsample2_forward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), in(0), out(0));
      break;
    }
    case OpKind::Concat: {
      const Shape& as = sh(n.in[0]);
      const Shape& bs = sh(n.in[1]);
      cpu::concat_forward(as[0] * as[1] * as[2], int(as[3]), int(bs[3]), in(0), in(1), out(0));
      break;
    }
    case OpKind::UpsampleConcat: {  // a, b: upsample a into the workspace, then the same concat
      const Shape& as = sh(n.in[0]);
      const Shape& bs = sh(n.in[1]);
      cpu::upsample2_forward(int(as[0]), int(as[1]), int(as[2]), int(as[3]), in(0), ws);
      cpu::concat_forward(bs[0] * bs[1] * bs[2], int(as[3]), int(bs[3]), ws, in(1), out(0));
      break;
    }
    case OpKind::Loss: {
      const int64_t m = count(n.in[0]);
      double l = 0;
      if (n.loss.kind != LossKind::Dice) l += cpu::bce_with_logits_forward(m, in(0), in(1));
      if (n.loss.kind != LossKind::BCE) l += cpu::dice_loss_forward(m, in(0), in(1));
      *out(0) = float(l);
      break;
    }
    case OpKind::Conv2dBwdData:
      cpu::conv2d_backward_data(n.conv.shape, in(0), in(1), out(0), ws);
      break;
    case OpKind::Conv2dBwdFilter:
      cpu::conv2d_backward_filter(n.conv.shape, in(0), in(1), out(0), out(1), ws);
      break;
    case OpKind::ConvSumBwdData: {  // per branch dy, w: as the unfused backward-data nodes and adds
      const int64_t cnt = count(n.out[0]);
      float* branch = ws;
      float* conv_ws = ws + bn_relu_staging_floats(g_, n, n.out[0]);
      for (size_t b = 0; b < n.branches.shapes.size(); ++b) {
        float* dx = b == 0 ? out(0) : branch;
        cpu::conv2d_backward_data(n.branches.shapes[b], in(2 * b), in(2 * b + 1), dx, conv_ws);
        if (b > 0) cpu::add(cnt, out(0), branch, out(0));
      }
      break;
    }
    case OpKind::BatchNormBwd: {
      const Shape& xs = sh(n.in[0]);
      const int c = int(xs.back());
      cpu::batchnorm_backward(numel(xs) / c, c, in(0), in(1), in(2), in(3), in(4), out(0), out(1), out(2));
      break;
    }
    case OpKind::ReluBwd: cpu::relu_backward(count(n.in[0]), in(0), in(1), out(0)); break;
    case OpKind::SigmoidBwd: cpu::sigmoid_backward(count(n.in[0]), in(0), in(1), out(0)); break;
    case OpKind::ScaleChannelsBwd: {
      const Shape& xs = sh(n.in[0]);
      cpu::scale_channels_backward_scale(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), in(1), out(0));
      break;
    }
    case OpKind::GlobalAvgPoolBwd: {
      const Shape& xs = sh(n.out[0]);
      cpu::global_avg_pool_backward(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), out(0));
      break;
    }
    case OpKind::LinearBwd: {
      const Shape& xs = sh(n.in[0]);
      const Shape& ws_ = sh(n.in[1]);
      cpu::linear_backward(int(xs[0]), int(ws_[1]), int(ws_[0]), in(0), in(1), in(2), out(0), out(1));
      break;
    }
    case OpKind::MaxPool2Bwd: {  // in: argmax, dy   out: dx
      const Shape& xs = sh(n.out[0]);
      cpu::maxpool2_backward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), bytes(n.in[0]), in(1), out(0));
      break;
    }
    case OpKind::Upsample2Bwd: {
      const Shape& xs = sh(n.out[0]);
      cpu::upsample2_backward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), in(0), out(0));
      break;
    }
    case OpKind::ConcatBwd: {
      const Shape& as = sh(n.out[0]);
      const Shape& bs = sh(n.out[1]);
      cpu::concat_backward(as[0] * as[1] * as[2], int(as[3]), int(bs[3]), in(0), out(0), out(1));
      break;
    }
    case OpKind::UpsampleConcatBwd: {  // dy -> da, db: the concat's backward into the workspace, then the upsample's
      const Shape& as = sh(n.out[0]);
      const Shape& bs = sh(n.out[1]);
      cpu::concat_backward(bs[0] * bs[1] * bs[2], int(as[3]), int(bs[3]), in(0), ws, out(1));
      cpu::upsample2_backward(int(as[0]), int(as[1]), int(as[2]), int(as[3]), ws, out(0));
      break;
    }
    case OpKind::LossBwd: {
      const int64_t m = count(n.in[0]);
      float* dx = out(0);
      if (n.loss.kind == LossKind::BCE) {
        cpu::bce_with_logits_backward(m, in(0), in(1), 1.0, dx);
      } else if (n.loss.kind == LossKind::Dice) {
        cpu::dice_loss_backward(m, in(0), in(1), 1.0, dx);
      } else {
        // BCE + Dice: the Dice part goes to the workspace, then is added.
        cpu::bce_with_logits_backward(m, in(0), in(1), 1.0, dx);
        cpu::dice_loss_backward(m, in(0), in(1), 1.0, ws);
        for (int64_t i = 0; i < m; ++i) dx[i] += ws[i];
      }
      break;
    }
    case OpKind::ClipGradNorm: {
      double ss = 0;
      for (size_t i = 0; i < n.in.size(); ++i) ss += cpu::sum_squares(count(n.in[i]), in(i));
      last_grad_norm_ = std::sqrt(ss);
      // A non-finite loss or norm skips the updates that follow (Executor::run).
      skip_update_ = !std::isfinite(ss) || (loss_tensor_ >= 0 && !std::isfinite(*data(loss_tensor_)));
      const double limit = opt ? opt->clip_grad_norm : 0.0;
      if (limit > 0 && last_grad_norm_ > limit) {
        const double f = limit / (last_grad_norm_ + 1e-6);
        for (size_t i = 0; i < n.in.size(); ++i) cpu::scale_inplace(count(n.in[i]), in(i), f);
      }
      break;
    }
    case OpKind::OptimizerUpdate: {
      if (!opt) fail("graph has optimiser updates but run() got no optimiser step");
      if (skip_update_) break;
      const int64_t m = count(n.in[0]);
      float* w = in(0);
      const float* gr = in(1);
      switch (n.opt.kind) {
        case OptimizerKind::SGD: cpu::sgd_update(m, w, gr, in(2), *opt); break;
        case OptimizerKind::Adam: cpu::adam_update(m, w, gr, in(2), in(3), *opt); break;
        case OptimizerKind::AdamW: cpu::adamw_update(m, w, gr, in(2), in(3), *opt); break;
        case OptimizerKind::Nadam: cpu::nadam_update(m, w, gr, in(2), in(3), *opt); break;
      }
      break;
    }
  }
}

// ---- the device factory ----

KernelChoice parse_kernel_choice(const std::string& name) {
  if (name == "default") return KernelChoice::Default;
  if (name == "cudnn") return KernelChoice::Cudnn;
  if (name == "handwritten") return KernelChoice::Handwritten;
  if (name == "auto") return KernelChoice::Auto;
  fail("kernels must be default, cudnn, handwritten or auto, got '", name, "'");
}

const char* kernel_choice_name(KernelChoice k) {
  switch (k) {
    case KernelChoice::Default: return "default";
    case KernelChoice::Cudnn: return "cudnn";
    case KernelChoice::Handwritten: return "handwritten";
    case KernelChoice::Auto: return "auto";
  }
  return "?";
}

Precision parse_precision(const std::string& name) {
  if (name == "fp32") return Precision::F32;
  if (name == "bf16") return Precision::Bf16;
  fail("precision must be fp32 or bf16, got '", name, "'");
}

const char* precision_name(Precision p) { return p == Precision::F32 ? "fp32" : "bf16"; }

std::string resolve_device(const std::string& device) {
  if (device != "auto") return device;
  return kHaveCudaExecutor && cuda_executor_device_count() > 0 ? "cuda:0" : "cpu";
}

DeviceSpec parse_device(const std::string& name) {
  const std::string device = resolve_device(name);
  DeviceSpec d;
  if (device == "cpu") return d;
  if (device == "cuda") {
    d.cuda = true;
    return d;
  }
  if (device.rfind("cuda:", 0) == 0 && device.size() > 5 && device.size() <= 8) {
    const std::string num = device.substr(5);
    bool digits = true;
    for (char c : num) digits = digits && c >= '0' && c <= '9';
    if (digits) {
      d.cuda = true;
      d.index = std::atoi(num.c_str());
      return d;
    }
  }
  fail("device must be auto, cpu, cuda or cuda:N, got '", device, "'");
}

std::unique_ptr<Executor> make_executor(const Graph& g, ParamStore& store, const std::string& device,
                                        const ExecOptions& options) {
  const DeviceSpec d = parse_device(device);
  if (!d.cuda) {
    if (options.precision != Precision::F32)
      fail("precision ", precision_name(options.precision), ": the CPU backend runs fp32 only (use --device cuda)");
    return std::make_unique<CpuExecutor>(g, store, options.plan_mode);
  }
  return make_cuda_executor(g, store, d.index, options);
}

}  // namespace rpp
