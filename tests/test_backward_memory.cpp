// tests/test_backward_memory.cpp — the memory passes that run after autodiff (runtime/fusion.h:
// recompute_for_backward, sink_backward_nodes) and the planner's in-place outputs: what they
// change in the graph, that the schedule stays valid, that training gives the same bits with and
// without them, and what they save.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "model/resunetpp.h"
#include "runtime/autodiff.h"
#include "runtime/executor_cpu.h"
#include "runtime/fusion.h"
#include "runtime/rng.h"
#include "tests/lockstep_training.h"

using namespace rpp;

namespace {

ModelConfig small_model(bool fuse) { return test::small_network(fuse); }

ModelGraph training_graph(const ModelConfig& cfg, int n, int size, const BackwardOptions& o,
                          OptimizerKind opt = OptimizerKind::Adam) {
  ModelGraph m = build_resunetpp(cfg, n, size, size, true);
  append_optimizer(m.graph, append_backward(m.graph, m.loss, o), opt);
  return m;
}

int loss_node(const Graph& g) {
  for (int i = 0; i < g.num_nodes(); ++i)
    if (g.node(i).op == OpKind::Loss) return i;
  return -1;
}

// Each tensor is written by one node, and every tensor a node reads is persistent, a graph input or
// written by an earlier node.
void expect_valid_schedule(const Graph& g) {
  std::vector<int> writer(size_t(g.num_tensors()), -1);
  for (int i = 0; i < g.num_nodes(); ++i)
    for (int t : g.node(i).out) {
      EXPECT_EQ(writer[size_t(t)], -1) << g.tensor(t).name << " is written twice";
      writer[size_t(t)] = i;
    }
  for (int i = 0; i < g.num_nodes(); ++i)
    for (int t : g.node(i).in) {
      if (t < 0) continue;
      const TensorInfo& ti = g.tensor(t);
      if (is_persistent(ti.kind) || ti.kind == TensorKind::Input) continue;
      EXPECT_GE(writer[size_t(t)], 0) << ti.name << " is read by " << g.node(i).name << " but never written";
      EXPECT_LT(writer[size_t(t)], i) << ti.name << " is read by node " << i << " (" << g.node(i).name
                                      << ") before it is written";
    }
}

}  // namespace

TEST(BackwardMemory, RecomputesTheSeScalesAndTheUpsampleConcats) {
  for (bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused" : "unfused");
    const ModelGraph m = training_graph(small_model(fuse), 2, 32, BackwardOptions{});
    const Graph& g = m.graph;
    expect_valid_schedule(g);
    const int loss = loss_node(g);
    ASSERT_GT(loss, 0);
    std::set<std::string> remade;
    for (int i = loss + 1; i < g.num_nodes(); ++i) {
      const Node& n = g.node(i);
      if (n.out.empty()) continue;  // the optimiser's nodes
      const std::string& name = g.tensor(n.out[0]).name;
      if (name.rfind("recompute(", 0) != 0) continue;
      const std::string orig = name.substr(10, name.size() - 11);
      remade.insert(orig);
      // The copy is made by the same op from the same inputs as the forward value (or from their
      // copies), just before its first reader; no backward node reads the forward value any more.
      int fwd = -1;
      for (int j = 0; j < loss; ++j)
        if (!g.node(j).out.empty() && g.tensor(g.node(j).out[0]).name == orig) fwd = j;
      ASSERT_GE(fwd, 0) << orig;
      EXPECT_EQ(n.op, g.node(fwd).op) << orig;
      ASSERT_EQ(n.in.size(), g.node(fwd).in.size());
      for (size_t k = 0; k < n.in.size(); ++k) {
        const std::string& a = g.tensor(n.in[k]).name;
        EXPECT_TRUE(n.in[k] == g.node(fwd).in[k] || a == "recompute(" + g.tensor(g.node(fwd).in[k]).name + ")") << a;
      }
      bool read_next = false;
      for (int t : g.node(i + 1).in) read_next = read_next || t == n.out[0];
      EXPECT_TRUE(read_next) << name << " is not read by the node after its copy";
      const int y = g.node(fwd).out[0];
      for (int j = loss + 1; j < g.num_nodes(); ++j)
        for (int t : g.node(j).in) EXPECT_NE(t, y) << g.node(j).name << " still reads " << orig;
    }
    // The 7 SE outputs (their backward keeps x and s, so a copy costs nothing to keep). In the fused
    // graph also the 3 decoders' upsample-concats (their small upsampled input lives longer
    // instead); unfused, a concat's upsampled input is most of its bytes, so it is kept.
    std::set<std::string> want = {"c1.attn.scale", "c2.attn.scale", "c3.attn.scale", "c4.attn.scale",
                                  "d1.r1.attn.scale", "d2.r1.attn.scale", "d3.r1.attn.scale"};
    if (fuse) want.insert({"d1.concat", "d2.concat", "d3.concat"});
    EXPECT_EQ(remade, want);
  }
}

TEST(BackwardMemory, ShortcutBackwardDataWaitsForTheGradientSum) {
  const ModelGraph m = training_graph(small_model(true), 2, 32, BackwardOptions{});
  const Graph& g = m.graph;
  const ModelGraph plain = training_graph(small_model(true), 2, 32, BackwardOptions{false, false, false});
  // In every residual block the shortcut's backward-data comes right before the Add that sums its
  // output with the main path's input gradient; without the pass, in some blocks (the encoders') it
  // came before the main path's backward.
  auto adjacent_sums = [](const Graph& gr, int* blocks) {
    int adjacent = 0;
    *blocks = 0;
    for (int i = 0; i + 1 < gr.num_nodes(); ++i) {
      const Node& n = gr.node(i);
      if (n.op != OpKind::Conv2dBwdData || n.name.find(".c2.0") == std::string::npos) continue;
      const Node& next = gr.node(i + 1);
      ++*blocks;
      adjacent += next.op == OpKind::Add && (next.in[0] == n.out[0] || next.in[1] == n.out[0]);
    }
    return adjacent;
  };
  int blocks = 0, plain_blocks = 0;
  EXPECT_EQ(adjacent_sums(g, &blocks), 6);  // the 6 residual blocks (the stem's input needs no gradient)
  EXPECT_EQ(blocks, 6);
  EXPECT_LT(adjacent_sums(plain.graph, &plain_blocks), 6);
  EXPECT_EQ(plain_blocks, 6);
  expect_valid_schedule(g);
}

// The passes and the in-place outputs change lifetimes only: three steps of training give the same
// loss, gradient norm, parameters, BN statistics and optimiser state bit for bit.
TEST(BackwardMemory, TrainingIsBitIdenticalWithAndWithoutThePasses) {
  for (bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused" : "unfused");
    const ModelGraph a = training_graph(small_model(fuse), 2, 32, BackwardOptions{}, OptimizerKind::SGD);
    const ModelGraph b =
        training_graph(small_model(fuse), 2, 32, BackwardOptions{false, false, false}, OptimizerKind::SGD);
    const auto [with, without] = test::expect_lockstep_training({&a}, {&b}, 21, 3, 1e-2);
    EXPECT_LT(with, without);
  }
}

// What the passes save at the benchmark shape (256x256, batch 16), both plans with in-place outputs.
TEST(BackwardMemory, TrainingPlansAt256Batch16NeedLess) {
  for (bool fuse : {true, false}) {
    SCOPED_TRACE(fuse ? "fused" : "unfused");
    ModelConfig c;  // the full network
    c.fuse = fuse;
    const ModelGraph a = training_graph(c, 16, 256, BackwardOptions{});
    const ModelGraph b = training_graph(c, 16, 256, BackwardOptions{false, false, false});
    const Plan pa = make_plan(a.graph, PlanMode::BestFit, cpu_workspace_bytes);
    const Plan pb = make_plan(b.graph, PlanMode::BestFit, cpu_workspace_bytes);
    EXPECT_NO_THROW(verify_plan(a.graph, pa));
    int aliased = 0;
    for (int t : pa.alias) aliased += t >= 0;
    EXPECT_GT(aliased, 0);
    // Fused: the peak (the start of backward) loses the decoders' concatenations and the SE outputs,
    // the next one (inside the last decoder's backward) a gradient of the concatenation's size.
    EXPECT_LT(double(pa.arena_bytes), (fuse ? 0.8 : 0.95) * double(pb.arena_bytes));
    const std::string tag = fuse ? "fused" : "unfused";
    RecordProperty("arena_bytes_" + tag, std::to_string(pa.arena_bytes));
    RecordProperty("arena_bytes_" + tag + "_without_passes", std::to_string(pb.arena_bytes));
  }
}

// view_upsample_concats: the decoders' upsample-concats become views (never stored) where only
// forward BN statistics and convolutions read them as x: in a fused training graph once backward
// reads the recomputed copies, and in a fused inference graph.
TEST(BackwardMemory, UpsampleConcatsBecomeViewsReadInPlace) {
  auto views = [](const Graph& g) {
    std::vector<int> v;
    for (int i = 0; i < g.num_nodes(); ++i)
      if (g.node(i).view) v.push_back(i);
    return v;
  };
  const ModelGraph train = training_graph(small_model(true), 2, 32, BackwardOptions{});
  ModelGraph infer = build_resunetpp(small_model(true), 2, 32, 32, false);
  for (const Graph* g : {&train.graph, static_cast<const Graph*>(&infer.graph)}) {
    const std::vector<int> v = views(*g);
    ASSERT_EQ(v.size(), 3u);
    const Plan p = make_plan(*g, PlanMode::BestFit, cpu_workspace_bytes);
    EXPECT_NO_THROW(verify_plan(*g, p));
    for (int i : v) {
      const Node& n = g->node(i);
      EXPECT_EQ(n.op, OpKind::UpsampleConcat);
      const int y = n.out[0];
      EXPECT_EQ(p.offset[size_t(y)], -1) << g->tensor(y).name << " has bytes";
      int readers = 0, last = -1;
      for (int r = 0; r < g->num_nodes(); ++r) {
        const Node& rn = g->node(r);
        if (std::find(rn.in.begin(), rn.in.end(), y) == rn.in.end()) continue;
        ++readers;
        last = r;
        EXPECT_TRUE(rn.op == OpKind::BatchNormStats || rn.op == OpKind::BnReluConv2d || rn.op == OpKind::Conv2d)
            << rn.name << " (" << op_name(rn.op) << ") reads the view " << g->tensor(y).name;
        EXPECT_EQ(rn.in[0], y) << rn.name;
      }
      EXPECT_EQ(readers, 3) << n.name;  // the block's first BN statistics, its BN-ReLU-conv, the shortcut
      for (int t : n.in) EXPECT_GE(p.last[size_t(t)], last) << g->tensor(t).name << " dies before the view's reader";
    }
  }
  // verify_plan sees a view input that dies before the view's last reader.
  {
    const Graph& g = infer.graph;
    Plan p = make_plan(g, PlanMode::BestFit, cpu_workspace_bytes);
    const int v = views(g)[0];
    p.last[size_t(g.node(v).in[0])] = v;
    EXPECT_THROW(verify_plan(g, p), Error);
  }
  // No views: off, with backward reading the forward values (no recomputation), unfused graphs.
  EXPECT_TRUE(views(training_graph(small_model(true), 2, 32, BackwardOptions{true, true, false}).graph).empty());
  EXPECT_TRUE(views(training_graph(small_model(true), 2, 32, BackwardOptions{false, true, true}).graph).empty());
  EXPECT_TRUE(views(training_graph(small_model(false), 2, 32, BackwardOptions{}).graph).empty());
  EXPECT_TRUE(views(build_resunetpp(small_model(false), 2, 32, 32, false).graph).empty());
}

// Views change where values are read from, not the values: three training steps are bit-identical
// with and without them, and so is inference. On the CPU each reader gets the view made just
// before it, so the arenas lose the concatenations.
TEST(BackwardMemory, ViewsChangeMemoryNotResults) {
  const ModelGraph a = training_graph(small_model(true), 2, 32, BackwardOptions{}, OptimizerKind::SGD);
  const ModelGraph b = training_graph(small_model(true), 2, 32, BackwardOptions{true, true, false}, OptimizerKind::SGD);
  const auto [with, without] = test::expect_lockstep_training({&a}, {&b}, 23, 3, 1e-2);
  EXPECT_LE(with, without);

  ModelGraph v = build_resunetpp(small_model(true), 2, 32, 32, false);
  ModelGraph s = v;  // the same graph with every concatenation stored
  std::vector<Node> nodes = s.graph.nodes();
  for (Node& n : nodes) n.view = false;
  s.graph.set_nodes(std::move(nodes));
  ParamStore pv, ps;
  init_params(v.graph, pv, 5);
  init_params(s.graph, ps, 5);
  CpuExecutor ev(v.graph, pv), es(s.graph, ps);
  EXPECT_LT(ev.plan().arena_bytes, es.plan().arena_bytes);
  ev.poison();
  es.poison();
  Rng r{9};
  const int64_t count = numel(v.graph.tensor(v.image).shape);
  for (int64_t i = 0; i < count; ++i) ev.data(v.image)[i] = es.data(s.image)[i] = r.uniform();
  ev.run();
  es.run();
  const int64_t nl = numel(v.graph.tensor(v.logits).shape);
  EXPECT_EQ(std::memcmp(ev.data(v.logits), es.data(s.logits), size_t(nl) * sizeof(float)), 0);
}
