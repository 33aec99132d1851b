// tests/emu/cuda_bf16.h — the CPU emulator's stand-in for CUDA's <cuda_bf16.h> (see cuda_emu.h):
// only what the project's kernels use.
//   __nv_bfloat16         1 sign, 8 exponent, 7 stored mantissa bits (the upper half of a float)
//   __float2bfloat16(f)   round to nearest, ties to even, as the CUDA Math API documents it
//                         (overflow rounds to infinity; a NaN stays a NaN, made quiet)
//   __float2bfloat16_rn   the same
//   __bfloat162float(h)   exact widening
// The value lives in the 16-bit member `__x`, as in CUDA's struct. Host and "device" code alike
// (the emulator has no separate device side).
#pragma once
#include <cstdint>
#include <cstring>

struct __nv_bfloat16 {
  unsigned short __x;
};

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  __nv_bfloat16 h;
  if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: keep the sign and the upper payload, force quiet
    h.__x = static_cast<unsigned short>((u >> 16) | 0x0040u);
    return h;
  }
  const uint32_t lsb = (u >> 16) & 1u;  // ties go to the even neighbour
  u += 0x7fffu + lsb;
  h.__x = static_cast<unsigned short>(u >> 16);
  return h;
}

inline __nv_bfloat16 __float2bfloat16(float f) { return __float2bfloat16_rn(f); }

inline float __bfloat162float(__nv_bfloat16 h) {
  const uint32_t u = uint32_t(h.__x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
