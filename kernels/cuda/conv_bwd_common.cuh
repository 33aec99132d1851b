// kernels/cuda/conv_bwd_common.cuh — pieces shared by the two backward convolution kernel files,
// the fp32 one (bn_relu_conv_bwd.cu) and the tensor-core one (bn_relu_conv_bwd_tc.cu): the shape
// passed to the kernels, which kernel taps reach a stride-parity class of input pixels in
// backward-data, and backward-filter's split-K (the plan and the fixed-order reduction of the
// splits' partials). Internal to kernels/cuda; include after <cuda_runtime.h>.
#pragma once
#include <cstdint>

#include "kernels/cpu/conv2d.h"

namespace rpp::cuda::conv_bwd {

// The conv shape as the kernels take it (by value, as a launch argument).
struct Dims {
  int n, h, w, cin, cout, kh, kw, stride, pad, dil, ho, wo;
};

inline Dims dims_of(const cpu::Conv2dShape& s) {
  return Dims{s.n, s.h, s.w, s.cin, s.cout, s.kh, s.kw, s.stride, s.pad, s.dil, s.ho(), s.wo()};
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The live taps along one axis of the parity class whose first input coordinate is p, for the
// class coordinates q_lo .. q_hi (input coordinates p + q * stride; k taps, o output
// coordinates): kernel indices first, first + step, ... (count of them). A tap kk reaches the
// class when stride divides p + pad - kk * dil (then class coordinate q maps to output a + q, a
// that quotient) and some of the outputs a + q_lo .. a + q_hi exist. The solutions of the
// congruence are a progression of kk (step stride / gcd(stride, dil)) and a decreases along it,
// so the live ones are a contiguous run.
struct Taps {
  int first, step, count;
};

__device__ __forceinline__ Taps live_taps(int p, int q_lo, int q_hi, int k, int o, int stride, int pad, int dil) {
  Taps t{0, 1, 0};
  for (int kk = 0; kk < k; ++kk) {
    const int num = p + pad - kk * dil;
    int rem = num % stride;
    if (rem < 0) rem += stride;
    if (rem != 0) continue;
    const int a = num / stride;  // exact
    if (a + q_lo > o - 1 || a + q_hi < 0) continue;
    if (t.count == 0)
      t.first = kk;
    else if (t.count == 1)
      t.step = kk - t.first;
    ++t.count;
  }
  return t;
}

// The whole class (q coordinates 0 .. q - 1).
__device__ __forceinline__ Taps live_taps(int p, int q, int k, int o, int stride, int pad, int dil) {
  return live_taps(p, 0, q - 1, k, o, stride, pad, dil);
}

// Backward-filter split-K over the n*ho*wo pixels (the GEMM's K): about target_blocks blocks for
// `tiles` output tiles, each split at least min_split_pixels pixels, every chunk a multiple of
// bk. Chosen from the shape alone, so the summation order, hence the bits, never depend on the
// device.
struct SplitK {
  int64_t chunk;  // pixels per split
  int splits;
};

inline SplitK split_pixels(int64_t pixels, int64_t tiles, int64_t target_blocks, int64_t min_split_pixels,
                           int64_t bk) {
  int64_t splits = ceil_div(target_blocks, tiles);
  const int64_t max_splits = ceil_div(pixels, min_split_pixels);
  if (splits > max_splits) splits = max_splits;
  if (splits < 1) splits = 1;
  SplitK k{};
  k.chunk = ceil_div(ceil_div(pixels, splits), bk) * bk;
  k.splits = int(ceil_div(pixels, k.chunk));
  return k;
}

// The backward-filter kernels' launch argument.
struct FilterDims {
  Dims d;
  int ncol;        // kh * kw * cin
  int64_t pixels;  // n * ho * wo
  int64_t chunk;   // pixels per split
};

// dw[i] = the sum over the splits of part_w[split][i], db[c] likewise (db may be null), in split
// order: no atomics, the same bits on every run.
template <int kThreads>
__global__ void __launch_bounds__(kThreads)
    reduce_splits_kernel(int64_t count_w, int cout, int splits, const float* __restrict__ part_w,
                         const float* __restrict__ part_b, float* __restrict__ dw, float* __restrict__ db) {
  const int64_t total = count_w + (db ? cout : 0);
  const int64_t stride = int64_t(gridDim.x) * kThreads;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += stride) {
    if (i < count_w) {
      float sum = part_w[i];
      for (int k = 1; k < splits; ++k) sum += part_w[int64_t(k) * count_w + i];
      dw[i] = sum;
    } else {
      const int64_t c = i - count_w;
      float sum = part_b[c];
      for (int k = 1; k < splits; ++k) sum += part_b[int64_t(k) * cout + c];
      db[c] = sum;
    }
  }
}

}  // namespace rpp::cuda::conv_bwd
