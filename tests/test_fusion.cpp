// tests/test_fusion.cpp — the fusion passes (runtime/fusion.h: BN -> ReLU -> Conv, and the ASPP's
// conv-BN sum in inference): which chains they rewrite, and that the fused graph trains and infers
// to the same bits as the unfused one on the CPU while planning less memory.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/ops.h"
#include "model/inference.h"
#include "model/resunetpp.h"
#include "runtime/autodiff.h"
#include "runtime/executor_cpu.h"
#include "runtime/fusion.h"
#include "runtime/rng.h"
#include "tests/lockstep_training.h"

using namespace rpp;

namespace {

ModelConfig small_model(bool fuse) { return test::small_network(fuse); }

// One ASPP-like branch of a 4-channel input: a biased 3x3 conv (padding = dilation) and its BN,
// named s.0 and s.1.
int aspp_branch(GraphBuilder& b, const std::string& s, int in, int dil) {
  const int c =
      b.conv2d(s + ".0", in, b.param(s + ".0.weight", {3, 3, 4, 4}), b.param(s + ".0.bias", {4}), 1, dil, dil);
  return b.batchnorm(s + ".1", c, b.param(s + ".1.weight", {4}), b.param(s + ".1.bias", {4}),
                     b.buffer(s + ".1.running_mean", {4}), b.buffer(s + ".1.running_var", {4}),
                     b.buffer(s + ".1.num_batches_tracked", {}, DType::I64));
}

int count_ops(const Graph& g, OpKind k) {
  int c = 0;
  for (const Node& n : g.nodes()) c += n.op == k;
  return c;
}

// Random BN statistics and affine parameters, so that eval-mode BN is not the identity and some
// shifts are positive (a fused kernel that pads with relu(shift) instead of 0 would differ).
void randomise_bn(const Graph& g, ParamStore& s, uint64_t seed) {
  Rng r{seed};
  for (int t = 0; t < g.num_tensors(); ++t) {
    const TensorInfo& ti = g.tensor(t);
    if (!is_persistent(ti.kind) || ti.dtype != DType::F32) continue;
    const std::string& n = ti.name;
    auto ends = [&](const char* suf) {
      const size_t k = std::strlen(suf);
      return n.size() >= k && n.compare(n.size() - k, k, suf) == 0;
    };
    float* p = s.get(n).data<float>();
    const int64_t m = numel(ti.shape);
    if (ends(".running_mean")) for (int64_t i = 0; i < m; ++i) p[i] = r.uniform(-0.2f, 0.2f);
    if (ends(".running_var")) for (int64_t i = 0; i < m; ++i) p[i] = r.uniform(0.5f, 2.f);
    // BN affine parameters have shape [C] and names ending in .weight/.bias like convs: only
    // change the one-dimensional ones whose module also has a running mean.
    if (ti.shape.size() == 1 && (ends(".weight") || ends(".bias"))) {
      const std::string mod = n.substr(0, n.rfind('.'));
      if (g.find(mod + ".running_mean") >= 0)
        for (int64_t i = 0; i < m; ++i) p[i] = ends(".weight") ? r.uniform(0.5f, 1.5f) : r.uniform(-0.5f, 0.5f);
    }
  }
}

void fill_batch(CpuExecutor& e, const ModelGraph& m, uint64_t seed) {
  Rng r{seed};
  float* img = e.data(m.image);
  for (int64_t i = 0; i < numel(m.graph.tensor(m.image).shape); ++i) img[i] = r.uniform();
  if (m.target >= 0) {
    float* tgt = e.data(m.target);
    for (int64_t i = 0; i < numel(m.graph.tensor(m.target).shape); ++i) tgt[i] = r.uniform() < 0.3f ? 1.f : 0.f;
  }
}

}  // namespace

TEST(Fusion, RewritesEveryBnReluConvChainOfTheNetwork) {
  // Stem: 1 chain; six residual blocks: 2 each; three attention gates: 3 each.
  for (bool training : {true, false}) {
    ModelGraph plain = build_resunetpp(small_model(false), 2, 32, 32, training);
    ModelGraph fused = build_resunetpp(small_model(true), 2, 32, 32, training);
    EXPECT_EQ(count_ops(fused.graph, OpKind::BnReluConv2d), 22);
    EXPECT_EQ(count_ops(plain.graph, OpKind::BnReluConv2d), 0);
    // Both ASPP blocks are fused too (4 convs, 4 BNs and 3 adds each): whole in inference
    // (ConvBnSum); in training the BNs become statistics nodes and one BnApplySum each.
    const int aspp = training ? 0 : 2, aspp_train = training ? 2 : 0;
    EXPECT_EQ(count_ops(fused.graph, OpKind::ConvBnSum), aspp);
    EXPECT_EQ(count_ops(fused.graph, OpKind::BnApplySum), aspp_train);
    EXPECT_EQ(count_ops(fused.graph, OpKind::BatchNormStats), 22 + 4 * aspp_train);
    EXPECT_EQ(count_ops(fused.graph, OpKind::BatchNorm), count_ops(plain.graph, OpKind::BatchNorm) - 22 - 8);
    EXPECT_EQ(count_ops(fused.graph, OpKind::Conv2d), count_ops(plain.graph, OpKind::Conv2d) - 22 - 4 * aspp);
    // The other 10 adds (7 residual blocks, 3 attention gates) go into the convolution before them.
    EXPECT_EQ(count_ops(plain.graph, OpKind::Add), 6 + 10);
    EXPECT_EQ(count_ops(fused.graph, OpKind::Add), 0);
    int with_residual = 0;
    for (const Node& n : fused.graph.nodes()) with_residual += residual_input(n) >= 0;
    EXPECT_EQ(with_residual, 10);
    // The attention gates' max pools go into their skip-branch convolutions (g_conv.2).
    EXPECT_EQ(count_ops(plain.graph, OpKind::MaxPool2), 3);
    EXPECT_EQ(count_ops(fused.graph, OpKind::MaxPool2), 0);
    int pooled = 0;
    for (const Node& n : fused.graph.nodes())
      if (n.conv.max_pool) {
        ++pooled;
        EXPECT_EQ(n.op, OpKind::BnReluConv2d) << n.name;
        EXPECT_NE(n.name.find(".a1.g_conv.2"), std::string::npos) << n.name;
        EXPECT_EQ(n.out.size(), training ? 2u : 1u) << n.name;
      }
    EXPECT_EQ(pooled, 3);
    // The attention gates' final products go into their last convolutions (gc_conv.2); training
    // keeps the convolution's output for the product's backward.
    EXPECT_EQ(count_ops(plain.graph, OpKind::Mul), 3);
    EXPECT_EQ(count_ops(fused.graph, OpKind::Mul), 0);
    int products = 0;
    for (const Node& n : fused.graph.nodes())
      if (n.conv.multiply) {
        ++products;
        EXPECT_NE(n.name.find(".a1.gc_conv.2"), std::string::npos) << n.name;
        EXPECT_GE(multiplier_input(n), 0) << n.name;
        EXPECT_EQ(residual_input(n), -1) << n.name;
        EXPECT_EQ(n.out.size(), training ? 2u : 1u) << n.name;
      }
    EXPECT_EQ(products, 3);
    // The decoders' upsample and concat are one node each.
    EXPECT_EQ(count_ops(plain.graph, OpKind::Upsample2), 3);
    EXPECT_EQ(count_ops(plain.graph, OpKind::Concat), 3);
    for (OpKind k : {OpKind::Upsample2, OpKind::Concat}) EXPECT_EQ(count_ops(fused.graph, k), 0);
    EXPECT_EQ(count_ops(fused.graph, OpKind::UpsampleConcat), 3);
    if (!training) {  // the fused node counts the work of the nodes it replaced
      int64_t replaced = 0, fused_flops = -1;
      for (const Node& n : plain.graph.nodes())
        if (n.name == "b1" || n.name.rfind("b1.c", 0) == 0) replaced += n.name.rfind("b1.c5", 0) == 0 ? 0 : n.flops;
      for (const Node& n : fused.graph.nodes())
        if (n.op == OpKind::ConvBnSum && n.name == "b1") fused_flops = n.flops;
      EXPECT_EQ(fused_flops, replaced);
    }
    // The SE blocks' MLPs (stem + 6 residual blocks) are fused too: no ReLU, Linear or Sigmoid is left.
    EXPECT_EQ(count_ops(fused.graph, OpKind::SeExcite), 7);
    EXPECT_EQ(count_ops(plain.graph, OpKind::Linear), 14);
    for (OpKind k : {OpKind::Relu, OpKind::Linear, OpKind::Sigmoid}) EXPECT_EQ(count_ops(fused.graph, k), 0);
    EXPECT_EQ(count_params(fused.graph), count_params(plain.graph));
  }
  Graph g = build_resunetpp(small_model(false), 1, 16, 16, true).graph;
  const FusionReport r = fuse_bn_relu_conv(g);
  ASSERT_EQ(r.bn_relu_conv, 22);
  EXPECT_EQ(r.names.front(), "c1.c1.1 -> c1.c1.3");
  bool saw_gate = false;
  for (const std::string& s : r.names) saw_gate = saw_gate || s == "d2.a1.gc_conv.0 -> d2.a1.gc_conv.2";
  EXPECT_TRUE(saw_gate);
}

// fuse_conv_add: which adds it takes (a conv output read only by the add, either side, a
// residual of the same shape), that the fused node sits at the add's place, and what it leaves.
TEST(Fusion, ConvAddTakesPrivateConvOutputsOnly) {
  Graph g;
  GraphBuilder b(g, true);
  const int x = b.input("x", {2, 4, 4, 3});
  auto conv = [&](const std::string& s, int in) {
    return b.conv2d(s, in, b.param(s + ".weight", {3, 3, 3, 3}), b.param(s + ".bias", {3}), 1, 1, 1);
  };
  const int r = b.relu("r", x);
  const int c1 = conv("c1", x);
  const int later = b.relu("later", r);  // made after c1: the fused node must wait for it
  const int s1 = b.add("s1", later, c1);  // c1 private: fused, at s1's place
  const int c2 = conv("c2", s1);
  const int s2 = b.add("s2", c2, r);  // c2 also read by s3: left alone
  const int s3 = b.add("s3", s2, c2);
  const int s4 = b.add("s4", s3, r);  // no conv operand: left alone
  g.tensor(s4).is_output = true;
  const int adds_before = count_ops(g, OpKind::Add);
  const std::vector<std::string> names = fuse_conv_add(g);
  ASSERT_EQ(names, std::vector<std::string>{"s1"});
  EXPECT_EQ(count_ops(g, OpKind::Add), adds_before - 1);
  int fused_at = -1, later_at = -1;
  for (int i = 0; i < g.num_nodes(); ++i) {
    const Node& n = g.node(i);
    if (n.name == "later") later_at = i;
    if (residual_input(n) < 0) continue;
    EXPECT_EQ(n.name, "c1");
    EXPECT_EQ(n.out, std::vector<int>{s1});
    EXPECT_EQ(residual_input(n), later);
    fused_at = i;
  }
  EXPECT_GT(fused_at, later_at);
  for (const Node& n : g.nodes())  // c1's own output is written by no node any more
    for (int t : n.out) EXPECT_NE(t, c1) << n.name;
  // Its backward and values: Fusion.TrainingIsBitIdenticalToTheUnfusedGraph (10 such adds).
}

// fuse_conv_pool: a pool whose input is a private conv output without a residual; the fused node
// takes the pool's outputs (and argmax) at the pool's place.
TEST(Fusion, ConvPoolTakesPrivateConvOutputsWithoutAResidual) {
  Graph g;
  GraphBuilder b(g, true);
  const int x = b.input("x", {2, 4, 4, 3});
  auto conv = [&](const std::string& s, int in) {
    return b.conv2d(s, in, b.param(s + ".weight", {3, 3, 3, 3}), b.param(s + ".bias", {3}), 1, 1, 1);
  };
  const int c1 = conv("c1", x);
  const int later = b.relu("later", x);  // made after c1
  const int p1 = b.maxpool2("p1", c1);   // c1 private: fused, at p1's place
  const int c2 = conv("c2", x);
  const int p2 = b.maxpool2("p2", c2);  // c2 also read by r2: left alone
  const int r2 = b.relu("r2", c2);
  const int c3 = conv("c3", x);
  const int s3 = b.add("s3", c3, later);  // c3 takes a residual first (fuse_conv_add) ...
  const int p3 = b.maxpool2("p3", s3);    // ... so its pool stays
  const int p4 = b.maxpool2("p4", later);  // no conv input: left alone
  for (int t : {p1, p2, r2, p3, p4}) g.tensor(t).is_output = true;
  ASSERT_EQ(fuse_conv_add(g), std::vector<std::string>{"s3"});
  const int pools_before = count_ops(g, OpKind::MaxPool2);
  ASSERT_EQ(fuse_conv_pool(g), std::vector<std::string>{"p1"});
  EXPECT_EQ(count_ops(g, OpKind::MaxPool2), pools_before - 1);
  int fused_at = -1, later_at = -1, argmax = -1;
  for (int i = 0; i < g.num_nodes(); ++i) {
    const Node& n = g.node(i);
    if (n.name == "later") later_at = i;
    if (n.name == "p1" && n.op == OpKind::MaxPool2) ADD_FAILURE() << "p1 is still a pool node";
    if (!n.conv.max_pool) continue;
    EXPECT_EQ(n.name, "c1");
    EXPECT_EQ(n.op, OpKind::Conv2d);
    ASSERT_EQ(n.out.size(), 2u);
    EXPECT_EQ(n.out[0], p1);
    argmax = n.out[1];
    fused_at = i;
  }
  ASSERT_GE(argmax, 0);
  EXPECT_EQ(g.tensor(argmax).dtype, DType::U8);
  EXPECT_GT(fused_at, later_at);  // at the pool's place
  for (const Node& n : g.nodes())  // c1's own output is written by no node any more
    for (int t : n.out) EXPECT_NE(t, c1) << n.name;
  // Backward (a graph of c1 and p1 alone): the pool's backward from the argmax into a
  // full-resolution gradient, which the plain convolution's backward nodes read.
  Graph gb;
  GraphBuilder bb(gb, true);
  const int xb = bb.input("x", {2, 4, 4, 3});
  const int y =
      bb.maxpool2("p1", bb.conv2d("c1", xb, bb.param("c1.weight", {3, 3, 3, 3}), bb.param("c1.bias", {3}), 1, 1, 1));
  ASSERT_EQ(fuse_conv_pool(gb).size(), 1u);
  append_backward(gb, bb.loss("loss", y, bb.input("t", {2, 2, 2, 3}), LossKind::BCEDice));
  int pool_bwd = -1;
  for (int i = 0; i < gb.num_nodes(); ++i)
    if (gb.node(i).op == OpKind::MaxPool2Bwd) pool_bwd = i;
  ASSERT_GE(pool_bwd, 0);
  const int full = gb.node(pool_bwd).out[0];
  EXPECT_EQ(gb.tensor(full).shape, (Shape{2, 4, 4, 3}));
  int readers = 0;
  for (const Node& n : gb.nodes()) {
    if (is_forward(n.op)) continue;
    EXPECT_FALSE(n.conv.max_pool) << op_name(n.op) << " " << n.name;
    if (n.op == OpKind::Conv2dBwdFilter && n.name == "c1") {
      EXPECT_EQ(n.in[1], full);
      ++readers;
    }
  }
  EXPECT_EQ(readers, 1);
  // Values and gradients: Fusion.TrainingIsBitIdenticalToTheUnfusedGraph (the three gates).
}

// fuse_conv_mul: a Mul with a private, plain conv output on either side; in training the fused
// node keeps the conv's output (out[1]) and backward emits the Mul's two products.
TEST(Fusion, ConvMulTakesPrivatePlainConvOutputs) {
  Graph g;
  GraphBuilder b(g, true);
  const int x = b.param("x", {2, 4, 4, 3});
  auto conv = [&](const std::string& s, int in) {
    return b.conv2d(s, in, b.param(s + ".weight", {3, 3, 3, 3}), b.param(s + ".bias", {3}), 1, 1, 1);
  };
  const int c1 = conv("c1", x);
  const int m1 = b.mul("m1", x, c1);  // c1 private, on the right: fused
  const int c2 = conv("c2", m1);
  const int r2 = b.relu("r2", c2);
  const int m2 = b.mul("m2", c2, x);  // c2 also read by r2: left alone
  const int c3 = conv("c3", x);
  const int s3 = b.add("s3", c3, x);  // c3 takes a residual first (fuse_conv_add) ...
  const int m3 = b.mul("m3", s3, r2);  // ... so it is no plain conv any more
  const int y = b.add("y", m2, m3);
  ASSERT_EQ(fuse_conv_add(g), std::vector<std::string>{"s3"});
  ASSERT_EQ(fuse_conv_mul(g), std::vector<std::string>{"m1"});
  int fused = 0;
  for (const Node& n : g.nodes()) {
    if (!n.conv.multiply) continue;
    ++fused;
    EXPECT_EQ(n.name, "c1");
    EXPECT_EQ(multiplier_input(n), x);
    EXPECT_EQ(n.out, (std::vector<int>{m1, c1}));  // training: the conv's own output kept
  }
  EXPECT_EQ(fused, 1);
  append_backward(g, b.loss("loss", y, b.input("t", {2, 4, 4, 3}), LossKind::BCE));
  // The product's backward: d(c1) = dy * x, and x's share dy * c1; c1's backward reads d(c1).
  int dc1 = -1, dx_part = -1;
  for (const Node& n : g.nodes())
    if (n.op == OpKind::Mul && n.name == "c1") (n.in[1] == x ? dc1 : dx_part) = n.out[0];
  ASSERT_GE(dc1, 0);
  ASSERT_GE(dx_part, 0);
  bool filter_reads_dc1 = false;
  for (const Node& n : g.nodes())
    filter_reads_dc1 = filter_reads_dc1 || (n.op == OpKind::Conv2dBwdFilter && n.name == "c1" && n.in[1] == dc1);
  EXPECT_TRUE(filter_reads_dc1);
  // An inference graph keeps no convolution output.
  Graph ig;
  GraphBuilder ib(ig, false);
  const int ix = ib.input("x", {1, 4, 4, 3});
  const int iy =
      ib.mul("m", ib.conv2d("c", ix, ib.param("c.weight", {3, 3, 3, 3}), ib.param("c.bias", {3}), 1, 1, 1), ix);
  ig.tensor(iy).is_output = true;
  ASSERT_EQ(fuse_conv_mul(ig).size(), 1u);
  for (const Node& n : ig.nodes()) {
    if (n.conv.multiply) {
      EXPECT_EQ(n.out, std::vector<int>{iy});
    }
  }
  // Values and gradients: Fusion.TrainingIsBitIdenticalToTheUnfusedGraph (the three gates).
}

// fuse_upsample_concat: an upsample read only by a concat, as its first operand.
TEST(Fusion, UpsampleConcatTakesAPrivateUpsampleAsTheFirstOperand) {
  Graph g;
  GraphBuilder b(g, true);
  const int a = b.input("a", {2, 2, 2, 3});
  const int skip = b.input("skip", {2, 4, 4, 5});
  const int u1 = b.upsample2("u1", a);
  const int c1 = b.concat("c1", u1, skip);  // fused
  const int u2 = b.upsample2("u2", a);
  const int c2 = b.concat("c2", skip, u2);  // the upsample second: left alone
  const int u3 = b.upsample2("u3", a);
  const int c3 = b.concat("c3", u3, skip);  // u3 also a graph output: left alone
  for (int t : {c1, c2, c3, u3}) g.tensor(t).is_output = true;
  ASSERT_EQ(fuse_upsample_concat(g), std::vector<std::string>{"c1"});
  EXPECT_EQ(count_ops(g, OpKind::Upsample2), 2);
  EXPECT_EQ(count_ops(g, OpKind::Concat), 2);
  int fused = 0;
  for (const Node& n : g.nodes()) {
    for (int t : n.out) EXPECT_NE(t, u1) << n.name;  // the upsampled tensor is written by no node
    if (n.op != OpKind::UpsampleConcat) continue;
    ++fused;
    EXPECT_EQ(n.in, (std::vector<int>{a, skip}));
    EXPECT_EQ(n.out, std::vector<int>{c1});
  }
  EXPECT_EQ(fused, 1);
  // Backward: one node gives both gradients (values: Fusion.TrainingIsBitIdenticalToTheUnfusedGraph).
  Graph gb;
  GraphBuilder bb(gb, true);
  const int pa = bb.param("a", {2, 2, 2, 3}), pb = bb.param("b", {2, 4, 4, 5});
  const int y = bb.concat("c", bb.upsample2("u", pa), pb);
  ASSERT_EQ(fuse_upsample_concat(gb).size(), 1u);
  const std::vector<int> grads = append_backward(gb, bb.loss("loss", y, bb.input("t", {2, 4, 4, 8}), LossKind::BCE));
  EXPECT_EQ(count_ops(gb, OpKind::UpsampleConcatBwd), 1);
  EXPECT_EQ(count_ops(gb, OpKind::Upsample2Bwd) + count_ops(gb, OpKind::ConcatBwd), 0);
  ASSERT_EQ(grads.size(), 2u);
  EXPECT_EQ(gb.tensor(grads[0]).shape, gb.tensor(pa).shape);
  EXPECT_EQ(gb.tensor(grads[1]).shape, gb.tensor(pb).shape);
}

TEST(Fusion, LeavesChainsWithOtherReadersAlone) {
  Graph g;
  GraphBuilder b(g, true);
  const int x = b.input("x", {2, 4, 4, 3});
  auto bn = [&](const std::string& s, int in) {
    return b.batchnorm(s, in, b.param(s + ".weight", {3}), b.param(s + ".bias", {3}),
                       b.buffer(s + ".running_mean", {3}), b.buffer(s + ".running_var", {3}),
                       b.buffer(s + ".num_batches_tracked", {}, DType::I64));
  };
  auto conv = [&](const std::string& s, int in) {
    return b.conv2d(s, in, b.param(s + ".weight", {3, 3, 3, 3}), b.param(s + ".bias", {3}), 1, 1, 1);
  };
  // BN output read twice: by the ReLU and by an add.
  const int y0 = bn("a", x);
  const int c0 = conv("a.conv", b.relu("a.relu", y0));
  const int s0 = b.add("a.sum", c0, y0);
  // ReLU output read by two convs.
  const int r1 = b.relu("b.relu", bn("b", s0));
  const int s1 = b.add("b.sum", conv("b.conv1", r1), conv("b.conv2", r1));
  // A clean chain.
  const int out = conv("c.conv", b.relu("c.relu", bn("c", s1)));
  b.loss("loss", out, b.input("t", {2, 4, 4, 3}), LossKind::BCE);
  const FusionReport r = fuse_bn_relu_conv(g);
  ASSERT_EQ(r.bn_relu_conv, 1);
  EXPECT_EQ(r.names[0], "c -> c.conv");
  EXPECT_EQ(count_ops(g, OpKind::BatchNorm), 2);
}

TEST(Fusion, ConvBnSumFusesOnlyPrivateEvalBranchesOfOneInput) {
  Graph g;
  GraphBuilder b(g, false);
  const int x = b.input("x", {2, 8, 8, 4});
  const int x2 = b.input("x2", {2, 8, 8, 4});
  auto branch = [&](const std::string& s, int in, int dil) { return aspp_branch(b, s, in, dil); };
  // A: three branches of x: fused.
  const int a = b.add("A", b.add("A", branch("A.c1", x, 1), branch("A.c2", x, 2)), branch("A.c3", x, 3));
  // B: a branch output also read by a Mul: left alone.
  const int b1 = branch("B.c1", x, 1);
  const int bsum = b.add("B", b1, branch("B.c2", x, 2));
  const int bm = b.mul("B.m", bsum, b1);
  // C: branches of two different inputs: left alone.
  const int csum = b.add("C", branch("C.c1", x, 1), branch("C.c2", x2, 1));
  // D: five branches: more than the kernel's four, left alone.
  int d = branch("D.c1", x, 1);
  for (int i = 2; i <= 5; ++i) d = b.add("D", d, branch("D.c" + std::to_string(i), x, i));
  // E: the inner partial sum is an output: only it is fused (2 branches), the last add stays.
  const int e01 = b.add("E", branch("E.c1", x, 1), branch("E.c2", x, 2));
  g.tensor(e01).is_output = true;
  const int e = b.add("E", e01, branch("E.c3", x, 3));
  for (int t : {a, bm, csum, d, e}) g.tensor(t).is_output = true;
  const int convs = count_ops(g, OpKind::Conv2d), bns = count_ops(g, OpKind::BatchNorm);
  const std::vector<std::string> names = fuse_conv_bn_sum(g);
  ASSERT_EQ(names.size(), 2u);
  EXPECT_EQ(names[0], "A (3 branches)");
  EXPECT_EQ(names[1], "E (2 branches)");
  EXPECT_EQ(count_ops(g, OpKind::ConvBnSum), 2);
  EXPECT_EQ(count_ops(g, OpKind::Conv2d), convs - 5);
  EXPECT_EQ(count_ops(g, OpKind::BatchNorm), bns - 5);
  for (const Node& n : g.nodes()) {
    if (n.op != OpKind::ConvBnSum) continue;
    if (n.name == "E") {
      EXPECT_EQ(n.out[0], e01);
      continue;
    }
    ASSERT_EQ(n.in.size(), 1u + 3 * 6);
    EXPECT_EQ(n.in[0], x);
    EXPECT_EQ(n.out[0], a);
    ASSERT_EQ(n.branches.shapes.size(), 3u);
    for (int i = 0; i < 3; ++i) {
      EXPECT_EQ(n.branches.shapes[size_t(i)].dil, i + 1);
      EXPECT_EQ(g.tensor(n.in[size_t(1 + 6 * i)]).name, "A.c" + std::to_string(i + 1) + ".0.weight");
      EXPECT_EQ(g.tensor(n.in[size_t(6 + 6 * i)]).name, "A.c" + std::to_string(i + 1) + ".1.running_var");
    }
  }
  // Training-mode BNs never match.
  ModelGraph train = build_resunetpp(small_model(false), 1, 16, 16, true);
  EXPECT_TRUE(fuse_conv_bn_sum(train.graph).empty());
}

TEST(Fusion, SeExciteFusesOnlyPrivateMlps) {
  Graph g;
  GraphBuilder b(g, true);
  const int x = b.input("x", {2, 4, 4, 16});
  auto mlp = [&](const std::string& s, int p, int* hidden_out) {
    const int h = b.relu(s + ".net.1", b.linear(s + ".net.0", p, b.param(s + ".net.0.weight", {2, 16})));
    if (hidden_out) *hidden_out = h;
    return b.sigmoid(s + ".net.3", b.linear(s + ".net.2", h, b.param(s + ".net.2.weight", {16, 2})));
  };
  const int p = b.global_avg_pool("pool", x);
  const int a = mlp("a.attn", p, nullptr);  // fused
  int h = -1;
  const int c = mlp("c.attn", p, &h);  // its ReLU output is also read: left alone
  const int q = b.sigmoid("q.s", b.linear("q", h, b.param("q.weight", {16, 2})));  // the second reader of h
  const int y = b.add("sum", b.scale_channels("a.attn", x, a), b.scale_channels("c.attn", x, c));
  const int loss = b.loss("loss", b.add("out", y, b.scale_channels("q", x, q)), b.input("t", {2, 4, 4, 16}),
                          LossKind::BCE);
  EXPECT_EQ(fuse_se_excite(g), 1);
  EXPECT_EQ(count_ops(g, OpKind::SeExcite), 1);
  EXPECT_EQ(count_ops(g, OpKind::Sigmoid), 2);
  for (const Node& n : g.nodes())
    if (n.op == OpKind::SeExcite) {
      EXPECT_EQ(n.name, "a.attn");
      ASSERT_EQ(n.in.size(), 3u);
      EXPECT_EQ(n.in[0], p);
      EXPECT_EQ(g.tensor(n.in[1]).name, "a.attn.net.0.weight");
      EXPECT_EQ(g.tensor(n.in[2]).name, "a.attn.net.2.weight");
      EXPECT_EQ(n.out[0], a);
    }
  // Autodiff emits its backward node.
  append_backward_and_update(g, loss, OptimizerKind::SGD);
  EXPECT_EQ(count_ops(g, OpKind::SeExciteBwd), 1);
}

TEST(Fusion, RefusesAGraphWithBackwardNodes) {
  ModelGraph m = build_resunetpp(small_model(false), 1, 16, 16, true);
  append_backward_and_update(m.graph, m.loss, OptimizerKind::SGD);
  EXPECT_THROW(fuse_bn_relu_conv(m.graph), Error);
}

// The backward half of the fused ASPP: autodiff's sum of the branches' backward-data becomes one
// ConvSumBwdData node per ASPP block whose forward was fused, and nothing else changes.
TEST(Fusion, AsppBackwardDataSumsOnlyTheBranchesOfFusedAsppBlocks) {
  ModelGraph plain = build_resunetpp(small_model(false), 2, 32, 32, true);
  ModelGraph fused = build_resunetpp(small_model(true), 2, 32, 32, true);
  // Autodiff gives a Conv2dBwdData to every plain conv whose input needs a gradient.
  int fused_data = 0;
  for (const Node& n : fused.graph.nodes())
    fused_data += n.op == OpKind::Conv2d && fused.graph.tensor(n.in[0]).requires_grad;
  append_backward(plain.graph, plain.loss);
  EXPECT_EQ(count_ops(plain.graph, OpKind::ConvSumBwdData), 0);  // unfused graphs are left alone
  append_backward(fused.graph, fused.loss);
  const Graph& g = fused.graph;
  ASSERT_EQ(count_ops(g, OpKind::ConvSumBwdData), 2);
  EXPECT_EQ(count_ops(g, OpKind::Conv2dBwdData), fused_data - 8);  // 4 per block
  std::vector<std::string> names;
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::Conv2dBwdData) {  // no branch of an ASPP block is left unfused
      const std::string& w = g.tensor(n.in[1]).name;
      for (const char* block : {"b1", "aspp"})
        for (int k = 1; k <= 4; ++k)
          EXPECT_NE(w.rfind(std::string(block) + ".c" + std::to_string(k) + ".", 0), 0u) << w;
    }
    if (n.op != OpKind::ConvSumBwdData) continue;
    names.push_back(n.name);
    ASSERT_EQ(n.branches.shapes.size(), 4u);
    ASSERT_EQ(n.in.size(), 8u);
    std::vector<int> dils;
    for (size_t b = 0; b < 4; ++b) {
      const cpu::Conv2dShape& s = n.branches.shapes[b];
      dils.push_back(s.dil);
      EXPECT_EQ(s.pad, s.dil);
      EXPECT_EQ(g.tensor(n.in[2 * b]).kind, TensorKind::Gradient);  // dy of the branch's conv output
      EXPECT_EQ(g.tensor(n.in[2 * b]).shape, (Shape{s.n, s.ho(), s.wo(), s.cout}));
      EXPECT_EQ(g.tensor(n.in[2 * b + 1]).kind, TensorKind::Param);  // its weight
      EXPECT_EQ(g.tensor(n.in[2 * b + 1]).shape, (Shape{3, 3, s.cin, s.cout}));
      // In the order of autodiff's adds: the last branch's gradient comes first.
      EXPECT_EQ(g.tensor(n.in[2 * b + 1]).name, n.name + ".c" + std::to_string(4 - b) + ".0.weight");
    }
    std::sort(dils.begin(), dils.end());
    EXPECT_EQ(dils, (std::vector<int>{1, 6, 12, 18}));
    // The block input's whole gradient: no add of it is left.
    const std::string& dx = g.tensor(n.out[0]).name;
    ASSERT_EQ(dx.rfind("grad(", 0), 0u) << dx;
    for (const Node& a : g.nodes()) EXPECT_NE(a.name, "grad_sum(" + dx.substr(5, dx.size() - 6) + ")");
  }
  EXPECT_EQ(names, (std::vector<std::string>{"aspp", "b1"}));  // backward order
}

TEST(Fusion, AsppBackwardDataLeavesUnfusedSumsAlone) {
  Graph g;
  GraphBuilder b(g, true);
  const int img = b.input("img", {2, 8, 8, 4});
  const int x = b.conv2d("pre", img, b.param("pre.weight", {3, 3, 4, 4}), b.param("pre.bias", {4}), 1, 1, 1);
  auto branch = [&](const std::string& s, int in, int dil) { return aspp_branch(b, s, in, dil); };
  // A: two branches of x, fused forward (BnApplySum): its backward-data sum is fused.
  const int a = b.add("A", branch("A.c1", x, 1), branch("A.c2", x, 2));
  // B: two branches of a, one BN output also read by a Mul: the forward stays unfused, and so does
  // the backward.
  const int b1 = branch("B.c1", a, 1);
  const int bsum = b.add("B", b1, branch("B.c2", a, 3));
  const int loss = b.loss("loss", b.mul("B.m", bsum, b1), b.input("t", {2, 8, 8, 4}), LossKind::BCE);
  ASSERT_EQ(fuse_bn_apply_sum(g).size(), 1u);
  append_backward(g, loss);
  ASSERT_EQ(count_ops(g, OpKind::ConvSumBwdData), 1);
  for (const Node& n : g.nodes()) {
    if (n.op != OpKind::ConvSumBwdData) continue;
    EXPECT_EQ(n.name, "A");
    ASSERT_EQ(n.branches.shapes.size(), 2u);
    EXPECT_EQ(g.tensor(n.out[0]).name, "grad(" + g.tensor(x).name + ")");
  }
  // B's two branches keep their backward-data nodes; "pre" has none (its input is an image).
  EXPECT_EQ(count_ops(g, OpKind::Conv2dBwdData), 2);
}

TEST(Fusion, TrainingIsBitIdenticalToTheUnfusedGraph) {
  const int n = 2, size = 32;
  for (OptimizerKind opt : {OptimizerKind::SGD, OptimizerKind::Adam}) {
    ModelGraph mp = build_resunetpp(small_model(false), n, size, size, true);
    ModelGraph mf = build_resunetpp(small_model(true), n, size, size, true);
    append_backward_and_update(mp.graph, mp.loss, opt);
    append_backward_and_update(mf.graph, mf.loss, opt);
    ASSERT_EQ(count_ops(mf.graph, OpKind::ConvSumBwdData), 2);  // the ASPP backward-data sums, fused
    // Parameters, BN running statistics and counters, optimiser state.
    test::expect_lockstep_training({&mp}, {&mf}, 7, 3, 1e-2,
                                      [](const Graph& g, ParamStore& s) { randomise_bn(g, s, 8); });
  }
}

TEST(Fusion, InferenceIsBitIdenticalToTheUnfusedGraph) {
  const int n = 2, size = 32;
  ModelGraph mp = build_resunetpp(small_model(false), n, size, size, false);
  ModelGraph mf = build_resunetpp(small_model(true), n, size, size, false);
  ParamStore sp, sf;
  init_params(mp.graph, sp, 3);
  init_params(mf.graph, sf, 3);
  randomise_bn(mp.graph, sp, 4);
  randomise_bn(mf.graph, sf, 4);
  CpuExecutor p(mp.graph, sp, PlanMode::BestFit), f(mf.graph, sf, PlanMode::BestFit);
  p.poison();
  f.poison();
  fill_batch(p, mp, 11);
  fill_batch(f, mf, 11);
  p.run();
  f.run();
  const int64_t m = numel(mp.graph.tensor(mp.logits).shape);
  const float* a = p.data(mp.logits);
  const float* b = f.data(mf.logits);
  for (int64_t i = 0; i < m; ++i) ASSERT_TRUE(std::isfinite(a[i])) << i;
  EXPECT_EQ(0, std::memcmp(a, b, size_t(m) * sizeof(float)));
  EXPECT_EQ(count_ops(mf.graph, OpKind::ConvBnSum), 2);  // the ASPP blocks ran fused
}

TEST(Fusion, FusedInferencePlanDropsTheAsppBranchTensors) {
  ModelConfig plain_cfg, fused_cfg;
  plain_cfg.fuse = false;
  ModelGraph mp = build_resunetpp(plain_cfg, 16, 256, 256, false);
  ModelGraph mf = build_resunetpp(fused_cfg, 16, 256, 256, false);
  ModelGraph mb = build_resunetpp(plain_cfg, 16, 256, 256, false);
  fuse_bn_relu_conv(mb.graph);  // BN-ReLU-conv fused only
  const Plan pp = make_plan(mp.graph, PlanMode::BestFit, cpu_workspace_bytes);
  const Plan pb = make_plan(mb.graph, PlanMode::BestFit, cpu_workspace_bytes);
  const Plan pf = make_plan(mf.graph, PlanMode::BestFit, cpu_workspace_bytes);
  EXPECT_NO_THROW(verify_plan(mf.graph, pf));
  // The last ASPP's four 256x256x16 branch outputs (and their BN outputs) no longer exist.
  EXPECT_LT(pf.naive_bytes, pb.naive_bytes);
  EXPECT_LE(pf.arena_bytes, pb.arena_bytes);
  EXPECT_LT(pb.arena_bytes, pp.arena_bytes);
  RecordProperty("inference_arena_bytes_unfused", std::to_string(pp.arena_bytes));
  RecordProperty("inference_arena_bytes_bn_relu_conv_fused", std::to_string(pb.arena_bytes));
  RecordProperty("inference_arena_bytes_fused", std::to_string(pf.arena_bytes));
}

TEST(Fusion, FusedTrainingPlanNeedsLessMemory) {
  for (int size : {64, 256}) {
    ModelConfig plain_cfg, fused_cfg;
    plain_cfg.fuse = false;
    ModelGraph mp = build_resunetpp(plain_cfg, 16, size, size, true);
    ModelGraph mf = build_resunetpp(fused_cfg, 16, size, size, true);
    append_backward_and_update(mp.graph, mp.loss, OptimizerKind::Adam);
    append_backward_and_update(mf.graph, mf.loss, OptimizerKind::Adam);
    const Plan pp = make_plan(mp.graph, PlanMode::BestFit, cpu_workspace_bytes);
    const Plan pf = make_plan(mf.graph, PlanMode::BestFit, cpu_workspace_bytes);
    EXPECT_NO_THROW(verify_plan(mf.graph, pf));
    // The fused graph keeps neither the BN outputs nor the ReLU outputs of the 22 chains.
    EXPECT_LT(double(pf.arena_bytes), 0.85 * double(pp.arena_bytes)) << size;
    EXPECT_LT(pf.naive_bytes, pp.naive_bytes) << size;
    EXPECT_EQ(pf.persistent_bytes, pp.persistent_bytes) << size;
    RecordProperty("arena_bytes_unfused_" + std::to_string(size), std::to_string(pp.arena_bytes));
    RecordProperty("arena_bytes_fused_" + std::to_string(size), std::to_string(pf.arena_bytes));
  }
}

// bf16 activations (inference): which tensors change, what the plan saves, who refuses them.
TEST(Bf16Storage, MarksTheInnerFeatureMapsAndHalvesTheirBytes) {
  ModelConfig cfg;
  ModelGraph m = build_resunetpp(cfg, 4, 64, 64, false);
  const Plan before = make_plan(m.graph, PlanMode::BestFit, cpu_workspace_bytes);
  const int marked = store_activations_in_bf16(m.graph);
  int rank4_activations = 0;
  for (int t = 0; t < m.graph.num_tensors(); ++t) {
    const TensorInfo& ti = m.graph.tensor(t);
    const bool inner = ti.kind == TensorKind::Activation && !ti.is_output && ti.shape.size() == 4;
    rank4_activations += inner;
    EXPECT_EQ(ti.dtype,
              inner ? DType::BF16 : (ti.name.find("num_batches") != std::string::npos ? DType::I64 : DType::F32))
        << ti.name;
  }
  EXPECT_EQ(marked, rank4_activations);
  EXPECT_GT(marked, 50);
  EXPECT_EQ(m.graph.tensor(m.image).dtype, DType::F32);
  EXPECT_EQ(m.graph.tensor(m.logits).dtype, DType::F32);
  const Plan after = make_plan(m.graph, PlanMode::BestFit, cpu_workspace_bytes);
  EXPECT_NO_THROW(verify_plan(m.graph, after));
  // The image and the logits stay fp32, everything between is half the bytes.
  EXPECT_LT(double(after.naive_bytes), 0.6 * double(before.naive_bytes));
  EXPECT_LT(after.arena_bytes, before.arena_bytes);
  EXPECT_EQ(after.persistent_bytes, before.persistent_bytes);
  EXPECT_EQ(store_activations_in_bf16(m.graph), 0);  // idempotent
}

// bf16 training: the saved forward activations become bf16; gradients, the logits the loss
// reads, statistics and persistent tensors stay fp32.
TEST(Bf16Storage, TrainingGraphsKeepGradientsLogitsAndStateInFp32) {
  ModelGraph train = build_resunetpp(ModelConfig{}, 2, 128, 128, true);
  append_backward_and_update(train.graph, train.loss, OptimizerKind::Adam);
  const Plan before = make_plan(train.graph, PlanMode::BestFit, cpu_workspace_bytes);
  const int marked = store_activations_in_bf16(train.graph);
  int bf16 = 0, grads4 = 0;
  for (int t = 0; t < train.graph.num_tensors(); ++t) {
    const TensorInfo& ti = train.graph.tensor(t);
    if (ti.dtype == DType::BF16) {
      ++bf16;
      EXPECT_EQ(ti.kind, TensorKind::Activation) << ti.name;
      EXPECT_EQ(ti.shape.size(), 4u) << ti.name;
    }
    if (ti.kind == TensorKind::Gradient) {
      EXPECT_EQ(ti.dtype, DType::F32) << ti.name;
      grads4 += ti.shape.size() == 4;
    }
    if (is_persistent(ti.kind) && ti.dtype != DType::I64) {
      EXPECT_EQ(ti.dtype, DType::F32) << ti.name;
    }
  }
  EXPECT_EQ(marked, bf16);
  EXPECT_GT(marked, 50);
  EXPECT_GT(grads4, 50);
  EXPECT_EQ(train.graph.tensor(train.logits).dtype, DType::F32);  // the loss reads it
  EXPECT_EQ(train.graph.tensor(train.image).dtype, DType::F32);
  EXPECT_EQ(train.graph.tensor(train.target).dtype, DType::F32);
  const Plan after = make_plan(train.graph, PlanMode::BestFit, cpu_workspace_bytes);
  EXPECT_NO_THROW(verify_plan(train.graph, after));
  // The saved activations halve, the fp32 gradients do not (at 256x256, batch 16: 0.67x).
  EXPECT_LT(double(after.naive_bytes), 0.9 * double(before.naive_bytes));
  EXPECT_LT(double(after.arena_bytes), 0.8 * double(before.arena_bytes));
  EXPECT_GT(double(after.arena_bytes), 0.4 * double(before.arena_bytes));
  EXPECT_EQ(after.persistent_bytes, before.persistent_bytes);
  EXPECT_EQ(store_activations_in_bf16(train.graph), 0);  // idempotent
  RecordProperty("arena_bytes_fp32", std::to_string(before.arena_bytes));
  RecordProperty("arena_bytes_bf16", std::to_string(after.arena_bytes));
  ParamStore store;
  EXPECT_THROW(CpuExecutor(train.graph, store), Error);
}

TEST(Bf16Storage, RefusedByTheCpuBackend) {
  ModelGraph infer = build_resunetpp(small_model(true), 1, 16, 16, false);
  store_activations_in_bf16(infer.graph);
  ParamStore store;
  try {
    CpuExecutor cpu(infer.graph, store);
    FAIL() << "the CPU executor accepted bf16 activations";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fp32 only"), std::string::npos) << e.what();
  }
  ExecOptions o;
  o.precision = Precision::Bf16;
  EXPECT_THROW(make_executor(infer.graph, store, "cpu", o), Error);
  EXPECT_THROW(Predictor(small_model(true), 16, 1, "cpu", o), Error);
  EXPECT_EQ(parse_precision("bf16"), Precision::Bf16);
  EXPECT_EQ(parse_precision("fp32"), Precision::F32);
  EXPECT_THROW(parse_precision("fp16"), Error);
}

// --kernels: every name parses and prints back; the options' default is KernelChoice::Default
// (the executor resolves it by precision: cuDNN in fp32, hand-written in bf16).
TEST(KernelChoiceNames, ParseAndPrintRoundTrip) {
  for (KernelChoice k : {KernelChoice::Default, KernelChoice::Cudnn, KernelChoice::Handwritten, KernelChoice::Auto})
    EXPECT_EQ(parse_kernel_choice(kernel_choice_name(k)), k) << kernel_choice_name(k);
  EXPECT_EQ(parse_kernel_choice("default"), KernelChoice::Default);
  EXPECT_EQ(ExecOptions{}.kernels, KernelChoice::Default);
  try {
    parse_kernel_choice("fast");
    FAIL() << "accepted --kernels fast";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("'fast'"), std::string::npos) << e.what();
  }
}

TEST(FusionKernels, StatsThenApplyEqualsTheBatchNormForward) {
  const int64_t count = 37;
  const int c = 5;
  Rng r{21};
  std::vector<float> x(static_cast<size_t>(count * c)), gamma(static_cast<size_t>(c)), beta(static_cast<size_t>(c));
  for (float& v : x) v = r.uniform(-2.f, 3.f);
  for (int i = 0; i < c; ++i) {
    gamma[size_t(i)] = r.uniform(0.5f, 1.5f);
    beta[size_t(i)] = r.uniform(-0.5f, 0.5f);
  }
  std::vector<float> rm1(size_t(c), 0.1f), rv1(size_t(c), 2.f), rm2 = rm1, rv2 = rv1;
  std::vector<float> y(x.size()), relu_y(x.size()), mean1(static_cast<size_t>(c)), inv1(static_cast<size_t>(c)),
      mean2(static_cast<size_t>(c)), inv2(static_cast<size_t>(c)), fused(x.size());
  cpu::batchnorm_forward_train<float>(count, c, x.data(), gamma.data(), beta.data(), y.data(), mean1.data(),
                                      inv1.data(), rm1.data(), rv1.data(), 0.1, 1e-5);
  cpu::relu_forward<float>(int64_t(y.size()), y.data(), relu_y.data());
  cpu::batchnorm_stats_train<float>(count, c, x.data(), mean2.data(), inv2.data(), rm2.data(), rv2.data(), 0.1,
                                    1e-5);
  cpu::batchnorm_apply<float>(count, c, x.data(), gamma.data(), beta.data(), mean2.data(), inv2.data(), true,
                              fused.data());
  auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    return std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  EXPECT_TRUE(same(mean1, mean2));
  EXPECT_TRUE(same(inv1, inv2));
  EXPECT_TRUE(same(rm1, rm2));
  EXPECT_TRUE(same(rv1, rv2));
  EXPECT_TRUE(same(relu_y, fused));
  // Some values must be clipped, some kept, for the mask check to mean anything.
  int zeros = 0;
  for (float v : fused) zeros += v == 0.f;
  EXPECT_GT(zeros, 10);
  EXPECT_LT(zeros, int(fused.size()) - 10);

  // The recomputed mask equals relu_backward on the stored ReLU output.
  std::vector<float> dy(x.size()), expect(x.size());
  for (float& v : dy) v = r.uniform(-1.f, 1.f);
  cpu::relu_backward<float>(int64_t(dy.size()), relu_y.data(), dy.data(), expect.data());
  cpu::bn_relu_mask_inplace<float>(count, c, x.data(), gamma.data(), beta.data(), mean2.data(), inv2.data(),
                                   dy.data());
  EXPECT_TRUE(same(expect, dy));

  // Eval mode: stats_eval + apply equals batchnorm_forward_eval.
  std::vector<float> ye(x.size()), ya(x.size()), me(static_cast<size_t>(c)), ie(static_cast<size_t>(c));
  cpu::batchnorm_forward_eval<float>(count, c, x.data(), gamma.data(), beta.data(), rm1.data(), rv1.data(), 1e-5,
                                     ye.data());
  cpu::batchnorm_stats_eval<float>(c, rm1.data(), rv1.data(), 1e-5, me.data(), ie.data());
  cpu::batchnorm_apply<float>(count, c, x.data(), gamma.data(), beta.data(), me.data(), ie.data(), false,
                              ya.data());
  EXPECT_TRUE(same(ye, ya));

  // A NaN input stays NaN through BN-ReLU (as relu_forward keeps it), and its gradient is masked.
  x[7] = std::numeric_limits<float>::quiet_NaN();
  cpu::batchnorm_apply<float>(count, c, x.data(), gamma.data(), beta.data(), mean2.data(), inv2.data(), true,
                              fused.data());
  EXPECT_TRUE(std::isnan(fused[7]));
  dy.assign(dy.size(), 1.f);
  cpu::bn_relu_mask_inplace<float>(count, c, x.data(), gamma.data(), beta.data(), mean2.data(), inv2.data(),
                                   dy.data());
  EXPECT_EQ(dy[7], 0.f);
}
