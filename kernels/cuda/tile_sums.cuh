// kernels/cuda/tile_sums.cuh — the second stage of the tensor-core kernels' per-channel epilogue
// sums (the forward's sum and sum of squares, bn_relu_conv_tc.cu; backward-data's sum(dy) and
// sum(dy * (x - mean)), bn_relu_conv_bwd_tc.cu). Every block tile wrote its two partials per
// channel into part = { a[tiles][c], b[tiles][c] } doubles; this adds them up per channel in a
// fixed order (no atomics: the same bits on every run). Internal to kernels/cuda; include after
// <cuda_runtime.h>.
#pragma once
#include <cstdint>

namespace rpp::cuda::tile_sums {

// Grid: ceil(c / kChannels) blocks of kChannels * kSlots threads. For channel ch: slot q adds
// tiles q, q + kSlots, ... in order, then slot 0 adds the slots in order; out_a[ch] = the sum of
// a, out_b[ch] = the sum of b, times double(scale_b[ch]) when scale_b is non-null. Either output
// may be null.
template <int kChannels, int kSlots>
__global__ void __launch_bounds__(kChannels * kSlots)
    sum_tile_partials_kernel(const double* __restrict__ part, int64_t tiles, int c, const float* __restrict__ scale_b,
                             double* __restrict__ out_a, double* __restrict__ out_b) {
  __shared__ double red[2][kSlots][kChannels];  // written once, read after the barrier
  const int lc = int(threadIdx.x) % kChannels, q = int(threadIdx.x) / kChannels;
  const int ch = int(blockIdx.x) * kChannels + lc;
  double a = 0.0, b = 0.0;
  if (ch < c) {
    for (int64_t t = q; t < tiles; t += kSlots) {
      a += part[t * c + ch];
      b += part[(tiles + t) * c + ch];
    }
  }
  red[0][q][lc] = a;
  red[1][q][lc] = b;
  __syncthreads();
  if (q == 0 && ch < c) {
#pragma unroll
    for (int p = 1; p < kSlots; ++p) {
      a += red[0][p][lc];
      b += red[1][p][lc];
    }
    if (out_a) out_a[ch] = a;
    if (out_b) out_b[ch] = scale_b ? b * double(scale_b[ch]) : b;
  }
}

}  // namespace rpp::cuda::tile_sums
