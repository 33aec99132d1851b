// runtime/fusion.cpp — the graph rewrites of runtime/fusion.h: BN -> ReLU -> Conv, the SE MLP, the
// conv-BN sum (ASPP) and the bf16 marking of activations.
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

std::vector<std::string> fuse_conv_bn_sum(Graph& g) {
  require_forward(g);
  const int nn = g.num_nodes();
  const Uses u = uses_of(g);
  const std::vector<std::vector<int>>& readers = u.readers;
  const std::vector<int>& producer = u.producer;
  // The node that produces t, when t is an intermediate with that one reader.
  auto private_producer = [&](int t, int reader) {
    if (t < 0 || g.tensor(t).is_output || readers[size_t(t)].size() != 1 || readers[size_t(t)][0] != reader) return -1;
    return producer[size_t(t)];
  };
  auto is_add_into_chain = [&](int i) {  // node i's output feeds the next add of a chain as its left term
    const int t = g.node(i).out[0];
    if (readers[size_t(t)].size() != 1 || g.tensor(t).is_output) return false;
    const Node& r = g.node(readers[size_t(t)][0]);
    return r.op == OpKind::Add && r.in[0] == t;
  };
  struct Term { int bn, conv; };
  // A term bn(conv(x)) read only by `reader`: the BN node and the conv node, or {-1, -1}.
  auto term = [&](int t, int reader) -> Term {
    const int b = private_producer(t, reader);
    if (b < 0 || g.node(b).op != OpKind::BatchNorm || g.node(b).bn.training || g.node(b).in.size() < 5) return {-1, -1};
    const int c = private_producer(g.node(b).in[0], b);
    if (c < 0 || g.node(c).op != OpKind::Conv2d || g.node(c).in.size() < 3 || g.node(c).in[2] < 0) return {-1, -1};
    return {b, c};
  };

  std::vector<char> drop(size_t(nn), 0);
  std::vector<Node> nodes = g.nodes();
  std::vector<std::string> names;
  for (int top = 0; top < nn; ++top) {
    if (g.node(top).op != OpKind::Add || is_add_into_chain(top)) continue;
    // Walk the left-deep chain down from its last add, collecting the terms right to left.
    std::vector<Term> terms;
    std::vector<int> adds;
    int a = top;
    bool ok = true;
    for (;;) {
      const Node& add = g.node(a);
      adds.push_back(a);
      const Term right = term(add.in[1], a);
      if (right.bn < 0) { ok = false; break; }
      terms.push_back(right);
      const Term left = term(add.in[0], a);
      if (left.bn >= 0) {
        terms.push_back(left);
        break;
      }
      const int next = private_producer(add.in[0], a);
      if (next < 0 || g.node(next).op != OpKind::Add) { ok = false; break; }
      a = next;
    }
    if (!ok || terms.size() > 4) continue;
    std::reverse(terms.begin(), terms.end());
    const Node& conv0 = g.node(terms[0].conv);
    const cpu::Conv2dShape& s0 = conv0.conv.shape;
    const double eps = g.node(terms[0].bn).bn.eps;
    for (const Term& t : terms) {
      const Node& c = g.node(t.conv);
      const cpu::Conv2dShape& s = c.conv.shape;
      ok = ok && c.in[0] == conv0.in[0] && s.n == s0.n && s.h == s0.h && s.w == s0.w && s.cin == s0.cin &&
           s.cout == s0.cout && s.kh == s0.kh && s.kw == s0.kw && s.stride == s0.stride && s.ho() == s0.ho() &&
           s.wo() == s0.wo() && g.node(t.bn).bn.eps == eps;
    }
    if (!ok) continue;

    Node fused = g.node(top);
    fused.op = OpKind::ConvBnSum;
    fused.in = {conv0.in[0]};
    fused.conv = conv0.conv;
    fused.bn = g.node(terms[0].bn).bn;
    fused.branches.shapes.clear();
    fused.flops = 0;
    for (const Term& t : terms) {
      const Node& c = g.node(t.conv);
      const Node& b = g.node(t.bn);
      fused.in.insert(fused.in.end(), {c.in[1], c.in[2], b.in[1], b.in[2], b.in[3], b.in[4]});
      fused.branches.shapes.push_back(c.conv.shape);
      fused.flops += c.flops + b.flops;
      drop[size_t(t.conv)] = drop[size_t(t.bn)] = 1;
    }
    for (int i : adds) {
      fused.flops += g.node(i).flops;
      if (i != top) drop[size_t(i)] = 1;
    }
    nodes[size_t(top)] = std::move(fused);
    names.push_back(g.node(top).name + " (" + std::to_string(terms.size()) + " branches)");
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

int store_activations_in_bf16(Graph& g) {
  for (const Node& n : g.nodes())
    if (!is_forward(n.op) || n.op == OpKind::Loss)
      fail("bf16 activations: the graph has a ", op_name(n.op), " node (", n.name,
           "); bf16 is available for inference only in this version (train with --precision fp32)");
  int marked = 0;
  for (int t = 0; t < g.num_tensors(); ++t) {
    TensorInfo& ti = g.tensor(t);
    if (ti.kind != TensorKind::Activation || ti.is_output || ti.shape.size() != 4 || ti.dtype != DType::F32) continue;
    ti.dtype = DType::BF16;
    ++marked;
  }
  return marked;
}

}  // namespace rpp
