// kernels/cuda/batchnorm.cu — BatchNorm over NHWC (count x c) fp32 buffers: training forward,
// eval forward, training-mode backward. kernels/cpu/batchnorm.cpp is the specification;
// tests/gpu/test_ops_gpu.cpp compares against it (./build/gpu_test_ops_gpu --gtest_filter=*Batch*).
//
// Reductions (deterministic, no atomics):
//  * The rows are cut into fixed groups of Tiling::rows rows (a function of count and c only).
//    A partial block reduces one group for a tile of <= 32 channels: thread (lc, lr) owns channel
//    lc of the tile and rows lr, lr + rs, lr + 2 rs, ... of the group (kRowIters of them).
//  * Forward: each block does a two-pass mean and sum of squared deviations over its group in
//    double, from values kept in registers (x is read from memory once for the statistics).
//    A finalize block per channel then combines the groups with the exact decomposition
//      M2 = sum_g M2_g + sum_g n_g (mean_g - mean)^2,   mean = sum_g S_g / count,
//    each sum over the groups taken in a fixed tree. Then a pass writes y.
//  * Backward: per-group sums of dy and dy * (x - mean) in double, a finalize block per channel,
//    then a pass writes dx = k1 dy + k2 (x - mean) + k3 with per-channel constants, in double.
//    batchnorm_backward_from_sums takes the two sums from their producer (the fused backward-data
//    conv's epilogue) and runs only that last pass, each block forming the constants of every
//    channel in shared memory; bwd_coefficients and bwd_dx_value are the arithmetic both share.
// Workspace layout (batchnorm_workspace_bytes): two (groups, c) double arrays, then 3 c doubles
// (the backward's dx coefficients).
// bf16 storage: the kernels that read x (and apply_kernel, apply_sum_kernel, which write y) are
// templated on its storage type T; each x is widened exactly (detail::to_f32) where it is loaded
// and y rounded once from the fp32 value (detail::from_f32<T>), the arithmetic unchanged.
#include "kernels/cuda/batchnorm.cuh"

#include <cuda_runtime.h>

#include "kernels/cuda/check.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

using detail::check_not_null;
using detail::check_workspace;
using detail::flat_blocks;
using detail::index_fits_32;

constexpr int kThreads = 256;       // every kernel here; block_sum assumes a power of two
constexpr int kRowIters = 16;       // rows per thread in a partial block
constexpr int kTileChannels = 32;   // channels per partial block (one warp's width)
constexpr int kMaxChannels = 2048;  // per-channel tables of the elementwise passes in shared memory

struct Tiling {
  int tc;          // channels per partial block: min(c, 32)
  int rs;          // row lanes per partial block: kThreads / tc
  int tiles;       // channel tiles: ceil(c / tc)
  int64_t rows;    // rows per group: rs * kRowIters
  int64_t groups;  // ceil(count / rows)
};

Tiling tiling_for(int64_t count, int c) {
  Tiling t{};
  t.tc = c < kTileChannels ? c : kTileChannels;
  t.rs = kThreads / t.tc;
  t.tiles = (c + t.tc - 1) / t.tc;
  t.rows = int64_t(t.rs) * kRowIters;
  t.groups = (count + t.rows - 1) / t.rows;
  return t;
}

struct Workspace {
  double* part_a;  // (groups, c)
  double* part_b;  // (groups, c)
  double* k;       // (3, c) backward: the dx coefficients k1, k2, k3, in double
};

Workspace carve(void* ws, const Tiling& t, int c) {
  Workspace w{};
  const size_t part = size_t(t.groups) * size_t(c);
  w.part_a = static_cast<double*>(ws);
  w.part_b = w.part_a + part;
  w.k = w.part_b + part;
  return w;
}

void check_sizes(const char* op, int64_t count, int c, bool training) {
  if (training && count <= 1)
    fail(op, ": batchnorm training needs more than one value per channel, got count ", count);
  if (count < 0) fail(op, ": count must be >= 0, got ", count);
  if (c <= 0 || c > kMaxChannels)
    fail(op, ": channels must be in [1, ", kMaxChannels, "], got ", c);
}

// Sum of v over the block's kThreads threads in a fixed tree order; every thread gets the result.
// `red` is kThreads doubles of shared memory, free again when this returns.
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

// Rows in group g (all groups but the last hold t.rows).
__device__ __forceinline__ int64_t group_rows(int64_t g, int64_t rows, int64_t count) {
  const int64_t left = count - g * rows;
  return left < rows ? left : rows;
}

// Where the statistics read x: a stored (count, c) tensor in storage T (widened exactly)...
template <class T>
struct StoredRows {
  const T* __restrict__ x;
  int c;
  __device__ __forceinline__ float operator()(int64_t row, int ch) const { return detail::to_f32(x[row * c + ch]); }
  __device__ __forceinline__ float flat(int64_t i, int) const { return detail::to_f32(x[i]); }  // i = row * c + ch
};
// ... or concat(upsample2(a), b) read in place (UpsampleConcatView): row = (image, y, x) of the
// (n, h, w) output, channels below ca from a at (y/2, x/2), the others from b. The same values in
// the same order as from the stored concatenation, so the same bits.
template <class T>
struct UpsampleConcatRows {
  const T* __restrict__ a;
  const T* __restrict__ b;
  int h, w, ca, cb;
  __device__ __forceinline__ float operator()(int64_t row, int ch) const {
    if (ch >= ca) return detail::to_f32(b[row * cb + (ch - ca)]);
    const int64_t hw = int64_t(h) * w;
    const int64_t img = row / hw;
    const int p = int(row - img * hw);
    const int y = p / w, x = p - y * w;
    return detail::to_f32(a[((img * (h >> 1) + (y >> 1)) * (w >> 1) + (x >> 1)) * ca + ch]);
  }
  __device__ __forceinline__ float flat(int64_t i, int ch) const { return (*this)(i / (ca + cb), ch); }
};

// The reader of concat(upsample2(a), b) (n, h, w, c), after checking its sizes and pointers.
template <class T>
UpsampleConcatRows<T> upsample_concat_rows(const char* op, int n, int h, int w, int ca, int c, const T* a,
                                           const T* b) {
  if (n < 1 || h < 2 || w < 2 || h % 2 || w % 2 || ca < 1 || ca >= c)
    fail(op, ": needs n >= 1, an even h and w >= 2 and 0 < ca < c, got n ", n, " h ", h, " w ", w, " ca ", ca, " c ",
         c);
  check_not_null(op, {{"a", a}, {"b", b}});
  return UpsampleConcatRows<T>{a, b, h, w, ca, c - ca};
}

// Forward statistics of one (group, channel tile): sum and M2 about the group mean, in double.
// grid (groups, tiles), kThreads threads. part_sum/part_m2: (groups, c). Src: StoredRows or
// UpsampleConcatRows.
template <class Src>
__global__ void __launch_bounds__(kThreads)
    stats_partial_kernel(Src x, int64_t count, int c, int tc, int rs,
                         int64_t rows, double* __restrict__ part_sum, double* __restrict__ part_m2) {
  __shared__ double red[kThreads];
  __shared__ double group_mean[kTileChannels];
  const int t = int(threadIdx.x);
  const int lc = t % tc, lr = t / tc;
  const int ch = int(blockIdx.y) * tc + lc;
  const int64_t g = blockIdx.x;
  const int64_t row0 = g * rows;
  const int64_t nb = group_rows(g, rows, count);
  const bool active = lr < rs && ch < c;
  const bool leader = lr == 0 && ch < c;  // lr == 0 means t < tc

  float v[kRowIters];
  double s = 0;
#pragma unroll
  for (int k = 0; k < kRowIters; ++k) {
    const int64_t r = lr + int64_t(k) * rs;
    v[k] = 0.f;
    if (active && r < nb) {
      v[k] = x(row0 + r, ch);
      s += double(v[k]);
    }
  }
  red[t] = s;
  __syncthreads();
  if (leader) {
    double tot = 0;
    for (int j = 0; j < rs; ++j) tot += red[j * tc + lc];
    group_mean[lc] = tot / double(nb);
    part_sum[g * c + ch] = tot;
  }
  __syncthreads();  // group_mean is ready and every leader has finished reading red

  double m2 = 0;
  if (active) {
    const double mean = group_mean[lc];
#pragma unroll
    for (int k = 0; k < kRowIters; ++k) {
      const int64_t r = lr + int64_t(k) * rs;
      if (r < nb) {
        const double d = double(v[k]) - mean;
        m2 += d * d;
      }
    }
  }
  red[t] = m2;
  __syncthreads();
  if (leader) {
    double tot = 0;
    for (int j = 0; j < rs; ++j) tot += red[j * tc + lc];
    part_m2[g * c + ch] = tot;
  }
}

// One block per channel: combines the groups, writes save_mean/save_invstd and updates the
// running statistics.
__global__ void __launch_bounds__(kThreads)
    stats_finalize_kernel(const double* __restrict__ part_sum, const double* __restrict__ part_m2,
                          int64_t groups, int64_t rows, int64_t count, int c,
                          float* __restrict__ save_mean, float* __restrict__ save_invstd,
                          float* running_mean, float* running_var, double momentum, double eps) {
  __shared__ double red[kThreads];
  const int ch = int(blockIdx.x);
  double s = 0;
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) s += part_sum[g * c + ch];
  const double mean = block_sum(s, red) / double(count);
  double m2 = 0;
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
    const double nb = double(group_rows(g, rows, count));
    const double d = part_sum[g * c + ch] / nb - mean;
    m2 += part_m2[g * c + ch] + nb * d * d;
  }
  m2 = block_sum(m2, red);
  if (threadIdx.x == 0) {
    const double var = m2 / double(count);  // biased: used to normalise
    const double invstd = 1.0 / sqrt(var + eps);
    const double unbias = double(count) / double(count - 1);
    save_mean[ch] = float(mean);
    save_invstd[ch] = float(invstd);
    // A non-finite batch statistic leaves the running ones unchanged (as cpu::batchnorm_stats_train).
    const bool finite = mean - mean == 0.0 && var - var == 0.0;
    if (running_mean && finite)
      running_mean[ch] = float((1.0 - momentum) * double(running_mean[ch]) + momentum * mean);
    if (running_var && finite)
      running_var[ch] = float((1.0 - momentum) * double(running_var[ch]) + momentum * var * unbias);
  }
}

// y = (x - mean) * (gamma * invstd) + beta over count * c values, in double and rounded once,
// exactly as the CPU reference (cpu::batchnorm_apply) computes it, so that the two agree on the
// sign of every value (and so on every later ReLU decision and max-pool choice). Training:
// mean = save_mean, invstd = save_invstd. Eval (kEval): mean = running_mean and
// invstd = float(1 / sqrt(running_var + eps)), as cpu::batchnorm_stats_eval rounds it.
// Dynamic shared memory: 3 c doubles.
template <class Idx, bool kEval, class T>
__global__ void __launch_bounds__(kThreads)
    apply_kernel(Idx total, int c, const T* x, const float* __restrict__ mean,
                 const float* __restrict__ invstd, const float* __restrict__ gamma,
                 const float* __restrict__ beta, const float* __restrict__ running_var, double eps,
                 T* y) {
  extern __shared__ double dtable[];
  double* t_mean = dtable;
  double* t_scale = dtable + c;
  double* t_shift = dtable + 2 * c;
  for (int ch = int(threadIdx.x); ch < c; ch += kThreads) {
    t_mean[ch] = double(mean[ch]);
    const float inv = kEval ? float(1.0 / sqrt(double(running_var[ch]) + eps)) : invstd[ch];
    t_scale[ch] = double(gamma[ch]) * double(inv);
    t_shift[ch] = double(beta[ch]);
  }
  __syncthreads();
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < total; i += stride) {
    const int ch = int(i % Idx(c));
    // bf16: rounded to float first, then to bf16 (a double rounding, as the tests model it)
    y[i] = detail::from_f32<T>(float((double(detail::to_f32(x[i])) - t_mean[ch]) * t_scale[ch] + t_shift[ch]));
  }
}

// Backward sums of one (group, channel tile): sum dy and sum dy * (x - mean), in double. T: x's
// storage (widened).
template <class T>
__global__ void __launch_bounds__(kThreads)
    bwd_partial_kernel(const T* __restrict__ x, const float* __restrict__ dy,
                       const float* __restrict__ save_mean, int64_t count, int c, int tc, int rs,
                       int64_t rows, double* __restrict__ part_dy, double* __restrict__ part_dyx) {
  __shared__ double red_a[kThreads];
  __shared__ double red_b[kThreads];
  const int t = int(threadIdx.x);
  const int lc = t % tc, lr = t / tc;
  const int ch = int(blockIdx.y) * tc + lc;
  const int64_t g = blockIdx.x;
  const int64_t row0 = g * rows;
  const int64_t nb = group_rows(g, rows, count);
  double sdy = 0, sdyx = 0;
  if (lr < rs && ch < c) {
    const double mean = double(save_mean[ch]);
#pragma unroll 4
    for (int k = 0; k < kRowIters; ++k) {
      const int64_t r = lr + int64_t(k) * rs;
      if (r < nb) {
        const int64_t idx = (row0 + r) * c + ch;
        const double gy = double(dy[idx]);
        sdy += gy;
        sdyx += gy * (double(detail::to_f32(x[idx])) - mean);
      }
    }
  }
  red_a[t] = sdy;
  red_b[t] = sdyx;
  __syncthreads();
  if (lr == 0 && ch < c) {
    double a = 0, b = 0;
    for (int j = 0; j < rs; ++j) {
      a += red_a[j * tc + lc];
      b += red_b[j * tc + lc];
    }
    part_dy[g * c + ch] = a;
    part_dyx[g * c + ch] = b;
  }
}

// The per-channel constants of dx = k1 dy + k2 (x - mean) + k3 (see bwd_finalize_kernel) from
// sdy = sum dy and sdyx = sum dy * xhat, in double.
struct BwdCoefficients {
  double k1, k2, k3;
};
__device__ __forceinline__ BwdCoefficients bwd_coefficients(double sdy, double sdyx, float gamma, float invstd,
                                                            int64_t count) {
  const double inv = double(invstd);
  const double gi = double(gamma) * inv;
  const double coef = gi / double(count);
  return BwdCoefficients{gi, -coef * sdyx * inv, -coef * sdy};
}

// One element of dx, in double, rounded once.
__device__ __forceinline__ float bwd_dx_value(float x, float dy, float mean, double k1, double k2, double k3) {
  const double d = double(x) - double(mean);
  return float(k1 * double(dy) + (k2 * d + k3));
}

// One block per channel. With sdy = sum dy, sdyx = sum dy * xhat, m = count, coef = gamma invstd / m:
//   dbeta = sdy, dgamma = sdyx,
//   dx = coef (m dy - sdy - xhat sdyx) = k1 dy + k2 (x - mean) + k3,
//   k1 = gamma invstd, k2 = -coef sdyx invstd, k3 = -coef sdy.
__global__ void __launch_bounds__(kThreads)
    bwd_finalize_kernel(const double* __restrict__ part_dy, const double* __restrict__ part_dyx,
                        int64_t groups, int64_t count, int c, const float* __restrict__ gamma,
                        const float* __restrict__ save_invstd, float* __restrict__ dgamma,
                        float* __restrict__ dbeta, double* __restrict__ k) {
  __shared__ double red[kThreads];
  const int ch = int(blockIdx.x);
  double a = 0, b = 0;
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) {
    a += part_dy[g * c + ch];
    b += part_dyx[g * c + ch];
  }
  const double sdy = block_sum(a, red);
  const double sdyx_raw = block_sum(b, red);
  if (threadIdx.x == 0) {
    const double sdyx = sdyx_raw * double(save_invstd[ch]);
    const BwdCoefficients q = bwd_coefficients(sdy, sdyx, gamma[ch], save_invstd[ch], count);
    dbeta[ch] = float(sdy);
    dgamma[ch] = float(sdyx);
    k[ch] = q.k1;
    k[c + ch] = q.k2;
    k[2 * c + ch] = q.k3;
  }
}

// dx = k1 dy + k2 (x - mean) + k3 per channel, in double as the CPU reference computes it: the
// three terms can nearly cancel, and float there cost gradients 1e-3 of accuracy deep in the
// network (seen on the CPU emulator, tests/emu). The coefficients are read from the workspace
// (3 c doubles) through the cache; no shared-memory table. T: x's storage (widened).
template <class Idx, class T>
__global__ void __launch_bounds__(kThreads)
    bwd_dx_kernel(Idx total, int c, const T* x, const float* dy,
                  const float* __restrict__ save_mean, const double* __restrict__ k, float* dx) {
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < total; i += stride) {
    const int ch = int(i % Idx(c));
    dx[i] = bwd_dx_value(detail::to_f32(x[i]), dy[i], save_mean[ch], k[ch], k[c + ch], k[2 * c + ch]);
  }
}

// batchnorm_backward_from_sums: every block first forms the constants of all c channels from the
// sums into shared memory (3 c doubles, dynamic), block 0 also writing dgamma and dbeta, then
// dx as bwd_dx_kernel.
template <class Idx, class T>
__global__ void __launch_bounds__(kThreads)
    bwd_dx_from_sums_kernel(Idx total, int64_t count, int c, const T* x, const float* dy,
                            const float* __restrict__ gamma, const float* __restrict__ save_mean,
                            const float* __restrict__ save_invstd, const double* __restrict__ sum_dy,
                            const double* __restrict__ sum_dy_xhat, float* dx, float* __restrict__ dgamma,
                            float* __restrict__ dbeta) {
  extern __shared__ double dtable[];
  double* t_k1 = dtable;
  double* t_k2 = dtable + c;
  double* t_k3 = dtable + 2 * c;
#pragma unroll 1  // unrolled, the division's slow-path call spills registers
  for (int ch = int(threadIdx.x); ch < c; ch += kThreads) {
    const double sdy = sum_dy[ch], sdyx = sum_dy_xhat[ch];
    const BwdCoefficients q = bwd_coefficients(sdy, sdyx, gamma[ch], save_invstd[ch], count);
    t_k1[ch] = q.k1;
    t_k2[ch] = q.k2;
    t_k3[ch] = q.k3;
    if (blockIdx.x == 0) {
      dbeta[ch] = float(sdy);
      dgamma[ch] = float(sdyx);
    }
  }
  __syncthreads();
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < total; i += stride) {
    const int ch = int(i % Idx(c));
    dx[i] = bwd_dx_value(detail::to_f32(x[i]), dy[i], save_mean[ch], t_k1[ch], t_k2[ch], t_k3[ch]);
  }
}

__global__ void count_kernel(int64_t* n) { *n += 1; }

// One thread per channel: batch statistics from the per-channel sum and sum of squares that a
// producing convolution emitted in its epilogue (bn_relu_conv_tc_forward), then the same
// save/running-statistics writes as stats_finalize_kernel. var = E[x^2] - mean^2 in double,
// clamped at 0 (the cancellation costs about count * 2^-53 * E[x^2] / var relative).
__global__ void stats_from_sums_kernel(int64_t count, int c, const double* __restrict__ sum,
                                       const double* __restrict__ sumsq, float* __restrict__ save_mean,
                                       float* __restrict__ save_invstd, float* running_mean, float* running_var,
                                       double momentum, double eps) {
  const int ch = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x);
  if (ch >= c) return;
  const double n = double(count);
  const double mean = sum[ch] / n;
  double var = sumsq[ch] / n - mean * mean;  // biased: used to normalise
  if (var < 0) var = 0;
  save_mean[ch] = float(mean);
  save_invstd[ch] = float(1.0 / sqrt(var + eps));
  const bool finite = mean - mean == 0.0 && var - var == 0.0;
  const double unbias = n / (n - 1.0);
  if (running_mean && finite)
    running_mean[ch] = float((1.0 - momentum) * double(running_mean[ch]) + momentum * mean);
  if (running_var && finite)
    running_var[ch] = float((1.0 - momentum) * double(running_var[ch]) + momentum * var * unbias);
}

__global__ void stats_eval_kernel(int c, const float* __restrict__ running_mean,
                                  const float* __restrict__ running_var, double eps,
                                  float* __restrict__ mean, float* __restrict__ invstd) {
  const int ch = int(blockIdx.x) * int(blockDim.x) + int(threadIdx.x);
  if (ch >= c) return;
  mean[ch] = running_mean[ch];
  invstd[ch] = float(1.0 / sqrt(double(running_var[ch]) + eps));
}

// v = (x - mean) * (gamma * invstd) + beta from saved statistics, per element. kMask: zero
// out[i] (a gradient, in place) where v is not > 0; otherwise write v, rectified when relu is
// set (NaN propagates, as relu_forward). In double, as apply_kernel. Dynamic shared memory: 3 c
// doubles.
template <class Idx, bool kMask, class Src>
__global__ void __launch_bounds__(kThreads)
    bn_relu_kernel(Idx total, int c, Src x, const float* __restrict__ gamma,
                   const float* __restrict__ beta, const float* __restrict__ mean,
                   const float* __restrict__ invstd, bool relu, float* out) {
  extern __shared__ double dtable[];
  double* t_mean = dtable;
  double* t_scale = dtable + c;
  double* t_shift = dtable + 2 * c;
  for (int ch = int(threadIdx.x); ch < c; ch += kThreads) {
    t_mean[ch] = double(mean[ch]);
    t_scale[ch] = double(gamma[ch]) * double(invstd[ch]);
    t_shift[ch] = double(beta[ch]);
  }
  __syncthreads();
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < total; i += stride) {
    const int ch = int(i % Idx(c));
    const float v = float((double(x.flat(int64_t(i), ch)) - t_mean[ch]) * t_scale[ch] + t_shift[ch]);
    if constexpr (kMask) {
      if (!(v > 0.f)) out[i] = 0.f;
    } else {
      out[i] = (relu && !(v > 0.f || v != v)) ? 0.f : v;
    }
  }
}

template <bool kMask, class Src>
void launch_bn_relu(const char* op, int64_t count, int c, Src x, const float* gamma,
                    const float* beta, const float* mean, const float* invstd, bool relu, float* out,
                    cudaStream_t stream) {
  const int64_t total = count * c;
  if (total == 0) return;
  const size_t shmem = 3 * size_t(c) * sizeof(double);
  if (index_fits_32(total))
    bn_relu_kernel<uint32_t, kMask, Src><<<flat_blocks(total), kThreads, shmem, stream>>>(
        uint32_t(total), c, x, gamma, beta, mean, invstd, relu, out);
  else
    bn_relu_kernel<uint64_t, kMask, Src><<<flat_blocks(total), kThreads, shmem, stream>>>(
        uint64_t(total), c, x, gamma, beta, mean, invstd, relu, out);
  RPP_CUDA_CHECK_LAUNCH(op);
}

template <bool kEval, class T>
void launch_apply(const char* op, int64_t count, int c, const T* x, const float* mean,
                  const float* invstd, const float* gamma, const float* beta,
                  const float* running_var, double eps, T* y, cudaStream_t stream) {
  const int64_t total = count * c;
  if (total == 0) return;
  const size_t shmem = 3 * size_t(c) * sizeof(double);
  if (index_fits_32(total))
    apply_kernel<uint32_t, kEval, T><<<flat_blocks(total), kThreads, shmem, stream>>>(
        uint32_t(total), c, x, mean, invstd, gamma, beta, running_var, eps, y);
  else
    apply_kernel<uint64_t, kEval, T><<<flat_blocks(total), kThreads, shmem, stream>>>(
        uint64_t(total), c, x, mean, invstd, gamma, beta, running_var, eps, y);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void check_grid(const char* op, const Tiling& t) {
  if (t.groups > 0x7fffffff || t.tiles > 65535) fail(op, ": tensor too large for one launch");
}

// The statistics passes shared by the training forward and the statistics-only launcher: the
// partial sums, then the finalize (save_mean, save_invstd, running update).
template <class Src>
void launch_stats(const char* op, int64_t count, int c, Src x, float* save_mean,
                  float* save_invstd, float* running_mean, float* running_var,
                  double momentum, double eps, void* workspace, cudaStream_t stream) {
  check_workspace(op, workspace, batchnorm_workspace_bytes(count, c));
  const Tiling t = tiling_for(count, c);
  check_grid(op, t);
  const Workspace w = carve(workspace, t, c);
  stats_partial_kernel<Src><<<dim3(unsigned(t.groups), unsigned(t.tiles)), kThreads, 0, stream>>>(
      x, count, c, t.tc, t.rs, t.rows, w.part_a, w.part_b);
  RPP_CUDA_CHECK_LAUNCH(op);
  stats_finalize_kernel<<<unsigned(c), kThreads, 0, stream>>>(
      w.part_a, w.part_b, t.groups, t.rows, count, c, save_mean, save_invstd, running_mean,
      running_var, momentum, eps);
  RPP_CUDA_CHECK_LAUNCH(op);
}

}  // namespace

size_t batchnorm_workspace_bytes(int64_t count, int c) {
  if (count <= 0 || c <= 0) return 0;
  const Tiling t = tiling_for(count, c);
  const size_t bytes = (2 * size_t(t.groups) + 3) * size_t(c) * sizeof(double);
  return detail::round_up(bytes, 256);
}

namespace {
template <class T>
void forward_train(int64_t count, int c, const T* x, const float* gamma, const float* beta, T* y, float* save_mean,
                   float* save_invstd, float* running_mean, float* running_var, double momentum, double eps,
                   void* workspace, cudaStream_t stream) {
  const char* op = "batchnorm_forward_train";
  check_sizes(op, count, c, true);
  if (!(eps >= 0)) fail(op, ": eps must be >= 0, got ", eps);
  check_not_null(op, {{"x", x}, {"gamma", gamma}, {"beta", beta}, {"y", y},
                      {"save_mean", save_mean}, {"save_invstd", save_invstd}});
  launch_stats(op, count, c, StoredRows<T>{x, c}, save_mean, save_invstd, running_mean, running_var, momentum, eps,
               workspace, stream);
  launch_apply<false>(op, count, c, x, save_mean, save_invstd, gamma, beta, nullptr, eps, y, stream);
}
}  // namespace

void batchnorm_forward_train(int64_t count, int c, const float* x, const float* gamma,
                             const float* beta, float* y, float* save_mean, float* save_invstd,
                             float* running_mean, float* running_var, double momentum, double eps,
                             void* workspace, cudaStream_t stream) {
  forward_train(count, c, x, gamma, beta, y, save_mean, save_invstd, running_mean, running_var, momentum, eps,
                workspace, stream);
}
void batchnorm_forward_train(int64_t count, int c, const bf16* x, const float* gamma,
                             const float* beta, bf16* y, float* save_mean, float* save_invstd,
                             float* running_mean, float* running_var, double momentum, double eps,
                             void* workspace, cudaStream_t stream) {
  forward_train(count, c, x, gamma, beta, y, save_mean, save_invstd, running_mean, running_var, momentum, eps,
                workspace, stream);
}

namespace {
template <class T>
void forward_eval(int64_t count, int c, const T* x, const float* gamma, const float* beta,
                  const float* running_mean, const float* running_var, double eps, T* y,
                  cudaStream_t stream) {
  const char* op = "batchnorm_forward_eval";
  check_sizes(op, count, c, false);
  if (!(eps >= 0)) fail(op, ": eps must be >= 0, got ", eps);
  if (count == 0) return;
  check_not_null(op, {{"x", x}, {"gamma", gamma}, {"beta", beta}, {"running_mean", running_mean},
                      {"running_var", running_var}, {"y", y}});
  launch_apply<true>(op, count, c, x, running_mean, nullptr, gamma, beta, running_var, eps, y,
                     stream);
}
}  // namespace

void batchnorm_forward_eval(int64_t count, int c, const float* x, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            double eps, float* y, cudaStream_t stream) {
  forward_eval(count, c, x, gamma, beta, running_mean, running_var, eps, y, stream);
}
void batchnorm_forward_eval(int64_t count, int c, const bf16* x, const float* gamma,
                            const float* beta, const float* running_mean, const float* running_var,
                            double eps, bf16* y, cudaStream_t stream) {
  forward_eval(count, c, x, gamma, beta, running_mean, running_var, eps, y, stream);
}

namespace {
template <class T>
void backward(int64_t count, int c, const T* x, const float* dy, const float* gamma, const float* save_mean,
              const float* save_invstd, float* dx, float* dgamma, float* dbeta, void* workspace,
              cudaStream_t stream) {
  const char* op = "batchnorm_backward";
  check_sizes(op, count, c, true);
  check_not_null(op, {{"x", x}, {"dy", dy}, {"gamma", gamma}, {"save_mean", save_mean},
                      {"save_invstd", save_invstd}, {"dx", dx}, {"dgamma", dgamma},
                      {"dbeta", dbeta}});
  check_workspace(op, workspace, batchnorm_workspace_bytes(count, c));
  const Tiling t = tiling_for(count, c);
  check_grid(op, t);
  const Workspace w = carve(workspace, t, c);

  bwd_partial_kernel<T><<<dim3(unsigned(t.groups), unsigned(t.tiles)), kThreads, 0, stream>>>(
      x, dy, save_mean, count, c, t.tc, t.rs, t.rows, w.part_a, w.part_b);
  RPP_CUDA_CHECK_LAUNCH(op);
  bwd_finalize_kernel<<<unsigned(c), kThreads, 0, stream>>>(
      w.part_a, w.part_b, t.groups, count, c, gamma, save_invstd, dgamma, dbeta, w.k);
  RPP_CUDA_CHECK_LAUNCH(op);
  const int64_t total = count * c;
  if (index_fits_32(total))
    bwd_dx_kernel<uint32_t, T><<<flat_blocks(total), kThreads, 0, stream>>>(uint32_t(total), c, x, dy, save_mean,
                                                                             w.k, dx);
  else
    bwd_dx_kernel<uint64_t, T><<<flat_blocks(total), kThreads, 0, stream>>>(uint64_t(total), c, x, dy, save_mean,
                                                                             w.k, dx);
  RPP_CUDA_CHECK_LAUNCH(op);
}

template <class T>
void backward_from_sums(int64_t count, int c, const T* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, const double* sum_dy,
                        const double* sum_dy_xhat, float* dx, float* dgamma, float* dbeta, cudaStream_t stream) {
  const char* op = "batchnorm_backward_from_sums";
  check_sizes(op, count, c, true);
  check_not_null(op, {{"x", x}, {"dy", dy}, {"gamma", gamma}, {"save_mean", save_mean},
                      {"save_invstd", save_invstd}, {"sum_dy", sum_dy}, {"sum_dy_xhat", sum_dy_xhat},
                      {"dx", dx}, {"dgamma", dgamma}, {"dbeta", dbeta}});
  const int64_t total = count * c;
  const size_t shmem = 3 * size_t(c) * sizeof(double);
  if (index_fits_32(total))
    bwd_dx_from_sums_kernel<uint32_t, T><<<flat_blocks(total), kThreads, shmem, stream>>>(
        uint32_t(total), count, c, x, dy, gamma, save_mean, save_invstd, sum_dy, sum_dy_xhat, dx, dgamma, dbeta);
  else
    bwd_dx_from_sums_kernel<uint64_t, T><<<flat_blocks(total), kThreads, shmem, stream>>>(
        uint64_t(total), count, c, x, dy, gamma, save_mean, save_invstd, sum_dy, sum_dy_xhat, dx, dgamma, dbeta);
  RPP_CUDA_CHECK_LAUNCH(op);
}

template <class T>
void stats_train(int64_t count, int c, const T* x, float* save_mean, float* save_invstd, float* running_mean,
                 float* running_var, double momentum, double eps, void* workspace, cudaStream_t stream) {
  const char* op = "batchnorm_stats_train";
  check_sizes(op, count, c, true);
  if (!(eps >= 0)) fail(op, ": eps must be >= 0, got ", eps);
  check_not_null(op, {{"x", x}, {"save_mean", save_mean}, {"save_invstd", save_invstd}});
  launch_stats(op, count, c, StoredRows<T>{x, c}, save_mean, save_invstd, running_mean, running_var, momentum, eps,
               workspace, stream);
}

template <class T>
void stats_train_upsample_concat(int n, int h, int w, int ca, int c, const T* a, const T* b, float* save_mean,
                                 float* save_invstd, float* running_mean, float* running_var, double momentum,
                                 double eps, void* workspace, cudaStream_t stream) {
  const char* op = "batchnorm_stats_train_upsample_concat";
  const UpsampleConcatRows<T> x = upsample_concat_rows(op, n, h, w, ca, c, a, b);
  const int64_t count = int64_t(n) * h * w;
  check_sizes(op, count, c, true);
  if (!(eps >= 0)) fail(op, ": eps must be >= 0, got ", eps);
  check_not_null(op, {{"save_mean", save_mean}, {"save_invstd", save_invstd}});
  launch_stats(op, count, c, x, save_mean, save_invstd, running_mean, running_var, momentum, eps, workspace, stream);
}
}  // namespace

void batchnorm_backward(int64_t count, int c, const float* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta, void* workspace, cudaStream_t stream) {
  backward(count, c, x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, workspace, stream);
}
void batchnorm_backward(int64_t count, int c, const bf16* x, const float* dy, const float* gamma,
                        const float* save_mean, const float* save_invstd, float* dx, float* dgamma,
                        float* dbeta, void* workspace, cudaStream_t stream) {
  backward(count, c, x, dy, gamma, save_mean, save_invstd, dx, dgamma, dbeta, workspace, stream);
}

void batchnorm_backward_from_sums(int64_t count, int c, const float* x, const float* dy, const float* gamma,
                                  const float* save_mean, const float* save_invstd, const double* sum_dy,
                                  const double* sum_dy_xhat, float* dx, float* dgamma, float* dbeta,
                                  cudaStream_t stream) {
  backward_from_sums(count, c, x, dy, gamma, save_mean, save_invstd, sum_dy, sum_dy_xhat, dx, dgamma, dbeta, stream);
}
void batchnorm_backward_from_sums(int64_t count, int c, const bf16* x, const float* dy, const float* gamma,
                                  const float* save_mean, const float* save_invstd, const double* sum_dy,
                                  const double* sum_dy_xhat, float* dx, float* dgamma, float* dbeta,
                                  cudaStream_t stream) {
  backward_from_sums(count, c, x, dy, gamma, save_mean, save_invstd, sum_dy, sum_dy_xhat, dx, dgamma, dbeta, stream);
}

void batchnorm_stats_train(int64_t count, int c, const float* x, float* save_mean,
                           float* save_invstd, float* running_mean, float* running_var,
                           double momentum, double eps, void* workspace, cudaStream_t stream) {
  stats_train(count, c, x, save_mean, save_invstd, running_mean, running_var, momentum, eps, workspace, stream);
}
void batchnorm_stats_train(int64_t count, int c, const bf16* x, float* save_mean,
                           float* save_invstd, float* running_mean, float* running_var,
                           double momentum, double eps, void* workspace, cudaStream_t stream) {
  stats_train(count, c, x, save_mean, save_invstd, running_mean, running_var, momentum, eps, workspace, stream);
}

void batchnorm_stats_train_upsample_concat(int n, int h, int w, int ca, int c, const float* a, const float* b,
                                           float* save_mean, float* save_invstd, float* running_mean,
                                           float* running_var, double momentum, double eps, void* workspace,
                                           cudaStream_t stream) {
  stats_train_upsample_concat(n, h, w, ca, c, a, b, save_mean, save_invstd, running_mean, running_var, momentum, eps,
                              workspace, stream);
}
void batchnorm_stats_train_upsample_concat(int n, int h, int w, int ca, int c, const bf16* a, const bf16* b,
                                           float* save_mean, float* save_invstd, float* running_mean,
                                           float* running_var, double momentum, double eps, void* workspace,
                                           cudaStream_t stream) {
  stats_train_upsample_concat(n, h, w, ca, c, a, b, save_mean, save_invstd, running_mean, running_var, momentum, eps,
                              workspace, stream);
}

void batchnorm_stats_from_sums(int64_t count, int c, const double* sum, const double* sumsq, float* save_mean,
                               float* save_invstd, float* running_mean, float* running_var, double momentum,
                               double eps, cudaStream_t stream) {
  const char* op = "batchnorm_stats_from_sums";
  check_sizes(op, count, c, true);
  if (!(eps >= 0)) fail(op, ": eps must be >= 0, got ", eps);
  check_not_null(op, {{"sum", sum}, {"sumsq", sumsq}, {"save_mean", save_mean}, {"save_invstd", save_invstd}});
  stats_from_sums_kernel<<<unsigned((c + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      count, c, sum, sumsq, save_mean, save_invstd, running_mean, running_var, momentum, eps);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void batchnorm_stats_eval(int c, const float* running_mean, const float* running_var, double eps,
                          float* mean, float* invstd, cudaStream_t stream) {
  const char* op = "batchnorm_stats_eval";
  check_sizes(op, 0, c, false);
  if (!(eps >= 0)) fail(op, ": eps must be >= 0, got ", eps);
  check_not_null(op, {{"running_mean", running_mean}, {"running_var", running_var}, {"mean", mean},
                      {"invstd", invstd}});
  stats_eval_kernel<<<unsigned((c + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      c, running_mean, running_var, eps, mean, invstd);
  RPP_CUDA_CHECK_LAUNCH(op);
}

namespace {
// batchnorm_apply (kMask false: y = bn(x), rectified if relu) and bn_relu_mask_inplace (kMask:
// zero dy where bn(x) is not > 0), for either storage of x.
template <bool kMask, class T>
void bn_relu(const char* op, int64_t count, int c, const T* x, const float* gamma, const float* beta,
             const float* mean, const float* invstd, bool relu, float* out, cudaStream_t stream) {
  check_sizes(op, count, c, false);
  check_not_null(op, {{"x", x}, {"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd},
                      {kMask ? "dy" : "y", out}});
  launch_bn_relu<kMask>(op, count, c, StoredRows<T>{x, c}, gamma, beta, mean, invstd, relu, out, stream);
}

template <class T>
void apply_upsample_concat(int n, int h, int w, int ca, int c, const T* a, const T* b, const float* gamma,
                           const float* beta, const float* mean, const float* invstd, bool relu, float* y,
                           cudaStream_t stream) {
  const char* op = "batchnorm_apply_upsample_concat";
  const UpsampleConcatRows<T> x = upsample_concat_rows(op, n, h, w, ca, c, a, b);
  const int64_t count = int64_t(n) * h * w;
  check_sizes(op, count, c, false);
  check_not_null(op, {{"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}, {"y", y}});
  launch_bn_relu<false>(op, count, c, x, gamma, beta, mean, invstd, relu, y, stream);
}
}  // namespace

void batchnorm_apply_upsample_concat(int n, int h, int w, int ca, int c, const float* a, const float* b,
                                     const float* gamma, const float* beta, const float* mean, const float* invstd,
                                     bool relu, float* y, cudaStream_t stream) {
  apply_upsample_concat(n, h, w, ca, c, a, b, gamma, beta, mean, invstd, relu, y, stream);
}
void batchnorm_apply_upsample_concat(int n, int h, int w, int ca, int c, const bf16* a, const bf16* b,
                                     const float* gamma, const float* beta, const float* mean, const float* invstd,
                                     bool relu, float* y, cudaStream_t stream) {
  apply_upsample_concat(n, h, w, ca, c, a, b, gamma, beta, mean, invstd, relu, y, stream);
}

void batchnorm_apply(int64_t count, int c, const float* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, bool relu, float* y, cudaStream_t stream) {
  bn_relu<false>("batchnorm_apply", count, c, x, gamma, beta, mean, invstd, relu, y, stream);
}
void batchnorm_apply(int64_t count, int c, const bf16* x, const float* gamma, const float* beta,
                     const float* mean, const float* invstd, bool relu, float* y, cudaStream_t stream) {
  bn_relu<false>("batchnorm_apply", count, c, x, gamma, beta, mean, invstd, relu, y, stream);
}

namespace {
template <class T>
struct SumArgs {
  int nb;
  const T* x[kBnSumMaxBranches];
  const float* gamma[kBnSumMaxBranches];
  const float* beta[kBnSumMaxBranches];
  const float* mean[kBnSumMaxBranches];
  const float* invstd[kBnSumMaxBranches];
};

// Dynamic shared memory: 3 * nb * c doubles (mean, scale, shift per branch and channel). T: the
// storage of every x and of y (bf16: x widened, the fp32 sum rounded once).
template <class Idx, class T>
__global__ void __launch_bounds__(kThreads) apply_sum_kernel(Idx total, int c, SumArgs<T> a, T* __restrict__ y) {
  extern __shared__ double dtable[];
#pragma unroll
  for (int b = 0; b < kBnSumMaxBranches; ++b) {
    if (b >= a.nb) break;
    double* t = dtable + 3 * b * c;
    for (int ch = int(threadIdx.x); ch < c; ch += kThreads) {
      t[ch] = double(a.mean[b][ch]);
      t[c + ch] = double(a.gamma[b][ch]) * double(a.invstd[b][ch]);
      t[2 * c + ch] = double(a.beta[b][ch]);
    }
  }
  __syncthreads();
  const Idx stride = Idx(gridDim.x) * Idx(kThreads);
  for (Idx i = Idx(blockIdx.x) * Idx(kThreads) + Idx(threadIdx.x); i < total; i += stride) {
    const int ch = int(i % Idx(c));
    float acc = 0.f;
#pragma unroll
    for (int b = 0; b < kBnSumMaxBranches; ++b) {
      if (b >= a.nb) break;
      const double* t = dtable + 3 * b * c;
      const float v = float((double(detail::to_f32(a.x[b][i])) - t[ch]) * t[c + ch] + t[2 * c + ch]);
      acc = b == 0 ? v : acc + v;
    }
    y[i] = detail::from_f32<T>(acc);
  }
}

template <class T>
void apply_sum(const char* op, int64_t count, int c, const BnSumBranch* branches, int nb, T* y, cudaStream_t stream) {
  check_sizes(op, count, c, false);
  if (branches == nullptr || nb < 1 || nb > kBnSumMaxBranches || int64_t(c) * nb > 2048)
    fail(op, ": ", nb, " branches of ", c, " channels; 1 to ", kBnSumMaxBranches,
         " branches and at most 2048 channels in all are supported");
  check_not_null(op, {{"y", y}});
  SumArgs<T> a{};
  a.nb = nb;
  for (int b = 0; b < nb; ++b) {
    const BnSumBranch& q = branches[b];
    check_not_null(op, {{"x", q.x}, {"gamma", q.gamma}, {"beta", q.beta}, {"mean", q.mean}, {"invstd", q.invstd}});
    a.x[b] = static_cast<const T*>(q.x);
    a.gamma[b] = q.gamma;
    a.beta[b] = q.beta;
    a.mean[b] = q.mean;
    a.invstd[b] = q.invstd;
  }
  const int64_t total = count * c;
  if (total == 0) return;
  const size_t shmem = 3 * size_t(nb) * size_t(c) * sizeof(double);
  if (index_fits_32(total))
    apply_sum_kernel<uint32_t, T><<<flat_blocks(total), kThreads, shmem, stream>>>(uint32_t(total), c, a, y);
  else
    apply_sum_kernel<uint64_t, T><<<flat_blocks(total), kThreads, shmem, stream>>>(uint64_t(total), c, a, y);
  RPP_CUDA_CHECK_LAUNCH(op);
}
}  // namespace

void batchnorm_apply_sum(int64_t count, int c, const BnSumBranch* branches, int nb, Storage storage, void* y,
                         cudaStream_t stream) {
  const char* op = "batchnorm_apply_sum";
  if (storage == Storage::Bf16)
    apply_sum(op, count, c, branches, nb, static_cast<bf16*>(y), stream);
  else
    apply_sum(op, count, c, branches, nb, static_cast<float*>(y), stream);
}
void batchnorm_apply_sum(int64_t count, int c, const BnSumBranch* branches, int nb, float* y, cudaStream_t stream) {
  batchnorm_apply_sum(count, c, branches, nb, Storage::F32, y, stream);
}

void bn_relu_mask_inplace(int64_t count, int c, const float* x, const float* gamma, const float* beta,
                          const float* mean, const float* invstd, float* dy, cudaStream_t stream) {
  bn_relu<true>("bn_relu_mask_inplace", count, c, x, gamma, beta, mean, invstd, false, dy, stream);
}
void bn_relu_mask_inplace(int64_t count, int c, const bf16* x, const float* gamma, const float* beta,
                          const float* mean, const float* invstd, float* dy, cudaStream_t stream) {
  bn_relu<true>("bn_relu_mask_inplace", count, c, x, gamma, beta, mean, invstd, false, dy, stream);
}

void batchnorm_count_batch(int64_t* num_batches_tracked, cudaStream_t stream) {
  check_not_null("batchnorm_count_batch", {{"num_batches_tracked", num_batches_tracked}});
  count_kernel<<<1, 1, 0, stream>>>(num_batches_tracked);
  RPP_CUDA_CHECK_LAUNCH("batchnorm_count_batch");
}

}  // namespace rpp::cuda
