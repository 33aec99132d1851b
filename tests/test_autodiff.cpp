// tests/test_autodiff.cpp — reverse-mode gradients of whole ResUNet++ blocks (stem, residual block,
// ASPP, attention, decoder) through the graph, planner and CPU executor, against central finite
// differences of the same executor's loss. The block inputs are made Params so that their
// gradients are checked too. Float arithmetic: compared norm-wise over sampled entries.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "model/resunetpp.h"
#include "runtime/autodiff.h"
#include "runtime/executor_cpu.h"
#include "runtime/rng.h"

using namespace rpp;

namespace {

using BlockFn = std::function<int(ResUNetBlocks&, GraphBuilder&)>;

void check_block(const BlockFn& make, uint64_t seed) {
  Graph g;
  GraphBuilder gb(g, true);
  ResUNetBlocks blocks(gb);
  const int y = make(blocks, gb);
  const int target = gb.input("target", g.tensor(y).shape);
  const int loss = gb.loss("loss", y, target, LossKind::BCEDice);
  std::vector<int> grads = append_backward(g, loss);
  for (int t : grads) g.tensor(t).is_output = true;

  ParamStore store;
  init_params(g, store, seed);
  Rng rng(seed, 99);
  // Block inputs (named x, g) get unit-scale values; everything else keeps its initialisation.
  for (const char* in : {"x", "g"})
    if (store.has(in))
      for (int64_t i = 0; i < store.get(in).numel(); ++i) store.get(in).f()[i] = rng.normal();
  CpuExecutor ex(g, store);
  float* t = ex.data(target);
  for (int64_t i = 0; i < numel(g.tensor(target).shape); ++i) t[i] = rng.uniform() < 0.4f ? 1.f : 0.f;

  auto loss_now = [&] {
    ex.run();
    return double(*ex.data(loss));
  };
  loss_now();
  const std::vector<int> params = g.of_kind(TensorKind::Param);
  std::vector<std::vector<float>> ad(params.size());
  for (size_t p = 0; p < params.size(); ++p) {
    const float* gr = ex.data(grads[p]);
    ad[p].assign(gr, gr + numel(g.tensor(params[p]).shape));
  }
  double num = 0, den = 0;
  int checked = 0;
  for (size_t p = 0; p < params.size(); ++p) {
    Tensor& w = store.get(g.tensor(params[p]).name);
    const int64_t n = w.numel();
    for (int k = 0; k < 4; ++k) {
      const int64_t i = int64_t(rng.below(uint32_t(n)));
      const float orig = w.f()[i];
      const float eps = 2e-3f * std::max(1.f, std::fabs(orig));
      w.f()[i] = orig + eps;
      const double lp = loss_now();
      w.f()[i] = orig - eps;
      const double lm = loss_now();
      w.f()[i] = orig;
      const double fd = (lp - lm) / (double(orig + eps) - double(orig - eps));
      num += (fd - ad[p][size_t(i)]) * (fd - ad[p][size_t(i)]);
      den += fd * fd;
      ++checked;
      // Per-entry: loose, to localise a wrong rule; the norm-wise check below is the tight one.
      EXPECT_NEAR(ad[p][size_t(i)], fd, 0.05 * std::fabs(fd) + 2e-4) << g.tensor(params[p]).name << "[" << i << "]";
    }
  }
  ASSERT_GT(den, 0.0);
  EXPECT_LT(std::sqrt(num / den), 0.02) << "relative gradient error over " << checked << " entries";
}

}  // namespace

TEST(Autodiff, StemBlock) {
  check_block([](ResUNetBlocks& b, GraphBuilder& gb) {
    return b.stem("c1", gb.param("x", {2, 8, 8, 3}), 8);
  }, 1);
}

TEST(Autodiff, ResidualBlockStride2) {
  check_block([](ResUNetBlocks& b, GraphBuilder& gb) {
    return b.resblock("c2", gb.param("x", {2, 8, 8, 8}), 16, 2);
  }, 2);
}

TEST(Autodiff, ResidualBlockStride1) {
  check_block([](ResUNetBlocks& b, GraphBuilder& gb) {
    return b.resblock("r1", gb.param("x", {2, 6, 6, 16}), 8, 1);
  }, 3);
}

TEST(Autodiff, ASPP) {
  check_block([](ResUNetBlocks& b, GraphBuilder& gb) {
    return b.aspp("b1", gb.param("x", {2, 8, 8, 8}), 8);
  }, 4);
}

TEST(Autodiff, AttentionGate) {
  check_block([](ResUNetBlocks& b, GraphBuilder& gb) {
    int g = gb.param("g", {2, 8, 8, 8});
    int x = gb.param("x", {2, 4, 4, 16});
    return b.attention("a1", g, x);
  }, 5);
}

TEST(Autodiff, DecoderBlock) {
  check_block([](ResUNetBlocks& b, GraphBuilder& gb) {
    int g = gb.param("g", {2, 8, 8, 8});
    int x = gb.param("x", {2, 4, 4, 16});
    return b.decoder("d1", g, x, 8);
  }, 6);
}

TEST(Autodiff, GradientOfSharedTensorIsSummed) {
  // y = x * x through Mul with both inputs the same tensor: dy/dx = 2x.
  Graph g;
  GraphBuilder gb(g, true);
  int x = gb.param("x", {1, 2, 2, 1});
  int y = gb.mul("sq", x, x);
  int t = gb.input("t", {1, 2, 2, 1});
  int l = gb.loss("loss", y, t, LossKind::BCE);
  std::vector<int> grads = append_backward(g, l);
  g.tensor(grads[0]).is_output = true;
  ParamStore s;
  s.ensure(g);
  float xs[4] = {0.5f, -1.f, 2.f, 0.25f};
  std::copy(xs, xs + 4, s.get("x").f());
  CpuExecutor ex(g, s);
  std::fill(ex.data(t), ex.data(t) + 4, 0.f);
  ex.run();
  for (int i = 0; i < 4; ++i) {
    const double yv = double(xs[i]) * xs[i];
    const double dl_dy = 1.0 / (1.0 + std::exp(-yv)) / 4.0;  // BCE mean with target 0
    EXPECT_NEAR(ex.data(grads[0])[i], dl_dy * 2 * xs[i], 1e-6);
  }
}

// Training max pools record their window indices (1 byte per output), and backward reads those:
// the pool's input, the attention gate's full-resolution skip convolution, is not kept for
// backward. (The gradients through them are checked above: AttentionGate, DecoderBlock.)
TEST(Autodiff, MaxPoolBackwardReadsTheWindowIndicesNotTheInput) {
  Graph g;
  GraphBuilder gb(g, true);
  ResUNetBlocks blocks(gb);
  const int y = blocks.attention("a1", gb.param("g", {2, 8, 8, 8}), gb.param("x", {2, 4, 4, 16}));
  const int target = gb.input("target", g.tensor(y).shape);
  append_backward(g, gb.loss("loss", y, target, LossKind::BCEDice));
  int pools = 0, pool_bwds = 0;
  for (const Node& n : g.nodes()) {
    if (n.op == OpKind::MaxPool2) {
      ++pools;
      ASSERT_EQ(n.out.size(), 2u);
      const TensorInfo& arg = g.tensor(n.out[1]);
      EXPECT_EQ(arg.dtype, DType::U8);
      EXPECT_EQ(arg.shape, g.tensor(n.out[0]).shape);
      EXPECT_FALSE(arg.requires_grad);
      for (const Node& b : g.nodes()) {
        if (is_forward(b.op)) continue;
        for (int t : b.in) EXPECT_NE(t, n.in[0]) << op_name(b.op) << " " << b.name << " reads the pool's input";
        if (b.op == OpKind::MaxPool2Bwd) {
          ++pool_bwds;
          EXPECT_EQ(b.in, (std::vector<int>{n.out[1], b.in[1]}));
          EXPECT_EQ(g.tensor(b.out[0]).shape, g.tensor(n.in[0]).shape);
        }
      }
    }
  }
  EXPECT_EQ(pools, 1);
  EXPECT_EQ(pool_bwds, 1);
  // An inference graph's pool has no indices.
  Graph ig;
  GraphBuilder ib(ig, false);
  ResUNetBlocks iblocks(ib);
  iblocks.attention("a1", ib.input("g", {1, 8, 8, 8}), ib.input("x", {1, 4, 4, 16}));
  for (const Node& n : ig.nodes()) {
    if (n.op == OpKind::MaxPool2) {
      EXPECT_EQ(n.out.size(), 1u);
    }
  }
}
