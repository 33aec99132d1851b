// tests/test_nonfinite.cpp — a training step whose loss or gradient norm is not finite is skipped
// (runtime/executor.h, Executor::run): parameters, optimiser state and BN running statistics stay
// bit for bit as they were, and the next finite step continues exactly as if the bad batch had
// never been seen. CPU executor, fused and unfused graphs, SGD with momentum and Adam.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "model/resunetpp.h"
#include "runtime/autodiff.h"
#include "runtime/executor_cpu.h"
#include "runtime/rng.h"

using namespace rpp;

namespace {

using Snapshot = std::map<std::string, std::vector<unsigned char>>;

Snapshot snapshot(const ParamStore& s) {
  Snapshot m;
  for (const std::string& n : s.names()) {
    const Tensor& t = s.get(n);
    const auto* p = static_cast<const unsigned char*>(t.raw());
    m[n].assign(p, p + t.nbytes());
  }
  return m;
}

bool is_counter(const std::string& name) {
  const std::string suf = ".num_batches_tracked";
  return name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0;
}

// Names of the tensors that differ between two snapshots, counters left out.
std::vector<std::string> differing(const Snapshot& a, const Snapshot& b) {
  std::vector<std::string> d;
  for (const auto& [name, bytes] : a)
    if (!is_counter(name) && bytes != b.at(name)) d.push_back(name);
  return d;
}

void fill_batch(CpuExecutor& e, const ModelGraph& m, uint64_t seed, float poison) {
  Rng r{seed};
  float* img = e.data(m.image);
  for (int64_t i = 0; i < numel(m.graph.tensor(m.image).shape); ++i) img[i] = r.uniform();
  float* tgt = e.data(m.target);
  for (int64_t i = 0; i < numel(m.graph.tensor(m.target).shape); ++i) tgt[i] = r.uniform() < 0.3f ? 1.f : 0.f;
  if (poison != 0) img[17] = poison;
}

cpu::OptimStep step_of(OptimizerKind k, int64_t t) {
  cpu::OptimStep os;
  os.step = t;
  os.lr = k == OptimizerKind::SGD ? 1e-2 : 1e-3;
  os.momentum = 0.9;
  return os;
}

struct Case {
  OptimizerKind opt;
  bool fuse;
};

}  // namespace

TEST(NonFiniteStep, IsSkippedAndTheNextStepContinuesExactly) {
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  for (Case c : {Case{OptimizerKind::SGD, false}, Case{OptimizerKind::Adam, true}, Case{OptimizerKind::Adam, false}}) {
    for (float poison : {nan, inf}) {
      SCOPED_TRACE(std::string(optimizer_name(c.opt)) + (c.fuse ? " fused" : " unfused") + " poison " +
                   std::to_string(poison));
      ModelConfig cfg;
      cfg.filters = {8, 8, 16, 16, 32};
      cfg.fuse = c.fuse;
      ModelGraph m = build_resunetpp(cfg, 2, 16, 16, true);
      append_backward_and_update(m.graph, m.loss, c.opt);
      ParamStore s;
      init_params(m.graph, s, 5);
      CpuExecutor e(m.graph, s, PlanMode::BestFit);
      // Step 1: finite, so that momentum / moments and running statistics are non-trivial.
      const cpu::OptimStep os1 = step_of(c.opt, 1);
      fill_batch(e, m, 1, 0);
      e.run(&os1);
      ASSERT_TRUE(std::isfinite(e.last_loss()));
      const Snapshot after1 = snapshot(s);

      // Step 2: one poisoned input value. Nothing but the BN batch counters may change.
      fill_batch(e, m, 2, poison);
      const cpu::OptimStep os2 = step_of(c.opt, 2);
      e.run(&os2);
      EXPECT_FALSE(std::isfinite(e.last_loss()) && std::isfinite(e.last_grad_norm()))
          << "the poisoned step looked finite: loss " << e.last_loss() << ", norm " << e.last_grad_norm();
      const Snapshot after2 = snapshot(s);
      EXPECT_EQ(differing(after1, after2), std::vector<std::string>{});

      // Step 3 (the second optimiser step) on this executor, and on a fresh store that never saw
      // the poisoned batch: the same bits everywhere except the BN counters.
      fill_batch(e, m, 3, 0);
      e.run(&os2);
      ASSERT_TRUE(std::isfinite(e.last_loss()));
      ParamStore ref_store;
      init_params(m.graph, ref_store, 5);
      CpuExecutor ref(m.graph, ref_store, PlanMode::BestFit);
      fill_batch(ref, m, 1, 0);
      ref.run(&os1);
      fill_batch(ref, m, 3, 0);
      ref.run(&os2);
      EXPECT_EQ(e.last_loss(), ref.last_loss());
      const Snapshot a = snapshot(s), b = snapshot(ref_store);
      EXPECT_EQ(differing(a, b), std::vector<std::string>{});
      // ... and the step really moved the parameters.
      EXPECT_FALSE(differing(after2, a).empty());
    }
  }
}
