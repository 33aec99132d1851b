// tests/test_kernels_ops.cpp — tests of the CPU reference ops in kernels/cpu/ops.h (everything
// but convolution): finite-difference gradient checks in double for every backward, forward
// values against hand-worked or independently computed expectations, optimisers against a
// scalar re-implementation of the PyTorch formulas, bit-reproducibility, NaN-poisoned and
// guarded outputs, and the size checks.
//   ./build/test_kernels_ops   (add --gtest_filter=Optim.* to run one group)
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "runtime/error.h"
#include "runtime/rng.h"

namespace cpu = rpp::cpu;

namespace {

using Vec = std::vector<double>;

Vec random_vec(size_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  rpp::Rng rng(seed);
  Vec v(n);
  for (double& x : v) x = lo + (hi - lo) * rng.uniform_double();
  return v;
}

std::vector<float> random_vecf(size_t n, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  rpp::Rng rng(seed);
  std::vector<float> v(n);
  for (float& x : v) x = rng.uniform(lo, hi);
  return v;
}

// 0/1 targets.
Vec random_targets(size_t n, uint64_t seed) {
  rpp::Rng rng(seed);
  Vec v(n);
  for (double& x : v) x = double(rng.below(2));
  return v;
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// Central differences of f with respect to every element of p (perturbed in place and restored)
// against the analytic gradient. The gradient must not be trivially zero.
void check_grad(const std::string& what, Vec& p, const Vec& grad,
                const std::function<double()>& f) {
  ASSERT_EQ(p.size(), grad.size()) << what;
  double largest = 0;
  for (double g : grad) largest = std::max(largest, std::fabs(g));
  ASSERT_GT(largest, 1e-3) << what << ": gradient is (nearly) zero, the check would be vacuous";
  const double h = 1e-6;
  for (size_t i = 0; i < p.size(); ++i) {
    const double saved = p[i];
    p[i] = saved + h;
    const double fp = f();
    p[i] = saved - h;
    const double fm = f();
    p[i] = saved;
    const double num = (fp - fm) / (2 * h);
    EXPECT_NEAR(grad[i], num, 1e-8 + 1e-6 * std::fabs(num)) << what << "[" << i << "]";
  }
}

// An output buffer of n values filled with NaN between two guard zones holding kGuard: after a
// kernel ran, every value must be finite (fully overwritten) and the guards untouched.
constexpr float kGuard = 12345.0f;
struct Guarded {
  static constexpr size_t G = 16;
  std::vector<float> buf;
  size_t n;
  explicit Guarded(size_t n_) : buf(n_ + 2 * G, kGuard), n(n_) {
    std::fill(buf.begin() + G, buf.begin() + G + n, std::numeric_limits<float>::quiet_NaN());
  }
  float* data() { return buf.data() + G; }
  void expect_ok(const std::string& what) const {
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) bad += std::isfinite(buf[G + i]) ? 0 : 1;
    EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << n << " values not written";
    for (size_t i = 0; i < G; ++i) {
      EXPECT_EQ(buf[i], kGuard) << what << ": write before the buffer";
      EXPECT_EQ(buf[G + n + i], kGuard) << what << ": write past the buffer";
    }
  }
};

template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

constexpr double kMomentum = 0.1, kEps = 1e-5;

}  // namespace

// ============================ gradient checks (double) ============================

TEST(GradCheck, BatchNormTrainingMode) {
  // c > 64 so channels are split into more than one accumulation run.
  const int64_t count = 6;
  const int c = 66;
  Vec x = random_vec(count * c, 1, -2, 2), gamma = random_vec(c, 2, 0.5, 1.5),
      beta = random_vec(c, 3, -0.5, 0.5), r = random_vec(count * c, 4);
  Vec y(count * c), mean(c), invstd(c);
  auto f = [&] {
    cpu::batchnorm_forward_train<double>(count, c, x.data(), gamma.data(), beta.data(), y.data(),
                                         mean.data(), invstd.data(), nullptr, nullptr, kMomentum,
                                         kEps);
    return dot(y, r);
  };
  f();
  Vec dx(count * c), dgamma(c), dbeta(c);
  cpu::batchnorm_backward<double>(count, c, x.data(), r.data(), gamma.data(), mean.data(),
                                  invstd.data(), dx.data(), dgamma.data(), dbeta.data());
  check_grad("bn dx", x, dx, f);
  check_grad("bn dgamma", gamma, dgamma, f);
  check_grad("bn dbeta", beta, dbeta, f);
}

TEST(GradCheck, Relu) {
  const size_t n = 40;
  Vec x = random_vec(n, 5), r = random_vec(n, 6), y(n), dx(n);
  // Kink zone: keep every input at least 0.05 away from 0.
  for (double& v : x)
    if (std::fabs(v) < 0.05) v += v < 0 ? -0.1 : 0.1;
  auto f = [&] {
    cpu::relu_forward<double>(n, x.data(), y.data());
    return dot(y, r);
  };
  cpu::relu_backward<double>(n, x.data(), r.data(), dx.data());
  check_grad("relu dx", x, dx, f);
}

TEST(GradCheck, AddAndMul) {
  const size_t n = 30;
  Vec a = random_vec(n, 7), b = random_vec(n, 8), r = random_vec(n, 9), y(n);
  auto fadd = [&] {
    cpu::add<double>(n, a.data(), b.data(), y.data());
    return dot(y, r);
  };
  // d(a + b) = dy for both inputs.
  check_grad("add da", a, r, fadd);
  check_grad("add db", b, r, fadd);

  auto fmul = [&] {
    cpu::mul<double>(n, a.data(), b.data(), y.data());
    return dot(y, r);
  };
  Vec da(n), db(n);
  cpu::mul<double>(n, r.data(), b.data(), da.data());
  cpu::mul<double>(n, r.data(), a.data(), db.data());
  check_grad("mul da", a, da, fmul);
  check_grad("mul db", b, db, fmul);
}

TEST(GradCheck, Sigmoid) {
  const size_t n = 30;
  Vec x = random_vec(n, 10, -4, 4), r = random_vec(n, 11), y(n), dx(n);
  auto f = [&] {
    cpu::sigmoid_forward<double>(n, x.data(), y.data());
    return dot(y, r);
  };
  f();
  cpu::sigmoid_backward<double>(n, y.data(), r.data(), dx.data());
  check_grad("sigmoid dx", x, dx, f);
}

TEST(GradCheck, ScaleChannels) {
  const int n = 2, c = 3;
  const int64_t hw = 5;
  Vec x = random_vec(n * hw * c, 12), s = random_vec(n * c, 13), r = random_vec(n * hw * c, 14);
  Vec y(x.size()), dx(x.size()), ds(s.size());
  auto f = [&] {
    cpu::scale_channels<double>(n, hw, c, x.data(), s.data(), y.data());
    return dot(y, r);
  };
  cpu::scale_channels<double>(n, hw, c, r.data(), s.data(), dx.data());
  cpu::scale_channels_backward_scale<double>(n, hw, c, x.data(), r.data(), ds.data());
  check_grad("scale_channels dx", x, dx, f);
  check_grad("scale_channels ds", s, ds, f);
}

TEST(GradCheck, GlobalAvgPool) {
  const int n = 2, c = 3;
  const int64_t hw = 6;
  Vec x = random_vec(n * hw * c, 15), r = random_vec(n * c, 16), y(n * c), dx(x.size());
  auto f = [&] {
    cpu::global_avg_pool_forward<double>(n, hw, c, x.data(), y.data());
    return dot(y, r);
  };
  cpu::global_avg_pool_backward<double>(n, hw, c, r.data(), dx.data());
  check_grad("global_avg_pool dx", x, dx, f);
}

TEST(GradCheck, Linear) {
  const int n = 3, in = 5, out = 4;
  Vec x = random_vec(n * in, 17), w = random_vec(out * in, 18), r = random_vec(n * out, 19);
  Vec y(n * out), dx(x.size()), dw(w.size());
  auto f = [&] {
    cpu::linear_forward<double>(n, in, out, x.data(), w.data(), y.data());
    return dot(y, r);
  };
  cpu::linear_backward<double>(n, in, out, x.data(), w.data(), r.data(), dx.data(), dw.data());
  check_grad("linear dx", x, dx, f);
  check_grad("linear dw", w, dw, f);
}

TEST(GradCheck, MaxPool2) {
  const int n = 2, h = 4, w = 6, c = 3;
  const size_t size = size_t(n) * h * w * c;
  // No ties: a random permutation of 0..size-1 scaled so that values differ by >= 0.013.
  std::vector<int> perm(size);
  for (size_t i = 0; i < size; ++i) perm[i] = int(i);
  rpp::Rng rng(20);
  for (size_t i = size - 1; i > 0; --i) std::swap(perm[i], perm[rng.below(uint32_t(i + 1))]);
  Vec x(size);
  for (size_t i = 0; i < size; ++i) x[i] = 0.013 * perm[i] - 1.0;
  Vec r = random_vec(size / 4, 21), y(size / 4), dx(size);
  auto f = [&] {
    cpu::maxpool2_forward<double>(n, h, w, c, x.data(), y.data());
    return dot(y, r);
  };
  std::vector<uint8_t> arg(size / 4);
  cpu::maxpool2_forward<double>(n, h, w, c, x.data(), y.data(), arg.data());
  cpu::maxpool2_backward<double>(n, h, w, c, arg.data(), r.data(), dx.data());
  check_grad("maxpool2 dx", x, dx, f);
}

TEST(GradCheck, Upsample2) {
  const int n = 2, h = 2, w = 3, c = 2;
  const size_t size = size_t(n) * h * w * c;
  Vec x = random_vec(size, 22), r = random_vec(size * 4, 23), y(size * 4), dx(size);
  auto f = [&] {
    cpu::upsample2_forward<double>(n, h, w, c, x.data(), y.data());
    return dot(y, r);
  };
  cpu::upsample2_backward<double>(n, h, w, c, r.data(), dx.data());
  check_grad("upsample2 dx", x, dx, f);
}

TEST(GradCheck, Concat) {
  const int64_t count = 4;
  const int ca = 2, cb = 3;
  Vec a = random_vec(count * ca, 24), b = random_vec(count * cb, 25),
      r = random_vec(count * (ca + cb), 26), y(r.size()), da(a.size()), db(b.size());
  auto f = [&] {
    cpu::concat_forward<double>(count, ca, cb, a.data(), b.data(), y.data());
    return dot(y, r);
  };
  cpu::concat_backward<double>(count, ca, cb, r.data(), da.data(), db.data());
  check_grad("concat da", a, da, f);
  check_grad("concat db", b, db, f);
}

TEST(GradCheck, BceWithLogits) {
  const int64_t n = 20;
  Vec x = random_vec(n, 27, -3, 3), t = random_targets(n, 28), dx(n);
  auto f = [&] { return cpu::bce_with_logits_forward<double>(n, x.data(), t.data()); };
  cpu::bce_with_logits_backward<double>(n, x.data(), t.data(), 1.0, dx.data());
  check_grad("bce dx", x, dx, f);
  // dloss scales the gradient linearly.
  Vec dx2(n);
  cpu::bce_with_logits_backward<double>(n, x.data(), t.data(), 2.5, dx2.data());
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(dx2[i], 2.5 * dx[i], 1e-15) << i;
}

TEST(GradCheck, Dice) {
  const int64_t n = 20;
  Vec x = random_vec(n, 29, -3, 3), t = random_targets(n, 30), dx(n);
  auto f = [&] { return cpu::dice_loss_forward<double>(n, x.data(), t.data()); };
  cpu::dice_loss_backward<double>(n, x.data(), t.data(), 1.0, dx.data());
  check_grad("dice dx", x, dx, f);
  Vec dx2(n);
  cpu::dice_loss_backward<double>(n, x.data(), t.data(), -0.5, dx2.data());
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(dx2[i], -0.5 * dx[i], 1e-15) << i;
}

// ============================ forward values ============================

TEST(BatchNorm, TrainingNormalisesAndUpdatesRunningStats) {
  // Large enough to run in parallel; c = 150 splits into several accumulation runs.
  const int64_t count = 4000;
  const int c = 150;
  Vec x(count * c);
  rpp::Rng rng(31);
  for (int64_t i = 0; i < count; ++i)
    for (int j = 0; j < c; ++j) x[i * c + j] = 3.0 * j - 100.0 + (0.5 + 0.1 * j) * rng.normal();
  Vec ones(c, 1.0), zeros(c, 0.0), y(x.size()), mean(c), invstd(c);
  Vec rm = random_vec(c, 32), rv = random_vec(c, 33, 0.5, 2.0);
  const Vec rm0 = rm, rv0 = rv;
  cpu::batchnorm_forward_train<double>(count, c, x.data(), ones.data(), zeros.data(), y.data(),
                                       mean.data(), invstd.data(), rm.data(), rv.data(), kMomentum,
                                       kEps);
  for (int j = 0; j < c; ++j) {
    // Independent two-pass statistics of channel j, and of its output.
    double s = 0, sy = 0;
    for (int64_t i = 0; i < count; ++i) {
      s += x[i * c + j];
      sy += y[i * c + j];
    }
    const double mu = s / count, my = sy / count;
    double ss = 0, ssy = 0;
    for (int64_t i = 0; i < count; ++i) {
      ss += (x[i * c + j] - mu) * (x[i * c + j] - mu);
      ssy += (y[i * c + j] - my) * (y[i * c + j] - my);
    }
    const double var = ss / count;
    EXPECT_NEAR(my, 0.0, 1e-12) << j;
    // Biased output variance is var / (var + eps).
    EXPECT_NEAR(ssy / count, var / (var + kEps), 1e-12) << j;
    EXPECT_NEAR(ssy / count, 1.0, 1e-4) << j;
    EXPECT_NEAR(mean[j], mu, 1e-12 * std::max(1.0, std::fabs(mu))) << j;
    EXPECT_NEAR(invstd[j], 1.0 / std::sqrt(var + kEps), 1e-12) << j;
    // PyTorch: running = (1 - momentum) * running + momentum * batch, unbiased variance.
    EXPECT_NEAR(rm[j], 0.9 * rm0[j] + 0.1 * mu, 1e-12) << j;
    EXPECT_NEAR(rv[j], 0.9 * rv0[j] + 0.1 * ss / (count - 1), 1e-12) << j;
  }
}

// A channel whose batch holds a NaN or Inf keeps its running statistics (a skipped training step
// must not poison evaluation); the other channels update as usual.
TEST(BatchNorm, NonFiniteChannelKeepsItsRunningStatistics) {
  const int64_t count = 50;
  const int c = 5;
  std::vector<float> x = random_vecf(size_t(count * c), 41);
  x[size_t(7 * c + 2)] = std::numeric_limits<float>::quiet_NaN();
  x[size_t(30 * c + 3)] = -std::numeric_limits<float>::infinity();
  std::vector<float> mean(c), invstd(c), rm(c, 0.25f), rv(c, 1.5f);
  cpu::batchnorm_stats_train<float>(count, c, x.data(), mean.data(), invstd.data(), rm.data(), rv.data(), 0.1, 1e-5);
  for (int j = 0; j < c; ++j) {
    if (j == 2 || j == 3) {
      EXPECT_FALSE(std::isfinite(mean[size_t(j)]) && std::isfinite(invstd[size_t(j)])) << j;
      EXPECT_EQ(rm[size_t(j)], 0.25f) << j;
      EXPECT_EQ(rv[size_t(j)], 1.5f) << j;
    } else {
      EXPECT_TRUE(std::isfinite(mean[size_t(j)])) << j;
      EXPECT_NE(rm[size_t(j)], 0.25f) << j;
      EXPECT_NE(rv[size_t(j)], 1.5f) << j;
    }
  }
}

TEST(BatchNorm, AffineAndEvalModeUseTheRightStatistics) {
  const int64_t count = 9;
  const int c = 4;
  Vec x = random_vec(count * c, 34, -3, 3), gamma = random_vec(c, 35, 0.5, 2),
      beta = random_vec(c, 36), rm = random_vec(c, 37), rv = random_vec(c, 38, 0.2, 3.0);
  Vec y(x.size()), mean(c), invstd(c), rm_copy = rm, rv_copy = rv;
  cpu::batchnorm_forward_train<double>(count, c, x.data(), gamma.data(), beta.data(), y.data(),
                                       mean.data(), invstd.data(), rm_copy.data(), rv_copy.data(),
                                       kMomentum, kEps);
  for (int64_t i = 0; i < count; ++i)
    for (int j = 0; j < c; ++j)
      EXPECT_NEAR(y[i * c + j], (x[i * c + j] - mean[j]) * invstd[j] * gamma[j] + beta[j], 1e-12);

  // Eval mode: running statistics, not the batch's; running stats are not modified.
  const Vec rm0 = rm, rv0 = rv;
  cpu::batchnorm_forward_eval<double>(count, c, x.data(), gamma.data(), beta.data(), rm.data(),
                                      rv.data(), kEps, y.data());
  for (int64_t i = 0; i < count; ++i)
    for (int j = 0; j < c; ++j) {
      const double want = (x[i * c + j] - rm[j]) / std::sqrt(rv[j] + kEps) * gamma[j] + beta[j];
      EXPECT_NEAR(y[i * c + j], want, 1e-12);
    }
  EXPECT_EQ(rm, rm0);
  EXPECT_EQ(rv, rv0);
}

TEST(Forward, ReluValues) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  Vec x = {-2.0, -1e-300, 0.0, 1e-300, 3.0, nan}, y(x.size());
  cpu::relu_forward<double>(int64_t(x.size()), x.data(), y.data());
  EXPECT_EQ(y[0], 0.0);
  EXPECT_EQ(y[1], 0.0);
  EXPECT_EQ(y[2], 0.0);
  EXPECT_EQ(y[3], 1e-300);
  EXPECT_EQ(y[4], 3.0);
  EXPECT_TRUE(std::isnan(y[5])) << "NaN must propagate";
}

TEST(Forward, SigmoidStableForLargeInputs) {
  {
    std::vector<float> x = {100.0f, -100.0f, 0.0f, 2.0f}, y(4), dy(4, 1.0f), dx(4);
    cpu::sigmoid_forward<float>(4, x.data(), y.data());
    EXPECT_EQ(y[0], 1.0f);
    EXPECT_TRUE(std::isfinite(y[1]));
    EXPECT_GE(y[1], 0.0f);
    EXPECT_LT(y[1], 1e-30f);
    EXPECT_EQ(y[2], 0.5f);
    EXPECT_NEAR(y[3], 1.0 / (1.0 + std::exp(-2.0)), 1e-7);
    cpu::sigmoid_backward<float>(4, y.data(), dy.data(), dx.data());
    for (float v : dx) EXPECT_TRUE(std::isfinite(v));
    EXPECT_EQ(dx[2], 0.25f);
  }
  {
    Vec x = {100.0, -100.0}, y(2);
    cpu::sigmoid_forward<double>(2, x.data(), y.data());
    EXPECT_EQ(y[0], 1.0);
    EXPECT_NEAR(y[1], 3.720075976020836e-44, 1e-57);  // exp(-100) / (1 + exp(-100))
  }
}

TEST(Forward, MaxPoolTieRule) {
  // One image, 2 x 8, one channel: four windows, rows shown left to right.
  //   window 0: 5 5 / 5 5  -> all tied: the gradient goes to (0,0)
  //   window 1: 1 7 / 7 2  -> tie between (0,1) and (1,0): (0,1)
  //   window 2: 1 2 / 9 9  -> tie between (1,0) and (1,1): (1,0)
  //   window 3: 3 3 / 3 4  -> unique maximum at (1,1)
  Vec x = {5, 5, 1, 7, 1, 2, 3, 3,   //
           5, 5, 7, 2, 9, 9, 3, 4};
  Vec y(4), dy = {10, 20, 30, 40}, dx(16);
  cpu::maxpool2_forward<double>(1, 2, 8, 1, x.data(), y.data());
  EXPECT_EQ(y, (Vec{5, 7, 9, 4}));
  // The window indices name those positions, and backward sends the gradient there.
  std::vector<uint8_t> arg(4, 0xFF);
  cpu::maxpool2_forward<double>(1, 2, 8, 1, x.data(), y.data(), arg.data());
  EXPECT_EQ(arg, (std::vector<uint8_t>{0, 1, 2, 3}));
  dx.assign(16, -1.0);
  cpu::maxpool2_backward<double>(1, 2, 8, 1, arg.data(), dy.data(), dx.data());
  EXPECT_EQ(dx, (Vec{10, 0, 0, 20, 0, 0, 0, 0,  //
                     0, 0, 0, 0, 30, 0, 0, 40}));
  arg[2] = 4;  // not a window position
  EXPECT_THROW(cpu::maxpool2_backward<double>(1, 2, 8, 1, arg.data(), dy.data(), dx.data()), rpp::Error);
}

TEST(Forward, MaxPoolChannelsAreIndependent) {
  // (1, 2, 2, 2): channel 0's maximum at (1,1), channel 1's at (0,0).
  Vec x = {1, 8, 2, 7, 3, 6, 4, 5}, y(2);
  cpu::maxpool2_forward<double>(1, 2, 2, 2, x.data(), y.data());
  EXPECT_EQ(y, (Vec{4, 8}));
}

TEST(Forward, Upsample2Layout) {
  // x (1, 2, 2, 2) with x[h, w, c] = 100 h + 10 w + c.
  const int h = 2, w = 2, c = 2;
  Vec x(8), y(32), dx(8);
  for (int i = 0; i < h; ++i)
    for (int j = 0; j < w; ++j)
      for (int k = 0; k < c; ++k) x[(i * w + j) * c + k] = 100 * i + 10 * j + k;
  cpu::upsample2_forward<double>(1, h, w, c, x.data(), y.data());
  for (int i = 0; i < 2 * h; ++i)
    for (int j = 0; j < 2 * w; ++j)
      for (int k = 0; k < c; ++k)
        EXPECT_EQ(y[(i * 2 * w + j) * c + k], 100 * (i / 2) + 10 * (j / 2) + k) << i << "," << j;
  // First output row, spelled out: (0,0) (0,0) (0,1) (0,1).
  EXPECT_EQ(Vec(y.begin(), y.begin() + 8), (Vec{0, 1, 0, 1, 10, 11, 10, 11}));
  // Backward sums the four copies: with dy = y, dx = 4 x.
  cpu::upsample2_backward<double>(1, h, w, c, y.data(), dx.data());
  for (int i = 0; i < 8; ++i) EXPECT_EQ(dx[i], 4 * x[i]);
}

TEST(Forward, ConcatOrderAFirst) {
  Vec a = {1, 2, 3, 4}, b = {10, 20, 30, 40, 50, 60}, y(10), da(4), db(6);
  cpu::concat_forward<double>(2, 2, 3, a.data(), b.data(), y.data());
  EXPECT_EQ(y, (Vec{1, 2, 10, 20, 30, 3, 4, 40, 50, 60}));
  cpu::concat_backward<double>(2, 2, 3, y.data(), da.data(), db.data());
  EXPECT_EQ(da, a);
  EXPECT_EQ(db, b);
}

TEST(Forward, ScaleChannelsAndPoolValues) {
  // x (2 images, 2 pixels, 2 channels), s (2, 2).
  Vec x = {1, 2, 3, 4, 5, 6, 7, 8}, s = {10, 100, -1, 0.5}, y(8), ds(4), g(4), dx(8);
  cpu::scale_channels<double>(2, 2, 2, x.data(), s.data(), y.data());
  EXPECT_EQ(y, (Vec{10, 200, 30, 400, -5, 3, -7, 4}));
  // ds[n, c] = sum_p dy * x with dy = 1: per-image channel sums.
  Vec ones(8, 1.0);
  cpu::scale_channels_backward_scale<double>(2, 2, 2, x.data(), ones.data(), ds.data());
  EXPECT_EQ(ds, (Vec{4, 6, 12, 14}));
  cpu::global_avg_pool_forward<double>(2, 2, 2, x.data(), g.data());
  EXPECT_EQ(g, (Vec{2, 3, 6, 7}));
  cpu::global_avg_pool_backward<double>(2, 2, 2, g.data(), dx.data());
  EXPECT_EQ(dx, (Vec{1, 1.5, 1, 1.5, 3, 3.5, 3, 3.5}));
}

TEST(Forward, LinearValues) {
  // x (1, 2) = [1, 2]; w (3, 2) = [[1, 0], [0, 1], [2, -1]] -> y = [1, 2, 0].
  Vec x = {1, 2}, w = {1, 0, 0, 1, 2, -1}, y(3);
  cpu::linear_forward<double>(1, 2, 3, x.data(), w.data(), y.data());
  EXPECT_EQ(y, (Vec{1, 2, 0}));
}

TEST(Forward, PooledReductionsMatchNaiveSumsInParallel) {
  // Big enough that the (image, channel) pairs are split over threads mid-image.
  const int n = 3, c = 70;
  const int64_t hw = 5000;
  Vec x = random_vec(n * hw * c, 39), dy = random_vec(n * hw * c, 40), g(n * c), ds(n * c);
  cpu::global_avg_pool_forward<double>(n, hw, c, x.data(), g.data());
  cpu::scale_channels_backward_scale<double>(n, hw, c, x.data(), dy.data(), ds.data());
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < c; ++j) {
      double s = 0, sd = 0;
      for (int64_t p = 0; p < hw; ++p) {
        s += x[(i * hw + p) * c + j];
        sd += x[(i * hw + p) * c + j] * dy[(i * hw + p) * c + j];
      }
      EXPECT_NEAR(g[i * c + j], s / hw, 1e-13) << i << "," << j;
      EXPECT_NEAR(ds[i * c + j], sd, 1e-11) << i << "," << j;
    }
}

TEST(Loss, BceHandComputed) {
  // x = [0, 2, -1], t = [1, 0, 0]:
  //   0 - 0 + log(1 + e^0)      = log 2               = 0.6931471805599453
  //   2 - 0 + log(1 + e^-2)     = 2 + 0.1269280110... = 2.1269280110429727
  //   0 - 0 + log(1 + e^-1)                           = 0.31326168751822286
  //   mean                                            = 1.0444456263737136
  Vec x = {0, 2, -1}, t = {1, 0, 0}, dx(3);
  EXPECT_NEAR(cpu::bce_with_logits_forward<double>(3, x.data(), t.data()), 1.0444456263737136,
              1e-15);
  // dx = (sigmoid(x) - t) / 3: (0.5 - 1) / 3 = -1/6 for x = 0, t = 1.
  cpu::bce_with_logits_backward<double>(3, x.data(), t.data(), 1.0, dx.data());
  EXPECT_NEAR(dx[0], -1.0 / 6.0, 1e-15);
  EXPECT_NEAR(dx[1], 1.0 / (1.0 + std::exp(-2.0)) / 3.0, 1e-15);
  // Large logits stay finite: x = 100, t = 1 costs ~0; x = -100, t = 1 costs 100; float too.
  std::vector<float> xf = {100.0f, -100.0f}, tf = {1.0f, 1.0f};
  EXPECT_NEAR(cpu::bce_with_logits_forward<float>(2, xf.data(), tf.data()), 50.0, 1e-12);
  Vec xl = {100.0, -100.0, 100.0}, tl = {1.0, 1.0, 0.0};
  EXPECT_NEAR(cpu::bce_with_logits_forward<double>(3, xl.data(), tl.data()), 200.0 / 3.0, 1e-12);
}

TEST(Loss, DiceHandComputed) {
  // x = [0, 0], t = [1, 0]: p = [.5, .5]; 1 - (2 * 0.5 + 1) / (1 + 1 + 1) = 1/3.
  Vec x = {0, 0}, t = {1, 0};
  EXPECT_NEAR(cpu::dice_loss_forward<double>(2, x.data(), t.data()), 1.0 / 3.0, 1e-15);
  // x = [0, ln 3], t = [1, 1]: p = [.5, .75]; sum(p t) = 1.25, sum p = 1.25, sum t = 2;
  // 1 - 3.5 / 4.25 = 3/17.
  Vec x2 = {0, std::log(3.0)}, t2 = {1, 1};
  EXPECT_NEAR(cpu::dice_loss_forward<double>(2, x2.data(), t2.data()), 3.0 / 17.0, 1e-15);
  // Perfect, confident prediction: 1 - (2 * 1 + 1) / (1 + 1 + 1) = 0.
  Vec x3 = {100, -100}, t3 = {1, 0};
  EXPECT_NEAR(cpu::dice_loss_forward<double>(2, x3.data(), t3.data()), 0.0, 1e-15);
}

// ============================ optimisers ============================

namespace {

// Scalar re-implementations, written from the PyTorch update rules (torch.optim.SGD, Adam,
// AdamW, NAdam), one parameter at a time. State starts as PyTorch's: no buffer, zero moments.
struct RefParam {
  double w, buf = 0, m = 0, v = 0;
  bool has_buf = false;
};

void ref_sgd(RefParam& p, double g, double lr, double momentum, double wd, bool nesterov) {
  double d = g;
  if (wd != 0) d = d + wd * p.w;
  if (momentum != 0) {
    if (!p.has_buf) {
      p.buf = d;
      p.has_buf = true;
    } else {
      p.buf = momentum * p.buf + d;  // dampening 0
    }
    d = nesterov ? d + momentum * p.buf : p.buf;
  }
  p.w = p.w - lr * d;
}

void ref_adam(RefParam& p, double g, int64_t step, double lr, double b1, double b2, double eps,
              double wd, bool decoupled) {
  if (decoupled) {
    p.w = p.w * (1 - lr * wd);
  } else if (wd != 0) {
    g = g + wd * p.w;
  }
  p.m = p.m + (g - p.m) * (1 - b1);  // exp_avg.lerp_(grad, 1 - beta1)
  p.v = p.v * b2 + (1 - b2) * g * g;
  const double bias1 = 1 - std::pow(b1, double(step)), bias2 = 1 - std::pow(b2, double(step));
  const double denom = std::sqrt(p.v) / std::sqrt(bias2) + eps;
  p.w = p.w - (lr / bias1) * (p.m / denom);
}

// mu_product is the host's running product, updated here.
void ref_nadam(RefParam& p, double g, int64_t step, double& mu_product, double lr, double b1,
               double b2, double eps, double wd) {
  const double decay = 4e-3;
  if (wd != 0) g = g + wd * p.w;
  const double mu = b1 * (1 - 0.5 * std::pow(0.96, double(step) * decay));
  const double mu_next = b1 * (1 - 0.5 * std::pow(0.96, double(step + 1) * decay));
  mu_product = mu_product * mu;
  p.m = p.m + (g - p.m) * (1 - b1);
  p.v = p.v * b2 + (1 - b2) * g * g;
  const double denom = std::sqrt(p.v / (1 - std::pow(b2, double(step)))) + eps;
  const double mu_product_next = mu_product * mu_next;
  p.w = p.w + (-lr * (1 - mu) / (1 - mu_product)) * g / denom;
  p.w = p.w + (-lr * mu_next / (1 - mu_product_next)) * p.m / denom;
}

enum class Opt { Sgd, Adam, AdamW, Nadam };

struct OptCase {
  const char* name;
  Opt opt;
  double lr, momentum, wd;
  bool nesterov;
};

// Runs `steps` updates of the kernel in T and of the scalar reference in double with the same
// gradients, and compares the weights (and state) after every step.
template <class T>
void run_optim_case(const OptCase& k, int steps, double tol) {
  const int64_t n = 37;
  const Vec w0 = random_vec(n, 41, -2, 2);
  std::vector<T> w(w0.begin(), w0.end());
  const T nan = std::numeric_limits<T>::quiet_NaN();
  // State is poisoned: step 1 must not read it.
  std::vector<T> buf(n, nan), m(n, nan), v(n, nan);
  std::vector<RefParam> ref(n);
  for (int64_t i = 0; i < n; ++i) ref[i].w = double(w[i]);
  double mu_product_host = 1, mu_product_ref = 1;
  const bool use_buf = k.momentum != 0;
  for (int step = 1; step <= steps; ++step) {
    const Vec gd = random_vec(n, 100 + step, -1, 1);
    std::vector<T> g(gd.begin(), gd.end());
    cpu::OptimStep o;
    o.lr = k.lr;
    o.momentum = k.momentum;
    o.weight_decay = k.wd;
    o.nesterov = k.nesterov;
    o.step = step;
    switch (k.opt) {
      case Opt::Sgd:
        cpu::sgd_update<T>(n, w.data(), g.data(), use_buf ? buf.data() : nullptr, o);
        for (int64_t i = 0; i < n; ++i)
          ref_sgd(ref[i], double(g[i]), k.lr, k.momentum, k.wd, k.nesterov);
        break;
      case Opt::Adam:
      case Opt::AdamW:
        if (k.opt == Opt::Adam)
          cpu::adam_update<T>(n, w.data(), g.data(), m.data(), v.data(), o);
        else
          cpu::adamw_update<T>(n, w.data(), g.data(), m.data(), v.data(), o);
        for (int64_t i = 0; i < n; ++i)
          ref_adam(ref[i], double(g[i]), step, k.lr, 0.9, 0.999, 1e-8, k.wd, k.opt == Opt::AdamW);
        break;
      case Opt::Nadam:
        cpu::nadam_schedule(o, mu_product_host);
        mu_product_host = o.nadam_mu_product;
        cpu::nadam_update<T>(n, w.data(), g.data(), m.data(), v.data(), o);
        {
          // The product advances once per step, not once per parameter.
          double mp = mu_product_ref;
          for (int64_t i = 0; i < n; ++i) {
            mp = mu_product_ref;
            ref_nadam(ref[i], double(g[i]), step, mp, k.lr, 0.9, 0.999, 1e-8, k.wd);
          }
          mu_product_ref = mp;
        }
        break;
    }
    for (int64_t i = 0; i < n; ++i) {
      EXPECT_NEAR(double(w[i]), ref[i].w, tol * std::max(1.0, std::fabs(ref[i].w)))
          << k.name << " step " << step << " w[" << i << "]";
      if (k.opt == Opt::Sgd && use_buf) {
        EXPECT_NEAR(double(buf[i]), ref[i].buf, tol * std::max(1.0, std::fabs(ref[i].buf)))
            << k.name << " step " << step << " buf[" << i << "]";
      }
      if (k.opt != Opt::Sgd) {
        EXPECT_NEAR(double(m[i]), ref[i].m, tol) << k.name << " step " << step << " m[" << i << "]";
        EXPECT_NEAR(double(v[i]), ref[i].v, tol) << k.name << " step " << step << " v[" << i << "]";
      }
    }
  }
  // The weights must actually have moved (a no-op kernel would pass nothing above anyway).
  double moved = 0;
  for (int64_t i = 0; i < n; ++i) moved = std::max(moved, std::fabs(double(w[i]) - w0[i]));
  EXPECT_GT(moved, k.lr * 0.5) << k.name;
}

const OptCase kOptCases[] = {
    {"sgd plain", Opt::Sgd, 0.1, 0.0, 0.0, false},
    {"sgd plain + weight decay", Opt::Sgd, 0.1, 0.0, 0.05, false},
    {"sgd momentum", Opt::Sgd, 0.1, 0.9, 0.0, false},
    {"sgd nesterov", Opt::Sgd, 0.1, 0.9, 0.0, true},
    {"sgd nesterov + weight decay", Opt::Sgd, 0.1, 0.9, 0.01, true},
    {"adam", Opt::Adam, 1e-2, 0.9, 0.0, false},
    {"adam + L2", Opt::Adam, 1e-2, 0.9, 0.1, false},
    {"adamw", Opt::AdamW, 1e-2, 0.9, 0.1, false},
    {"nadam", Opt::Nadam, 1e-2, 0.9, 0.0, false},
    {"nadam + L2", Opt::Nadam, 1e-2, 0.9, 0.1, false},
};

}  // namespace

TEST(Optim, MatchesPyTorchFormulasDouble) {
  for (const OptCase& k : kOptCases) run_optim_case<double>(k, 6, 1e-13);
}

TEST(Optim, MatchesPyTorchFormulasFloat) {
  for (const OptCase& k : kOptCases) run_optim_case<float>(k, 6, 2e-6);
}

TEST(Optim, AdamFirstStepIsLrTimesSignOfGradient) {
  const int64_t n = 16;
  Vec w = random_vec(n, 50), g = random_vec(n, 51), m(n), v(n);
  for (double& x : g) x = x < 0 ? x - 0.1 : x + 0.1;  // |g| >= 0.1, so eps is negligible
  const Vec w0 = w;
  cpu::OptimStep o;
  o.lr = 1e-3;
  cpu::adam_update<double>(n, w.data(), g.data(), m.data(), v.data(), o);
  for (int64_t i = 0; i < n; ++i) {
    const double sign = g[i] > 0 ? 1.0 : -1.0;
    EXPECT_NEAR(w[i] - w0[i], -1e-3 * sign, 1e-3 * 1e-6) << i;
  }
  // AdamW without decay takes the same step; with decay it first shrinks w by lr * wd.
  Vec w2 = w0, w3 = w0, m2(n), v2(n), m3(n), v3(n);
  cpu::adamw_update<double>(n, w2.data(), g.data(), m2.data(), v2.data(), o);
  EXPECT_EQ(w2, w);
  o.weight_decay = 0.5;
  cpu::adamw_update<double>(n, w3.data(), g.data(), m3.data(), v3.data(), o);
  for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(w3[i], w[i] - 1e-3 * 0.5 * w0[i], 1e-15) << i;
}

TEST(Optim, NadamSchedule) {
  cpu::OptimStep o;
  o.step = 1;
  cpu::nadam_schedule(o, 1.0);
  // mu_t = 0.9 (1 - 0.5 * 0.96^(0.004 t)): mu_1 = 0.45007347359129607, mu_2 = 0.4501469351862175.
  EXPECT_NEAR(o.nadam_mu, 0.45007347359129607, 1e-16);
  EXPECT_NEAR(o.nadam_mu_next, 0.4501469351862175, 1e-16);
  EXPECT_NEAR(o.nadam_mu_product, 0.45007347359129607, 1e-16);
  EXPECT_NEAR(o.nadam_mu_product_next, 0.20259919474573693, 1e-16);
  o.step = 2;
  const double prev = o.nadam_mu_product;
  cpu::nadam_schedule(o, prev);
  EXPECT_NEAR(o.nadam_mu, 0.4501469351862175, 1e-16);
  EXPECT_NEAR(o.nadam_mu_product, 0.20259919474573693, 1e-16);
  EXPECT_NEAR(o.nadam_mu_product_next, o.nadam_mu_product * o.nadam_mu_next, 1e-17);
}

// ============================ determinism ============================

TEST(Determinism, BatchNormBitIdentical) {
  const int64_t count = 10000;
  const int c = 16;
  const auto x = random_vecf(count * c, 60, -3, 5), dy = random_vecf(count * c, 61);
  const auto gamma = random_vecf(c, 62, 0.5f, 1.5f), beta = random_vecf(c, 63);
  const auto rm0 = random_vecf(c, 64), rv0 = random_vecf(c, 65, 0.5f, 2.0f);
  struct Out {
    std::vector<float> y, mean, invstd, rm, rv, dx, dgamma, dbeta;
  };
  auto run = [&] {
    Out o{std::vector<float>(x.size()), std::vector<float>(c), std::vector<float>(c), rm0, rv0,
          std::vector<float>(x.size()), std::vector<float>(c), std::vector<float>(c)};
    cpu::batchnorm_forward_train<float>(count, c, x.data(), gamma.data(), beta.data(), o.y.data(),
                                        o.mean.data(), o.invstd.data(), o.rm.data(), o.rv.data(),
                                        kMomentum, kEps);
    cpu::batchnorm_backward<float>(count, c, x.data(), dy.data(), gamma.data(), o.mean.data(),
                                   o.invstd.data(), o.dx.data(), o.dgamma.data(), o.dbeta.data());
    return o;
  };
  const Out a = run();
  for (int rep = 0; rep < 3; ++rep) {
    const Out b = run();
    EXPECT_TRUE(same_bits(a.y, b.y));
    EXPECT_TRUE(same_bits(a.mean, b.mean));
    EXPECT_TRUE(same_bits(a.invstd, b.invstd));
    EXPECT_TRUE(same_bits(a.rm, b.rm));
    EXPECT_TRUE(same_bits(a.rv, b.rv));
    EXPECT_TRUE(same_bits(a.dx, b.dx));
    EXPECT_TRUE(same_bits(a.dgamma, b.dgamma));
    EXPECT_TRUE(same_bits(a.dbeta, b.dbeta));
  }
}

TEST(Determinism, LossesAndPoolingBitIdentical) {
  const int64_t n = 200000;
  const auto x = random_vecf(n, 70, -6, 6);
  std::vector<float> t(n);
  rpp::Rng rng(71);
  for (float& v : t) v = float(rng.below(2));
  const double bce = cpu::bce_with_logits_forward<float>(n, x.data(), t.data());
  const double dice = cpu::dice_loss_forward<float>(n, x.data(), t.data());
  std::vector<float> dbce(n), ddice(n), g(2 * 16), ds(2 * 16);
  cpu::bce_with_logits_backward<float>(n, x.data(), t.data(), 1.0, dbce.data());
  cpu::dice_loss_backward<float>(n, x.data(), t.data(), 1.0, ddice.data());
  // x as (2 images, 6250 pixels, 16 channels).
  cpu::global_avg_pool_forward<float>(2, 6250, 16, x.data(), g.data());
  cpu::scale_channels_backward_scale<float>(2, 6250, 16, x.data(), t.data(), ds.data());
  for (int rep = 0; rep < 3; ++rep) {
    EXPECT_EQ(cpu::bce_with_logits_forward<float>(n, x.data(), t.data()), bce);
    EXPECT_EQ(cpu::dice_loss_forward<float>(n, x.data(), t.data()), dice);
    std::vector<float> dbce2(n), ddice2(n), g2(2 * 16), ds2(2 * 16);
    cpu::bce_with_logits_backward<float>(n, x.data(), t.data(), 1.0, dbce2.data());
    cpu::dice_loss_backward<float>(n, x.data(), t.data(), 1.0, ddice2.data());
    cpu::global_avg_pool_forward<float>(2, 6250, 16, x.data(), g2.data());
    cpu::scale_channels_backward_scale<float>(2, 6250, 16, x.data(), t.data(), ds2.data());
    EXPECT_TRUE(same_bits(dbce, dbce2));
    EXPECT_TRUE(same_bits(ddice, ddice2));
    EXPECT_TRUE(same_bits(g, g2));
    EXPECT_TRUE(same_bits(ds, ds2));
  }
  // The float losses agree with the same losses computed in double.
  const std::vector<double> xd(x.begin(), x.end()), td(t.begin(), t.end());
  EXPECT_NEAR(bce, cpu::bce_with_logits_forward<double>(n, xd.data(), td.data()), 1e-12);
  EXPECT_NEAR(dice, cpu::dice_loss_forward<double>(n, xd.data(), td.data()), 1e-12);
}

// ============================ poisoned and guarded outputs ============================

TEST(Poison, EveryOutputIsFullyOverwritten) {
  // Sizes large enough that the loops run split over the pool.
  const int n = 2, h = 64, w = 48, c = 8;
  const int64_t count = int64_t(n) * h * w, size = count * c;
  const auto x = random_vecf(size, 80, -2, 2), x2 = random_vecf(size, 81, -2, 2);
  const auto dy = random_vecf(size, 82);
  const auto gamma = random_vecf(c, 83, 0.5f, 1.5f), beta = random_vecf(c, 84);
  const auto s = random_vecf(n * c, 85);
  std::vector<float> t(size);
  for (int64_t i = 0; i < size; ++i) t[i] = x2[i] > 0 ? 1.0f : 0.0f;

  {
    std::vector<float> rm(c, 0.0f), rv(c, 1.0f);
    Guarded y(size), mean(c), invstd(c), dx(size), dgamma(c), dbeta(c), ye(size);
    cpu::batchnorm_forward_train<float>(count, c, x.data(), gamma.data(), beta.data(), y.data(),
                                        mean.data(), invstd.data(), rm.data(), rv.data(),
                                        kMomentum, kEps);
    cpu::batchnorm_backward<float>(count, c, x.data(), dy.data(), gamma.data(), mean.data(),
                                   invstd.data(), dx.data(), dgamma.data(), dbeta.data());
    cpu::batchnorm_forward_eval<float>(count, c, x.data(), gamma.data(), beta.data(), rm.data(),
                                       rv.data(), kEps, ye.data());
    y.expect_ok("bn y");
    mean.expect_ok("bn save_mean");
    invstd.expect_ok("bn save_invstd");
    dx.expect_ok("bn dx");
    dgamma.expect_ok("bn dgamma");
    dbeta.expect_ok("bn dbeta");
    ye.expect_ok("bn eval y");
  }
  {
    Guarded r(size), rd(size), a(size), m(size), sg(size), sd(size);
    cpu::relu_forward<float>(size, x.data(), r.data());
    cpu::relu_backward<float>(size, x.data(), dy.data(), rd.data());
    cpu::add<float>(size, x.data(), x2.data(), a.data());
    cpu::mul<float>(size, x.data(), x2.data(), m.data());
    cpu::sigmoid_forward<float>(size, x.data(), sg.data());
    cpu::sigmoid_backward<float>(size, sg.data(), dy.data(), sd.data());
    r.expect_ok("relu");
    rd.expect_ok("relu backward");
    a.expect_ok("add");
    m.expect_ok("mul");
    sg.expect_ok("sigmoid");
    sd.expect_ok("sigmoid backward");
  }
  {
    const int64_t hw = int64_t(h) * w;
    Guarded y(size), ds(n * c), g(n * c), gd(size);
    cpu::scale_channels<float>(n, hw, c, x.data(), s.data(), y.data());
    cpu::scale_channels_backward_scale<float>(n, hw, c, x.data(), dy.data(), ds.data());
    cpu::global_avg_pool_forward<float>(n, hw, c, x.data(), g.data());
    cpu::global_avg_pool_backward<float>(n, hw, c, s.data(), gd.data());
    y.expect_ok("scale_channels");
    ds.expect_ok("scale_channels_backward_scale");
    g.expect_ok("global_avg_pool");
    gd.expect_ok("global_avg_pool backward");
  }
  {
    // SE-sized linear: (n, 64) -> (n, 8).
    const int in = 64, out = 8;
    Guarded y(n * out), dx(n * in), dw(out * in);
    cpu::linear_forward<float>(n, in, out, x.data(), x2.data(), y.data());
    cpu::linear_backward<float>(n, in, out, x.data(), x2.data(), dy.data(), dx.data(), dw.data());
    y.expect_ok("linear");
    dx.expect_ok("linear dx");
    dw.expect_ok("linear dw");
  }
  {
    Guarded p(size / 4), pd(size), u(size * 4), ud(size / 4);
    std::vector<uint8_t> arg(size / 4);
    cpu::maxpool2_forward<float>(n, h, w, c, x.data(), p.data(), arg.data());
    cpu::maxpool2_backward<float>(n, h, w, c, arg.data(), dy.data(), pd.data());
    cpu::upsample2_forward<float>(n, h, w, c, x.data(), u.data());
    cpu::upsample2_backward<float>(n, h / 2, w / 2, c, dy.data(), ud.data());
    p.expect_ok("maxpool2");
    pd.expect_ok("maxpool2 backward");
    u.expect_ok("upsample2");
    ud.expect_ok("upsample2 backward");
  }
  {
    const int ca = 5, cb = 3;  // count * (ca + cb) == size
    Guarded y(size), da(count * ca), db(count * cb);
    cpu::concat_forward<float>(count, ca, cb, x.data(), x2.data(), y.data());
    cpu::concat_backward<float>(count, ca, cb, dy.data(), da.data(), db.data());
    y.expect_ok("concat");
    da.expect_ok("concat da");
    db.expect_ok("concat db");
  }
  {
    Guarded db(size), dd(size);
    EXPECT_TRUE(std::isfinite(cpu::bce_with_logits_forward<float>(size, x.data(), t.data())));
    EXPECT_TRUE(std::isfinite(cpu::dice_loss_forward<float>(size, x.data(), t.data())));
    cpu::bce_with_logits_backward<float>(size, x.data(), t.data(), 1.0, db.data());
    cpu::dice_loss_backward<float>(size, x.data(), t.data(), 1.0, dd.data());
    db.expect_ok("bce backward");
    dd.expect_ok("dice backward");
  }
  {
    // Optimiser state poisoned before step 1 must come out finite.
    cpu::OptimStep o;
    std::vector<float> w1(x.begin(), x.end()), w2 = w1, w3 = w1, w4 = w1;
    Guarded buf(size), m2(size), v2(size), m3(size), v3(size), m4(size), v4(size);
    cpu::sgd_update<float>(size, w1.data(), dy.data(), buf.data(), o);
    cpu::adam_update<float>(size, w2.data(), dy.data(), m2.data(), v2.data(), o);
    cpu::adamw_update<float>(size, w3.data(), dy.data(), m3.data(), v3.data(), o);
    cpu::nadam_schedule(o, 1.0);
    cpu::nadam_update<float>(size, w4.data(), dy.data(), m4.data(), v4.data(), o);
    buf.expect_ok("sgd buf");
    m2.expect_ok("adam m");
    v2.expect_ok("adam v");
    m3.expect_ok("adamw m");
    v3.expect_ok("adamw v");
    m4.expect_ok("nadam m");
    v4.expect_ok("nadam v");
    for (const auto* wv : {&w1, &w2, &w3, &w4})
      for (float v : *wv) ASSERT_TRUE(std::isfinite(v));
  }
}

// ============================ size checks ============================

TEST(Errors, InvalidSizesThrow) {
  Vec a(64, 1.0), b(64, 1.0), c(64, 1.0), d(64, 1.0), e(64, 1.0), f(64, 1.0), g(64, 1.0);
  EXPECT_THROW(cpu::maxpool2_forward<double>(1, 3, 4, 1, a.data(), b.data()), rpp::Error);
  const std::vector<uint8_t> arg(16, 0);
  EXPECT_THROW(cpu::maxpool2_backward<double>(1, 4, 5, 1, arg.data(), b.data(), c.data()), rpp::Error);
  EXPECT_THROW(cpu::batchnorm_forward_train<double>(1, 2, a.data(), b.data(), c.data(), d.data(),
                                                    e.data(), f.data(), nullptr, nullptr,
                                                    kMomentum, kEps),
               rpp::Error);
  EXPECT_THROW(cpu::batchnorm_backward<double>(4, 0, a.data(), b.data(), c.data(), d.data(),
                                               e.data(), f.data(), g.data(), a.data()),
               rpp::Error);
  EXPECT_THROW(cpu::bce_with_logits_forward<double>(0, a.data(), b.data()), rpp::Error);
  EXPECT_THROW(cpu::dice_loss_forward<double>(0, a.data(), b.data()), rpp::Error);
  EXPECT_THROW(cpu::global_avg_pool_forward<double>(1, 0, 2, a.data(), b.data()), rpp::Error);
  EXPECT_THROW(cpu::relu_forward<double>(-1, a.data(), b.data()), rpp::Error);
  cpu::OptimStep o;
  o.step = 0;
  EXPECT_THROW(cpu::adam_update<double>(4, a.data(), b.data(), c.data(), d.data(), o), rpp::Error);
  o.step = 1;
  o.momentum = 0;
  o.nesterov = true;
  EXPECT_THROW(cpu::sgd_update<double>(4, a.data(), b.data(), nullptr, o), rpp::Error);
  o.nesterov = false;
  // NAdam without its schedule filled in.
  EXPECT_THROW(cpu::nadam_update<double>(4, a.data(), b.data(), c.data(), d.data(), o),
               rpp::Error);
  // Zero-sized elementwise work is fine and touches nothing.
  EXPECT_NO_THROW(cpu::add<double>(0, a.data(), b.data(), c.data()));
}
