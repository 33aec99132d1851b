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
  const int n = 2, size = 32;
  ModelGraph m = build_resunetpp(small_model(), n, size, size, true);
  append_backward_and_update(m.graph, m.loss, OptimizerKind::Adam);
  ParamStore sa, sb;
  init_params(m.graph, sa, 5);
  init_params(m.graph, sb, 5);
  CpuExecutor a(m.graph, sa, PlanMode::BestFit), b(m.graph, sb, PlanMode::Naive);
  EXPECT_LT(a.plan().arena_bytes, b.plan().arena_bytes);
  for (int step = 1; step <= 3; ++step) {
    a.poison();  // any read of a not-yet-written arena byte would surface as NaN
    b.poison();
    for (CpuExecutor* e : {&a, &b}) {
      Rng r{uint64_t(step)};
      float* img = e->data(m.image);
      float* tgt = e->data(m.target);
      for (int64_t i = 0; i < int64_t(n) * size * size * 3; ++i) img[i] = r.uniform();
      for (int64_t i = 0; i < int64_t(n) * size * size; ++i) tgt[i] = r.uniform() < 0.3f ? 1.f : 0.f;
    }
    cpu::OptimStep os;
    os.step = step;
    a.run(&os);
    b.run(&os);
    const float la = *a.data(m.loss), lb = *b.data(m.loss);
    ASSERT_TRUE(std::isfinite(la));
    ASSERT_EQ(std::memcmp(&la, &lb, sizeof la), 0) << "step " << step << ": " << la << " vs " << lb;
  }
  for (const std::string& name : sa.names())
    ASSERT_EQ(0, std::memcmp(sa.get(name).raw(), sb.get(name).raw(), sa.get(name).nbytes())) << name;
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
// outputs live throughout). For ResUNet++'s plans the planner comes within 0.5% of that bound
// (at 256x256, batch 16, the fused training graph meets it: 2,876 MiB; before the max pools kept
// window indices, 3,296 MiB, where the best-fit sweep alone needed 3,936), thanks to the offline
// placement by size.
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
      std::vector<size_t> live(size_t(g.num_nodes()) + 1, 0);
      for (int t = 0; t < g.num_tensors(); ++t) {
        if (p.offset[size_t(t)] < 0) continue;
        const TensorInfo& ti = g.tensor(t);
        const size_t bytes = (size_t(numel(ti.shape)) * dtype_size(ti.dtype) + Plan::kAlign - 1) / Plan::kAlign *
                             Plan::kAlign;
        for (int i = std::max(0, p.first[size_t(t)]); i <= std::min(p.last[size_t(t)], g.num_nodes()); ++i)
          live[size_t(i)] += bytes;
      }
      const size_t peak = *std::max_element(live.begin(), live.end());
      SCOPED_TRACE(std::string(fuse ? "fused " : "unfused ") + (training ? "training" : "inference"));
      EXPECT_GE(p.arena_bytes, peak);
      EXPECT_LE(double(p.arena_bytes), 1.005 * double(peak));
    }
}
