// kernels/cuda/conv_bwd_common.cuh — pieces shared by the two backward convolution kernel files,
// the fp32 one (bn_relu_conv_bwd.cu) and the tensor-core one (bn_relu_conv_bwd_tc.cu): the shape
// passed to the kernels, and which kernel taps reach a stride-parity class of input pixels in
// backward-data. Internal to kernels/cuda; include after <cuda_runtime.h>.
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

// The live taps along one axis of the parity class whose first input coordinate is p (q
// coordinates p, p + stride, ...; k taps, o output coordinates): kernel indices first,
// first + step, ... (count of them). A tap kk reaches the class when stride divides
// p + pad - kk * dil (then the class's pixels map to outputs a .. a + q - 1, a that quotient) and
// some of those outputs exist. The solutions of the congruence are a progression of kk (step
// stride / gcd(stride, dil)) and a decreases along it, so the live ones are a contiguous run.
struct Taps {
  int first, step, count;
};

__device__ __forceinline__ Taps live_taps(int p, int q, int k, int o, int stride, int pad, int dil) {
  Taps t{0, 1, 0};
  for (int kk = 0; kk < k; ++kk) {
    const int num = p + pad - kk * dil;
    int rem = num % stride;
    if (rem < 0) rem += stride;
    if (rem != 0) continue;
    const int a = num / stride;  // exact
    if (a > o - 1 || a + q - 1 < 0) continue;
    if (t.count == 0)
      t.first = kk;
    else if (t.count == 1)
      t.step = kk - t.first;
    ++t.count;
  }
  return t;
}

}  // namespace rpp::cuda::conv_bwd
