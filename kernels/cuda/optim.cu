// kernels/cuda/optim.cu — SGD / Adam / AdamW / NAdam updates and gradient-norm clipping on the
// GPU. kernels/cpu/optim.cpp and kernels/cpu/grad_norm.cpp are the specification;
// tests/gpu/test_ops_gpu.cpp compares against them (including a captured, replayed CUDA graph).
//
// Every update kernel reads its scalars once per thread from the device OptimStepDevice and then
// runs a grid-stride loop; each parameter's update uses its own values only. sum_squares is a
// two-stage deterministic reduction: a fixed number of blocks (a function of n only) each sum a
// fixed strided subset in double and reduce it in a fixed tree into the workspace, then one block
// adds the block sums in a fixed tree into the device result.
#include "kernels/cuda/optim.cuh"

#include <cuda_runtime.h>

#include <cmath>
#include <limits>

#include "kernels/cuda/check.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

using detail::check_not_null;
using detail::check_workspace;
using detail::flat_blocks;
using detail::index_fits_32;

constexpr int kThreads = 256;
constexpr int64_t kPerThread = 8;
constexpr int64_t kMaxPartials = 1024;

enum AdamKind { kAdam = 0, kAdamW = 1, kNadam = 2 };

// With g' = g + weight_decay * w:
//   buf = (first ? g' : momentum * buf + g'),  w -= lr * (nesterov ? g' + momentum * buf : buf);
//   without a buffer (null, or momentum 0): w -= lr * g'.
template <class Idx>
__global__ void __launch_bounds__(kThreads)
    sgd_kernel(Idx n, float* w, const float* g, float* buf, const OptimStepDevice* step) {
  if (step->skip) return;
  const double lr = step->lr, mom = step->momentum, wd = step->weight_decay;
  const bool first = step->first_step != 0, nesterov = step->nesterov != 0;
  const bool use_buf = buf != nullptr && mom != 0.0;
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < n; i += stride) {
    const double wi = double(w[i]);
    const double gi = double(g[i]) + wd * wi;
    double d = gi;
    if (use_buf) {
      const double b = first ? gi : mom * double(buf[i]) + gi;
      buf[i] = float(b);
      d = nesterov ? gi + mom * b : b;
    }
    w[i] = float(wi - lr * d);
  }
}

// m = beta1 m + (1 - beta1) g';  v = beta2 v + (1 - beta2) g'^2  (m = v = 0 before step 1), then
//   Adam  (g' = g + wd w):  w -= lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)
//   AdamW (g' = g, w *= 1 - lr wd first): the same step
//   NAdam (g' = g + wd w):  denom = sqrt(v / bc2) + eps,
//                           w -= cg g' / denom + cm m / denom.
// In double, in the CPU reference's order (kernels/cpu/optim.cpp); m and v are stored as float.
template <class Idx, int kKind>
__global__ void __launch_bounds__(kThreads)
    adam_kernel(Idx n, float* w, const float* g, float* m, float* v, const OptimStepDevice* step) {
  if (step->skip) return;
  const double b1 = step->beta1, b2 = step->beta2;
  const double ob1 = step->one_minus_beta1, ob2 = step->one_minus_beta2;
  const double eps = step->eps, wd = step->weight_decay;
  const double step_size = step->adam_step_size, bc2_sqrt = step->adam_bc2_sqrt;
  const double decay = step->adamw_decay, bc2 = step->nadam_bc2;
  const double cg = step->nadam_grad_coef, cm = step->nadam_momentum_coef;
  const bool first = step->first_step != 0;
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < n; i += stride) {
    double wi = double(w[i]);
    double gi;
    if constexpr (kKind == kAdamW) {
      wi *= decay;
      gi = double(g[i]);
    } else {
      gi = double(g[i]) + wd * wi;
    }
    double mp = 0, vp = 0;
    if (!first) {
      mp = double(m[i]);
      vp = double(v[i]);
    }
    const double mi = b1 * mp + ob1 * gi;
    const double vi = b2 * vp + ob2 * gi * gi;
    m[i] = float(mi);
    v[i] = float(vi);
    if constexpr (kKind == kNadam) {
      const double denom = sqrt(vi / bc2) + eps;
      w[i] = float(wi - cg * gi / denom - cm * mi / denom);
    } else {
      const double denom = sqrt(vi) / bc2_sqrt + eps;
      w[i] = float(wi - step_size * mi / denom);
    }
  }
}

int64_t partial_blocks(int64_t n) {
  const int64_t b = (n + kThreads * kPerThread - 1) / (kThreads * kPerThread);
  return b < 1 ? 1 : (b > kMaxPartials ? kMaxPartials : b);
}

__device__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const double r = red[0];
  __syncthreads();
  return r;
}

// grid G: part[b] = sum of x[i]^2 over i = b kThreads + tid + j G kThreads.
__global__ void __launch_bounds__(kThreads)
    sum_squares_partial_kernel(int64_t n, const float* __restrict__ x, double* __restrict__ part) {
  __shared__ double red[kThreads];
  double s = 0;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride) {
    const double v = double(x[i]);
    s += v * v;
  }
  s = block_sum(s, red);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

// One block: *result (+)= sum of the G partials.
__global__ void __launch_bounds__(kThreads)
    sum_squares_total_kernel(const double* __restrict__ part, int64_t groups, double* result,
                             bool accumulate) {
  __shared__ double red[kThreads];
  double s = 0;
  for (int64_t b = threadIdx.x; b < groups; b += kThreads) s += part[b];
  s = block_sum(s, red);
  if (threadIdx.x == 0) *result = accumulate ? *result + s : s;
}

__global__ void clip_factor_kernel(const double* sum_sq, const OptimStepDevice* step, double* norm,
                                   double* factor) {
  const double nrm = sqrt(*sum_sq);
  const double limit = step->clip_max_norm;
  *norm = nrm;
  *factor = (limit > 0 && nrm > limit) ? limit / (nrm + 1e-6) : 1.0;
}

__global__ void skip_kernel(const double* sum_sq, const float* loss, OptimStepDevice* step) {
  const double s = *sum_sq;
  const double l = loss ? double(*loss) : 0.0;
  step->skip = (s - s == 0.0 && l - l == 0.0) ? 0 : 1;  // x - x is 0 exactly when x is finite
}

template <class Idx>
__global__ void __launch_bounds__(kThreads) scale_kernel(Idx n, float* x, const double* factor) {
  const double f = *factor;
  if (f == 1.0) return;
  const float ff = float(f);
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < n; i += stride) x[i] *= ff;
}

template <int kKind>
void launch_adam(const char* op, int64_t n, float* w, const float* g, float* m, float* v,
                 const OptimStepDevice* step, cudaStream_t stream) {
  if (n < 0) fail(op, ": n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null(op, {{"w", w}, {"g", g}, {"m", m}, {"v", v}, {"step", step}});
  if (index_fits_32(n))
    adam_kernel<uint32_t, kKind><<<flat_blocks(n), kThreads, 0, stream>>>(uint32_t(n), w, g, m, v,
                                                                         step);
  else
    adam_kernel<uint64_t, kKind><<<flat_blocks(n), kThreads, 0, stream>>>(uint64_t(n), w, g, m, v,
                                                                         step);
  RPP_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

OptimStepDevice make_optim_step_device(const rpp::cpu::OptimStep& o) {
  if (o.step < 1) fail("make_optim_step_device: step counts from 1, got ", o.step);
  if (o.nesterov && !(o.momentum > 0))
    fail("make_optim_step_device: Nesterov momentum needs momentum > 0");
  const double t = double(o.step);
  const double bc1 = 1.0 - std::pow(o.beta1, t);
  const double bc2 = 1.0 - std::pow(o.beta2, t);
  OptimStepDevice d{};
  d.lr = o.lr;
  d.momentum = o.momentum;
  d.beta1 = o.beta1;
  d.beta2 = o.beta2;
  d.one_minus_beta1 = 1.0 - o.beta1;
  d.one_minus_beta2 = 1.0 - o.beta2;
  d.eps = o.eps;
  d.weight_decay = o.weight_decay;
  d.adam_step_size = o.lr / bc1;
  d.adam_bc2_sqrt = std::sqrt(bc2);
  d.adamw_decay = 1.0 - o.lr * o.weight_decay;
  d.nadam_bc2 = bc2;
  if (o.nadam_mu_product < 1 && o.nadam_mu_product_next < 1) {
    d.nadam_grad_coef = o.lr * (1.0 - o.nadam_mu) / (1.0 - o.nadam_mu_product);
    d.nadam_momentum_coef = o.lr * o.nadam_mu_next / (1.0 - o.nadam_mu_product_next);
  } else {
    d.nadam_grad_coef = d.nadam_momentum_coef = std::numeric_limits<double>::quiet_NaN();
  }
  d.first_step = o.step == 1 ? 1 : 0;
  d.nesterov = o.nesterov ? 1 : 0;
  d.clip_max_norm = o.clip_grad_norm;
  return d;
}

void sgd_update(int64_t n, float* w, const float* g, float* buf, const OptimStepDevice* step,
                cudaStream_t stream) {
  const char* op = "sgd_update";
  if (n < 0) fail(op, ": n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null(op, {{"w", w}, {"g", g}, {"step", step}});
  if (index_fits_32(n))
    sgd_kernel<uint32_t><<<flat_blocks(n), kThreads, 0, stream>>>(uint32_t(n), w, g, buf, step);
  else
    sgd_kernel<uint64_t><<<flat_blocks(n), kThreads, 0, stream>>>(uint64_t(n), w, g, buf, step);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void adam_update(int64_t n, float* w, const float* g, float* m, float* v,
                 const OptimStepDevice* step, cudaStream_t stream) {
  launch_adam<kAdam>("adam_update", n, w, g, m, v, step, stream);
}

void adamw_update(int64_t n, float* w, const float* g, float* m, float* v,
                  const OptimStepDevice* step, cudaStream_t stream) {
  launch_adam<kAdamW>("adamw_update", n, w, g, m, v, step, stream);
}

void nadam_update(int64_t n, float* w, const float* g, float* m, float* v,
                  const OptimStepDevice* step, cudaStream_t stream) {
  launch_adam<kNadam>("nadam_update", n, w, g, m, v, step, stream);
}

size_t sum_squares_workspace_bytes(int64_t n) {
  if (n <= 0) return 0;
  return detail::round_up(size_t(partial_blocks(n)) * sizeof(double), 256);
}

void sum_squares(int64_t n, const float* x, double* result, bool accumulate, void* workspace,
                 cudaStream_t stream) {
  const char* op = "sum_squares";
  if (n < 0) fail(op, ": n must be >= 0, got ", n);
  check_not_null(op, {{"result", result}});
  check_workspace(op, workspace, sum_squares_workspace_bytes(n));
  int64_t groups = 0;
  if (n > 0) {
    check_not_null(op, {{"x", x}});
    groups = partial_blocks(n);
    sum_squares_partial_kernel<<<unsigned(groups), kThreads, 0, stream>>>(
        n, x, static_cast<double*>(workspace));
    RPP_CUDA_CHECK_LAUNCH(op);
  }
  // With n == 0 this writes 0 (or leaves an accumulated value as it is).
  sum_squares_total_kernel<<<1, kThreads, 0, stream>>>(static_cast<const double*>(workspace),
                                                       groups, result, accumulate);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void clip_grad_norm_factor(const double* sum_sq, const OptimStepDevice* step, double* norm,
                           double* factor, cudaStream_t stream) {
  const char* op = "clip_grad_norm_factor";
  check_not_null(op, {{"sum_sq", sum_sq}, {"step", step}, {"norm", norm}, {"factor", factor}});
  clip_factor_kernel<<<1, 1, 0, stream>>>(sum_sq, step, norm, factor);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void skip_if_nonfinite(const double* sum_sq, const float* loss, OptimStepDevice* step, cudaStream_t stream) {
  const char* op = "skip_if_nonfinite";
  check_not_null(op, {{"sum_sq", sum_sq}, {"step", step}});
  skip_kernel<<<1, 1, 0, stream>>>(sum_sq, loss, step);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void scale_inplace(int64_t n, float* x, const double* factor, cudaStream_t stream) {
  const char* op = "scale_inplace";
  if (n < 0) fail(op, ": n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null(op, {{"x", x}, {"factor", factor}});
  if (index_fits_32(n))
    scale_kernel<uint32_t><<<flat_blocks(n), kThreads, 0, stream>>>(uint32_t(n), x, factor);
  else
    scale_kernel<uint64_t><<<flat_blocks(n), kThreads, 0, stream>>>(uint64_t(n), x, factor);
  RPP_CUDA_CHECK_LAUNCH(op);
}

}  // namespace rpp::cuda
