// runtime/fusion.cpp — the graph rewrites of runtime/fusion.h: BN -> ReLU -> Conv, the SE MLP, the
// conv-BN sum (ASPP) and the other fusions, the backward's memory passes (recompute, sink) and the
// bf16 marking of activations.
#include "runtime/fusion.h"

#include <algorithm>

namespace rpp {

namespace {
// Per tensor: the nodes that read it and the node that writes it (-1 for none).
struct Uses {
  std::vector<std::vector<int>> readers;
  std::vector<int> producer;
};

Uses uses_of(const Graph& g) {
  Uses u;
  u.readers.resize(size_t(g.num_tensors()));
  u.producer.assign(size_t(g.num_tensors()), -1);
  for (int i = 0; i < g.num_nodes(); ++i) {
    for (int t : g.node(i).in)
      if (t >= 0) u.readers[size_t(t)].push_back(i);
    for (int t : g.node(i).out)
      if (t >= 0) u.producer[size_t(t)] = i;
  }
  return u;
}

void require_forward(const Graph& g) {
  for (const Node& n : g.nodes())
    RPP_CHECK(is_forward(n.op), "fusion runs on forward graphs; node ", n.name, " is ", op_name(n.op));
}

// g's nodes become `nodes` (the rewritten list, same length) without those marked in drop.
void replace_nodes(Graph& g, std::vector<Node> nodes, const std::vector<char>& drop) {
  std::vector<Node> kept;
  for (size_t i = 0; i < nodes.size(); ++i)
    if (!drop[i]) kept.push_back(std::move(nodes[i]));
  g.set_nodes(std::move(kept));
}
}  // namespace

FusionReport fuse_bn_relu_conv(Graph& g) {
  require_forward(g);
  const int nn = g.num_nodes();
  // Readers of every tensor, by node index.
  std::vector<std::vector<int>> readers(size_t(g.num_tensors()));
  for (int i = 0; i < nn; ++i)
    for (int t : g.node(i).in)
      if (t >= 0) readers[size_t(t)].push_back(i);
  auto only_reader = [&](int t) { return readers[size_t(t)].size() == 1 ? readers[size_t(t)][0] : -1; };

  std::vector<char> drop(size_t(nn), 0);
  std::vector<Node> nodes = g.nodes();
  FusionReport report;
  for (int i = 0; i < nn; ++i) {
    const Node bn = g.node(i);
    if (bn.op != OpKind::BatchNorm || g.tensor(bn.out[0]).is_output) continue;
    const int r = only_reader(bn.out[0]);
    if (r < 0 || g.node(r).op != OpKind::Relu) continue;
    const Node& relu = g.node(r);
    if (g.tensor(relu.out[0]).is_output) continue;
    const int c = only_reader(relu.out[0]);
    if (c < 0 || g.node(c).op != OpKind::Conv2d || g.node(c).in[0] != relu.out[0]) continue;
    const Node& conv = g.node(c);

    const int x = bn.in[0];
    const int64_t ch = g.tensor(x).shape.back();
    Node stats = bn;
    stats.op = OpKind::BatchNormStats;
    stats.in = {x, bn.in[3], bn.in[4]};
    if (bn.in.size() > 5) stats.in.push_back(bn.in[5]);
    if (bn.bn.training) {
      stats.out = {bn.out[1], bn.out[2]};  // the BN's own save_mean, save_invstd
    } else {
      auto small = [&](const std::string& what) {
        TensorInfo t;
        t.name = bn.name + "." + what;
        t.shape = {ch};
        t.kind = TensorKind::Activation;
        return g.add_tensor(std::move(t));
      };
      stats.out = {small("eval_mean"), small("eval_invstd")};
    }
    stats.flops = bn.bn.training ? 3 * numel(g.tensor(x).shape) : 2 * ch;

    Node fused = conv;
    fused.op = OpKind::BnReluConv2d;
    fused.in = {x, bn.in[1], bn.in[2], stats.out[0], stats.out[1], conv.in[1], conv.in[2]};
    fused.bn = bn.bn;
    fused.flops = conv.flops + 3 * numel(g.tensor(x).shape);

    nodes[size_t(i)] = std::move(stats);
    nodes[size_t(c)] = std::move(fused);
    drop[size_t(r)] = 1;
    ++report.bn_relu_conv;
    report.names.push_back(bn.name + " -> " + conv.name);
  }
  replace_nodes(g, std::move(nodes), drop);
  return report;
}

namespace {

// The node that produces t, when t is an intermediate (not a graph output) whose one reader is
// `reader`; else -1.
int private_producer(const Graph& g, const Uses& u, int t, int reader) {
  if (t < 0 || g.tensor(t).is_output || u.readers[size_t(t)].size() != 1 || u.readers[size_t(t)][0] != reader)
    return -1;
  return u.producer[size_t(t)];
}

// The producers of the terms of the left-deep sum ((t1 + t2) + ...) + tk whose last add is node
// `top`, left to right, when term(t, reader) accepts every term (it returns the term's producer,
// or -1) and every partial sum has only its add as reader; the chain's adds go to *adds. Empty
// when `top` is not the last add of such a chain (or feeds a further add of one as its left term).
template <class Term>
std::vector<int> sum_chain(const Graph& g, const Uses& u, int top, Term term, std::vector<int>* adds) {
  adds->clear();
  if (g.node(top).op != OpKind::Add) return {};
  const int out = g.node(top).out[0];
  if (u.readers[size_t(out)].size() == 1 && !g.tensor(out).is_output) {
    const Node& r = g.node(u.readers[size_t(out)][0]);
    if (r.op == OpKind::Add && r.in[0] == out) return {};  // not the last add
  }
  std::vector<int> terms;
  for (int a = top;;) {
    const Node& add = g.node(a);
    adds->push_back(a);
    const int right = term(add.in[1], a);
    if (right < 0) return {};
    terms.push_back(right);
    const int left = term(add.in[0], a);
    if (left >= 0) {
      terms.push_back(left);
      break;
    }
    a = private_producer(g, u, add.in[0], a);
    if (a < 0 || g.node(a).op != OpKind::Add) return {};
  }
  std::reverse(terms.begin(), terms.end());
  return terms;
}

// sum_chain over BatchNorm terms (training or eval mode, as asked), each read only by its add.
std::vector<int> bn_sum_chain(const Graph& g, const Uses& u, int top, bool training, std::vector<int>* adds) {
  auto term = [&](int t, int reader) {
    const int b = private_producer(g, u, t, reader);
    const bool ok = b >= 0 && g.node(b).op == OpKind::BatchNorm && g.node(b).bn.training == training &&
                    g.node(b).in.size() >= 5 && g.node(b).out.size() == (training ? 3u : 1u);
    return ok ? b : -1;
  };
  return sum_chain(g, u, top, term, adds);
}

// Whether two branch convolutions differ only in padding and dilation.
bool same_but_padding(const cpu::Conv2dShape& s, const cpu::Conv2dShape& s0) {
  return s.n == s0.n && s.h == s0.h && s.w == s0.w && s.cin == s0.cin && s.cout == s0.cout && s.kh == s0.kh &&
         s.kw == s0.kw && s.stride == s0.stride && s.ho() == s0.ho() && s.wo() == s0.wo();
}

}  // namespace

namespace {
// Runs `rewrite(top, bns, adds, nodes, drop)` on every BN sum chain (bn_sum_chain) of 2 to 4 terms
// whose BNs are in the given mode; it rewrites `nodes` and marks `drop`, returning whether it
// fused. Returns the names of the fused sums.
template <class F>
std::vector<std::string> rewrite_bn_sums(Graph& g, bool training, F rewrite) {
  require_forward(g);
  const int nn = g.num_nodes();
  const Uses u = uses_of(g);
  std::vector<char> drop(size_t(nn), 0);
  std::vector<Node> nodes = g.nodes();
  std::vector<std::string> names;
  std::vector<int> adds;
  for (int top = 0; top < nn; ++top) {
    const std::vector<int> bns = bn_sum_chain(g, u, top, training, &adds);
    if (bns.size() < 2 || bns.size() > 4 || !rewrite(u, top, bns, adds, nodes, drop)) continue;
    for (int i : adds)
      if (i != top) drop[size_t(i)] = 1;
    names.push_back(g.node(top).name + " (" + std::to_string(bns.size()) + " branches)");
  }
  replace_nodes(g, std::move(nodes), drop);
  return names;
}

int64_t flops_of(const Graph& g, const std::vector<int>& ids) {
  int64_t f = 0;
  for (int i : ids) f += g.node(i).flops;
  return f;
}
}  // namespace

std::vector<std::string> fuse_conv_bn_sum(Graph& g) {
  return rewrite_bn_sums(g, /*training=*/false, [&](const Uses& u, int top, const std::vector<int>& bns,
                                                    const std::vector<int>& adds, std::vector<Node>& nodes,
                                                    std::vector<char>& drop) {
    // Each term a biased conv of the same x, read only by its BN.
    std::vector<int> convs;
    for (int b : bns) {
      const int c = private_producer(g, u, g.node(b).in[0], b);
      if (c < 0 || g.node(c).op != OpKind::Conv2d || g.node(c).conv.max_pool || g.node(c).in.size() < 3 ||
          g.node(c).in[2] < 0)
        return false;
      convs.push_back(c);
    }
    const Node& conv0 = g.node(convs[0]);
    const double eps = g.node(bns[0]).bn.eps;
    for (size_t i = 0; i < bns.size(); ++i) {
      const Node& c = g.node(convs[i]);
      if (c.in[0] != conv0.in[0] || !same_but_padding(c.conv.shape, conv0.conv.shape) ||
          g.node(bns[i]).bn.eps != eps)
        return false;
    }
    Node fused = g.node(top);
    fused.op = OpKind::ConvBnSum;
    fused.in = {conv0.in[0]};
    fused.conv = conv0.conv;
    fused.bn = g.node(bns[0]).bn;
    fused.branches.shapes.clear();
    fused.flops = flops_of(g, convs) + flops_of(g, bns) + flops_of(g, adds);
    for (size_t i = 0; i < bns.size(); ++i) {
      const Node& c = g.node(convs[i]);
      const Node& b = g.node(bns[i]);
      fused.in.insert(fused.in.end(), {c.in[1], c.in[2], b.in[1], b.in[2], b.in[3], b.in[4]});
      fused.branches.shapes.push_back(c.conv.shape);
      drop[size_t(convs[i])] = drop[size_t(bns[i])] = 1;
    }
    nodes[size_t(top)] = std::move(fused);
    return true;
  });
}

namespace {

// The passes that fold a private producer into the node reading it: for each node i in order,
// rewrite(u, i, drop, fused) returns the producer it absorbs (not yet dropped) after filling
// `fused`, which takes node i's place, or -1. Returns the rewritten nodes' names.
template <class Rewrite>
std::vector<std::string> fuse_producer_into_reader(Graph& g, Rewrite rewrite) {
  require_forward(g);
  const Uses u = uses_of(g);
  const int nn = g.num_nodes();
  std::vector<Node> nodes = g.nodes();
  std::vector<char> drop(size_t(nn), 0);
  std::vector<std::string> names;
  for (int i = 0; i < nn; ++i) {
    Node fused;
    const int p = rewrite(u, i, drop, fused);
    if (p < 0) continue;
    nodes[size_t(i)] = std::move(fused);
    drop[size_t(p)] = 1;
    names.push_back(g.node(i).name);
  }
  replace_nodes(g, std::move(nodes), drop);
  return names;
}

// A forward convolution node that takes no residual, multiplier or pool yet (its inputs fill
// the slots before the residual's), with one output.
bool plain_conv(const Node& n) {
  const size_t slot = residual_slot(n.op);
  return slot > 0 && n.in.size() == slot && n.out.size() == 1 && !n.conv.max_pool && !n.conv.multiply;
}

}  // namespace

namespace {
// fuse_conv_add and fuse_conv_mul: folds a binary node i of kind `op` (distinct operands) into the
// convolution that privately produces one of its operands (the first side that qualifies: a
// plain convolution not yet absorbed, the other operand of the same shape and dtype), which
// takes that other operand in its residual slot and the node's place (every input of the
// convolution is ready there). `finish` completes the fused node; returns the absorbed
// convolution, or -1.
template <class Finish>
int fold_into_conv_operand(const Graph& g, const Uses& u, int i, const std::vector<char>& drop, OpKind op,
                           Node& fused, Finish finish) {
  const Node& n = g.node(i);
  if (n.op != op || n.in.size() != 2 || n.in[0] == n.in[1]) return -1;
  for (int side = 0; side < 2; ++side) {
    const int t = n.in[size_t(side)], r = n.in[size_t(1 - side)];
    const int p = private_producer(g, u, t, i);
    if (p < 0 || drop[size_t(p)] || !plain_conv(g.node(p))) continue;
    if (g.tensor(r).shape != g.tensor(t).shape || g.tensor(r).dtype != g.tensor(t).dtype) continue;
    fused = g.node(p);
    fused.in.push_back(r);
    fused.out = n.out;
    fused.flops += n.flops;
    finish(t);
    return p;
  }
  return -1;
}
}  // namespace

std::vector<std::string> fuse_conv_add(Graph& g) {
  return fuse_producer_into_reader(g, [&](const Uses& u, int i, const std::vector<char>& drop, Node& fused) {
    return fold_into_conv_operand(g, u, i, drop, OpKind::Add, fused, [](int) {});
  });
}

std::vector<std::string> fuse_conv_mul(Graph& g) {
  return fuse_producer_into_reader(g, [&](const Uses& u, int i, const std::vector<char>& drop, Node& fused) {
    return fold_into_conv_operand(g, u, i, drop, OpKind::Mul, fused, [&](int conv_out) {
      fused.conv.multiply = true;
      // Training: the product's backward reads the convolution's output.
      if (g.tensor(conv_out).requires_grad) fused.out.push_back(conv_out);
    });
  });
}

std::vector<std::string> fuse_conv_pool(Graph& g) {
  return fuse_producer_into_reader(g, [&](const Uses& u, int i, const std::vector<char>&, Node& fused) {
    const Node& pool = g.node(i);
    if (pool.op != OpKind::MaxPool2) return -1;
    const int p = private_producer(g, u, pool.in[0], i);
    if (p < 0 || !plain_conv(g.node(p))) return -1;
    fused = g.node(p);  // at the pool's place: every input of the conv is ready there
    fused.conv.max_pool = true;
    fused.out = pool.out;
    fused.flops += pool.flops;
    return p;
  });
}

std::vector<std::string> fuse_upsample_concat(Graph& g) {
  return fuse_producer_into_reader(g, [&](const Uses& u, int i, const std::vector<char>&, Node& fused) {
    const Node& cat = g.node(i);
    if (cat.op != OpKind::Concat || cat.in.size() != 2 || cat.in[0] == cat.in[1]) return -1;
    const int p = private_producer(g, u, cat.in[0], i);
    if (p < 0 || g.node(p).op != OpKind::Upsample2) return -1;
    fused = cat;
    fused.op = OpKind::UpsampleConcat;
    fused.in[0] = g.node(p).in[0];
    fused.flops += g.node(p).flops;
    return p;
  });
}

std::vector<std::string> view_upsample_concats(Graph& g) {
  const Uses u = uses_of(g);
  std::vector<std::string> views;
  std::vector<Node> nodes = g.nodes();
  for (size_t i = 0; i < nodes.size(); ++i) {
    Node& n = nodes[i];
    if (n.op != OpKind::UpsampleConcat || n.view || n.out.size() != 1) continue;
    const int y = n.out[0];
    const TensorInfo& yi = g.tensor(y);
    const std::vector<int>& readers = u.readers[size_t(y)];
    if (yi.kind != TensorKind::Activation || yi.is_output || readers.empty()) continue;
    bool ok = true;
    for (int r : readers) {
      const Node& rn = g.node(r);
      const bool op_ok = rn.op == OpKind::BatchNormStats || rn.op == OpKind::BnReluConv2d || rn.op == OpKind::Conv2d;
      ok = ok && op_ok && std::count(rn.in.begin(), rn.in.end(), y) == 1 && rn.in[0] == y;
    }
    if (!ok) continue;
    n.view = true;
    views.push_back(n.name);
  }
  g.set_nodes(std::move(nodes));
  return views;
}

std::vector<std::string> fuse_bn_apply_sum(Graph& g) {
  return rewrite_bn_sums(g, /*training=*/true, [&](const Uses&, int top, const std::vector<int>& bns,
                                                   const std::vector<int>& adds, std::vector<Node>& nodes,
                                                   std::vector<char>&) {
    const BNAttrs& a0 = g.node(bns[0]).bn;
    for (int b : bns)
      if (g.node(b).bn.eps != a0.eps || g.node(b).bn.momentum != a0.momentum) return false;
    Node fused = g.node(top);
    fused.op = OpKind::BnApplySum;
    fused.in.clear();
    fused.bn = a0;
    fused.flops = flops_of(g, bns) + flops_of(g, adds);
    for (int i : bns) {
      const Node& bn = g.node(i);
      // The BN keeps its statistics (and running update) as a BatchNormStats node, in place.
      Node stats = bn;
      stats.op = OpKind::BatchNormStats;
      stats.in = {bn.in[0], bn.in[3], bn.in[4]};
      if (bn.in.size() > 5) stats.in.push_back(bn.in[5]);
      stats.out = {bn.out[1], bn.out[2]};
      stats.flops = 3 * numel(g.tensor(bn.in[0]).shape);
      nodes[size_t(i)] = std::move(stats);
      fused.in.insert(fused.in.end(), {bn.in[0], bn.in[1], bn.in[2], bn.out[1], bn.out[2]});
    }
    nodes[size_t(top)] = std::move(fused);
    return true;
  });
}

std::vector<std::string> fuse_aspp_backward_data(Graph& g) {
  const int nn = g.num_nodes();
  const Uses u = uses_of(g);
  // Conv weights of fused training ASPP blocks: the conv's output is a branch of a BnApplySum's
  // sum (through its BatchNormStats, which reads the same tensor).
  std::vector<char> aspp_weight(size_t(g.num_tensors()), 0);
  for (int i = 0; i < nn; ++i) {
    const Node& c = g.node(i);
    if (c.op != OpKind::Conv2d || c.in.size() < 2 || c.in[1] < 0) continue;
    for (int r : u.readers[size_t(c.out[0])])
      if (g.node(r).op == OpKind::BnApplySum) aspp_weight[size_t(c.in[1])] = 1;
  }
  auto term = [&](int t, int reader) {
    const int d = private_producer(g, u, t, reader);
    const bool ok = d >= 0 && g.node(d).op == OpKind::Conv2dBwdData && g.node(d).in.size() == 2 &&
                    g.node(d).in[1] >= 0 && aspp_weight[size_t(g.node(d).in[1])];
    return ok ? d : -1;
  };
  std::vector<char> drop(size_t(nn), 0);
  std::vector<Node> nodes = g.nodes();
  std::vector<std::string> names;
  std::vector<int> adds;
  for (int top = 0; top < nn; ++top) {
    const std::vector<int> terms = sum_chain(g, u, top, term, &adds);
    if (terms.size() < 2 || terms.size() > 4) continue;
    const Node& d0 = g.node(terms[0]);
    bool same = true;
    for (int d : terms) same = same && same_but_padding(g.node(d).conv.shape, d0.conv.shape);
    if (!same) continue;
    // The node is named after the module holding the branches (their names' common prefix up to
    // a '.'): "b1" for b1.c1.0 .. b1.c4.0.
    std::string name = d0.name;
    for (int d : terms) {
      const std::string& o = g.node(d).name;
      size_t k = 0;
      while (k < name.size() && k < o.size() && name[k] == o[k]) ++k;
      name.resize(k);
    }
    const size_t dot = name.rfind('.');
    name = dot == std::string::npos || dot == 0 ? g.node(top).name : name.substr(0, dot);
    Node fused = g.node(top);
    fused.op = OpKind::ConvSumBwdData;
    fused.name = name;
    fused.in.clear();
    fused.conv = d0.conv;
    fused.branches.shapes.clear();
    fused.flops = flops_of(g, terms) + flops_of(g, adds);
    for (int d : terms) {
      fused.in.insert(fused.in.end(), {g.node(d).in[0], g.node(d).in[1]});
      fused.branches.shapes.push_back(g.node(d).conv.shape);
      drop[size_t(d)] = 1;
    }
    for (int a : adds)
      if (a != top) drop[size_t(a)] = 1;
    nodes[size_t(top)] = std::move(fused);
    names.push_back(name + " (" + std::to_string(terms.size()) + " branches)");
  }
  replace_nodes(g, std::move(nodes), drop);
  return names;
}

int fuse_se_excite(Graph& g) {
  require_forward(g);
  const int nn = g.num_nodes();
  const Uses u = uses_of(g);
  const std::vector<std::vector<int>>& readers = u.readers;
  const std::vector<int>& producer = u.producer;
  // The producer of t when t is an intermediate whose one reader is `reader`, reading it as in[0].
  auto feeds = [&](int t, int reader, OpKind want) {
    if (t < 0 || g.tensor(t).is_output || readers[size_t(t)].size() != 1 || readers[size_t(t)][0] != reader) return -1;
    const int p = producer[size_t(t)];
    return p >= 0 && g.node(p).op == want && g.node(reader).in[0] == t ? p : -1;
  };
  std::vector<char> drop(size_t(nn), 0);
  std::vector<Node> nodes = g.nodes();
  int fused = 0;
  for (int sg = 0; sg < nn; ++sg) {
    if (g.node(sg).op != OpKind::Sigmoid) continue;
    const int l2 = feeds(g.node(sg).in[0], sg, OpKind::Linear);
    if (l2 < 0) continue;
    const int rl = feeds(g.node(l2).in[0], l2, OpKind::Relu);
    if (rl < 0) continue;
    const int l1 = feeds(g.node(rl).in[0], rl, OpKind::Linear);
    if (l1 < 0) continue;
    Node f = g.node(sg);
    f.op = OpKind::SeExcite;
    f.in = {g.node(l1).in[0], g.node(l1).in[1], g.node(l2).in[1]};
    f.name = g.node(l1).name.substr(0, g.node(l1).name.rfind(".net"));  // the SE block's scope
    f.flops = g.node(l1).flops + g.node(rl).flops + g.node(l2).flops + g.node(sg).flops;
    nodes[size_t(sg)] = std::move(f);
    drop[size_t(l1)] = drop[size_t(rl)] = drop[size_t(l2)] = 1;
    ++fused;
  }
  replace_nodes(g, std::move(nodes), drop);
  return fused;
}

namespace {
// The index of the loss node (the last forward node of a training graph), or -1.
int loss_node(const Graph& g) {
  for (int i = 0; i < g.num_nodes(); ++i)
    if (g.node(i).op == OpKind::Loss) return i;
  return -1;
}
double bytes_of(const Graph& g, int t) {
  return double(numel(g.tensor(t).shape)) * double(dtype_size(g.tensor(t).dtype));
}
}  // namespace

std::vector<std::string> recompute_for_backward(Graph& g) {
  const int loss = loss_node(g);
  std::vector<std::string> remade;
  if (loss < 0) return remade;
  auto bytes = [&](int t) { return bytes_of(g, t); };
  for (int i = loss - 1; i >= 0; --i) {  // forward nodes keep their places as copies are inserted
    const Node n = g.node(i);
    if (n.op != OpKind::ScaleChannels && n.op != OpKind::UpsampleConcat && n.op != OpKind::Concat &&
        n.op != OpKind::Upsample2)
      continue;
    const int y = n.out[0];
    const TensorInfo& yi = g.tensor(y);
    if (yi.kind != TensorKind::Activation || yi.is_output) continue;
    const Uses u = uses_of(g);
    int first = -1;
    for (int r : u.readers[size_t(y)])
      if (r > loss && (first < 0 || r < first)) first = r;
    if (first < 0) continue;  // backward does not read it
    double cost = 0;          // inputs the copy keeps alive longer
    for (int t : n.in) {
      if (t < 0 || is_persistent(g.tensor(t).kind) || g.tensor(t).is_output) continue;
      const std::vector<int>& rs = u.readers[size_t(t)];
      if (*std::max_element(rs.begin(), rs.end()) < first) cost += bytes(t);
    }
    if (2 * cost >= bytes(y)) continue;
    TensorInfo copy = yi;
    copy.name = "recompute(" + yi.name + ")";
    const int y2 = g.add_tensor(std::move(copy));
    std::vector<Node> nodes = g.nodes();
    for (size_t j = size_t(loss) + 1; j < nodes.size(); ++j)
      for (int& t : nodes[j].in)
        if (t == y) t = y2;
    Node c = n;
    c.name = n.name + ".recompute";
    c.out = {y2};
    nodes.insert(nodes.begin() + first, std::move(c));
    g.set_nodes(std::move(nodes));
    remade.push_back(yi.name);
  }
  return remade;
}

int sink_backward_nodes(Graph& g) {
  const int loss = loss_node(g);
  if (loss < 0) return 0;
  auto bytes = [&](int t) { return bytes_of(g, t); };
  int moved = 0;
  for (int i = g.num_nodes() - 1; i > loss; --i) {
    const Node& n = g.node(i);
    if (n.op == OpKind::ClipGradNorm || n.op == OpKind::OptimizerUpdate || n.out.empty()) continue;
    const Uses u = uses_of(g);
    int first = -1;  // the first reader of any output
    double out_bytes = 0;
    for (int t : n.out) {
      out_bytes += bytes(t);
      for (int r : u.readers[size_t(t)])
        if (first < 0 || r < first) first = r;
    }
    if (first <= i + 1) continue;  // read next, or never (a parameter gradient before the optimiser)
    double in_bytes = 0;
    for (int t : n.in) {
      if (t < 0 || is_persistent(g.tensor(t).kind)) continue;
      const std::vector<int>& rs = u.readers[size_t(t)];
      if (*std::max_element(rs.begin(), rs.end()) == i) in_bytes += bytes(t);
    }
    if (out_bytes <= in_bytes) continue;
    std::vector<Node> nodes = g.nodes();
    Node keep = std::move(nodes[size_t(i)]);
    nodes.erase(nodes.begin() + i);
    nodes.insert(nodes.begin() + (first - 1), std::move(keep));
    g.set_nodes(std::move(nodes));
    ++moved;
  }
  return moved;
}

int store_activations_in_bf16(Graph& g) {
  std::vector<char> keep(size_t(g.num_tensors()), 0);  // read by the loss (the logits): fp32
  for (const Node& n : g.nodes())
    if (n.op == OpKind::Loss || n.op == OpKind::LossBwd)
      for (int t : n.in)
        if (t >= 0) keep[size_t(t)] = 1;
  int marked = 0;
  for (int t = 0; t < g.num_tensors(); ++t) {
    TensorInfo& ti = g.tensor(t);
    if (ti.kind != TensorKind::Activation || ti.is_output || ti.shape.size() != 4 || ti.dtype != DType::F32 ||
        keep[size_t(t)])
      continue;
    ti.dtype = DType::BF16;
    ++marked;
  }
  return marked;
}

}  // namespace rpp
