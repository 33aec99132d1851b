// tests/test_planner.cpp — the static memory plan: correctness invariants, and a planned arena
// that gives bit-identical training to one allocation per tensor while using less memory.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "model/resunetpp.h"
#include "runtime/autodiff.h"
#include "runtime/executor_cpu.h"
#include "runtime/rng.h"
#include "tests/lockstep_training.h"

using namespace rpp;

namespace {
ModelConfig small_model() {
  ModelConfig c;
  c.filters = {8, 8, 16, 16, 32};
  return c;
}
}  // namespace

TEST(Planner, NoLiveTensorsShareBytes) {
  ModelGraph m = build_resunetpp(ModelConfig{}, 4, 64, 64, true);
  append_backward_and_update(m.graph, m.loss, OptimizerKind::Adam);
  Plan p = make_plan(m.graph, PlanMode::BestFit, cpu_workspace_bytes);
  EXPECT_NO_THROW(verify_plan(m.graph, p));
  EXPECT_LT(p.arena_bytes, p.naive_bytes);
  EXPECT_GT(p.workspace_bytes, 0u);
  Plan naive = make_plan(m.graph, PlanMode::Naive, cpu_workspace_bytes);
  EXPECT_EQ(naive.arena_bytes, naive.naive_bytes);
  EXPECT_NO_THROW(verify_plan(m.graph, naive));
  // Every non-persistent tensor that a node writes has a place; persistent ones have none.
  for (int t = 0; t < m.graph.num_tensors(); ++t) {
    const TensorInfo& ti = m.graph.tensor(t);
    if (is_persistent(ti.kind)) {
      EXPECT_EQ(p.offset[size_t(t)], -1) << ti.name;
    }
    if (ti.kind == TensorKind::Input) {
      EXPECT_GE(p.offset[size_t(t)], 0) << ti.name;
    }
    if (p.offset[size_t(t)] >= 0) {
      EXPECT_EQ(p.offset[size_t(t)] % 256, 0) << ti.name;
    }
  }
}

TEST(Planner, VerifyDetectsAnOverlap) {
  ModelGraph m = build_resunetpp(small_model(), 1, 16, 16, false);
  Plan p = make_plan(m.graph, PlanMode::BestFit, cpu_workspace_bytes);
  // Put the logits where the image lives: both are live at the end.
  p.offset[size_t(m.logits)] = p.offset[size_t(m.image)];
  EXPECT_THROW(verify_plan(m.graph, p), Error);
}

TEST(Planner, ArenaTrainingIsBitIdenticalToNaiveAllocation) {
  ModelGraph m = build_resunetpp(small_model(), 2, 32, 32, true);
  append_backward_and_update(m.graph, m.loss, OptimizerKind::Adam);
  // The arena (with in-place outputs) against one block per tensor.
  const auto [planned, naive] = test::expect_lockstep_training({&m, PlanMode::BestFit}, {&m, PlanMode::Naive}, 5, 3);
  EXPECT_LT(planned, naive);
}

TEST(Planner, TrainingPlanAt256Batch16) {
  // The number the summary reports: best-fit arena against the naive sum for the full network.
  ModelGraph m = build_resunetpp(ModelConfig{}, 16, 256, 256, true);
  append_backward_and_update(m.graph, m.loss, OptimizerKind::Adam);
  Plan p = make_plan(m.graph, PlanMode::BestFit, cpu_workspace_bytes);
  EXPECT_NO_THROW(verify_plan(m.graph, p));
  EXPECT_LT(double(p.arena_bytes), 0.75 * double(p.naive_bytes));
  RecordProperty("arena_bytes", std::to_string(p.arena_bytes));
  RecordProperty("naive_bytes", std::to_string(p.naive_bytes));
}

// No placement can need less than the most bytes live at one node (aligned sizes, inputs and
// outputs live throughout; an in-place output and its input count once). For ResUNet++'s plans
// the planner comes within 0.5% of that bound, thanks to the offline placements by size (at
// 256x256, batch 16 it meets it for the fused training graph: 2,020 MiB; with the lowest-offset
// placement alone, 2,084 MiB; before the max pools kept window indices and before in-place
// outputs, recomputation and moved backward nodes, the bound was 3,296 MiB and the best-fit sweep
// alone needed 3,936).
TEST(Planner, ArenaReachesThePeakOfLiveBytes) {
  for (bool fuse : {false, true})
    for (bool training : {false, true}) {
      ModelConfig cfg;
      cfg.fuse = fuse;
      ModelGraph m = build_resunetpp(cfg, 4, 64, 64, training);
      if (training) append_backward_and_update(m.graph, m.loss, OptimizerKind::Adam);
      const Graph& g = m.graph;
      const Plan p = make_plan(g, PlanMode::BestFit, cpu_workspace_bytes);
      EXPECT_NO_THROW(verify_plan(g, p));
      // An in-place output and the input whose bytes it takes over count once, live from the
      // input's definition to the output's last use.
      std::vector<int> end = p.last;
      for (int t = g.num_tensors() - 1; t >= 0; --t)
        for (int u = t; p.alias[size_t(u)] >= 0; u = p.alias[size_t(u)])
          end[size_t(p.alias[size_t(u)])] = std::max(end[size_t(p.alias[size_t(u)])], p.last[size_t(t)]);
      std::vector<size_t> live(size_t(g.num_nodes()) + 1, 0);
      for (int t = 0; t < g.num_tensors(); ++t) {
        if (p.offset[size_t(t)] < 0 || p.alias[size_t(t)] >= 0) continue;
        const TensorInfo& ti = g.tensor(t);
        const size_t bytes = (size_t(numel(ti.shape)) * dtype_size(ti.dtype) + Plan::kAlign - 1) / Plan::kAlign *
                             Plan::kAlign;
        for (int i = std::max(0, p.first[size_t(t)]); i <= std::min(end[size_t(t)], g.num_nodes()); ++i)
          live[size_t(i)] += bytes;
      }
      const size_t peak = *std::max_element(live.begin(), live.end());
      SCOPED_TRACE(std::string(fuse ? "fused " : "unfused ") + (training ? "training" : "inference"));
      EXPECT_GE(p.arena_bytes, peak);
      EXPECT_LE(double(p.arena_bytes), 1.005 * double(peak));
    }
}

// An elementwise node writes its output over an input that it is the last reader of; an input that
// a later node reads, a graph input and a graph output keep their own bytes.
TEST(Planner, InPlaceOutputsTakeOverInputsThatDieThere) {
  Graph g;
  GraphBuilder b(g, false);
  const int x = b.input("x", {2, 8, 8, 4});
  const int r = b.relu("r", x);       // x is a graph input: r gets bytes of its own
  const int s = b.relu("s", r);       // r is read again by t: s gets bytes of its own
  const int t = b.add("t", s, r);     // r dies here (s is read again by v): t takes r's bytes
  const int u = b.add("u", t, t);     // t dies here: u takes t's bytes
  const int v = b.mul("v", u, s);     // u and s die here: v takes u's (the first candidate)
  g.tensor(v).is_output = true;
  const int w = b.relu("w", v);       // v is a graph output: w gets bytes of its own
  g.tensor(w).is_output = true;
  const Plan p = make_plan(g, PlanMode::BestFit, nullptr);
  EXPECT_NO_THROW(verify_plan(g, p));
  EXPECT_EQ(p.alias[size_t(r)], -1);
  EXPECT_EQ(p.alias[size_t(s)], -1);  // r is read again by t
  EXPECT_EQ(p.alias[size_t(t)], r);
  EXPECT_EQ(p.alias[size_t(u)], t);
  EXPECT_EQ(p.alias[size_t(v)], u);
  EXPECT_EQ(p.alias[size_t(w)], -1);
  for (int a : {t, u, v}) {
    EXPECT_EQ(p.offset[size_t(a)], p.offset[size_t(p.alias[size_t(a)])]) << g.tensor(a).name;
  }
  // Four blocks of 2 x 8 x 8 x 4 floats: x, s, r|t|u|v and w, never more than three live at once
  // (x, s and r|t|u|v; then x, v and w), where one block per tensor would need four at t.
  const size_t block = 2 * 8 * 8 * 4 * sizeof(float);
  EXPECT_EQ(p.arena_bytes, 3 * block);
  const Plan naive = make_plan(g, PlanMode::Naive, nullptr);
  for (int a = 0; a < g.num_tensors(); ++a) EXPECT_EQ(naive.alias[size_t(a)], -1);
}

TEST(Planner, VerifyDetectsAnAliasOfAnInputReadLater) {
  Graph g;
  GraphBuilder b(g, false);
  const int x = b.input("x", {4, 4});
  const int r = b.relu("r", x);
  const int s = b.relu("s", r);
  const int t = b.add("t", s, r);  // r is read after s is written
  g.tensor(t).is_output = true;
  Plan p = make_plan(g, PlanMode::BestFit, nullptr);
  ASSERT_EQ(p.alias[size_t(s)], -1);
  EXPECT_NO_THROW(verify_plan(g, p));
  p.alias[size_t(s)] = r;
  p.offset[size_t(s)] = p.offset[size_t(r)];
  EXPECT_THROW(verify_plan(g, p), Error);
}
