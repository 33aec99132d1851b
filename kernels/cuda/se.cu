// kernels/cuda/se.cu — see se.cuh.
#include "kernels/cuda/se.cuh"

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/device_math.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

using device_math::sigmoid_stable;
using device_math::warp_sum;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxRow = 6144;  // c + hidden: the backward stages 2 (c + hidden) floats, within 48 KiB

// relu(W1 p) of one image into r (shared), one warp per hidden unit; pr: p's row (shared).
__device__ void hidden_relu(int c, int hidden, const float* pr, const float* __restrict__ w1, float* r) {
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) / 32;
  for (int j = warp; j < hidden; j += kWarps) {
    double acc = 0;
    for (int i = lane; i < c; i += 32) acc += double(pr[i]) * double(w1[int64_t(j) * c + i]);
    acc = warp_sum(acc);
    if (lane == 0) {
      const float h = float(acc);
      r[j] = (h > 0.f || h != h) ? h : 0.f;  // NaN propagates, as relu_forward
    }
  }
}

// Dynamic shared memory: c + hidden floats.
__global__ void __launch_bounds__(kThreads)
    se_fwd_kernel(int c, int hidden, const float* __restrict__ p, const float* __restrict__ w1,
                  const float* __restrict__ w2, float* __restrict__ s) {
  extern __shared__ float sm[];
  float* pr = sm;
  float* r = sm + c;
  const int64_t img = blockIdx.x;
  for (int i = int(threadIdx.x); i < c; i += kThreads) pr[i] = p[img * c + i];
  __syncthreads();
  hidden_relu(c, hidden, pr, w1, r);
  __syncthreads();
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) / 32;
  for (int o = warp; o < c; o += kWarps) {
    double acc = 0;
    for (int j = lane; j < hidden; j += 32) acc += double(r[j]) * double(w2[int64_t(o) * hidden + j]);
    acc = warp_sum(acc);
    if (lane == 0) s[img * c + o] = sigmoid_stable(float(acc));
  }
}

// Per image: da = ds * s * (1 - s), r = relu(W1 p), dh = (r > 0 ? W2^T da : 0), dp = W1^T dh;
// da, r and dh also go to the workspace for the weight gradients. Dynamic shared memory:
// 2 c + 2 hidden floats.
__global__ void __launch_bounds__(kThreads)
    se_bwd_image_kernel(int c, int hidden, const float* __restrict__ p, const float* __restrict__ w1,
                        const float* __restrict__ w2, const float* __restrict__ s, const float* __restrict__ ds,
                        float* __restrict__ dp, float* __restrict__ ws_da, float* __restrict__ ws_r,
                        float* __restrict__ ws_dh) {
  extern __shared__ float sm[];
  float* pr = sm;
  float* da = pr + c;
  float* r = da + c;
  float* dh = r + hidden;
  const int64_t img = blockIdx.x;
  for (int i = int(threadIdx.x); i < c; i += kThreads) {
    pr[i] = p[img * c + i];
    const float v = s[img * c + i];
    const float g = ds[img * c + i] * v * (1.f - v);  // sigmoid_backward's expression
    da[i] = g;
    ws_da[img * c + i] = g;
  }
  __syncthreads();
  hidden_relu(c, hidden, pr, w1, r);
  __syncthreads();
  const int lane = int(threadIdx.x) & 31, warp = int(threadIdx.x) / 32;
  for (int j = warp; j < hidden; j += kWarps) {  // linear_backward's dx over W2, then relu_backward
    double acc = 0;
    for (int o = lane; o < c; o += 32) acc += double(da[o]) * double(w2[int64_t(o) * hidden + j]);
    acc = warp_sum(acc);
    if (lane == 0) {
      const float g = r[j] > 0.f ? float(acc) : 0.f;
      dh[j] = g;
      ws_dh[img * hidden + j] = g;
      ws_r[img * hidden + j] = r[j];
    }
  }
  __syncthreads();
  for (int i = warp; i < c; i += kWarps) {  // linear_backward's dx over W1
    double acc = 0;
    for (int j = lane; j < hidden; j += 32) acc += double(dh[j]) * double(w1[int64_t(j) * c + i]);
    acc = warp_sum(acc);
    if (lane == 0) dp[img * c + i] = float(acc);
  }
}

// dw2[o, j] = sum_r da[r, o] r[r, j] (k < c * hidden), then dw1[j, i] = sum_r dh[r, j] p[r, i],
// r in order (linear_backward's weight gradient).
__global__ void __launch_bounds__(kThreads)
    se_bwd_weights_kernel(int n, int c, int hidden, const float* __restrict__ p, const float* __restrict__ ws_da,
                          const float* __restrict__ ws_r, const float* __restrict__ ws_dh, float* __restrict__ dw1,
                          float* __restrict__ dw2) {
  const int64_t per = int64_t(c) * hidden;
  for (int64_t k = int64_t(blockIdx.x) * kThreads + threadIdx.x; k < 2 * per; k += int64_t(gridDim.x) * kThreads) {
    double acc = 0;
    if (k < per) {
      const int o = int(k / hidden), j = int(k % hidden);
      for (int r = 0; r < n; ++r) acc += double(ws_da[int64_t(r) * c + o]) * double(ws_r[int64_t(r) * hidden + j]);
      dw2[k] = float(acc);
    } else {
      const int64_t q = k - per;
      const int j = int(q / c), i = int(q % c);
      for (int r = 0; r < n; ++r) acc += double(ws_dh[int64_t(r) * hidden + j]) * double(p[int64_t(r) * c + i]);
      dw1[q] = float(acc);
    }
  }
}

void check_sizes(const char* op, int n, int c, int hidden) {
  if (n < 0 || c < 1 || hidden < 1 || int64_t(c) + hidden > kMaxRow)
    fail(op, ": bad sizes n=", n, " c=", c, " hidden=", hidden, " (n >= 0, c and hidden >= 1, c + hidden <= ",
         kMaxRow, ")");
}

}  // namespace

void se_excite_forward(int n, int c, int hidden, const float* p, const float* w1, const float* w2, float* s,
                       cudaStream_t stream) {
  const char* op = "se_excite_forward";
  check_sizes(op, n, c, hidden);
  if (n == 0) return;
  detail::check_not_null(op, {{"p", p}, {"w1", w1}, {"w2", w2}, {"s", s}});
  const size_t smem = (size_t(c) + size_t(hidden)) * sizeof(float);
  se_fwd_kernel<<<unsigned(n), kThreads, smem, stream>>>(c, hidden, p, w1, w2, s);
  RPP_CUDA_CHECK_LAUNCH(op);
}

size_t se_excite_backward_workspace_bytes(int n, int c, int hidden) {
  if (n <= 0 || c < 1 || hidden < 1) return 0;
  return size_t(n) * (size_t(c) + 2 * size_t(hidden)) * sizeof(float);
}

void se_excite_backward(int n, int c, int hidden, const float* p, const float* w1, const float* w2, const float* s,
                        const float* ds, float* dp, float* dw1, float* dw2, void* workspace, cudaStream_t stream) {
  const char* op = "se_excite_backward";
  check_sizes(op, n, c, hidden);
  detail::check_not_null(op, {{"dw1", dw1}, {"dw2", dw2}});
  float* ws_da = nullptr;
  float* ws_r = nullptr;
  float* ws_dh = nullptr;
  if (n > 0) {
    detail::check_not_null(op, {{"p", p}, {"w1", w1}, {"w2", w2}, {"s", s}, {"ds", ds}, {"dp", dp}});
    detail::check_workspace(op, workspace, se_excite_backward_workspace_bytes(n, c, hidden));
    ws_da = static_cast<float*>(workspace);
    ws_r = ws_da + int64_t(n) * c;
    ws_dh = ws_r + int64_t(n) * hidden;
    const size_t smem = 2 * (size_t(c) + size_t(hidden)) * sizeof(float);
    se_bwd_image_kernel<<<unsigned(n), kThreads, smem, stream>>>(c, hidden, p, w1, w2, s, ds, dp, ws_da, ws_r,
                                                                 ws_dh);
    RPP_CUDA_CHECK_LAUNCH(op);
  }
  const int64_t total = 2 * int64_t(c) * hidden;
  const unsigned blocks = unsigned((total + kThreads - 1) / kThreads < 1024 ? (total + kThreads - 1) / kThreads : 1024);
  se_bwd_weights_kernel<<<blocks, kThreads, 0, stream>>>(n, c, hidden, p, ws_da, ws_r, ws_dh, dw1, dw2);
  RPP_CUDA_CHECK_LAUNCH(op);
}

}  // namespace rpp::cuda
