// kernels/cuda/wmma_math.cuh — the two tensor-core multiplication precisions of the WMMA kernels
// (bn_relu_conv_tc.cu, bn_relu_conv_bwd_tc.cu) as traits: the staged operand type, the fragment
// shapes (TF32 m16n16k8, BF16 m16n16k16, fp32 accumulators), the shared-memory row padding
// that keeps every fragment row 16-byte aligned, and the rounding applied when an operand is
// staged. Internal to kernels/cuda; include after <cuda_bf16.h>, <cuda_runtime.h> and <mma.h>.
#pragma once

namespace rpp::cuda::wmma_math {

namespace wmma = nvcuda::wmma;

struct Tf32Math {
  using T = float;
  static constexpr int kFragK = 8;
  static constexpr int kPad = 4;  // elements: 16 bytes
  template <class L>
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, L>;
  template <class L>
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, L>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  // Round to nearest, ties away from zero (cvt.rna.tf32.f32).
  static __device__ __forceinline__ T convert(float v) { return wmma::__float_to_tf32(v); }
};

struct Bf16Math {
  using T = __nv_bfloat16;
  static constexpr int kFragK = 16;
  static constexpr int kPad = 8;  // elements: 16 bytes
  template <class L>
  using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, L>;
  template <class L>
  using FragB = wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, L>;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  // Round to nearest even.
  static __device__ __forceinline__ T convert(float v) { return __float2bfloat16(v); }
};

}  // namespace rpp::cuda::wmma_math
