// kernels/cpu/loss.cpp — reference losses on logits x and binary targets t: BCE with logits
// (mean) and soft Dice over the whole batch, forward and backward. Plain loops: this is the
// executable specification the CUDA kernels are tested against (tests/test_kernels_ops.cpp).
//
// Sums are taken in double over detail::kSumBlocks fixed blocks (detail::fixed_block_sums), so
// the loss is the same bits for any thread count. Per-element math is in double too.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_reduce.h"
#include "kernels/cpu/parallel.h"
#include "runtime/error.h"

namespace rpp::cpu {

namespace {

// Overflow-free logistic function.
double stable_sigmoid(double x) {
  if (x >= 0) return 1.0 / (1.0 + std::exp(-x));
  const double z = std::exp(x);
  return z / (1.0 + z);
}

// Dice's three sums: sum(p * t), sum(p), sum(t) with p = sigmoid(x).
template <class T>
void dice_sums(int64_t n, const T* x, const T* t, double (&s)[3]) {
  detail::fixed_block_sums<3>(n, [&](int64_t i, double* acc) {
    const double p = stable_sigmoid(double(x[i])), ti = double(t[i]);
    acc[0] += p * ti;
    acc[1] += p;
    acc[2] += ti;
  }, s);
}

}  // namespace

// Per element: max(x, 0) - x * t + log(1 + exp(-|x|)), with log1p for accuracy when |x| is large.
template <class T>
double bce_with_logits_forward(int64_t n, const T* x, const T* t) {
  RPP_CHECK(n > 0, "bce_with_logits: n must be > 0, got ", n);
  double s[1];
  detail::fixed_block_sums<1>(n, [&](int64_t i, double* acc) {
    const double xi = double(x[i]), ti = double(t[i]);
    acc[0] += std::max(xi, 0.0) - xi * ti + std::log1p(std::exp(-std::fabs(xi)));
  }, s);
  return s[0] / double(n);
}

template <class T>
void bce_with_logits_backward(int64_t n, const T* x, const T* t, double dloss, T* dx) {
  RPP_CHECK(n > 0, "bce_with_logits: n must be > 0, got ", n);
  const double scale = dloss / double(n);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i)
          dx[i] = T(scale * (stable_sigmoid(double(x[i])) - double(t[i])));
      },
      detail::kParallelGrain);
}

template <class T>
double dice_loss_forward(int64_t n, const T* x, const T* t) {
  RPP_CHECK(n > 0, "dice_loss: n must be > 0, got ", n);
  double s[3];
  dice_sums(n, x, t, s);
  return 1.0 - (2.0 * s[0] + 1.0) / (s[1] + s[2] + 1.0);
}

// With num = 2 * sum(p * t) + 1 and den = sum(p) + sum(t) + 1, loss = 1 - num / den:
//   dloss/dp_i = -(2 * t_i * den - num) / den^2,   dp_i/dx_i = p_i * (1 - p_i).
template <class T>
void dice_loss_backward(int64_t n, const T* x, const T* t, double dloss, T* dx) {
  RPP_CHECK(n > 0, "dice_loss: n must be > 0, got ", n);
  double s[3];
  dice_sums(n, x, t, s);
  const double num = 2.0 * s[0] + 1.0, den = s[1] + s[2] + 1.0;
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double p = stable_sigmoid(double(x[i]));
          const double dp = -(2.0 * double(t[i]) * den - num) / (den * den);
          dx[i] = T(dloss * dp * p * (1.0 - p));
        }
      },
      detail::kParallelGrain);
}

#define RPP_INSTANTIATE(T)                                                                 \
  template double bce_with_logits_forward<T>(int64_t, const T*, const T*);                 \
  template void bce_with_logits_backward<T>(int64_t, const T*, const T*, double, T*);      \
  template double dice_loss_forward<T>(int64_t, const T*, const T*);                       \
  template void dice_loss_backward<T>(int64_t, const T*, const T*, double, T*);
RPP_INSTANTIATE(float)
RPP_INSTANTIATE(double)
#undef RPP_INSTANTIATE

}  // namespace rpp::cpu
