// kernels/cpu/batchnorm.cpp — reference BatchNorm over NHWC (count x c) buffers, forward
// (training and eval) and training-mode backward. Plain loops: this is the executable
// specification the CUDA kernels are tested against (tests/test_kernels_ops.cpp).
//
// Every channel is handled by one thread (detail::for_channel_runs) and its sums run over the
// rows in row order in double, so the results are the same bits for any thread count.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_reduce.h"
#include "runtime/error.h"

namespace rpp::cpu {

using detail::kChannelRun;

// The statistics are rounded to T (save_mean, save_invstd) before they are used, so a
// normalisation recomputed later from the saved values (batchnorm_apply, bn_relu_mask_inplace:
// the fused BN-ReLU-conv path) gives the same bits as the forward pass did.
template <class T>
void batchnorm_stats_train(int64_t count, int c, const T* x, T* save_mean, T* save_invstd,
                           T* running_mean, T* running_var, double momentum, double eps) {
  RPP_CHECK(count > 1, "batchnorm training needs more than one value per channel, got count ",
            count);
  RPP_CHECK(c > 0, "batchnorm needs at least one channel, got ", c);
  RPP_CHECK(eps >= 0, "batchnorm eps must be >= 0, got ", eps);
  const double unbias = double(count) / double(count - 1);
  detail::for_channel_runs(1, c, count, [&](int64_t, int c0, int c1) {
    const int k = c1 - c0;
    double mean[kChannelRun];
    double acc[kChannelRun] = {};
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < k; ++j) acc[j] += double(x[i * c + c0 + j]);
    for (int j = 0; j < k; ++j) {
      mean[j] = acc[j] / double(count);
      acc[j] = 0;
    }
    // Second pass for the variance: sum of squared deviations from the mean.
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < k; ++j) {
        const double d = double(x[i * c + c0 + j]) - mean[j];
        acc[j] += d * d;
      }
    for (int j = 0; j < k; ++j) {
      const int ch = c0 + j;
      const double var = acc[j] / double(count);  // biased: used to normalise
      save_mean[ch] = T(mean[j]);
      save_invstd[ch] = T(1.0 / std::sqrt(var + eps));
      if (!std::isfinite(mean[j]) || !std::isfinite(var)) continue;  // keep the running statistics
      if (running_mean)
        running_mean[ch] = T((1.0 - momentum) * double(running_mean[ch]) + momentum * mean[j]);
      if (running_var)
        running_var[ch] = T((1.0 - momentum) * double(running_var[ch]) + momentum * var * unbias);
    }
  });
}

template <class T>
void batchnorm_stats_eval(int c, const T* running_mean, const T* running_var, double eps, T* mean,
                          T* invstd) {
  RPP_CHECK(c > 0, "batchnorm needs at least one channel, got ", c);
  RPP_CHECK(eps >= 0, "batchnorm eps must be >= 0, got ", eps);
  for (int ch = 0; ch < c; ++ch) {
    mean[ch] = running_mean[ch];
    invstd[ch] = T(1.0 / std::sqrt(double(running_var[ch]) + eps));
  }
}

namespace {
// Calls f(idx, v) for every element with v = (x - mean) * (gamma * invstd) + beta, computed in
// double and rounded to T: the one expression behind batchnorm_apply and bn_relu_mask_inplace,
// so that the recomputed ReLU mask always matches the forward.
template <class T, class F>
void for_bn_values(int64_t count, int c, const T* x, const T* gamma, const T* beta, const T* mean,
                   const T* invstd, F&& f) {
  RPP_CHECK(count >= 0, "batchnorm count must be >= 0, got ", count);
  RPP_CHECK(c > 0, "batchnorm needs at least one channel, got ", c);
  detail::for_channel_runs(1, c, count, [&](int64_t, int c0, int c1) {
    const int k = c1 - c0;
    double m[kChannelRun], scale[kChannelRun], shift[kChannelRun];
    for (int j = 0; j < k; ++j) {
      m[j] = double(mean[c0 + j]);
      scale[j] = double(gamma[c0 + j]) * double(invstd[c0 + j]);
      shift[j] = double(beta[c0 + j]);
    }
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < k; ++j) {
        const int64_t idx = i * c + c0 + j;
        f(idx, T((double(x[idx]) - m[j]) * scale[j] + shift[j]));
      }
  });
}
}  // namespace

template <class T>
void batchnorm_apply(int64_t count, int c, const T* x, const T* gamma, const T* beta,
                     const T* mean, const T* invstd, bool relu, T* y) {
  for_bn_values(count, c, x, gamma, beta, mean, invstd, [&](int64_t idx, T v) {
    y[idx] = relu && !(v > T(0) || v != v) ? T(0) : v;  // NaN propagates, as relu_forward
  });
}

template <class T>
void bn_relu_mask_inplace(int64_t count, int c, const T* x, const T* gamma, const T* beta,
                          const T* mean, const T* invstd, T* dy) {
  for_bn_values(count, c, x, gamma, beta, mean, invstd, [&](int64_t idx, T v) {
    if (!(v > T(0))) dy[idx] = T(0);
  });
}

template <class T>
void batchnorm_forward_train(int64_t count, int c, const T* x, const T* gamma, const T* beta, T* y,
                             T* save_mean, T* save_invstd, T* running_mean, T* running_var,
                             double momentum, double eps) {
  batchnorm_stats_train(count, c, x, save_mean, save_invstd, running_mean, running_var, momentum,
                        eps);
  batchnorm_apply(count, c, x, gamma, beta, save_mean, save_invstd, /*relu=*/false, y);
}

template <class T>
void batchnorm_forward_eval(int64_t count, int c, const T* x, const T* gamma, const T* beta,
                            const T* running_mean, const T* running_var, double eps, T* y) {
  RPP_CHECK(count >= 0, "batchnorm count must be >= 0, got ", count);
  RPP_CHECK(c > 0, "batchnorm needs at least one channel, got ", c);
  RPP_CHECK(eps >= 0, "batchnorm eps must be >= 0, got ", eps);
  // batchnorm_stats_eval followed by batchnorm_apply, without a buffer for the statistics.
  detail::for_channel_runs(1, c, count, [&](int64_t, int c0, int c1) {
    const int k = c1 - c0;
    double m[kChannelRun], scale[kChannelRun], shift[kChannelRun];
    for (int j = 0; j < k; ++j) {
      const int ch = c0 + j;
      m[j] = double(running_mean[ch]);
      scale[j] = double(gamma[ch]) * double(T(1.0 / std::sqrt(double(running_var[ch]) + eps)));
      shift[j] = double(beta[ch]);
    }
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < k; ++j) {
        const int64_t idx = i * c + c0 + j;
        y[idx] = T((double(x[idx]) - m[j]) * scale[j] + shift[j]);
      }
  });
}

// With xhat = (x - mean) * invstd and y = gamma * xhat + beta (batch statistics):
//   dbeta  = sum dy,  dgamma = sum dy * xhat,
//   dx     = gamma * invstd / count * (count * dy - dbeta - xhat * dgamma).
template <class T>
void batchnorm_backward(int64_t count, int c, const T* x, const T* dy, const T* gamma,
                        const T* save_mean, const T* save_invstd, T* dx, T* dgamma, T* dbeta) {
  RPP_CHECK(count > 1, "batchnorm training needs more than one value per channel, got count ",
            count);
  RPP_CHECK(c > 0, "batchnorm needs at least one channel, got ", c);
  const double m = double(count);
  detail::for_channel_runs(1, c, count, [&](int64_t, int c0, int c1) {
    const int k = c1 - c0;
    double mean[kChannelRun], invstd[kChannelRun];
    double sdy[kChannelRun] = {}, sdyx[kChannelRun] = {};
    for (int j = 0; j < k; ++j) {
      mean[j] = double(save_mean[c0 + j]);
      invstd[j] = double(save_invstd[c0 + j]);
    }
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < k; ++j) {
        const int64_t idx = i * c + c0 + j;
        const double g = double(dy[idx]);
        sdy[j] += g;
        sdyx[j] += g * (double(x[idx]) - mean[j]) * invstd[j];
      }
    double coef[kChannelRun];
    for (int j = 0; j < k; ++j) {
      dbeta[c0 + j] = T(sdy[j]);
      dgamma[c0 + j] = T(sdyx[j]);
      coef[j] = double(gamma[c0 + j]) * invstd[j] / m;
    }
    for (int64_t i = 0; i < count; ++i)
      for (int j = 0; j < k; ++j) {
        const int64_t idx = i * c + c0 + j;
        const double xhat = (double(x[idx]) - mean[j]) * invstd[j];
        dx[idx] = T(coef[j] * (m * double(dy[idx]) - sdy[j] - xhat * sdyx[j]));
      }
  });
}

#define RPP_INSTANTIATE(T)                                                                       \
  template void batchnorm_stats_train<T>(int64_t, int, const T*, T*, T*, T*, T*, double, double); \
  template void batchnorm_stats_eval<T>(int, const T*, const T*, double, T*, T*);                 \
  template void batchnorm_apply<T>(int64_t, int, const T*, const T*, const T*, const T*,          \
                                   const T*, bool, T*);                                           \
  template void bn_relu_mask_inplace<T>(int64_t, int, const T*, const T*, const T*, const T*,     \
                                        const T*, T*);                                            \
  template void batchnorm_forward_train<T>(int64_t, int, const T*, const T*, const T*, T*, T*,   \
                                           T*, T*, T*, double, double);                          \
  template void batchnorm_forward_eval<T>(int64_t, int, const T*, const T*, const T*, const T*,  \
                                          const T*, double, T*);                                 \
  template void batchnorm_backward<T>(int64_t, int, const T*, const T*, const T*, const T*,      \
                                      const T*, T*, T*, T*);
RPP_INSTANTIATE(float)
RPP_INSTANTIATE(double)
#undef RPP_INSTANTIATE

}  // namespace rpp::cpu
