// kernels/cuda/loss.cu — BCE with logits and soft Dice on the GPU, forward and backward.
// kernels/cpu/loss.cpp is the specification; tests/gpu/test_ops_gpu.cpp compares against it.
//
// Sums (deterministic, no atomics): [0, n) is strided over a fixed number of blocks G (a function
// of n only); each thread adds its elements in index order in double, each block reduces its
// threads in a fixed tree into part[G][3], and one block adds the G partials in a fixed tree into
// totals[3] (and writes the loss). The Dice backward then reads totals from the device.
// Per-element logistic math is in float: with z = exp(-|x|), p = sigmoid(x) and q = 1 - p are
// both formed from z, so p - t = p (1 - t) - q t and p (1 - p) = p q keep their relative
// accuracy when p is close to 1 (the naive 1 - p would not, in float).
// Workspace layout (loss_workspace_bytes): part (G x 3 doubles), then totals (3 doubles).
#include "kernels/cuda/loss.cuh"

#include <cuda_runtime.h>

#include "kernels/cuda/check.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

using detail::check_not_null;
using detail::check_workspace;
using detail::launch_flat;

constexpr int kThreads = 256;
constexpr int64_t kPerThread = 8;      // elements per thread before another block is added
constexpr int64_t kMaxPartials = 1024;  // most blocks in the first stage
constexpr int kSlots = 3;               // doubles per partial (the most any loss needs)

int64_t partial_blocks(int64_t n) {
  const int64_t b = (n + kThreads * kPerThread - 1) / (kThreads * kPerThread);
  return b < 1 ? 1 : (b > kMaxPartials ? kMaxPartials : b);
}

struct Workspace {
  double* part;    // (G, kSlots)
  double* totals;  // (kSlots)
};

Workspace carve(void* ws, int64_t groups) {
  Workspace w{};
  w.part = static_cast<double*>(ws);
  w.totals = w.part + groups * kSlots;
  return w;
}

// p = sigmoid(v) and q = 1 - p, both to float accuracy.
__device__ __forceinline__ void sigmoid_pair(float v, float& p, float& q) {
  const float z = expf(-fabsf(v));
  const float r = 1.f / (1.f + z);
  if (v >= 0.f) {
    p = r;
    q = z * r;
  } else {
    p = z * r;
    q = r;
  }
}

struct BceTerm {
  static constexpr int K = 1;
  __device__ static void add(float x, float t, double* acc) {
    const double lin = double(fmaxf(x, 0.f)) - double(x) * double(t);
    acc[0] += lin + double(log1pf(expf(-fabsf(x))));
  }
  __device__ static double loss(const double* s, int64_t n) { return s[0] / double(n); }
};

struct DiceTerm {
  static constexpr int K = 3;
  __device__ static void add(float x, float t, double* acc) {
    float p, q;
    sigmoid_pair(x, p, q);
    acc[0] += double(p) * double(t);
    acc[1] += double(p);
    acc[2] += double(t);
  }
  __device__ static double loss(const double* s, int64_t) {
    return 1.0 - (2.0 * s[0] + 1.0) / (s[1] + s[2] + 1.0);
  }
};

// Stage 1, grid G: part[b][k] = sum over i = b kThreads + tid + j G kThreads of Term's k-th value.
template <class Term>
__global__ void __launch_bounds__(kThreads)
    partial_kernel(int64_t n, const float* __restrict__ x, const float* __restrict__ t,
                   double* __restrict__ part) {
  constexpr int K = Term::K;
  __shared__ double red[K][kThreads];
  double acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0;
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += stride)
    Term::add(x[i], t[i], acc);
#pragma unroll
  for (int k = 0; k < K; ++k) red[k][threadIdx.x] = acc[k];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) {
#pragma unroll
      for (int k = 0; k < K; ++k) red[k][threadIdx.x] += red[k][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) part[int64_t(blockIdx.x) * kSlots + k] = red[k][0];
  }
}

// Stage 2, one block: totals[k] = sum of part[b][k] over b in a fixed tree; thread 0 then writes
// Term's loss (if `loss` is not null).
template <class Term>
__global__ void __launch_bounds__(kThreads)
    total_kernel(const double* __restrict__ part, int64_t groups, double* __restrict__ totals,
                 int64_t n, float* loss, bool accumulate) {
  constexpr int K = Term::K;
  __shared__ double red[K][kThreads];
  double acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0;
  for (int64_t b = threadIdx.x; b < groups; b += kThreads) {
#pragma unroll
    for (int k = 0; k < K; ++k) acc[k] += part[b * kSlots + k];
  }
#pragma unroll
  for (int k = 0; k < K; ++k) red[k][threadIdx.x] = acc[k];
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) {
#pragma unroll
      for (int k = 0; k < K; ++k) red[k][threadIdx.x] += red[k][threadIdx.x + s];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double s[K];
#pragma unroll
    for (int k = 0; k < K; ++k) totals[k] = s[k] = red[k][0];
    if (loss) {
      const double value = Term::loss(s, n);
      *loss = accumulate ? float(double(*loss) + value) : float(value);
    }
  }
}

template <class Term>
void launch_sums(const char* op, int64_t n, const float* x, const float* t, const Workspace& w,
                 int64_t groups, float* loss, bool accumulate, cudaStream_t stream) {
  partial_kernel<Term><<<unsigned(groups), kThreads, 0, stream>>>(n, x, t, w.part);
  RPP_CUDA_CHECK_LAUNCH(op);
  total_kernel<Term><<<1, kThreads, 0, stream>>>(w.part, groups, w.totals, n, loss, accumulate);
  RPP_CUDA_CHECK_LAUNCH(op);
}

// dx = dloss / n * (p - t), with p - t = p (1 - t) - q t.
struct BceBwd {
  const float* x;
  const float* t;
  float* dx;
  double scale;
  bool accumulate;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    float p, q;
    sigmoid_pair(x[i], p, q);
    const double ti = double(t[i]);
    const float d = float(scale * (double(p) * (1.0 - ti) - double(q) * ti));
    dx[i] = accumulate ? dx[i] + d : d;
  }
};

// With num = 2 sum(p t) + 1, den = sum(p) + sum(t) + 1 (from totals, on the device):
// dx = dloss * -(2 t den - num) / den^2 * p (1 - p).
struct DiceBwd {
  const float* x;
  const float* t;
  const double* totals;
  float* dx;
  double dloss;
  bool accumulate;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    const double num = 2.0 * totals[0] + 1.0, den = totals[1] + totals[2] + 1.0;
    float p, q;
    sigmoid_pair(x[i], p, q);
    const double dp = -(2.0 * double(t[i]) * den - num) / (den * den);
    const float d = float(dloss * dp * (double(p) * double(q)));
    dx[i] = accumulate ? dx[i] + d : d;
  }
};

void check_common(const char* op, int64_t n, const float* x, const float* t) {
  if (n <= 0) fail(op, ": n must be > 0, got ", n);
  check_not_null(op, {{"x", x}, {"t", t}});
}

}  // namespace

size_t loss_workspace_bytes(int64_t n) {
  if (n <= 0) return 0;
  const int64_t groups = partial_blocks(n);
  return detail::round_up(size_t(groups + 1) * kSlots * sizeof(double), 256);
}

void bce_with_logits_forward(int64_t n, const float* x, const float* t, float* loss,
                             bool accumulate, void* workspace, cudaStream_t stream) {
  const char* op = "bce_with_logits_forward";
  check_common(op, n, x, t);
  check_not_null(op, {{"loss", loss}});
  check_workspace(op, workspace, loss_workspace_bytes(n));
  const int64_t groups = partial_blocks(n);
  launch_sums<BceTerm>(op, n, x, t, carve(workspace, groups), groups, loss, accumulate,
                       stream);
}

void bce_with_logits_backward(int64_t n, const float* x, const float* t, double dloss, float* dx,
                              bool accumulate, cudaStream_t stream) {
  const char* op = "bce_with_logits_backward";
  check_common(op, n, x, t);
  check_not_null(op, {{"dx", dx}});
  launch_flat(op, n, BceBwd{x, t, dx, dloss / double(n), accumulate}, stream);
}

void dice_loss_forward(int64_t n, const float* x, const float* t, float* loss, bool accumulate,
                       void* workspace, cudaStream_t stream) {
  const char* op = "dice_loss_forward";
  check_common(op, n, x, t);
  check_not_null(op, {{"loss", loss}});
  check_workspace(op, workspace, loss_workspace_bytes(n));
  const int64_t groups = partial_blocks(n);
  launch_sums<DiceTerm>(op, n, x, t, carve(workspace, groups), groups, loss, accumulate,
                        stream);
}

void dice_loss_backward(int64_t n, const float* x, const float* t, double dloss, float* dx,
                        bool accumulate, void* workspace, cudaStream_t stream) {
  const char* op = "dice_loss_backward";
  check_common(op, n, x, t);
  check_not_null(op, {{"dx", dx}});
  check_workspace(op, workspace, loss_workspace_bytes(n));
  const int64_t groups = partial_blocks(n);
  const Workspace w = carve(workspace, groups);
  launch_sums<DiceTerm>(op, n, x, t, w, groups, nullptr, false, stream);
  launch_flat(op, n, DiceBwd{x, t, w.totals, dx, dloss, accumulate}, stream);
}

}  // namespace rpp::cuda
