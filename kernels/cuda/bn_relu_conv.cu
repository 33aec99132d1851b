// kernels/cuda/bn_relu_conv.cu — see bn_relu_conv.cuh.
//
// Block: 256 threads own a 64 (pixels) x 64 (output channels) tile of y; thread (ty, tx) of the
// 16 x 16 grid accumulates pixels ty*4 .. ty*4+3 and channels tx*4 .. tx*4+3. K runs in slices of
// 16: the A slice (64 pixels x 16 taps) is gathered from x with the BN-ReLU applied and stored
// transposed (As[k][m], padded by one against bank conflicts); the B slice (16 taps x 64
// channels) is read from OHWI weights, where K is contiguous per output channel.
#include "kernels/cuda/bn_relu_conv.cuh"

#include <cuda_runtime.h>

#include "kernels/cuda/check.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kBM = 64, kBN = 64, kBK = 16, kTM = 4, kTN = 4;
constexpr int kMaxCin = 2048;
static_assert((kBM / kTM) * (kBN / kTN) == kThreads, "one thread per 4x4 micro-tile");

struct Dims {
  int n, h, w, cin, kh, kw, cout, stride, pad, dil, ho, wo;
  int64_t m;  // n * ho * wo
  int k;      // kh * kw * cin
};

template <bool kBnRelu>
__global__ void __launch_bounds__(kThreads)
    bn_relu_conv_fwd_kernel(Dims d, const float* __restrict__ x, const float* __restrict__ gamma,
                            const float* __restrict__ beta, const float* __restrict__ mean,
                            const float* __restrict__ invstd, const float* __restrict__ w,
                            const float* __restrict__ bias, float* __restrict__ y) {
  __shared__ float As[kBK][kBM + 1];
  __shared__ float Bs[kBK][kBN + 1];
  extern __shared__ float table[];  // kBnRelu: mean, scale, shift (3 cin floats)
  float* t_mean = table;
  float* t_scale = table + d.cin;
  float* t_shift = table + 2 * d.cin;
  if constexpr (kBnRelu) {
    for (int c = int(threadIdx.x); c < d.cin; c += kThreads) {
      t_mean[c] = mean[c];
      t_scale[c] = float(double(gamma[c]) * double(invstd[c]));
      t_shift[c] = beta[c];
    }
  }
  __syncthreads();

  const int tid = int(threadIdx.x);
  const int tx = tid % (kBN / kTN), ty = tid / (kBN / kTN);
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  const int n0 = int(blockIdx.y) * kBN;
  float acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = 0.f;

  // A-slice ownership: thread tid loads tap lane kk = tid % kBK of pixels tid / kBK + r * kRowStep
  // (r < kARows) in every slice, so its pixels are decoded once, here.
  constexpr int kRowStep = kThreads / kBK, kARows = kBM * kBK / kThreads;
  static_assert(kThreads % kBK == 0 && kBM % kRowStep == 0, "A-slice ownership");
  const int kk_a = tid % kBK;
  int64_t a_base[kARows];  // offset of the pixel's image in x, or -1 outside the output
  int a_iy[kARows], a_ix[kARows];
#pragma unroll
  for (int r = 0; r < kARows; ++r) {
    const int64_t m = m0 + tid / kBK + r * kRowStep;
    a_base[r] = -1;
    a_iy[r] = a_ix[r] = 0;
    if (m < d.m) {
      const int ox = int(m % d.wo);
      const int64_t t2 = m / d.wo;
      const int oy = int(t2 % d.ho);
      const int64_t img = t2 / d.ho;
      a_base[r] = img * d.h * d.w * d.cin;
      a_iy[r] = oy * d.stride - d.pad;
      a_ix[r] = ox * d.stride - d.pad;
    }
  }

  for (int k0 = 0; k0 < d.k; k0 += kBK) {
    // A slice: neighbouring threads read neighbouring input channels (contiguous in NHWC).
    {
      const int k = k0 + kk_a;
      int ci = 0, ky = 0, kx = 0;
      if (k < d.k) {
        ci = k % d.cin;
        const int t = k / d.cin;
        kx = t % d.kw;
        ky = t / d.kw;
      }
#pragma unroll
      for (int r = 0; r < kARows; ++r) {
        float v = 0.f;
        const int iy = a_iy[r] + ky * d.dil, ix = a_ix[r] + kx * d.dil;
        if (k < d.k && a_base[r] >= 0 && iy >= 0 && iy < d.h && ix >= 0 && ix < d.w) {
          v = x[a_base[r] + (int64_t(iy) * d.w + ix) * d.cin + ci];
          if constexpr (kBnRelu) {
            v = fmaf(v - t_mean[ci], t_scale[ci], t_shift[ci]);
            v = (v > 0.f || v != v) ? v : 0.f;  // NaN propagates, as relu_forward
          }
        }
        As[kk_a][tid / kBK + r * kRowStep] = v;
      }
    }
    // B slice: element i -> output channel nn = i / kBK, tap kk = i % kBK (contiguous in OHWI).
    for (int i = tid; i < kBN * kBK; i += kThreads) {
      const int nn = i / kBK, kk = i % kBK;
      const int co = n0 + nn, k = k0 + kk;
      Bs[kk][nn] = (co < d.cout && k < d.k) ? w[int64_t(co) * d.k + k] : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float a[kTM], b[kTN];
#pragma unroll
      for (int i = 0; i < kTM; ++i) a[i] = As[kk][ty * kTM + i];
#pragma unroll
      for (int j = 0; j < kTN; ++j) b[j] = Bs[kk][tx * kTN + j];
#pragma unroll
      for (int i = 0; i < kTM; ++i)
#pragma unroll
        for (int j = 0; j < kTN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
    }
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t m = m0 + ty * kTM + i;
    if (m >= d.m) continue;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int co = n0 + tx * kTN + j;
      if (co < d.cout) y[m * d.cout + co] = acc[i][j] + (bias ? bias[co] : 0.f);
    }
  }
}

}  // namespace

bool bn_relu_conv_can_run(const cpu::Conv2dShape& s) {
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.cin < 1 || s.cin > kMaxCin || s.cout < 1) return false;
  if (s.kh < 1 || s.kw < 1 || s.stride < 1 || s.dil < 1 || s.pad < 0) return false;
  if (s.ho() < 1 || s.wo() < 1) return false;
  const int64_t m = int64_t(s.n) * s.ho() * s.wo();
  const int64_t k = int64_t(s.kh) * s.kw * s.cin;
  return (m + kBM - 1) / kBM <= 0x7fffffff && (s.cout + kBN - 1) / kBN <= 65535 && k < (int64_t(1) << 30);
}

void bn_relu_conv_forward(const cpu::Conv2dShape& s, const float* x, const float* gamma,
                          const float* beta, const float* mean, const float* invstd,
                          const float* w_ohwi, const float* bias, float* y, cudaStream_t stream) {
  const char* op = "bn_relu_conv_forward";
  if (!bn_relu_conv_can_run(s))
    fail(op, ": unsupported shape n ", s.n, " h ", s.h, " w ", s.w, " cin ", s.cin, " cout ", s.cout, " kernel ",
         s.kh, "x", s.kw, " stride ", s.stride, " pad ", s.pad, " dilation ", s.dil);
  detail::check_not_null(op, {{"x", x}, {"w", w_ohwi}, {"y", y}});
  const bool bn = gamma || beta || mean || invstd;
  if (bn) detail::check_not_null(op, {{"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}});
  Dims d{s.n, s.h, s.w, s.cin, s.kh, s.kw, s.cout, s.stride, s.pad, s.dil, s.ho(), s.wo(), 0, 0};
  d.m = int64_t(s.n) * d.ho * d.wo;
  d.k = s.kh * s.kw * s.cin;
  const dim3 grid(unsigned((d.m + kBM - 1) / kBM), unsigned((s.cout + kBN - 1) / kBN));
  if (bn) {
    const size_t shmem = 3 * size_t(s.cin) * sizeof(float);
    bn_relu_conv_fwd_kernel<true><<<grid, kThreads, shmem, stream>>>(d, x, gamma, beta, mean, invstd, w_ohwi,
                                                                      bias, y);
  } else {
    bn_relu_conv_fwd_kernel<false><<<grid, kThreads, 0, stream>>>(d, x, nullptr, nullptr, nullptr, nullptr, w_ohwi,
                                                                   bias, y);
  }
  RPP_CUDA_CHECK_LAUNCH(op);
}

}  // namespace rpp::cuda
