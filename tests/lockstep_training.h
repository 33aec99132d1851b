// tests/lockstep_training.h — trains two graphs of one network side by side on the CPU and checks
// that they give the same bits: for graph rewrites and plans that must not change any value.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <string>
#include <utility>

#include "model/resunetpp.h"
#include "runtime/executor_cpu.h"
#include "runtime/rng.h"

namespace rpp::test {

// The network with small filter counts (8, 8, 16, 16, 32), fused or not: the tests' usual model.
inline ModelConfig small_network(bool fuse) {
  ModelConfig c;
  c.filters = {8, 8, 16, 16, 32};
  c.fuse = fuse;
  return c;
}

struct Lockstep {
  const ModelGraph* graph;
  PlanMode plan = PlanMode::BestFit;
};

// Runs `steps` training steps of a and b (the same network, graphs built with the same optimiser)
// from the same parameters (seed; then `prepare`, when given, on each store) on the same random
// batches, poisoning both arenas before each step so that a read of a byte not written in that
// step shows as NaN. Expects the same loss and gradient norm at every step, and the same
// parameters, BN statistics and optimiser state at the end, bit for bit. Returns a's executor's
// arena bytes and b's, for the caller's comparisons.
inline std::pair<size_t, size_t> expect_lockstep_training(
    Lockstep a, Lockstep b, uint64_t seed, int steps, double lr = 1e-3,
    const std::function<void(const Graph&, ParamStore&)>& prepare = nullptr) {
  ParamStore sa, sb;
  init_params(a.graph->graph, sa, seed);
  init_params(b.graph->graph, sb, seed);
  if (prepare) {
    prepare(a.graph->graph, sa);
    prepare(b.graph->graph, sb);
  }
  CpuExecutor ea(a.graph->graph, sa, a.plan), eb(b.graph->graph, sb, b.plan);
  for (int step = 1; step <= steps; ++step) {
    ea.poison();
    eb.poison();
    for (auto [e, m] : {std::pair<CpuExecutor*, const ModelGraph*>{&ea, a.graph}, {&eb, b.graph}}) {
      Rng r{uint64_t(step)};
      float* img = e->data(m->image);
      float* tgt = e->data(m->target);
      for (int64_t i = 0; i < numel(m->graph.tensor(m->image).shape); ++i) img[i] = r.uniform();
      for (int64_t i = 0; i < numel(m->graph.tensor(m->target).shape); ++i) tgt[i] = r.uniform() < 0.3f ? 1.f : 0.f;
    }
    cpu::OptimStep os;
    os.step = step;
    os.lr = lr;
    ea.run(&os);
    eb.run(&os);
    const float la = *ea.data(a.graph->loss), lb = *eb.data(b.graph->loss);
    EXPECT_TRUE(std::isfinite(la)) << "step " << step;
    EXPECT_EQ(std::memcmp(&la, &lb, sizeof la), 0) << "step " << step << ": " << la << " vs " << lb;
    EXPECT_EQ(ea.last_grad_norm(), eb.last_grad_norm()) << "step " << step;
  }
  EXPECT_EQ(sa.names().size(), sb.names().size());
  int differ = 0;  // name the first few tensors that differ
  for (const std::string& name : sa.names())
    if (std::memcmp(sa.get(name).raw(), sb.get(name).raw(), sa.get(name).nbytes()) != 0 && ++differ <= 5)
      ADD_FAILURE() << name << " differs after " << steps << " steps";
  EXPECT_EQ(differ, 0);
  return {ea.plan().arena_bytes, eb.plan().arena_bytes};
}

}  // namespace rpp::test
