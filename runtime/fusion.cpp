// runtime/fusion.cpp — the BN -> ReLU -> Conv rewrite of runtime/fusion.h.
#include "runtime/fusion.h"

namespace rpp {

FusionReport fuse_bn_relu_conv(Graph& g) {
  for (const Node& n : g.nodes())
    RPP_CHECK(is_forward(n.op), "fusion runs on forward graphs; node ", n.name, " is ", op_name(n.op));
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
  std::vector<Node> kept;
  for (int i = 0; i < nn; ++i)
    if (!drop[size_t(i)]) kept.push_back(std::move(nodes[size_t(i)]));
  g.set_nodes(std::move(kept));
  return report;
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
