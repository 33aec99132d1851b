// runtime/autodiff.cpp — walks forward nodes in reverse and emits one backward rule per op.
#include "runtime/autodiff.h"

#include <map>

#include "runtime/fusion.h"

namespace rpp {

std::vector<std::string> optimizer_state_names(OptimizerKind opt) {
  if (opt == OptimizerKind::SGD) return {"momentum_buffer"};
  return {"exp_avg", "exp_avg_sq"};
}

namespace {

class Autodiff {
 public:
  explicit Autodiff(Graph& g) : g_(g) {}

  std::vector<int> run(int loss) {
    RPP_CHECK(g_.tensor(loss).shape.empty(), "autodiff needs a scalar loss");
    const int nforward = g_.num_nodes();
    // Seed: the loss node's backward produces d(logits) directly (dloss = 1).
    for (int i = nforward - 1; i >= 0; --i) {
      const Node n = g_.node(i);  // copy: add_node may reallocate
      if (n.op == OpKind::Loss) {
        if (n.out[0] != loss) continue;
        if (!needs(n.in[0])) continue;
        int dx = grad_tensor(n.in[0]);
        Node b = make(OpKind::LossBwd, {n.in[0], n.in[1]}, {dx}, n.name);
        b.loss = n.loss;
        b.flops = n.flops;
        g_.add_node(std::move(b));
        continue;
      }
      if (!is_forward(n.op) || n.out.empty() || !has_grad(n.out[0])) continue;
      backward(n);
    }
    std::vector<int> grads;
    for (int p : g_.of_kind(TensorKind::Param)) {
      auto it = grad_.find(p);
      if (it == grad_.end()) fail("parameter ", g_.tensor(p).name, " does not influence the loss");
      grads.push_back(it->second);
    }
    return grads;
  }

 private:
  bool needs(int id) const { return id >= 0 && g_.tensor(id).requires_grad; }
  bool has_grad(int id) const { return grad_.count(id) != 0; }

  static Node make(OpKind k, std::vector<int> in, std::vector<int> out, const std::string& name) {
    Node n{k, std::move(in), std::move(out), name, {}, {}, {}, {}, 0, {}};
    return n;
  }

  // A fresh gradient tensor for x; the caller must then call contribute(x, it).
  int new_grad(int x) {
    TensorInfo t;
    t.name = "grad(" + g_.tensor(x).name + ")";
    t.shape = g_.tensor(x).shape;
    t.kind = TensorKind::Gradient;
    return g_.add_tensor(std::move(t));
  }

  // Records that d(loss)/dx receives the contribution in tensor c; sums with an Add node if
  // x already has a gradient.
  void contribute(int x, int c) {
    auto it = grad_.find(x);
    if (it == grad_.end()) {
      grad_[x] = c;
      return;
    }
    int sum = new_grad(x);
    Node a = make(OpKind::Add, {it->second, c}, {sum}, "grad_sum(" + g_.tensor(x).name + ")");
    a.flops = numel(g_.tensor(x).shape);
    g_.add_node(std::move(a));
    it->second = sum;
  }

  // For ops whose backward writes the gradient tensor itself: allocates and contributes.
  int grad_tensor(int x) {
    int t = new_grad(x);
    contribute(x, t);
    return t;
  }

  // Output slot for an input that may or may not need a gradient: a scratch tensor when not.
  int out_for(int x) {
    if (needs(x)) return new_grad(x);
    TensorInfo t;
    t.name = "unused_grad(" + g_.tensor(x).name + ")";
    t.shape = g_.tensor(x).shape;
    t.kind = TensorKind::Gradient;
    return g_.add_tensor(std::move(t));
  }

  void emit(OpKind k, std::vector<int> in, std::vector<int> outs, const Node& fwd, int64_t flops,
            const std::vector<int>& targets) {
    Node b = make(k, std::move(in), outs, fwd.name);
    b.conv = fwd.conv;
    b.bn = fwd.bn;
    b.flops = flops;
    g_.add_node(std::move(b));
    for (size_t i = 0; i < targets.size(); ++i)
      if (targets[i] >= 0 && needs(targets[i])) contribute(targets[i], outs[i]);
  }

  void backward(const Node& fwd) {
    int dy = grad_.at(fwd.out[0]);
    // A convolution with a residual (fuse_conv_add) passes dy on to it, as the add did.
    const int residual = residual_input(fwd);
    if (residual >= 0 && needs(residual)) contribute(residual, dy);
    Node n = fwd;
    // fuse_conv_pool, fuse_conv_mul: the pool's or the product's backward first, into the
    // convolution's output gradient; then the plain convolution's backward nodes.
    auto conv_out_grad = [&] {
      const cpu::Conv2dShape& s = n.conv.shape;
      TensorInfo t;
      t.name = "grad(" + n.name + ".conv_out)";
      t.shape = {s.n, s.ho(), s.wo(), s.cout};
      t.kind = TensorKind::Gradient;
      return g_.add_tensor(std::move(t));
    };
    if (n.conv.max_pool) {
      RPP_CHECK(n.out.size() > 1, "convolution ", n.name,
                " with a max pool has no argmax output (built for inference?)");
      n.conv.max_pool = false;
      const int full = conv_out_grad();
      emit(OpKind::MaxPool2Bwd, {n.out[1], dy}, {full}, n, numel(g_.tensor(full).shape), {});
      dy = full;
    }
    if (n.conv.multiply) {  // out[0] = c * m, c = out[1]: dc = dy * m, dm = dy * c (as the Mul's backward)
      const int m = multiplier_input(n);
      RPP_CHECK(n.out.size() > 1, "convolution ", n.name, " with a multiplier keeps no output (built for inference?)");
      const int c = n.out[1];
      n.conv.multiply = false;
      const int dc = conv_out_grad();
      const int64_t cnt = numel(g_.tensor(c).shape);
      emit(OpKind::Mul, {dy, m}, {dc}, n, cnt, {});
      if (needs(m)) emit(OpKind::Mul, {dy, c}, {new_grad(m)}, n, cnt, {m});
      dy = dc;
    }
    switch (n.op) {
      case OpKind::Conv2d: {
        // The filter gradient first, so that dy dies at the backward-data node, where dx is born.
        const int x = n.in[0], w = n.in[1], b = n.in[2];
        if (needs(w) || needs(b))
          emit(OpKind::Conv2dBwdFilter, {x, dy}, {out_for(w), out_for(b)}, n, n.flops, {w, b});
        if (needs(x)) emit(OpKind::Conv2dBwdData, {dy, w}, {new_grad(x)}, n, n.flops, {x});
        break;
      }
      case OpKind::BatchNorm: {
        RPP_CHECK(n.bn.training, "backward through an eval-mode batchnorm at ", n.name);
        const int x = n.in[0], gamma = n.in[1], beta = n.in[2];
        emit(OpKind::BatchNormBwd, {x, dy, gamma, n.out[1], n.out[2]},
             {out_for(x), out_for(gamma), out_for(beta)}, n, 2 * n.flops, {x, gamma, beta});
        break;
      }
      case OpKind::BnReluConv2d: {
        RPP_CHECK(n.bn.training, "backward through an eval-mode batchnorm at ", n.name);
        // in: x, gamma, beta, mean, invstd, w, b
        const int x = n.in[0], gamma = n.in[1], beta = n.in[2], mean = n.in[3], invstd = n.in[4];
        const int w = n.in[5], b = n.in[6];
        if (needs(w) || needs(b))  // first, as for Conv2d
          emit(OpKind::BnReluConv2dBwdFilter, {x, gamma, beta, mean, invstd, dy}, {out_for(w), out_for(b)},
               n, n.flops, {w, b});
        if (needs(x) || needs(gamma) || needs(beta)) {
          // d(bn output): conv dgrad with the ReLU mask, then the BN backward proper.
          TensorInfo t;
          t.name = "grad(" + n.name + ".bn_relu_in)";
          t.shape = g_.tensor(x).shape;
          t.kind = TensorKind::Gradient;
          const int dbn = g_.add_tensor(std::move(t));
          emit(OpKind::BnReluConv2dBwdData, {dy, w, x, gamma, beta, mean, invstd}, {dbn}, n,
               n.flops, {});
          emit(OpKind::BatchNormBwd, {x, dbn, gamma, mean, invstd},
               {out_for(x), out_for(gamma), out_for(beta)}, n, 2 * 4 * numel(g_.tensor(x).shape),
               {x, gamma, beta});
        }
        break;
      }
      case OpKind::Relu:
        if (needs(n.in[0])) emit(OpKind::ReluBwd, {n.out[0], dy}, {new_grad(n.in[0])}, n, n.flops, {n.in[0]});
        break;
      case OpKind::Add:
        // d(a) = d(b) = dy: the same tensor is shared, nothing to compute.
        for (int x : n.in)
          if (needs(x)) contribute(x, dy);
        break;
      case OpKind::Mul: {
        const int a = n.in[0], b = n.in[1];
        if (needs(a)) emit(OpKind::Mul, {dy, b}, {new_grad(a)}, n, n.flops, {a});
        if (needs(b)) emit(OpKind::Mul, {dy, a}, {new_grad(b)}, n, n.flops, {b});
        break;
      }
      case OpKind::ScaleChannels: {
        const int x = n.in[0], s = n.in[1];
        if (needs(x)) emit(OpKind::ScaleChannels, {dy, s}, {new_grad(x)}, n, n.flops, {x});
        if (needs(s)) emit(OpKind::ScaleChannelsBwd, {x, dy}, {new_grad(s)}, n, 2 * n.flops, {s});
        break;
      }
      case OpKind::GlobalAvgPool:
        if (needs(n.in[0])) emit(OpKind::GlobalAvgPoolBwd, {dy}, {new_grad(n.in[0])}, n, n.flops, {n.in[0]});
        break;
      case OpKind::Linear: {
        const int x = n.in[0], w = n.in[1];
        emit(OpKind::LinearBwd, {x, w, dy}, {out_for(x), out_for(w)}, n, 2 * n.flops, {x, w});
        break;
      }
      case OpKind::BnApplySum:  // per branch: x, gamma, beta, mean, invstd; dy of every BN output is dy
        for (size_t i = 0; i + 4 < n.in.size(); i += 5) {
          const int x = n.in[i], gamma = n.in[i + 1], beta = n.in[i + 2];
          Node bn = n;  // named after the branch's BN (its gamma is "<bn>.weight")
          const std::string& gn = g_.tensor(gamma).name;
          bn.name = gn.substr(0, gn.rfind('.'));
          emit(OpKind::BatchNormBwd, {x, dy, gamma, n.in[i + 3], n.in[i + 4]},
               {out_for(x), out_for(gamma), out_for(beta)}, bn, 2 * 4 * numel(g_.tensor(x).shape), {x, gamma, beta});
        }
        break;
      case OpKind::SeExcite: {  // in: p, w1, w2   out: s
        const int p = n.in[0], w1 = n.in[1], w2 = n.in[2];
        emit(OpKind::SeExciteBwd, {p, w1, w2, n.out[0], dy}, {out_for(p), out_for(w1), out_for(w2)}, n, 2 * n.flops,
             {p, w1, w2});
        break;
      }
      case OpKind::Sigmoid:
        if (needs(n.in[0])) emit(OpKind::SigmoidBwd, {n.out[0], dy}, {new_grad(n.in[0])}, n, n.flops, {n.in[0]});
        break;
      case OpKind::MaxPool2:
        if (!needs(n.in[0])) break;
        RPP_CHECK(n.out.size() > 1, "max pool ", n.name, " has no argmax output (built for inference?)");
        emit(OpKind::MaxPool2Bwd, {n.out[1], dy}, {new_grad(n.in[0])}, n, n.flops, {n.in[0]});
        break;
      case OpKind::Upsample2:
        if (needs(n.in[0]))
          emit(OpKind::Upsample2Bwd, {dy}, {new_grad(n.in[0])}, n, numel(g_.tensor(dy).shape), {n.in[0]});
        break;
      case OpKind::Concat: {
        const int a = n.in[0], b = n.in[1];
        emit(OpKind::ConcatBwd, {dy}, {out_for(a), out_for(b)}, n, 0, {a, b});
        break;
      }
      case OpKind::UpsampleConcat: {  // fuse_upsample_concat
        const int a = n.in[0], b = n.in[1];
        emit(OpKind::UpsampleConcatBwd, {dy}, {out_for(a), out_for(b)}, n, 4 * numel(g_.tensor(a).shape), {a, b});
        break;
      }
      default:
        fail("autodiff: no backward rule for ", op_name(n.op), " at ", n.name);
    }
  }

  Graph& g_;
  std::map<int, int> grad_;  // tensor -> tensor holding d(loss)/d(tensor) so far
};

}  // namespace

std::vector<int> append_backward(Graph& g, int loss, const BackwardOptions& options) {
  std::vector<int> grads = Autodiff(g).run(loss);
  fuse_aspp_backward_data(g);  // the fused ASPP's backward half (a no-op for unfused graphs)
  if (options.recompute) recompute_for_backward(g);
  if (options.sink) sink_backward_nodes(g);
  if (options.views) view_upsample_concats(g);
  return grads;
}

void append_optimizer(Graph& g, const std::vector<int>& grads, OptimizerKind opt) {
  const std::vector<int> params = g.of_kind(TensorKind::Param);
  RPP_CHECK(params.size() == grads.size(), "one gradient per parameter");
  for (size_t i = 0; i < grads.size(); ++i)
    for (size_t j = i + 1; j < grads.size(); ++j)
      RPP_CHECK(grads[i] != grads[j], "parameters ", g.tensor(params[i]).name, " and ", g.tensor(params[j]).name,
                " share one gradient tensor; gradient clipping would scale it twice");
  Node clip{OpKind::ClipGradNorm, grads, {}, "clip_grad_norm", {}, {}, {}, {}, 0, {}};
  for (int t : grads) clip.flops += 2 * numel(g.tensor(t).shape);
  g.add_node(std::move(clip));
  for (size_t i = 0; i < params.size(); ++i) {
    const int p = params[i];
    Node u{OpKind::OptimizerUpdate, {p, grads[i]}, {}, g.tensor(p).name, {}, {}, {}, {}, 0, {}};
    u.opt.kind = opt;
    for (const std::string& s : optimizer_state_names(opt)) {
      TensorInfo t;
      t.name = g.tensor(p).name + "." + s;
      t.shape = g.tensor(p).shape;
      t.kind = TensorKind::OptState;
      u.in.push_back(g.add_tensor(std::move(t)));
    }
    u.flops = 10 * numel(g.tensor(p).shape);
    g.add_node(std::move(u));
  }
}

void append_backward_and_update(Graph& g, int loss, OptimizerKind opt) {
  append_optimizer(g, append_backward(g, loss), opt);
}

}  // namespace rpp
