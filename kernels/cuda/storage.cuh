// kernels/cuda/storage.cuh — the storage types of activation tensors on the GPU: fp32, or bf16
// (bf16 mixed precision: activations stored in bf16, all arithmetic in fp32 or wider, each result
// rounded to bf16 once, to nearest even, when it is stored).
//
// Host code sees the type names only; kernels also get to_f32 (exact widening) and from_f32<T>
// (fp32 -> T; for bf16 round to nearest even, NaN stays NaN, overflow goes to infinity).
#pragma once
#include <cuda_bf16.h>

namespace rpp::cuda {

using bf16 = __nv_bfloat16;

// An activation tensor's element type, for launchers that take either (void pointers).
enum class Storage { F32, Bf16 };

inline const char* storage_name(Storage s) { return s == Storage::F32 ? "fp32" : "bf16"; }

#ifdef __CUDACC__
namespace detail {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(bf16 v) { return __bfloat162float(v); }

template <class T>
struct FromF32;
template <>
struct FromF32<float> {
  static __device__ __forceinline__ float cvt(float v) { return v; }
};
template <>
struct FromF32<bf16> {
  static __device__ __forceinline__ bf16 cvt(float v) { return __float2bfloat16_rn(v); }
};
template <class T>
__device__ __forceinline__ T from_f32(float v) {
  return FromF32<T>::cvt(v);
}

}  // namespace detail
#endif

}  // namespace rpp::cuda
