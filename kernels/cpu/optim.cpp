// kernels/cpu/optim.cpp — reference optimiser updates (PyTorch semantics): SGD with momentum
// (dampening 0, optional Nesterov), Adam, AdamW and NAdam, plus NAdam's host-side momentum
// schedule. Plain loops: this is the executable specification the CUDA kernels are tested
// against (tests/test_kernels_ops.cpp). Each parameter's update is computed in double from its
// own values only, so there is nothing to reduce and results never depend on the thread count.
//
// State buffers (buf, m, v) are not read on step 1: PyTorch creates them there (buf = g,
// m = v = 0 before the update), so the caller need not initialise them.
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_reduce.h"
#include "kernels/cpu/parallel.h"
#include "runtime/error.h"

namespace rpp::cpu {

namespace {

void check_common(const char* op, int64_t n, const OptimStep& o) {
  RPP_CHECK(n >= 0, op, ": n must be >= 0, got ", n);
  RPP_CHECK(o.step >= 1, op, ": step counts from 1, got ", o.step);
}

// The moment update shared by Adam, AdamW and NAdam, from gradient g (L2 decay already added);
// the first step starts from m = v = 0.
struct Moments {
  double m, v;
};
inline Moments update_moments(double g, double m_prev, double v_prev, bool first,
                              const OptimStep& o) {
  if (first) m_prev = v_prev = 0;
  return {o.beta1 * m_prev + (1.0 - o.beta1) * g, o.beta2 * v_prev + (1.0 - o.beta2) * g * g};
}

// Adam's step after weight decay handling: returns the new weight.
inline double adam_step(double w, double m, double v, double bc1, double bc2_sqrt,
                        const OptimStep& o) {
  const double denom = std::sqrt(v) / bc2_sqrt + o.eps;
  return w - (o.lr / bc1) * m / denom;
}

}  // namespace

// With g' = g + weight_decay * w:
//   momentum == 0: w -= lr * g'  (buf is not used and may be null);
//   otherwise buf = (step 1 ? g' : momentum * buf + g'),
//             w -= lr * (nesterov ? g' + momentum * buf : buf).
template <class T>
void sgd_update(int64_t n, T* w, const T* g, T* buf, const OptimStep& o) {
  check_common("sgd_update", n, o);
  RPP_CHECK(!o.nesterov || o.momentum > 0, "sgd_update: Nesterov momentum needs momentum > 0");
  const bool first = o.step == 1;
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double wi = double(w[i]);
          const double gi = double(g[i]) + o.weight_decay * wi;
          double d = gi;
          if (o.momentum != 0) {
            const double bi = first ? gi : o.momentum * double(buf[i]) + gi;
            buf[i] = T(bi);
            d = o.nesterov ? gi + o.momentum * bi : bi;
          }
          w[i] = T(wi - o.lr * d);
        }
      },
      detail::kParallelGrain);
}

// g' = g + weight_decay * w; m = beta1 m + (1 - beta1) g'; v = beta2 v + (1 - beta2) g'^2;
// w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps).
template <class T>
void adam_update(int64_t n, T* w, const T* g, T* m, T* v, const OptimStep& o) {
  check_common("adam_update", n, o);
  const bool first = o.step == 1;
  const double bc1 = 1.0 - std::pow(o.beta1, double(o.step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(o.beta2, double(o.step)));
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double wi = double(w[i]);
          const double gi = double(g[i]) + o.weight_decay * wi;
          const Moments mv = update_moments(gi, double(m[i]), double(v[i]), first, o);
          m[i] = T(mv.m);
          v[i] = T(mv.v);
          w[i] = T(adam_step(wi, mv.m, mv.v, bc1, bc2_sqrt, o));
        }
      },
      detail::kParallelGrain);
}

// As Adam without L2 on the gradient, after the decoupled decay w *= 1 - lr * weight_decay.
template <class T>
void adamw_update(int64_t n, T* w, const T* g, T* m, T* v, const OptimStep& o) {
  check_common("adamw_update", n, o);
  const bool first = o.step == 1;
  const double bc1 = 1.0 - std::pow(o.beta1, double(o.step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(o.beta2, double(o.step)));
  const double decay = 1.0 - o.lr * o.weight_decay;
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double wi = double(w[i]) * decay;
          const Moments mv = update_moments(double(g[i]), double(m[i]), double(v[i]), first, o);
          m[i] = T(mv.m);
          v[i] = T(mv.v);
          w[i] = T(adam_step(wi, mv.m, mv.v, bc1, bc2_sqrt, o));
        }
      },
      detail::kParallelGrain);
}

// g' = g + weight_decay * w; m, v as Adam; denom = sqrt(v / (1 - beta2^t)) + eps;
// w -= lr * (1 - mu_t) / (1 - mu_product) * g' / denom
//    + lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / denom.
template <class T>
void nadam_update(int64_t n, T* w, const T* g, T* m, T* v, const OptimStep& o) {
  check_common("nadam_update", n, o);
  RPP_CHECK(o.nadam_mu_product < 1 && o.nadam_mu_product_next < 1,
            "nadam_update: momentum schedule not set (call nadam_schedule for each step)");
  const bool first = o.step == 1;
  const double bc2 = 1.0 - std::pow(o.beta2, double(o.step));
  const double cg = o.lr * (1.0 - o.nadam_mu) / (1.0 - o.nadam_mu_product);
  const double cm = o.lr * o.nadam_mu_next / (1.0 - o.nadam_mu_product_next);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double wi = double(w[i]);
          const double gi = double(g[i]) + o.weight_decay * wi;
          const Moments mv = update_moments(gi, double(m[i]), double(v[i]), first, o);
          m[i] = T(mv.m);
          v[i] = T(mv.v);
          const double denom = std::sqrt(mv.v / bc2) + o.eps;
          w[i] = T(wi - cg * gi / denom - cm * mv.m / denom);
        }
      },
      detail::kParallelGrain);
}

// mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay)).
void nadam_schedule(OptimStep& o, double mu_product_prev, double momentum_decay) {
  RPP_CHECK(o.step >= 1, "nadam_schedule: step counts from 1, got ", o.step);
  const double t = double(o.step);
  o.nadam_mu = o.beta1 * (1.0 - 0.5 * std::pow(0.96, t * momentum_decay));
  o.nadam_mu_next = o.beta1 * (1.0 - 0.5 * std::pow(0.96, (t + 1.0) * momentum_decay));
  o.nadam_mu_product = mu_product_prev * o.nadam_mu;
  o.nadam_mu_product_next = o.nadam_mu_product * o.nadam_mu_next;
}

#define RPP_INSTANTIATE(T)                                                           \
  template void sgd_update<T>(int64_t, T*, const T*, T*, const OptimStep&);          \
  template void adam_update<T>(int64_t, T*, const T*, T*, T*, const OptimStep&);     \
  template void adamw_update<T>(int64_t, T*, const T*, T*, T*, const OptimStep&);    \
  template void nadam_update<T>(int64_t, T*, const T*, T*, T*, const OptimStep&);
RPP_INSTANTIATE(float)
RPP_INSTANTIATE(double)
#undef RPP_INSTANTIATE

}  // namespace rpp::cpu
