// kernels/cuda/device_math.cuh — small device functions shared by kernel families, so that fused
// kernels compute exactly what the unfused ones do: the overflow-free fp32 sigmoid and the fixed
// shuffle-tree sum of a warp's doubles. Internal to kernels/cuda; include in .cu files only.
#pragma once

#include <cuda_runtime.h>

namespace rpp::cuda::device_math {

// sigmoid(v) in fp32, exp of a non-positive argument only, so nothing overflows for large |v|.
__device__ __forceinline__ float sigmoid_stable(float v) {
  if (v >= 0.f) return 1.f / (1.f + expf(-v));
  const float z = expf(v);
  return z / (1.f + z);
}

// Sum over the warp's lanes in a fixed tree; lane 0 holds the result.
__device__ __forceinline__ double warp_sum(double v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

}  // namespace rpp::cuda::device_math
