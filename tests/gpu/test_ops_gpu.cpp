// tests/gpu/test_ops_gpu.cpp — every non-convolution CUDA op (kernels/cuda/batchnorm, elementwise,
// loss, optim) against the CPU reference (kernels/cpu/ops.h), forward and backward:
//  * random inputs, a fresh seed per buffer (RPP_GPU_TEST_SEED=<n> changes the base seed);
//  * the non-conv op shapes of every ResUNet++ layer at 64x64 and 256x256 (batch 2), plus odd
//    sizes that leave ragged channel tiles, partial row groups and single elements;
//  * outputs (and workspaces) poisoned with NaN before every launch; guard bytes before and after
//    every device buffer checked untouched afterwards;
//  * fp32 tolerances: bit-exact where the GPU does the CPU's float operations in the same order,
//    ~1e-6 relative for libm and dot products, ~1e-5 relative for reductions;
//  * determinism: every op runs twice and must give the same bits;
//  * the optimiser step captured once in a CUDA graph and replayed with new step values.
// Each GPU test skips (GTEST_SKIP) when there is no CUDA device; the host-side argument checks
// (GpuOpsArguments) run everywhere, since they fail before anything reaches the device.
//   ./build/gpu_test_ops_gpu   (--gtest_filter=GpuBatchNorm.* for one group)
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iomanip>
#include <limits>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/optim.cuh"
#include "runtime/error.h"
#include "runtime/rng.h"

#include "gpu_test_util.h"

namespace cpu = rpp::cpu;
namespace gpu = rpp::cuda;

namespace {

using namespace rpp::gputest;

size_t sz(int64_t v) { return static_cast<size_t>(v); }

constexpr double kExact = 0;     // same bits
constexpr double kElem = 1e-6;   // libm differences, dot products rounded from double
constexpr double kReduce = 1e-5; // reductions, per-element math in float vs the CPU's double

// Binary targets, one with probability p.
Floats targets(size_t n, float p = 0.3f) {
  rpp::Rng rng(next_seed());
  Floats v(n);
  for (float& x : v) x = rng.uniform() < p ? 1.f : 0.f;
  return v;
}

// Workspaces: DevBuf poisons on creation, so nothing can rely on zeros.
using Workspace = DevBuf;

// ---- Comparisons ----

// Every got[i] within rtol * (|ref[i]| + rms(ref)) of ref[i] (rtol 0: the same bits). A NaN or
// infinity where the reference is finite always fails.
::testing::AssertionResult near(const Floats& got, const Floats& ref, double rtol, double atol = 0) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << ref.size();
  double ss = 0;
  for (float r : ref)
    if (std::isfinite(r)) ss += double(r) * double(r);
  const double rms = ref.empty() ? 0.0 : std::sqrt(ss / double(ref.size()));
  size_t bad = 0;
  double worst = 0;
  std::ostringstream msg;
  msg << std::setprecision(9);
  for (size_t i = 0; i < ref.size(); ++i) {
    const float g = got[i], r = ref[i];
    bool ok;
    if (!std::isfinite(r)) {
      ok = std::memcmp(&g, &r, 4) == 0 || (std::isnan(g) && std::isnan(r));
    } else if (!std::isfinite(g)) {
      ok = false;
    } else if (rtol == 0) {
      ok = std::memcmp(&g, &r, 4) == 0;
    } else {
      const double err = std::fabs(double(g) - double(r));
      const double lim = rtol * (std::fabs(double(r)) + rms) + atol;
      ok = err <= lim;
      if (lim > 0) worst = std::max(worst, err / lim);
    }
    if (!ok) {
      if (++bad <= 6) msg << "\n  [" << i << "] got " << g << ", want " << r;
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << ref.size() << " values off (rtol "
                                       << rtol << ", rms " << rms << ")" << msg.str();
}

::testing::AssertionResult near_scalar(double got, double ref, double rtol) {
  if (std::isfinite(got) && std::fabs(got - ref) <= rtol * std::fabs(ref) + 1e-30)
    return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << std::setprecision(17) << "got " << got << ", want " << ref
                                       << " (rtol " << rtol << ")";
}

// ---- ResUNet++ shapes ----

struct Nhwc {
  int n, h, w, c;
  int64_t count() const { return int64_t(n) * h * w; }
  size_t size() const { return size_t(count()) * sz(c); }
  std::string str() const {
    std::ostringstream s;
    s << "(" << n << ", " << h << ", " << w << ", " << c << ")";
    return s.str();
  }
};

#ifdef RPP_CUDA_EMULATOR
// On the CPU emulator (tests/emu) the 64x64 layers only: the same code paths, minutes less.
const int kSizes[] = {64};
#else
const int kSizes[] = {64, 256};
#endif
constexpr int kBatch = 2;

// Every BatchNorm input of ResUNet++ at input size s (divisor of s, channels), batch 2: the stem
// and ResBlocks, the ASPP blocks, the attention gates and the decoders' concatenated inputs.
std::vector<Nhwc> bn_shapes() {
  std::vector<Nhwc> v;
  const std::pair<int, int> layers[] = {{1, 16}, {1, 32},  {1, 80},  {2, 32},  {2, 64},  {2, 160},
                                        {4, 64}, {4, 128}, {4, 320}, {8, 128}, {8, 256}};
  for (int s : kSizes)
    for (const auto& [d, c] : layers) v.push_back({kBatch, s / d, s / d, c});
  // Fewer channels than a tile, ragged last tiles, partial row groups, count 2, many channels.
  for (const Nhwc& o : {Nhwc{1, 1, 2, 1}, Nhwc{1, 3, 5, 3}, Nhwc{2, 7, 9, 33}, Nhwc{3, 17, 19, 5},
                        Nhwc{1, 100, 101, 48}, Nhwc{1, 1, 2, 2048}, Nhwc{16, 32, 32, 17}})
    v.push_back(o);
  return v;
}

// Squeeze-and-excitation inputs (N, H, W, C) of ResUNet++ at input size s.
std::vector<Nhwc> se_shapes() {
  std::vector<Nhwc> v;
  const std::pair<int, int> layers[] = {{1, 16}, {2, 32}, {4, 64}, {8, 128}, {4, 128}, {2, 64}, {1, 32}};
  for (int s : kSizes)
    for (const auto& [d, c] : layers) v.push_back({kBatch, s / d, s / d, c});
  for (const Nhwc& o : {Nhwc{1, 1, 1, 1}, Nhwc{3, 5, 7, 33}, Nhwc{2, 61, 67, 3}, Nhwc{16, 8, 8, 256}})
    v.push_back(o);
  return v;
}

// Max-pool inputs (the attention gates' g path) and odd sizes.
std::vector<Nhwc> pool_shapes() {
  std::vector<Nhwc> v;
  for (int s : kSizes)
    for (const auto& [d, c] : {std::pair<int, int>{1, 64}, {2, 128}, {4, 256}})
      v.push_back({kBatch, s / d, s / d, c});
  for (const Nhwc& o : {Nhwc{2, 64, 64, 64}, Nhwc{1, 2, 2, 1}, Nhwc{3, 6, 10, 5}, Nhwc{2, 4, 2, 33}})
    v.push_back(o);
  return v;
}

// Upsample inputs (the decoders' attention outputs) and odd sizes.
std::vector<Nhwc> upsample_shapes() {
  std::vector<Nhwc> v;
  for (int s : kSizes)
    for (const auto& [d, c] : {std::pair<int, int>{8, 256}, {4, 128}, {2, 64}})
      v.push_back({kBatch, s / d, s / d, c});
  for (const Nhwc& o : {Nhwc{1, 1, 1, 1}, Nhwc{2, 3, 5, 7}}) v.push_back(o);
  return v;
}

// Flat element counts for the elementwise ops.
std::vector<int64_t> flat_sizes() {
  std::vector<int64_t> v = {1, 7, 1000003};
  for (int s : kSizes) {
    v.push_back(int64_t(kBatch) * s * s * 16);
    v.push_back(int64_t(kBatch) * (s / 8) * (s / 8) * 256);
  }
  return v;
}

// ==== BatchNorm ====

struct BnParams {
  Floats gamma, beta, running_mean, running_var;
};

BnParams bn_params(int c) {
  return {uniform(sz(c), 0.5f, 1.5f), uniform(sz(c), -0.5f, 0.5f),
          uniform(sz(c), -1.f, 1.f), uniform(sz(c), 0.5f, 2.f)};
}

void check_bn_train(const Nhwc& s, double momentum, double eps, bool update_running) {
  SCOPED_TRACE(s.str() + (update_running ? "" : " without running stats"));
  const int64_t count = s.count();
  const int c = s.c;
  const Floats x = normal(s.size(), 3.f, 2.f);  // an offset mean exercises the variance pass
  const BnParams p = bn_params(c);

  Floats y(s.size()), sm(sz(c)), si(sz(c));
  Floats rm = p.running_mean, rv = p.running_var;
  cpu::batchnorm_forward_train(count, c, x.data(), p.gamma.data(), p.beta.data(), y.data(),
                               sm.data(), si.data(), update_running ? rm.data() : nullptr,
                               update_running ? rv.data() : nullptr, momentum, eps);

  Stream st;
  DevFloats dx(x), dg(p.gamma), db(p.beta), dy(s.size()), dsm(sz(c)), dsi(sz(c));
  DevFloats drm(p.running_mean), drv(p.running_var);
  Workspace ws(gpu::batchnorm_workspace_bytes(count, c));
  const auto out = run_twice(
      st, {&dy, &dsm, &dsi, &drm, &drv},
      [&] {
        drm.set(p.running_mean);
        drv.set(p.running_var);
        ws.poison();
      },
      [&] {
        gpu::batchnorm_forward_train(count, c, dx.p(), dg.p(), db.p(), dy.p(), dsm.p(), dsi.p(),
                                     update_running ? drm.p() : nullptr,
                                     update_running ? drv.p() : nullptr, momentum, eps, ws.data(),
                                     st);
      });
  EXPECT_TRUE(near(out[0], y, kReduce)) << "y";
  EXPECT_TRUE(near(out[1], sm, kReduce)) << "save_mean";
  EXPECT_TRUE(near(out[2], si, kReduce)) << "save_invstd";
  EXPECT_TRUE(near(out[3], rm, kReduce)) << "running_mean";
  EXPECT_TRUE(near(out[4], rv, kReduce)) << "running_var";
  expect_guards({&dx, &dg, &db, &dy, &dsm, &dsi, &drm, &drv, &ws});
}

TEST(GpuBatchNorm, TrainForwardMatchesCpu) {
  REQUIRE_GPU();
  for (const Nhwc& s : bn_shapes()) check_bn_train(s, 0.1, 1e-5, true);
  check_bn_train({2, 16, 16, 40}, 0.3, 1e-3, false);
  check_bn_train({2, 16, 16, 40}, 0.3, 1e-3, true);
}

// A channel with a NaN or Inf keeps its running statistics (as on the CPU); the others update.
TEST(GpuBatchNorm, NonFiniteChannelKeepsItsRunningStatistics) {
  REQUIRE_GPU();
  const Nhwc s{2, 8, 8, 6};
  const int64_t count = s.count();
  const int c = s.c;
  Floats x = normal(s.size(), 1.f, 2.f);
  x[sz(5 * c + 1)] = std::nanf("");
  x[sz(9 * c + 4)] = std::numeric_limits<float>::infinity();
  const BnParams p = bn_params(c);
  Floats sm(sz(c)), si(sz(c)), rm = p.running_mean, rv = p.running_var;
  cpu::batchnorm_stats_train(count, c, x.data(), sm.data(), si.data(), rm.data(), rv.data(), 0.1, 1e-5);
  Stream st;
  DevFloats dx(x), dsm(sz(c)), dsi(sz(c)), drm(p.running_mean), drv(p.running_var);
  Workspace ws(gpu::batchnorm_workspace_bytes(count, c));
  gpu::batchnorm_stats_train(count, c, dx.p(), dsm.p(), dsi.p(), drm.p(), drv.p(), 0.1, 1e-5, ws.data(), st);
  st.sync();
  const Floats grm = drm.get(), grv = drv.get();
  for (int ch = 0; ch < c; ++ch) {
    const bool bad = ch == 1 || ch == 4;
    SCOPED_TRACE("channel " + std::to_string(ch));
    if (bad) {
      EXPECT_TRUE(same_bits(Floats{grm[sz(ch)], grv[sz(ch)]}, Floats{p.running_mean[sz(ch)], p.running_var[sz(ch)]}));
      EXPECT_TRUE(same_bits(Floats{rm[sz(ch)], rv[sz(ch)]}, Floats{p.running_mean[sz(ch)], p.running_var[sz(ch)]}))
          << "the CPU reference updated a non-finite channel";
    } else {
      EXPECT_NE(grm[sz(ch)], p.running_mean[sz(ch)]);
    }
  }
  EXPECT_TRUE(near(grm, rm, kReduce)) << "running_mean";
  EXPECT_TRUE(near(grv, rv, kReduce)) << "running_var";
  expect_guards({&dx, &dsm, &dsi, &drm, &drv, &ws});
}

// Statistics from a producer's per-channel sums (the tensor-core conv epilogue) against the
// CPU's two-pass statistics of the same values; a NaN channel keeps its running statistics.
TEST(GpuBatchNorm, StatsFromSumsMatchCpu) {
  REQUIRE_GPU();
  for (const Nhwc& s : {Nhwc{2, 16, 16, 40}, Nhwc{1, 3, 5, 7}}) {
    SCOPED_TRACE(s.str());
    const int64_t count = s.count();
    const int c = s.c;
    Floats x = normal(s.size(), 3.f, 2.f);  // |mean| > std: the one-pass variance must cope
    x[sz(c + 2)] = std::nanf("");
    std::vector<double> sum(sz(c), 0.0), sumsq(sz(c), 0.0);
    for (int64_t i = 0; i < count; ++i)
      for (int ch = 0; ch < c; ++ch) {
        const double v = x[sz(i * c + ch)];
        sum[sz(ch)] += v;
        sumsq[sz(ch)] += v * v;
      }
    const BnParams p = bn_params(c);
    Floats sm(sz(c)), si(sz(c)), rm = p.running_mean, rv = p.running_var;
    cpu::batchnorm_stats_train(count, c, x.data(), sm.data(), si.data(), rm.data(), rv.data(), 0.1, 1e-5);
    Stream st;
    DevBuf dsum(sz(c) * sizeof(double)), dsumsq(sz(c) * sizeof(double));
    dsum.upload(sum.data(), sum.size() * sizeof(double));
    dsumsq.upload(sumsq.data(), sumsq.size() * sizeof(double));
    DevFloats dsm(sz(c)), dsi(sz(c)), drm(p.running_mean), drv(p.running_var);
    gpu::batchnorm_stats_from_sums(count, c, static_cast<const double*>(dsum.data()),
                                   static_cast<const double*>(dsumsq.data()), dsm.p(), dsi.p(), drm.p(), drv.p(), 0.1,
                                   1e-5, st);
    st.sync();
    const double tol = 1e-6;  // one-pass against two-pass variance, both in double, rounded to float
    EXPECT_TRUE(near(dsm.get(), sm, tol)) << "save_mean";
    EXPECT_TRUE(near(dsi.get(), si, tol)) << "save_invstd";
    EXPECT_TRUE(near(drm.get(), rm, tol)) << "running_mean";
    EXPECT_TRUE(near(drv.get(), rv, tol)) << "running_var";
    EXPECT_EQ(drm.get()[2], p.running_mean[2]) << "the NaN channel's running mean changed";
    expect_guards({&dsum, &dsumsq, &dsm, &dsi, &drm, &drv});
  }
}

TEST(GpuBatchNorm, EvalForwardMatchesCpu) {
  REQUIRE_GPU();
  for (const Nhwc& s : bn_shapes()) {
    SCOPED_TRACE(s.str());
    const int64_t count = s.count();
    const int c = s.c;
    const Floats x = normal(s.size(), 0.5f, 2.f);
    const BnParams p = bn_params(c);
    Floats y(s.size());
    cpu::batchnorm_forward_eval(count, c, x.data(), p.gamma.data(), p.beta.data(),
                                p.running_mean.data(), p.running_var.data(), 1e-5, y.data());
    Stream st;
    DevFloats dx(x), dg(p.gamma), db(p.beta), drm(p.running_mean), drv(p.running_var);
    DevFloats dy(s.size());
    const auto out = run_twice(st, {&dy}, nullptr, [&] {
      gpu::batchnorm_forward_eval(count, c, dx.p(), dg.p(), db.p(), drm.p(), drv.p(), 1e-5, dy.p(),
                                  st);
    });
    EXPECT_TRUE(near(out[0], y, kReduce)) << "y";
    expect_guards({&dx, &dg, &db, &drm, &drv, &dy});
  }
}

TEST(GpuBatchNorm, BackwardMatchesCpu) {
  REQUIRE_GPU();
  for (const Nhwc& s : bn_shapes()) {
    SCOPED_TRACE(s.str());
    const int64_t count = s.count();
    const int c = s.c;
    const Floats x = normal(s.size(), -1.f, 1.5f);
    const Floats g = normal(s.size());
    const BnParams p = bn_params(c);
    // The saved statistics come from the CPU forward, as the graph feeds them to backward.
    Floats y(s.size()), sm(sz(c)), si(sz(c));
    cpu::batchnorm_forward_train(count, c, x.data(), p.gamma.data(), p.beta.data(), y.data(),
                                 sm.data(), si.data(), static_cast<float*>(nullptr),
                                 static_cast<float*>(nullptr), 0.1, 1e-5);
    Floats dxr(s.size()), dgr(sz(c)), dbr(sz(c));
    cpu::batchnorm_backward(count, c, x.data(), g.data(), p.gamma.data(), sm.data(), si.data(),
                            dxr.data(), dgr.data(), dbr.data());

    Stream st;
    DevFloats dx(x), ddy(g), dgam(p.gamma), dsm(sm), dsi(si);
    DevFloats ddx(s.size()), ddg(sz(c)), ddb(sz(c));
    Workspace ws(gpu::batchnorm_workspace_bytes(count, c));
    const auto out = run_twice(
        st, {&ddx, &ddg, &ddb}, [&] { ws.poison(); },
        [&] {
          gpu::batchnorm_backward(count, c, dx.p(), ddy.p(), dgam.p(), dsm.p(), dsi.p(), ddx.p(),
                                  ddg.p(), ddb.p(), ws.data(), st);
        });
    // dx = k1 dy + k2 (x - mean) + k3 cancels to rounding noise when a channel has two values
    // (count 2: x - mean = +-1/invstd), so its error is measured against the size of the terms,
    // |gamma invstd dy|, too.
    double term = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      const size_t ch = i % sz(c);
      term = std::max(term, std::fabs(double(p.gamma[ch]) * double(si[ch]) * double(g[i])));
    }
    EXPECT_TRUE(near(out[0], dxr, kReduce, 1e-6 * term)) << "dx";
    EXPECT_TRUE(near(out[1], dgr, kReduce)) << "dgamma";
    EXPECT_TRUE(near(out[2], dbr, kReduce)) << "dbeta";
    expect_guards({&dx, &ddy, &dgam, &dsm, &dsi, &ddx, &ddg, &ddb, &ws});
  }
}

// BN backward from per-channel sums that a producer computed (the fused backward-data conv's
// epilogue), here in double on the host as batchnorm_backward forms them: sum dy, and
// (sum dy (x - mean)) * invstd. Against the CPU with BackwardMatchesCpu's tolerances, and against
// cuda::batchnorm_backward on the same data, which differs only in the order of its sums: every
// value within 2^-22 relative (an ulp or so of the final float rounding) plus 1e-12 of the size
// of the terms (dx: gamma invstd (|dy| + mean |dy| + |xhat| mean |dy xhat|); dgamma, dbeta: the
// sums of |dy xhat|, |dy|), which covers the summation-order difference of the double sums.
TEST(GpuBatchNorm, BackwardFromSumsMatchesCpuAndTwoPass) {
  REQUIRE_GPU();
  double worst_cpu_dx = 0, worst_two = 0;
  int64_t differ = 0, total = 0;
  for (const Nhwc& s : bn_shapes()) {
    SCOPED_TRACE(s.str());
    const int64_t count = s.count();
    const int c = s.c;
    const Floats x = normal(s.size(), -1.f, 1.5f);
    Floats g = normal(s.size());
    for (size_t i = 0; i < g.size(); i += 3) g[i] = 0.f;  // masked gradients, as the fused conv gives
    const BnParams p = bn_params(c);
    Floats y(s.size()), sm(sz(c)), si(sz(c));
    cpu::batchnorm_forward_train(count, c, x.data(), p.gamma.data(), p.beta.data(), y.data(), sm.data(), si.data(),
                                 static_cast<float*>(nullptr), static_cast<float*>(nullptr), 0.1, 1e-5);
    Floats dxr(s.size()), dgr(sz(c)), dbr(sz(c));
    cpu::batchnorm_backward(count, c, x.data(), g.data(), p.gamma.data(), sm.data(), si.data(), dxr.data(),
                            dgr.data(), dbr.data());
    std::vector<double> sdy(sz(c), 0.0), sdyx(sz(c), 0.0), abs_dy(sz(c), 0.0), abs_dyx(sz(c), 0.0);
    for (int64_t i = 0; i < count * c; ++i) {
      const size_t ch = sz(i % c);
      const double gy = g[sz(i)], d = double(x[sz(i)]) - double(sm[ch]);
      sdy[ch] += gy;
      sdyx[ch] += gy * d;
      abs_dy[ch] += std::fabs(gy);
      abs_dyx[ch] += std::fabs(gy * d) * double(si[ch]);
    }
    for (int ch = 0; ch < c; ++ch) sdyx[sz(ch)] *= double(si[sz(ch)]);

    Stream st;
    DevFloats dx(x), ddy(g), dgam(p.gamma), dsm(sm), dsi(si);
    DevBuf dsum(sz(c) * sizeof(double)), dsumx(sz(c) * sizeof(double));
    dsum.upload(sdy.data(), sz(c) * sizeof(double));
    dsumx.upload(sdyx.data(), sz(c) * sizeof(double));
    DevFloats ddx(s.size()), ddg(sz(c)), ddb(sz(c));
    const auto out = run_twice(st, {&ddx, &ddg, &ddb}, nullptr, [&] {
      gpu::batchnorm_backward_from_sums(count, c, dx.p(), ddy.p(), dgam.p(), dsm.p(), dsi.p(),
                                        static_cast<const double*>(dsum.data()),
                                        static_cast<const double*>(dsumx.data()), ddx.p(), ddg.p(), ddb.p(), st);
    });
    double term = 0;
    for (size_t i = 0; i < g.size(); ++i) {
      const size_t ch = i % sz(c);
      term = std::max(term, std::fabs(double(p.gamma[ch]) * double(si[ch]) * double(g[i])));
    }
    EXPECT_TRUE(near(out[0], dxr, kReduce, 1e-6 * term)) << "dx";
    EXPECT_TRUE(near(out[1], dgr, kReduce)) << "dgamma";
    EXPECT_TRUE(near(out[2], dbr, kReduce)) << "dbeta";
    {
      double ss = 0;
      for (float r : dxr) ss += double(r) * r;
      const double rms = std::sqrt(ss / double(dxr.size()));
      for (size_t i = 0; i < dxr.size(); ++i)
        worst_cpu_dx = std::max(worst_cpu_dx, std::fabs(double(out[0][i]) - dxr[i]) /
                                                  (kReduce * (std::fabs(double(dxr[i])) + rms) + 1e-6 * term));
    }

    // The two-pass GPU backward on the same data.
    DevFloats tdx(s.size()), tdg(sz(c)), tdb(sz(c));
    Workspace ws(gpu::batchnorm_workspace_bytes(count, c));
    gpu::batchnorm_backward(count, c, dx.p(), ddy.p(), dgam.p(), dsm.p(), dsi.p(), tdx.p(), tdg.p(), tdb.p(),
                            ws.data(), st);
    st.sync();
    const Floats two[3] = {tdx.get(), tdg.get(), tdb.get()};
    const char* names[3] = {"dx", "dgamma", "dbeta"};
    for (int k = 0; k < 3; ++k) {
      SCOPED_TRACE(names[k]);
      size_t bad = 0;
      for (size_t i = 0; i < two[k].size(); ++i) {
        const size_t ch = k == 0 ? i % sz(c) : i;
        double scale;
        if (k == 0) {
          const double xhat = (double(x[i]) - double(sm[ch])) * double(si[ch]);
          scale = std::fabs(double(p.gamma[ch]) * double(si[ch])) *
                  (std::fabs(double(g[i])) + (abs_dy[ch] + std::fabs(xhat) * abs_dyx[ch]) / double(count));
        } else {
          scale = k == 1 ? abs_dyx[ch] : abs_dy[ch];
        }
        const double got = out[sz(k)][i], want = two[k][i];
        const double err = std::fabs(got - want), tol = 0x1p-22 * std::fabs(want) + 1e-12 * scale;
        if (!(err <= tol) && ++bad <= 5)
          ADD_FAILURE() << "element " << i << ": got " << got << ", two-pass " << want << " (tolerance " << tol << ")";
        if (tol > 0) worst_two = std::max(worst_two, err / tol);
        differ += got != want;
        ++total;
      }
    }
    expect_guards({&dx, &ddy, &dgam, &dsm, &dsi, &dsum, &dsumx, &ddx, &ddg, &ddb, &tdx, &tdg, &tdb, &ws});
  }
  std::printf("[ max err  ] vs CPU dx %.3g of the tolerance; vs two-pass %.3g of the allowance, %lld of %lld values "
              "differ\n",
              worst_cpu_dx, worst_two, static_cast<long long>(differ), static_cast<long long>(total));
}

// The pieces of the fused BN-ReLU-conv fallback: statistics alone, eval statistics, the
// normalisation from saved statistics (with and without ReLU) and the recomputed ReLU mask.
TEST(GpuBatchNorm, FusedPathPiecesMatchCpu) {
  REQUIRE_GPU();
  for (const Nhwc& s : bn_shapes()) {
    SCOPED_TRACE(s.str());
    const int64_t count = s.count();
    const int c = s.c;
    Floats x = normal(s.size(), 0.3f, 1.5f);
    const BnParams p = bn_params(c);

    // Statistics only (and the running update), against the CPU.
    Floats sm(sz(c)), si(sz(c)), rm = p.running_mean, rv = p.running_var;
    cpu::batchnorm_stats_train(count, c, x.data(), sm.data(), si.data(), rm.data(), rv.data(), 0.1, 1e-5);
    Stream st;
    DevFloats dx(x), dsm(sz(c)), dsi(sz(c)), drm(p.running_mean), drv(p.running_var);
    Workspace ws(gpu::batchnorm_workspace_bytes(count, c));
    auto out = run_twice(
        st, {&dsm, &dsi, &drm, &drv},
        [&] {
          drm.set(p.running_mean);
          drv.set(p.running_var);
          ws.poison();
        },
        [&] {
          gpu::batchnorm_stats_train(count, c, dx.p(), dsm.p(), dsi.p(), drm.p(), drv.p(), 0.1, 1e-5, ws.data(),
                                     st);
        });
    EXPECT_TRUE(near(out[0], sm, kReduce)) << "save_mean";
    EXPECT_TRUE(near(out[1], si, kReduce)) << "save_invstd";
    EXPECT_TRUE(near(out[2], rm, kReduce)) << "running_mean";
    EXPECT_TRUE(near(out[3], rv, kReduce)) << "running_var";

    // Eval statistics.
    Floats em(sz(c)), ei(sz(c));
    cpu::batchnorm_stats_eval(c, p.running_mean.data(), p.running_var.data(), 1e-5, em.data(), ei.data());
    DevFloats drm0(p.running_mean), drv0(p.running_var), dem(sz(c)), dei(sz(c));
    out = run_twice(st, {&dem, &dei}, nullptr, [&] {
      gpu::batchnorm_stats_eval(c, drm0.p(), drv0.p(), 1e-5, dem.p(), dei.p(), st);
    });
    EXPECT_TRUE(near(out[0], em, kExact)) << "eval mean";
    EXPECT_TRUE(near(out[1], ei, kReduce)) << "eval invstd";

    // Keep every normalised value at least 1e-3 away from 0, so that the GPU's float FMA and the
    // CPU's double arithmetic cannot disagree about the ReLU mask.
    Floats v(s.size());
    cpu::batchnorm_apply(count, c, x.data(), p.gamma.data(), p.beta.data(), sm.data(), si.data(), false, v.data());
    for (size_t i = 0; i < x.size(); ++i) {
      const size_t ch = i % size_t(c);
      if (std::fabs(v[i]) < 1e-3f) x[i] += 0.01f / (p.gamma[ch] * si[ch]);
    }
    Floats y(s.size()), yr(s.size()), g = normal(s.size()), gm = g;
    cpu::batchnorm_apply(count, c, x.data(), p.gamma.data(), p.beta.data(), sm.data(), si.data(), false, y.data());
    cpu::batchnorm_apply(count, c, x.data(), p.gamma.data(), p.beta.data(), sm.data(), si.data(), true, yr.data());
    cpu::bn_relu_mask_inplace(count, c, x.data(), p.gamma.data(), p.beta.data(), sm.data(), si.data(), gm.data());
    DevFloats dx2(x), dg(p.gamma), db(p.beta), dsm2(sm), dsi2(si), dy(s.size()), dyr(s.size()), dgm(g);
    out = run_twice(
        st, {&dy, &dyr, &dgm}, [&] { dgm.set(g); },
        [&] {
          gpu::batchnorm_apply(count, c, dx2.p(), dg.p(), db.p(), dsm2.p(), dsi2.p(), false, dy.p(), st);
          gpu::batchnorm_apply(count, c, dx2.p(), dg.p(), db.p(), dsm2.p(), dsi2.p(), true, dyr.p(), st);
          gpu::bn_relu_mask_inplace(count, c, dx2.p(), dg.p(), db.p(), dsm2.p(), dsi2.p(), dgm.p(), st);
        });
    EXPECT_TRUE(near(out[0], y, kReduce)) << "apply";
    EXPECT_TRUE(near(out[1], yr, kReduce)) << "apply + relu";
    EXPECT_TRUE(near(out[2], gm, kExact)) << "relu mask";
    expect_guards({&dx, &dsm, &dsi, &drm, &drv, &ws, &drm0, &drv0, &dem, &dei, &dx2, &dg, &db, &dsm2, &dsi2, &dy,
                   &dyr, &dgm});
  }
}

TEST(GpuBatchNorm, CountBatchIncrementsOnDevice) {
  REQUIRE_GPU();
  Stream st;
  DevBuf counter(sizeof(int64_t));
  const int64_t start = 41;
  counter.upload(&start, sizeof start);
  for (int i = 0; i < 3; ++i) gpu::batchnorm_count_batch(static_cast<int64_t*>(counter.data()), st);
  st.sync();
  int64_t got = 0;
  counter.download(&got, sizeof got);
  EXPECT_EQ(got, 44);
  expect_guards({&counter});
}

// ==== Elementwise ====

TEST(GpuElementwise, ReluForwardBackward) {
  REQUIRE_GPU();
  for (int64_t n : flat_sizes()) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Floats x = normal(sz(n));
    for (size_t i = 0; i < x.size(); i += 7) x[i] = 0.f;  // the kink: y = 0, no gradient
    const Floats g = normal(sz(n));
    Floats y(x.size()), dxr(x.size());
    cpu::relu_forward(n, x.data(), y.data());
    cpu::relu_backward(n, x.data(), g.data(), dxr.data());
    Stream st;
    DevFloats dx(x), dg(g), dy(x.size()), ddx(x.size());
    const auto out = run_twice(st, {&dy, &ddx}, nullptr, [&] {
      gpu::relu_forward(n, dx.p(), dy.p(), st);
      gpu::relu_backward(n, dx.p(), dg.p(), ddx.p(), st);
    });
    EXPECT_TRUE(near(out[0], y, kExact)) << "relu forward";
    EXPECT_TRUE(near(out[1], dxr, kExact)) << "relu backward";
    expect_guards({&dx, &dg, &dy, &ddx});
  }
}

TEST(GpuElementwise, ReluPropagatesNaN) {
  REQUIRE_GPU();
  const Floats x = {std::nanf(""), -1.f, 2.f, -0.f};
  Stream st;
  DevFloats dx(x), dy(x.size());
  gpu::relu_forward(int64_t(x.size()), dx.p(), dy.p(), st);
  st.sync();
  const Floats y = dy.get();
  EXPECT_TRUE(std::isnan(y[0]));
  EXPECT_EQ(y[1], 0.f);
  EXPECT_EQ(y[2], 2.f);
  EXPECT_EQ(y[3], 0.f);
}

TEST(GpuElementwise, AddMul) {
  REQUIRE_GPU();
  for (int64_t n : flat_sizes()) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const Floats a = normal(sz(n)), b = normal(sz(n), 1.f, 3.f);
    Floats s(a.size()), p(a.size());
    cpu::add(n, a.data(), b.data(), s.data());
    cpu::mul(n, a.data(), b.data(), p.data());
    Stream st;
    DevFloats da(a), db(b), ds(a.size()), dp(a.size());
    const auto out = run_twice(st, {&ds, &dp}, nullptr, [&] {
      gpu::add(n, da.p(), db.p(), ds.p(), st);
      gpu::mul(n, da.p(), db.p(), dp.p(), st);
    });
    EXPECT_TRUE(near(out[0], s, kExact)) << "add";
    EXPECT_TRUE(near(out[1], p, kExact)) << "mul";
    expect_guards({&da, &db, &ds, &dp});
  }
}

TEST(GpuElementwise, SigmoidForwardBackward) {
  REQUIRE_GPU();
  for (int64_t n : flat_sizes()) {
    SCOPED_TRACE("n=" + std::to_string(n));
    Floats x = normal(sz(n), 0.f, 6.f);
    if (x.size() > 4) {
      x[0] = 100.f;  // saturates without overflow on either side
      x[1] = -100.f;
      x[2] = 0.f;
      x[3] = -0.f;
    }
    const Floats g = normal(sz(n));
    Floats y(x.size()), dxr(x.size());
    cpu::sigmoid_forward(n, x.data(), y.data());
    cpu::sigmoid_backward(n, y.data(), g.data(), dxr.data());
    Stream st;
    DevFloats dx(x), dyref(y), dg(g), dy(x.size()), ddx(x.size());
    const auto out = run_twice(st, {&dy, &ddx}, nullptr, [&] {
      gpu::sigmoid_forward(n, dx.p(), dy.p(), st);
      gpu::sigmoid_backward(n, dyref.p(), dg.p(), ddx.p(), st);  // from the CPU's y: exact
    });
    EXPECT_TRUE(near(out[0], y, kElem)) << "sigmoid forward";
    EXPECT_TRUE(near(out[1], dxr, kExact)) << "sigmoid backward";
    expect_guards({&dx, &dyref, &dg, &dy, &ddx});
  }
}

// ==== Squeeze-and-excitation pieces: scale_channels, global average pool, linear ====

TEST(GpuElementwise, ScaleChannelsForwardBackward) {
  REQUIRE_GPU();
  for (const Nhwc& sh : se_shapes()) {
    SCOPED_TRACE(sh.str());
    const int n = sh.n, c = sh.c;
    const int64_t hw = int64_t(sh.h) * sh.w;
    const Floats x = normal(sh.size()), g = normal(sh.size());
    const Floats s = uniform(sz(n) * sz(c), 0.f, 1.f);
    Floats y(sh.size()), ds(s.size());
    cpu::scale_channels(n, hw, c, x.data(), s.data(), y.data());
    cpu::scale_channels_backward_scale(n, hw, c, x.data(), g.data(), ds.data());
    Stream st;
    DevFloats dx(x), dg(g), dsc(s), dy(sh.size()), dds(s.size());
    Workspace ws(gpu::scale_channels_workspace_bytes(n, hw, c));
    const auto out = run_twice(
        st, {&dy, &dds}, [&] { ws.poison(); },
        [&] {
          gpu::scale_channels(n, hw, c, dx.p(), dsc.p(), dy.p(), st);
          gpu::scale_channels_backward_scale(n, hw, c, dx.p(), dg.p(), dds.p(), ws.data(), st);
        });
    EXPECT_TRUE(near(out[0], y, kExact)) << "scale_channels";
    EXPECT_TRUE(near(out[1], ds, kReduce)) << "scale_channels_backward_scale";
    expect_guards({&dx, &dg, &dsc, &dy, &dds, &ws});
  }
}

TEST(GpuElementwise, ScaleChannelsBackwardWithNoPixelsIsZero) {
  REQUIRE_GPU();
  Stream st;
  DevFloats dds(6);
  gpu::scale_channels_backward_scale(2, 0, 3, static_cast<const float*>(nullptr), nullptr, dds.p(), nullptr, st);
  st.sync();
  EXPECT_TRUE(near(dds.get(), Floats(6, 0.f), kExact));
  expect_guards({&dds});
}

TEST(GpuElementwise, GlobalAvgPoolForwardBackward) {
  REQUIRE_GPU();
  for (const Nhwc& sh : se_shapes()) {
    SCOPED_TRACE(sh.str());
    const int n = sh.n, c = sh.c;
    const int64_t hw = int64_t(sh.h) * sh.w;
    const Floats x = normal(sh.size(), 0.3f, 1.f);
    const Floats g = normal(sz(n) * sz(c));
    Floats y(g.size()), dxr(sh.size());
    cpu::global_avg_pool_forward(n, hw, c, x.data(), y.data());
    cpu::global_avg_pool_backward(n, hw, c, g.data(), dxr.data());
    Stream st;
    DevFloats dx(x), dg(g), dy(g.size()), ddx(sh.size());
    Workspace ws(gpu::global_avg_pool_workspace_bytes(n, hw, c));
    const auto out = run_twice(
        st, {&dy, &ddx}, [&] { ws.poison(); },
        [&] {
          gpu::global_avg_pool_forward(n, hw, c, dx.p(), dy.p(), ws.data(), st);
          gpu::global_avg_pool_backward(n, hw, c, dg.p(), ddx.p(), st);
        });
    EXPECT_TRUE(near(out[0], y, kReduce)) << "global_avg_pool_forward";
    EXPECT_TRUE(near(out[1], dxr, kElem)) << "global_avg_pool_backward";
    expect_guards({&dx, &dg, &dy, &ddx, &ws});
  }
}

TEST(GpuElementwise, LinearForwardBackward) {
  REQUIRE_GPU();
  struct Case {
    int n, in, out;
  };
  std::vector<Case> cases;
  for (int c : {16, 32, 64, 128, 256}) {  // SE(c): c -> c/8 -> c
    cases.push_back({kBatch, c, c / 8});
    cases.push_back({kBatch, c / 8, c});
  }
  for (const Case& k : {Case{16, 256, 32}, Case{16, 32, 256}, Case{1, 1, 1}, Case{3, 5, 7},
                        Case{5, 33, 65}, Case{0, 4, 3}})
    cases.push_back(k);
  for (const Case& k : cases) {
    SCOPED_TRACE("n=" + std::to_string(k.n) + " in=" + std::to_string(k.in) +
                 " out=" + std::to_string(k.out));
    const Floats x = normal(size_t(k.n) * size_t(k.in));
    const Floats w = uniform(size_t(k.out) * size_t(k.in), -0.5f, 0.5f);
    const Floats g = normal(size_t(k.n) * size_t(k.out));
    Floats y(g.size()), dxr(x.size()), dwr(w.size());
    cpu::linear_forward(k.n, k.in, k.out, x.data(), w.data(), y.data());
    cpu::linear_backward(k.n, k.in, k.out, x.data(), w.data(), g.data(), dxr.data(), dwr.data());
    Stream st;
    DevFloats dx(x), dw(w), dg(g), dy(g.size()), ddx(x.size()), ddw(w.size());
    const auto out = run_twice(st, {&dy, &ddx, &ddw}, nullptr, [&] {
      gpu::linear_forward(k.n, k.in, k.out, dx.p(), dw.p(), dy.p(), st);
      gpu::linear_backward(k.n, k.in, k.out, dx.p(), dw.p(), dg.p(), ddx.p(), ddw.p(), st);
    });
    EXPECT_TRUE(near(out[0], y, kElem)) << "linear y";
    EXPECT_TRUE(near(out[1], dxr, kElem)) << "linear dx";
    EXPECT_TRUE(near(out[2], dwr, kElem)) << "linear dw";
    expect_guards({&dx, &dw, &dg, &dy, &ddx, &ddw});
  }
}

// ==== Pooling, resampling, concat ====

TEST(GpuElementwise, MaxPool2ForwardBackwardWithTies) {
  REQUIRE_GPU();
  for (const Nhwc& s : pool_shapes()) {
    for (bool ties : {true, false}) {
      SCOPED_TRACE(s.str() + (ties ? " with ties" : ""));
      const Floats x = ties ? small_ints(s.size(), 2) : normal(s.size());
      const size_t ny = size_t(s.n) * size_t(s.h / 2) * size_t(s.w / 2) * size_t(s.c);
      const Floats g = normal(ny);
      Floats y(ny), dxr(s.size());
      std::vector<uint8_t> arg(ny);
      cpu::maxpool2_forward(s.n, s.h, s.w, s.c, x.data(), y.data(), arg.data());
      cpu::maxpool2_backward(s.n, s.h, s.w, s.c, arg.data(), g.data(), dxr.data());
      Stream st;
      DevFloats dx(x), dg(g), dy(ny), ddx(s.size());
      DevBytes darg(ny);
      const auto out = run_twice(st, {&dy, &ddx}, [&] { darg.poison(); }, [&] {
        gpu::maxpool2_forward(s.n, s.h, s.w, s.c, dx.p(), dy.p(), darg.p(), st);
        gpu::maxpool2_backward(s.n, s.h, s.w, s.c, darg.p(), dg.p(), ddx.p(), st);
      });
      EXPECT_TRUE(near(out[0], y, kExact)) << "maxpool2 forward";
      EXPECT_TRUE(darg.get() == arg) << "maxpool2 argmax";
      EXPECT_TRUE(near(out[1], dxr, kExact)) << "maxpool2 backward";
      // Without the argmax output the forward gives the same y.
      const auto plain = run_twice(st, {&dy}, nullptr, [&] {
        gpu::maxpool2_forward(s.n, s.h, s.w, s.c, dx.p(), dy.p(), nullptr, st);
      });
      EXPECT_TRUE(near(plain[0], y, kExact)) << "maxpool2 forward without argmax";
      expect_guards({&dx, &dg, &dy, &ddx, &darg});
    }
  }
}

TEST(GpuElementwise, Upsample2ForwardBackward) {
  REQUIRE_GPU();
  for (const Nhwc& s : upsample_shapes()) {
    SCOPED_TRACE(s.str());
    const Floats x = normal(s.size());
    const size_t ny = 4 * s.size();
    const Floats g = normal(ny);
    Floats y(ny), dxr(s.size());
    cpu::upsample2_forward(s.n, s.h, s.w, s.c, x.data(), y.data());
    cpu::upsample2_backward(s.n, s.h, s.w, s.c, g.data(), dxr.data());
    Stream st;
    DevFloats dx(x), dg(g), dy(ny), ddx(s.size());
    const auto out = run_twice(st, {&dy, &ddx}, nullptr, [&] {
      gpu::upsample2_forward(s.n, s.h, s.w, s.c, dx.p(), dy.p(), st);
      gpu::upsample2_backward(s.n, s.h, s.w, s.c, dg.p(), ddx.p(), st);
    });
    EXPECT_TRUE(near(out[0], y, kExact)) << "upsample2 forward";
    EXPECT_TRUE(near(out[1], dxr, kExact)) << "upsample2 backward";
    expect_guards({&dx, &dg, &dy, &ddx});
  }
}

TEST(GpuElementwise, ConcatForwardBackward) {
  REQUIRE_GPU();
  struct Case {
    int64_t count;
    int ca, cb;
  };
  std::vector<Case> cases;
  for (int s : kSizes) {  // the decoders: concat[up(attention), skip]
    cases.push_back({int64_t(kBatch) * (s / 4) * (s / 4), 256, 64});
    cases.push_back({int64_t(kBatch) * (s / 2) * (s / 2), 128, 32});
    cases.push_back({int64_t(kBatch) * s * s, 64, 16});
  }
  for (const Case& k : {Case{7, 3, 5}, Case{5, 0, 4}, Case{5, 4, 0}, Case{1, 1, 1}}) cases.push_back(k);
  for (const Case& k : cases) {
    SCOPED_TRACE("count=" + std::to_string(k.count) + " ca=" + std::to_string(k.ca) +
                 " cb=" + std::to_string(k.cb));
    const size_t na = size_t(k.count) * size_t(k.ca), nb = size_t(k.count) * size_t(k.cb);
    const Floats a = normal(na), b = normal(nb), g = normal(na + nb);
    Floats y(na + nb), da(na), db(nb);
    cpu::concat_forward(k.count, k.ca, k.cb, a.data(), b.data(), y.data());
    cpu::concat_backward(k.count, k.ca, k.cb, g.data(), da.data(), db.data());
    Stream st;
    DevFloats d_a(a), d_b(b), d_g(g), d_y(na + nb), d_da(na), d_db(nb);
    const auto out = run_twice(st, {&d_y, &d_da, &d_db}, nullptr, [&] {
      gpu::concat_forward(k.count, k.ca, k.cb, d_a.p(), d_b.p(), d_y.p(), st);
      gpu::concat_backward(k.count, k.ca, k.cb, d_g.p(), d_da.p(), d_db.p(), st);
    });
    EXPECT_TRUE(near(out[0], y, kExact)) << "concat forward";
    EXPECT_TRUE(near(out[1], da, kExact)) << "concat backward a";
    EXPECT_TRUE(near(out[2], db, kExact)) << "concat backward b";
    expect_guards({&d_a, &d_b, &d_g, &d_y, &d_da, &d_db});
  }
}

// The fused upsample-and-concat (fuse_upsample_concat) against the two unfused kernels on the
// GPU, bit for bit, and against the CPU composition: the decoders' shapes (a: the attention
// output, b: the skip at twice its size) and odd ones.
TEST(GpuElementwise, UpsampleConcatIsUpsampleThenConcat) {
  REQUIRE_GPU();
  std::vector<std::pair<Nhwc, int>> cases;  // a, cb
  for (int s : kSizes)
    for (const auto& [d, ca, cb] : {std::tuple<int, int, int>{8, 256, 64}, {4, 128, 32}, {2, 64, 16}})
      cases.push_back({Nhwc{kBatch, s / d, s / d, ca}, cb});
  for (const auto& o : {std::pair<Nhwc, int>{Nhwc{1, 1, 1, 1}, 1}, {Nhwc{2, 3, 5, 7}, 4}}) cases.push_back(o);
  for (const auto& [s, cb] : cases) {
    SCOPED_TRACE(s.str() + " cb=" + std::to_string(cb));
    const int ca = s.c;
    const int64_t count = int64_t(s.n) * 4 * s.h * s.w;  // output pixels
    const size_t na = s.size(), nup = 4 * na, nb = size_t(count) * size_t(cb), ny = nup + nb;
    const Floats a = normal(na), b = normal(nb), g = normal(ny);
    Floats up(nup), y(ny), dup(nup), da(na), db(nb);
    cpu::upsample2_forward(s.n, s.h, s.w, ca, a.data(), up.data());
    cpu::concat_forward(count, ca, cb, up.data(), b.data(), y.data());
    cpu::concat_backward(count, ca, cb, g.data(), dup.data(), db.data());
    cpu::upsample2_backward(s.n, s.h, s.w, ca, dup.data(), da.data());
    Stream st;
    DevFloats d_a(a), d_b(b), d_g(g), d_up(nup), d_dup(nup), d_y(ny), d_da(na), d_db(nb);
    const auto unfused = run_twice(st, {&d_y, &d_da, &d_db}, nullptr, [&] {
      gpu::upsample2_forward(s.n, s.h, s.w, ca, d_a.p(), d_up.p(), st);
      gpu::concat_forward(count, ca, cb, d_up.p(), d_b.p(), d_y.p(), st);
      gpu::concat_backward(count, ca, cb, d_g.p(), d_dup.p(), d_db.p(), st);
      gpu::upsample2_backward(s.n, s.h, s.w, ca, d_dup.p(), d_da.p(), st);
    });
    const auto fused = run_twice(st, {&d_y, &d_da, &d_db}, nullptr, [&] {
      gpu::upsample_concat_forward(s.n, s.h, s.w, ca, cb, d_a.p(), d_b.p(), d_y.p(), st);
      gpu::upsample_concat_backward(s.n, s.h, s.w, ca, cb, d_g.p(), d_da.p(), d_db.p(), st);
    });
    const char* what[3] = {"y", "da", "db"};
    for (int k = 0; k < 3; ++k) EXPECT_TRUE(same_bits(fused[size_t(k)], unfused[size_t(k)])) << what[k];
    EXPECT_TRUE(near(fused[0], y, kExact)) << "forward against the CPU";
    EXPECT_TRUE(near(fused[1], da, kExact)) << "da against the CPU";
    EXPECT_TRUE(near(fused[2], db, kExact)) << "db against the CPU";
    expect_guards({&d_a, &d_b, &d_g, &d_up, &d_dup, &d_y, &d_da, &d_db});
  }
}

// ==== Losses ====

std::vector<int64_t> loss_sizes() {
  std::vector<int64_t> v = {1, 777, 1000003, 3000017};  // the last one fills every partial block
  for (int s : kSizes) v.push_back(int64_t(kBatch) * s * s);
  v.push_back(int64_t(16) * 256 * 256);
  return v;
}

Floats logits(size_t n) {
  Floats x = normal(n, -0.5f, 3.f);
  for (size_t i = 0; i < x.size(); i += 97) x[i] = (i % 2 ? 30.f : -30.f);  // saturated pixels
  return x;
}

TEST(GpuLoss, BceAndDiceForwardBackward) {
  REQUIRE_GPU();
  const double dloss = 0.7;
  for (int64_t n : loss_sizes()) {
    SCOPED_TRACE("n=" + std::to_string(n));
    const Floats x = logits(sz(n)), t = targets(sz(n));
    const double bce = cpu::bce_with_logits_forward(n, x.data(), t.data());
    const double dice = cpu::dice_loss_forward(n, x.data(), t.data());
    Floats gb(x.size()), gd(x.size()), gsum(x.size());
    cpu::bce_with_logits_backward(n, x.data(), t.data(), dloss, gb.data());
    cpu::dice_loss_backward(n, x.data(), t.data(), dloss, gd.data());
    for (size_t i = 0; i < gsum.size(); ++i) gsum[i] = gb[i] + gd[i];

    Stream st;
    DevFloats dx(x), dt(t), lb(1), ld(1), lsum(1), dgb(x.size()), dgd(x.size()), dgs(x.size());
    Workspace ws(gpu::loss_workspace_bytes(n));
    const auto out = run_twice(
        st, {&lb, &ld, &lsum, &dgb, &dgd, &dgs}, [&] { ws.poison(); },
        [&] {
          gpu::bce_with_logits_forward(n, dx.p(), dt.p(), lb.p(), false, ws.data(), st);
          gpu::dice_loss_forward(n, dx.p(), dt.p(), ld.p(), false, ws.data(), st);
          // bce + dice into one scalar and one gradient, as the executor's combined loss.
          gpu::bce_with_logits_forward(n, dx.p(), dt.p(), lsum.p(), false, ws.data(), st);
          gpu::dice_loss_forward(n, dx.p(), dt.p(), lsum.p(), true, ws.data(), st);
          gpu::bce_with_logits_backward(n, dx.p(), dt.p(), dloss, dgb.p(), false, st);
          gpu::dice_loss_backward(n, dx.p(), dt.p(), dloss, dgd.p(), false, ws.data(), st);
          gpu::bce_with_logits_backward(n, dx.p(), dt.p(), dloss, dgs.p(), false, st);
          gpu::dice_loss_backward(n, dx.p(), dt.p(), dloss, dgs.p(), true, ws.data(), st);
        });
    EXPECT_TRUE(near_scalar(out[0][0], float(bce), kReduce)) << "bce loss";
    EXPECT_TRUE(near_scalar(out[1][0], float(dice), kReduce)) << "dice loss";
    EXPECT_TRUE(near_scalar(out[2][0], float(bce + dice), kReduce)) << "bce + dice loss";
    EXPECT_TRUE(near(out[3], gb, kReduce)) << "bce gradient";
    EXPECT_TRUE(near(out[4], gd, kReduce)) << "dice gradient";
    EXPECT_TRUE(near(out[5], gsum, kReduce)) << "bce + dice gradient";
    expect_guards({&dx, &dt, &lb, &ld, &lsum, &dgb, &dgd, &dgs, &ws});
  }
}

// ==== Optimisers ====

enum class Opt { Sgd, Adam, AdamW, Nadam };

struct OptCase {
  Opt kind;
  double momentum, weight_decay;
  bool nesterov;
  const char* name;
};

const OptCase kOptCases[] = {
    {Opt::Sgd, 0.0, 0.0, false, "sgd"},
    {Opt::Sgd, 0.9, 1e-4, false, "sgd momentum + wd"},
    {Opt::Sgd, 0.9, 0.0, true, "sgd nesterov"},
    {Opt::Adam, 0.0, 0.0, false, "adam"},
    {Opt::Adam, 0.0, 1e-2, false, "adam + L2"},
    {Opt::AdamW, 0.0, 1e-2, false, "adamw"},
    {Opt::Nadam, 0.0, 0.0, false, "nadam"},
    {Opt::Nadam, 0.0, 1e-2, false, "nadam + L2"},
};

// The step description for step t (1-based) with a learning rate that changes every step.
cpu::OptimStep opt_step(const OptCase& k, int64_t t, double& mu_product) {
  cpu::OptimStep o;
  o.lr = 1e-3 * (1.0 + 0.5 * double(t));
  o.momentum = k.momentum;
  o.nesterov = k.nesterov;
  o.weight_decay = k.weight_decay;
  o.step = t;
  if (k.kind == Opt::Nadam) {
    cpu::nadam_schedule(o, mu_product);
    mu_product = o.nadam_mu_product;
  }
  return o;
}

void cpu_update(const OptCase& k, int64_t n, Floats& w, const Floats& g, Floats& s1, Floats& s2,
                const cpu::OptimStep& o) {
  switch (k.kind) {
    case Opt::Sgd: cpu::sgd_update(n, w.data(), g.data(), s1.data(), o); break;
    case Opt::Adam: cpu::adam_update(n, w.data(), g.data(), s1.data(), s2.data(), o); break;
    case Opt::AdamW: cpu::adamw_update(n, w.data(), g.data(), s1.data(), s2.data(), o); break;
    case Opt::Nadam: cpu::nadam_update(n, w.data(), g.data(), s1.data(), s2.data(), o); break;
  }
}

void gpu_update(const OptCase& k, int64_t n, float* w, const float* g, float* s1, float* s2,
                const gpu::OptimStepDevice* step, cudaStream_t st) {
  switch (k.kind) {
    case Opt::Sgd: gpu::sgd_update(n, w, g, s1, step, st); break;
    case Opt::Adam: gpu::adam_update(n, w, g, s1, s2, step, st); break;
    case Opt::AdamW: gpu::adamw_update(n, w, g, s1, s2, step, st); break;
    case Opt::Nadam: gpu::nadam_update(n, w, g, s1, s2, step, st); break;
  }
}

TEST(GpuOptim, UpdatesMatchCpuOverThreeSteps) {
  REQUIRE_GPU();
  const double rtol = 2e-6;  // float per-element math against the CPU's double
  for (const OptCase& k : kOptCases) {
    for (int64_t n : {int64_t(1), int64_t(1000), int64_t(3 * 3 * 320 * 128), int64_t(4062993)}) {
      SCOPED_TRACE(std::string(k.name) + " n=" + std::to_string(n));
      const Floats w0 = normal(sz(n), 0.f, 0.1f);
      std::vector<Floats> grads;
      for (int t = 0; t < 3; ++t) grads.push_back(normal(sz(n), 0.f, 0.01f * float(t + 1)));
      // CPU trajectory: state buffers start as NaN (they must not be read on step 1).
      std::vector<Floats> cw, cs1, cs2;
      {
        Floats w = w0, s1(sz(n), std::nanf("")), s2(sz(n), std::nanf(""));
        double mu = 1.0;
        for (int t = 1; t <= 3; ++t) {
          cpu_update(k, n, w, grads[sz(t - 1)], s1, s2, opt_step(k, t, mu));
          cw.push_back(w);
          cs1.push_back(s1);
          cs2.push_back(s2);
        }
      }
      // GPU trajectory, twice; the step struct lives on the device.
      Stream st;
      DevFloats dw(w0), dg(sz(n)), ds1(sz(n)), ds2(sz(n));
      DevBuf dstep(sizeof(gpu::OptimStepDevice));
      std::vector<Floats> first;
      for (int run = 0; run < 2; ++run) {
        dw.set(w0);
        ds1.poison();
        ds2.poison();
        double mu = 1.0;
        std::vector<Floats> got;
        for (int t = 1; t <= 3; ++t) {
          dg.set(grads[sz(t - 1)]);
          const gpu::OptimStepDevice h = gpu::make_optim_step_device(opt_step(k, t, mu));
          CU(cudaMemcpyAsync(dstep.data(), &h, sizeof h, cudaMemcpyHostToDevice, st));
          gpu_update(k, n, dw.p(), dg.p(), ds1.p(), ds2.p(),
                     static_cast<const gpu::OptimStepDevice*>(dstep.data()), st);
          st.sync();
          const Floats w = dw.get(), s1 = ds1.get(), s2 = ds2.get();
          const size_t i = sz(t - 1);
          EXPECT_TRUE(near(w, cw[i], rtol)) << "weights after step " << t;
          if (k.kind != Opt::Sgd || k.momentum != 0) {
            EXPECT_TRUE(near(s1, cs1[i], rtol)) << "first state after step " << t;
          }
          if (k.kind != Opt::Sgd) {
            EXPECT_TRUE(near(s2, cs2[i], rtol)) << "second state after step " << t;
          }
          got.push_back(w);
          got.push_back(s1);
          got.push_back(s2);
        }
        if (run == 0) {
          first = std::move(got);
        } else {
          for (size_t j = 0; j < got.size(); ++j)
            EXPECT_TRUE(same_bits(first[j], got[j])) << "run-to-run difference in output " << j;
        }
      }
      if (k.kind == Opt::Sgd && k.momentum == 0) {  // plain SGD leaves the buffer alone
        const Floats s1 = ds1.get();
        for (float v : s1) ASSERT_TRUE(std::isnan(v)) << "plain SGD wrote its momentum buffer";
      }
      expect_guards({&dw, &dg, &ds1, &ds2, &dstep});
    }
  }
}

TEST(GpuOptim, SumSquaresClipFactorAndScale) {
  REQUIRE_GPU();
  const int64_t sizes[] = {0, 1, 1000, 3 * 3 * 320 * 128, 4062993};
  std::vector<Floats> host;
  for (int64_t n : sizes) host.push_back(normal(sz(n), 0.f, 0.02f));
  double ref = 0;
  for (size_t i = 0; i < host.size(); ++i) ref += cpu::sum_squares(sizes[i], host[i].data());

  Stream st;
  std::vector<std::unique_ptr<DevFloats>> dev;
  for (const Floats& h : host) dev.push_back(std::make_unique<DevFloats>(h));
  DevBuf dsum(sizeof(double)), dnorm(sizeof(double)), dfactor(sizeof(double));
  DevBuf dstep(sizeof(gpu::OptimStepDevice));
  size_t ws_bytes = 0;
  for (int64_t n : sizes) ws_bytes = std::max(ws_bytes, gpu::sum_squares_workspace_bytes(n));
  Workspace ws(ws_bytes);
  double first_sum = 0;
  for (int run = 0; run < 2; ++run) {
    dsum.poison();
    for (size_t i = 0; i < host.size(); ++i)
      gpu::sum_squares(sizes[i], dev[i]->p(), static_cast<double*>(dsum.data()), i > 0, ws.data(), st);
    st.sync();
    double got = 0;
    dsum.download(&got, sizeof got);
    EXPECT_TRUE(near_scalar(got, ref, 1e-10)) << "sum of squares";
    if (run == 0) {
      first_sum = got;
    } else {
      EXPECT_EQ(std::memcmp(&got, &first_sum, sizeof got), 0) << "run-to-run difference";
    }
  }

  const double norm = std::sqrt(ref);
  for (double limit : {0.0, 2.0 * norm, 0.5 * norm}) {
    SCOPED_TRACE("limit=" + std::to_string(limit));
    cpu::OptimStep o;
    o.clip_grad_norm = limit;
    const gpu::OptimStepDevice h = gpu::make_optim_step_device(o);
    dstep.upload(&h, sizeof h);
    dnorm.poison();
    dfactor.poison();
    gpu::clip_grad_norm_factor(static_cast<const double*>(dsum.data()),
                               static_cast<const gpu::OptimStepDevice*>(dstep.data()),
                               static_cast<double*>(dnorm.data()),
                               static_cast<double*>(dfactor.data()), st);
    for (size_t i = 0; i < host.size(); ++i)
      gpu::scale_inplace(sizes[i], dev[i]->p(), static_cast<const double*>(dfactor.data()), st);
    st.sync();
    double gnorm = 0, gfactor = 0;
    dnorm.download(&gnorm, sizeof gnorm);
    dfactor.download(&gfactor, sizeof gfactor);
    EXPECT_TRUE(near_scalar(gnorm, norm, 1e-10)) << "norm";
    const bool clips = limit > 0 && norm > limit;
    const double f = clips ? limit / (norm + 1e-6) : 1.0;
    if (clips) {
      EXPECT_TRUE(near_scalar(gfactor, f, 1e-10)) << "factor";
    } else {
      EXPECT_EQ(gfactor, 1.0) << "factor without clipping";
    }
    for (size_t i = 0; i < host.size(); ++i) {
      if (clips) cpu::scale_inplace(sizes[i], host[i].data(), gfactor);  // the GPU's own factor
      EXPECT_TRUE(near(dev[i]->get(), host[i], kExact)) << "scaled tensor " << i;
    }
  }
  for (const auto& d : dev) expect_guards({d.get()});
  expect_guards({&dsum, &dnorm, &dfactor, &dstep, &ws});
}

// A non-finite squared norm or loss sets the step's skip flag on the device; every update kernel
// then leaves weights and state bit for bit as they were. A finite one clears it.
TEST(GpuOptim, NonFiniteStepSkipsEveryUpdate) {
  REQUIRE_GPU();
  const int64_t n = 5000;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::nanf("");
  const Floats w0 = normal(sz(n), 0.f, 0.1f), g = normal(sz(n), 0.f, 0.01f);
  const Floats s10 = normal(sz(n), 0.f, 0.01f), s20 = uniform(sz(n), 0.f, 1e-4f);
  Stream st;
  DevFloats dw(w0), dg(g), ds1(s10), ds2(s20), dloss(1);
  DevBuf dstep(sizeof(gpu::OptimStepDevice)), dsum(sizeof(double));
  struct Case {
    double sum_sq;
    float loss;
    bool loss_given, skip;
  };
  const Case cases[] = {{1.5, 0.7f, true, false},   {1.5, 0.f, false, false}, {double(nan), 0.7f, true, true},
                        {double(inf), 0.7f, true, true}, {1.5, nan, true, true},    {1.5, -inf, true, true}};
  for (const OptCase& k : kOptCases) {
    for (const Case& c : cases) {
      SCOPED_TRACE(std::string(k.name) + " sum_sq " + std::to_string(c.sum_sq) + " loss " + std::to_string(c.loss));
      dw.set(w0);
      ds1.set(s10);
      ds2.set(s20);
      dsum.upload(&c.sum_sq, sizeof c.sum_sq);
      dloss.set(Floats{c.loss});
      double mu = 1.0;
      const gpu::OptimStepDevice h = gpu::make_optim_step_device(opt_step(k, 2, mu));
      ASSERT_EQ(h.skip, 0);
      dstep.upload(&h, sizeof h);
      auto* step = static_cast<gpu::OptimStepDevice*>(dstep.data());
      gpu::skip_if_nonfinite(static_cast<const double*>(dsum.data()), c.loss_given ? dloss.p() : nullptr, step, st);
      gpu_update(k, n, dw.p(), dg.p(), ds1.p(), ds2.p(), step, st);
      st.sync();
      gpu::OptimStepDevice back{};
      dstep.download(&back, sizeof back);
      EXPECT_EQ(back.skip, c.skip ? 1 : 0);
      const Floats w = dw.get(), s1 = ds1.get(), s2 = ds2.get();
      if (c.skip) {
        EXPECT_TRUE(same_bits(w, w0)) << "weights changed on a skipped step";
        EXPECT_TRUE(same_bits(s1, s10)) << "first state changed on a skipped step";
        EXPECT_TRUE(same_bits(s2, s20)) << "second state changed on a skipped step";
      } else {
        EXPECT_FALSE(same_bits(w, w0)) << "a finite step did not update the weights";
      }
    }
  }
  expect_guards({&dw, &dg, &ds1, &ds2, &dloss, &dstep, &dsum});
}

// The whole update (norm, clip, Adam on two tensors) captured once as a CUDA graph and replayed
// for three steps with new gradients and a new device step struct before each replay.
TEST(GpuOptim, CapturedGraphReplaysWithNewStepValues) {
  REQUIRE_GPU();
  const int64_t n1 = 368640, n2 = 1000;
  const Floats w1 = normal(sz(n1), 0.f, 0.1f), w2 = normal(sz(n2), 0.f, 0.1f);
  // Steps 1 and 3 clip (large gradients), step 2 does not.
  const float grad_sd[3] = {0.05f, 0.0001f, 0.05f};
  std::vector<Floats> g1s, g2s;
  for (float sd : grad_sd) {
    g1s.push_back(normal(sz(n1), 0.f, sd));
    g2s.push_back(normal(sz(n2), 0.f, sd));
  }
  const double limit = 1.0;

  Stream st;
  DevFloats dw1(w1), dw2(w2), dg1(sz(n1)), dg2(sz(n2));
  DevFloats dm1(sz(n1)), dv1(sz(n1)), dm2(sz(n2)), dv2(sz(n2));
  DevBuf dstep(sizeof(gpu::OptimStepDevice)), dsum(sizeof(double)), dnorm(sizeof(double)),
      dfactor(sizeof(double));
  Workspace ws(std::max(gpu::sum_squares_workspace_bytes(n1), gpu::sum_squares_workspace_bytes(n2)));
  auto* step = static_cast<const gpu::OptimStepDevice*>(dstep.data());
  auto* sum = static_cast<double*>(dsum.data());
  auto* factor = static_cast<double*>(dfactor.data());

  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  CU(cudaStreamBeginCapture(st, cudaStreamCaptureModeThreadLocal));
  gpu::sum_squares(n1, dg1.p(), sum, false, ws.data(), st);
  gpu::sum_squares(n2, dg2.p(), sum, true, ws.data(), st);
  gpu::clip_grad_norm_factor(sum, step, static_cast<double*>(dnorm.data()), factor, st);
  gpu::scale_inplace(n1, dg1.p(), factor, st);
  gpu::scale_inplace(n2, dg2.p(), factor, st);
  gpu::adam_update(n1, dw1.p(), dg1.p(), dm1.p(), dv1.p(), step, st);
  gpu::adam_update(n2, dw2.p(), dg2.p(), dm2.p(), dv2.p(), step, st);
  CU(cudaStreamEndCapture(st, &graph));
  CU(cudaGraphInstantiate(&exec, graph, 0));

  Floats cw1 = w1, cw2 = w2, cm1(sz(n1)), cv1(sz(n1)), cm2(sz(n2)), cv2(sz(n2));
  for (int t = 1; t <= 3; ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    Floats g1 = g1s[sz(t - 1)], g2 = g2s[sz(t - 1)];
    cpu::OptimStep o;
    o.lr = 1e-3 * double(t);
    o.step = t;
    o.clip_grad_norm = limit;
    // CPU: the executor's ClipGradNorm node, then the updates.
    const double norm =
        std::sqrt(cpu::sum_squares(n1, g1.data()) + cpu::sum_squares(n2, g2.data()));
    const bool clips = norm > limit;
    EXPECT_EQ(clips, t != 2) << "the test's gradients should clip on steps 1 and 3 only";
    // Host side of the replay: new gradients and step values, then the graph.
    dg1.set(g1);
    dg2.set(g2);
    const gpu::OptimStepDevice h = gpu::make_optim_step_device(o);
    CU(cudaMemcpyAsync(dstep.data(), &h, sizeof h, cudaMemcpyHostToDevice, st));
    CU(cudaGraphLaunch(exec, st));
    st.sync();
    double gnorm = 0, gfactor = 0;
    dnorm.download(&gnorm, sizeof gnorm);
    dfactor.download(&gfactor, sizeof gfactor);
    EXPECT_TRUE(near_scalar(gnorm, norm, 1e-10)) << "norm";
    if (clips) {
      EXPECT_TRUE(near_scalar(gfactor, limit / (norm + 1e-6), 1e-10)) << "factor";
      cpu::scale_inplace(n1, g1.data(), gfactor);
      cpu::scale_inplace(n2, g2.data(), gfactor);
    } else {
      EXPECT_EQ(gfactor, 1.0);
    }
    cpu::adam_update(n1, cw1.data(), g1.data(), cm1.data(), cv1.data(), o);
    cpu::adam_update(n2, cw2.data(), g2.data(), cm2.data(), cv2.data(), o);
    EXPECT_TRUE(near(dg1.get(), g1, kExact)) << "clipped gradient 1";
    EXPECT_TRUE(near(dg2.get(), g2, kExact)) << "clipped gradient 2";
    EXPECT_TRUE(near(dw1.get(), cw1, 2e-6)) << "w1";
    EXPECT_TRUE(near(dw2.get(), cw2, 2e-6)) << "w2";
    EXPECT_TRUE(near(dm1.get(), cm1, 2e-6)) << "m1";
    EXPECT_TRUE(near(dv1.get(), cv1, 2e-6)) << "v1";
    EXPECT_TRUE(near(dm2.get(), cm2, 2e-6)) << "m2";
    EXPECT_TRUE(near(dv2.get(), cv2, 2e-6)) << "v2";
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  expect_guards({&dw1, &dw2, &dg1, &dg2, &dm1, &dv1, &dm2, &dv2, &dstep, &dsum, &dnorm, &dfactor, &ws});
}

// ==== Host-side argument checks (no device needed: they fail before any launch) ====

void expect_error(const std::function<void()>& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "no error; expected one mentioning \"" << part << "\"";
  } catch (const rpp::Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << e.what();
  }
}

TEST(GpuOpsArguments, RejectedOnTheHost) {
  alignas(16) static float fake[64];  // never dereferenced: every call below fails its checks
  float* f = fake;
  cudaStream_t s = nullptr;
  expect_error([&] { gpu::maxpool2_forward(1, 3, 4, 1, f, f, nullptr, s); }, "even");
  expect_error([&] { gpu::maxpool2_backward(1, 4, 5, 1, reinterpret_cast<const uint8_t*>(f), f, f, s); }, "even");
  expect_error([&] { gpu::maxpool2_backward(1, 4, 4, 1, nullptr, f, f, s); }, "argmax");
  expect_error([&] { gpu::upsample_concat_forward(1, 2, 2, 0, 4, f, f, f, s); }, "bad sizes");
  expect_error([&] { gpu::upsample_concat_backward(1, 2, 2, 3, 4, f, nullptr, f, s); }, "da");
  expect_error([&] {
    gpu::batchnorm_forward_train(1, 4, f, f, f, f, f, f, nullptr, nullptr, 0.1, 1e-5, f, s);
  }, "more than one value");
  expect_error([&] {
    gpu::batchnorm_forward_train(8, 4, f, f, f, f, f, f, nullptr, nullptr, 0.1, 1e-5, nullptr, s);
  }, "workspace");
  expect_error([&] {
    gpu::batchnorm_backward(8, 4, f, f, f, f, f, f, f, f, reinterpret_cast<char*>(f) + 4, s);
  }, "aligned");
  expect_error([&] { gpu::batchnorm_forward_eval(8, 4096, f, f, f, f, f, 1e-5, f, s); }, "channels");
  {
    const double* d = reinterpret_cast<const double*>(fake);
    expect_error([&] { gpu::batchnorm_backward_from_sums(1, 4, f, f, f, f, f, d, d, f, f, f, s); },
                 "more than one value");
    expect_error([&] { gpu::batchnorm_backward_from_sums(8, 4096, f, f, f, f, f, d, d, f, f, f, s); }, "channels");
    expect_error([&] { gpu::batchnorm_backward_from_sums(8, 4, f, f, f, f, f, nullptr, d, f, f, f, s); },
                 "`sum_dy` is null");
    expect_error([&] { gpu::batchnorm_backward_from_sums(8, 4, f, f, f, f, f, d, nullptr, f, f, f, s); },
                 "`sum_dy_xhat` is null");
    expect_error([&] { gpu::batchnorm_backward_from_sums(8, 4, f, f, f, f, f, d, d, f, nullptr, f, s); },
                 "`dgamma` is null");
  }
  expect_error([&] {
    gpu::batchnorm_forward_eval(8, 4, f, nullptr, f, f, f, 1e-5, f, s);
  }, "gamma");
  expect_error([&] { gpu::relu_forward(-1, f, f, s); }, "n must be");
  expect_error([&] { gpu::relu_forward(10, nullptr, f, s); }, "`x` is null");
  expect_error([&] { gpu::linear_forward(1, 0, 4, f, f, f, s); }, "bad sizes");
  expect_error([&] { gpu::global_avg_pool_forward(1, 0, 4, f, f, f, s); }, "bad sizes");
  expect_error([&] { gpu::global_avg_pool_forward(2, 16, 4, f, f, nullptr, s); }, "workspace");
  expect_error([&] { gpu::concat_forward(-1, 1, 1, f, f, f, s); }, "bad sizes");
  expect_error([&] { gpu::bce_with_logits_forward(0, f, f, f, false, f, s); }, "n must be > 0");
  expect_error([&] { gpu::dice_loss_backward(16, f, f, 1.0, f, false, nullptr, s); }, "workspace");
  expect_error([&] {
    cpu::OptimStep o;
    o.step = 0;
    gpu::make_optim_step_device(o);
  }, "step counts from 1");
  expect_error([&] {
    cpu::OptimStep o;
    o.momentum = 0;
    o.nesterov = true;
    gpu::make_optim_step_device(o);
  }, "Nesterov");
  expect_error([&] { gpu::adam_update(10, f, f, f, f, nullptr, s); }, "`step` is null");
  expect_error([&] { gpu::sum_squares(10, f, nullptr, false, f, s); }, "`result` is null");
}

}  // namespace
