// kernels/cuda/bn_relu_conv_tc.cu — see bn_relu_conv_tc.cuh.
//
// Block tile: 128 pixels x kBN output channels, kBN = 64 (8 warps, 256 threads) or, when
// cout <= 32, kBN = 32 (4 warps, 128 threads). The warps form a 4 x (kBN / 32) grid; each owns a
// 32 x 32 piece of the tile as 2 x 2 WMMA accumulators (16x16, fp32): TF32 m16n16k8 or BF16
// m16n16k16.
// K runs in slices of 32. Thread t stages tap lane kk = t % 32 of the slice for the pixels
// t / 32 + j * (threads / 32) and the output channels likewise, so that a warp reads 32
// consecutive taps (consecutive input channels in NHWC, consecutive K in OHWI weights): the next
// slice is loaded into registers (raw x values, a validity mask, the tap's channel's BN
// parameters) while the current one is multiplied, then BN-ReLU'd, rounded to TF32 / BF16 and
// stored in shared memory: As[pixel][k] (row-major A) and Bs[channel][k] (column-major B), rows
// padded to 36 floats / 40 bf16 (a multiple of 16 bytes, as load_matrix_sync wants, and off the
// 32-bank period). Out-of-image taps, taps past K, pixels past M and channels past cout stage 0.
// The output pixels' image offsets and top-left taps are decoded once per block into shared
// memory (read back as warp-wide broadcasts).
// Epilogue: the accumulators go through shared memory (reusing the A/B slices' space) to a
// thread-per-channel layout: thread t owns channel t % kBN and every 4th pixel from t / kBN,
// writes y = acc + bias (coalesced rows of channels) and sums y and y^2 in double. With the
// statistics requested, the 4 row groups' sums are added in a fixed order and written as the
// block's partials: workspace = { sum[tiles][cout], sumsq[tiles][cout] } doubles,
// tiles = ceil(n*ho*wo / 128) (the grid's x). A second kernel adds the tiles' partials for each
// channel in a fixed order (8 interleaved strided sums, then those 8 in order).
// Shared memory (static): TF32 and kBN = 64: max(A+B slices 27,648, C tile 36,864) + pixel table
// 2,048 + row-group sums 4,096 = 43,008 bytes; less for BF16 or kBN = 32.
#include "kernels/cuda/bn_relu_conv_tc.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/tile_sums.cuh"
#include "kernels/cuda/wmma_math.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 128;         // pixels per block tile
constexpr int kBK = 32;          // K per slice
constexpr int kWarpsM = 4;       // warps along the pixels, 32 pixels each
constexpr int kStatGroups = 4;   // pixel row groups of the epilogue (threads / kBN)
constexpr int kReduceChannels = 32, kReduceSlots = 8, kReduceThreads = kReduceChannels * kReduceSlots;

struct Dims {
  int n, h, w, cin, kh, kw, cout, stride, pad, dil, ho, wo;
  int64_t m;  // n * ho * wo
  int k;      // kh * kw * cin
};

using wmma_math::Bf16Math;
using wmma_math::Tf32Math;

// part: null, or the workspace for the per-tile statistics partials. The launch bounds ask for
// two 256-thread (four 128-thread) blocks per SM, i.e. at most 128 registers; with the k8 loop
// unrolled by 2 rather than 4 that holds without spilling.
template <class Math, bool kBnRelu, int kWarpsN, class TIn, class TOut>
__global__ void __launch_bounds__(kWarpsM * kWarpsN * 32, 4 / kWarpsN)
    bn_relu_conv_tc_kernel(Dims d, const TIn* __restrict__ x, const float* __restrict__ gamma,
                           const float* __restrict__ beta, const float* __restrict__ mean,
                           const float* __restrict__ invstd, const float* __restrict__ w,
                           const float* __restrict__ bias, TOut* __restrict__ y, double* __restrict__ part) {
  using T = typename Math::T;
  constexpr int kThreads = kWarpsM * kWarpsN * 32;
  constexpr int kBN = 32 * kWarpsN;
  constexpr int kLd = kBK + Math::kPad;
  constexpr int kLdC = kBN + 8;  // rows 32-byte aligned (PTX: the 8-float accumulator fragment)
  constexpr int kSliceBytes = (kBM + kBN) * kLd * int(sizeof(T));
  constexpr int kCBytes = kBM * kLdC * int(sizeof(float));
  constexpr int kTileBytes = kSliceBytes > kCBytes ? kSliceBytes : kCBytes;
  constexpr int kRowStep = kThreads / kBK;  // pixel (channel) distance of a thread's staged values
  constexpr int kARows = kBM / kRowStep;    // A values a thread stages per slice: 16 or 32
  constexpr int kBRows = kBN / kRowStep;    // B values: 8
  static_assert(kThreads % kBK == 0 && kARows <= 32 && kThreads / kBN == kStatGroups, "tile layout");

  // The A and B slices during the K loop, the fp32 output tile in the epilogue.
  alignas(128) __shared__ unsigned char tile[kTileBytes];
  __shared__ long long pix_base[kBM];  // offset of the pixel's image in x; -1 past the last pixel
  __shared__ int pix_iy[kBM], pix_ix[kBM];  // the pixel's top-left tap (may be in the padding)
  __shared__ double red[2][kStatGroups][kBN];
  T* const As = reinterpret_cast<T*>(tile);  // [kBM][kLd]
  T* const Bs = As + kBM * kLd;              // [kBN][kLd]
  float* const Cs = reinterpret_cast<float*>(tile);  // [kBM][kLdC]

  const int tid = int(threadIdx.x);
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  const int n0 = int(blockIdx.y) * kBN;
  for (int r = tid; r < kBM; r += kThreads) {
    const int64_t m = m0 + r;
    long long base = -1;
    int iy = 0, ix = 0;
    if (m < d.m) {
      const int ox = int(m % d.wo);
      const int64_t t = m / d.wo;
      const int oy = int(t % d.ho);
      const int64_t img = t / d.ho;
      base = img * d.h * d.w * d.cin;
      iy = oy * d.stride - d.pad;
      ix = ox * d.stride - d.pad;
    }
    pix_base[r] = base;
    pix_iy[r] = iy;
    pix_ix[r] = ix;
  }

  // ---- staging: global -> registers (load), registers -> shared (store) ----
  const int kk = tid % kBK, r0 = tid / kBK;
  float a_st[kARows], b_st[kBRows];
  unsigned a_ok = 0;  // bit j: a_st[j] is an in-image tap (BN-ReLU applies)
  float bn_mean = 0.f, bn_gamma = 0.f, bn_invstd = 0.f, bn_beta = 0.f;

  auto load = [&](int k0) {
    const int k = k0 + kk;
    const bool k_ok = k < d.k;
    int ci = 0, ky = 0, kx = 0;
    if (k_ok) {
      ci = k % d.cin;
      const int t = k / d.cin;
      kx = t % d.kw;
      ky = t / d.kw;
    }
    if constexpr (kBnRelu) {
      if (k_ok) {
        bn_mean = mean[ci];
        bn_gamma = gamma[ci];
        bn_invstd = invstd[ci];
        bn_beta = beta[ci];
      }
    }
    const int dy = ky * d.dil, dx = kx * d.dil;
    a_ok = 0;
#pragma unroll
    for (int j = 0; j < kARows; ++j) {
      const int r = r0 + j * kRowStep;
      const long long base = pix_base[r];
      const int iy = pix_iy[r] + dy, ix = pix_ix[r] + dx;
      float v = 0.f;
      if (k_ok && base >= 0 && iy >= 0 && iy < d.h && ix >= 0 && ix < d.w) {
        v = detail::to_f32(x[base + (int64_t(iy) * d.w + ix) * d.cin + ci]);
        a_ok |= 1u << j;
      }
      a_st[j] = v;
    }
#pragma unroll
    for (int j = 0; j < kBRows; ++j) {
      const int co = n0 + r0 + j * kRowStep;
      b_st[j] = (k_ok && co < d.cout) ? w[int64_t(co) * d.k + k] : 0.f;
    }
  };

  auto store = [&] {
    float scale = 0.f;
    if constexpr (kBnRelu) scale = float(double(bn_gamma) * double(bn_invstd));
#pragma unroll
    for (int j = 0; j < kARows; ++j) {
      float v = a_st[j];
      if constexpr (kBnRelu) {
        if ((a_ok >> j) & 1u) {
          v = fmaf(v - bn_mean, scale, bn_beta);
          v = (v > 0.f || v != v) ? v : 0.f;  // NaN propagates, as relu_forward
        }
      }
      As[(r0 + j * kRowStep) * kLd + kk] = Math::convert(v);
    }
#pragma unroll
    for (int j = 0; j < kBRows; ++j) Bs[(r0 + j * kRowStep) * kLd + kk] = Math::convert(b_st[j]);
  };

  // ---- the K loop ----
  const int warp = tid / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
  typename Math::Acc acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  __syncthreads();  // the pixel table
  const int slices = (d.k + kBK - 1) / kBK;
  load(0);
  for (int s = 0; s < slices; ++s) {
    store();
    __syncthreads();
    if (s + 1 < slices) load((s + 1) * kBK);
#pragma unroll 2
    for (int k8 = 0; k8 < kBK; k8 += Math::kFragK) {
      typename Math::template FragA<wmma::row_major> fa[2];
      typename Math::template FragB<wmma::col_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * kLd + k8, kLd);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + (wn * 32 + j * 16) * kLd + k8, kLd);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();  // the slices are read before the next store (or the epilogue) overwrites them
  }

  // ---- epilogue ----
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLdC + wn * 32 + j * 16, acc[i][j], kLdC,
                              wmma::mem_row_major);
  __syncthreads();
  const int c = tid % kBN, g = tid / kBN;
  const int co = n0 + c;
  double sum = 0.0, sumsq = 0.0;
  if (co < d.cout) {
    const float b = bias ? bias[co] : 0.f;
    for (int r = g; r < kBM; r += kStatGroups) {
      const int64_t m = m0 + r;
      if (m >= d.m) break;
      const TOut q = detail::from_f32<TOut>(Cs[r * kLdC + c] + b);
      y[m * d.cout + co] = q;
      const float v = detail::to_f32(q);  // the statistics of the stored values
      sum += double(v);
      sumsq += double(v) * double(v);  // exact product: fused or not, the same bits
    }
  }
  if (part != nullptr) {
    red[0][g][c] = sum;
    red[1][g][c] = sumsq;
    __syncthreads();
    if (g == 0 && co < d.cout) {
#pragma unroll
      for (int q = 1; q < kStatGroups; ++q) {
        sum += red[0][q][c];
        sumsq += red[1][q][c];
      }
      const int64_t tiles = int64_t(gridDim.x);
      part[int64_t(blockIdx.x) * d.cout + co] = sum;
      part[(tiles + int64_t(blockIdx.x)) * d.cout + co] = sumsq;
    }
  }
}

template <class Math, bool kBnRelu, int kWarpsN, class TIn, class TOut>
void launch_forward(const Dims& d, const TIn* x, const float* gamma, const float* beta, const float* mean,
                    const float* invstd, const float* w, const float* bias, TOut* y, double* part,
                    cudaStream_t stream) {
  constexpr int kBN = 32 * kWarpsN;
  const dim3 grid(unsigned((d.m + kBM - 1) / kBM), unsigned((d.cout + kBN - 1) / kBN));
  bn_relu_conv_tc_kernel<Math, kBnRelu, kWarpsN, TIn, TOut><<<grid, kWarpsM * kWarpsN * 32, 0, stream>>>(
      d, x, gamma, beta, mean, invstd, w, bias, y, part);
}

template <class Math, class TIn, class TOut>
void launch_math(bool bn, const Dims& d, const TIn* x, const float* gamma, const float* beta,
                 const float* mean, const float* invstd, const float* w, const float* bias, TOut* y,
                 double* part, cudaStream_t stream) {
  const bool narrow = d.cout <= 32;
  if (bn && narrow)
    launch_forward<Math, true, 1>(d, x, gamma, beta, mean, invstd, w, bias, y, part, stream);
  else if (bn)
    launch_forward<Math, true, 2>(d, x, gamma, beta, mean, invstd, w, bias, y, part, stream);
  else if (narrow)
    launch_forward<Math, false, 1>(d, x, static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, w, bias, y, part, stream);
  else
    launch_forward<Math, false, 2>(d, x, static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, w, bias, y, part, stream);
}

bool shape_runs(const cpu::Conv2dShape& s) {
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.cin < 1 || s.cout < 1) return false;
  if (s.kh < 1 || s.kw < 1 || s.stride < 1 || s.dil < 1 || s.pad < 0) return false;
  if (s.ho() < 1 || s.wo() < 1) return false;
  const int64_t m = int64_t(s.n) * s.ho() * s.wo();
  const int64_t k = int64_t(s.kh) * s.kw * s.cin;
  return (m + kBM - 1) / kBM <= 0x7fffffff && (int64_t(s.cout) + 63) / 64 <= 65535 && k < (int64_t(1) << 30);
}

int64_t pixel_tiles(const cpu::Conv2dShape& s) { return (int64_t(s.n) * s.ho() * s.wo() + kBM - 1) / kBM; }

}  // namespace

bool bn_relu_conv_tc_can_run(const cpu::Conv2dShape& s, ConvMath math) {
  return (math == ConvMath::Tf32 || math == ConvMath::Bf16) && shape_runs(s);
}

bool bn_relu_conv_tc_can_run(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, Storage y_type) {
  const bool fp32_io = x_type == Storage::F32 && y_type == Storage::F32;
  return bn_relu_conv_tc_can_run(s, math) && (fp32_io || math == ConvMath::Bf16);
}

size_t bn_relu_conv_tc_workspace_bytes(const cpu::Conv2dShape& s) {
  if (!shape_runs(s)) return 0;
  return 2 * size_t(pixel_tiles(s)) * size_t(s.cout) * sizeof(double);
}

void bn_relu_conv_tc_forward(const cpu::Conv2dShape& s, ConvMath math, const float* x, const float* gamma,
                             const float* beta, const float* mean, const float* invstd, const float* w_ohwi,
                             const float* bias, float* y, double* out_sum, double* out_sumsq, void* workspace,
                             cudaStream_t stream) {
  bn_relu_conv_tc_forward(s, math, Storage::F32, x, gamma, beta, mean, invstd, w_ohwi, bias, Storage::F32, y,
                          out_sum, out_sumsq, workspace, stream);
}

void bn_relu_conv_tc_forward(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                             const float* gamma, const float* beta, const float* mean, const float* invstd,
                             const float* w_ohwi, const float* bias, Storage y_type, void* y, double* out_sum,
                             double* out_sumsq, void* workspace, cudaStream_t stream) {
  const char* op = "bn_relu_conv_tc_forward";
  if (!bn_relu_conv_tc_can_run(s, math, x_type, y_type))
    fail(op, ": unsupported shape, math or storage: n ", s.n, " h ", s.h, " w ", s.w, " cin ", s.cin, " cout ",
         s.cout, " kernel ", s.kh, "x", s.kw, " stride ", s.stride, " pad ", s.pad, " dilation ", s.dil,
         " math ", math == ConvMath::Tf32 ? "tf32" : "bf16", " x ", storage_name(x_type), " y ",
         storage_name(y_type), " (bf16 storage needs bf16 math)");
  detail::check_not_null(op, {{"x", x}, {"w", w_ohwi}, {"y", y}});
  const bool bn = gamma || beta || mean || invstd;
  if (bn) detail::check_not_null(op, {{"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}});
  const bool stats = out_sum || out_sumsq;
  if (stats) detail::check_workspace(op, workspace, bn_relu_conv_tc_workspace_bytes(s));

  Dims d{s.n, s.h, s.w, s.cin, s.kh, s.kw, s.cout, s.stride, s.pad, s.dil, s.ho(), s.wo(), 0, 0};
  d.m = int64_t(s.n) * d.ho * d.wo;
  d.k = s.kh * s.kw * s.cin;
  double* part = stats ? static_cast<double*>(workspace) : nullptr;
  const auto* xf = static_cast<const float*>(x);
  const auto* xh = static_cast<const bf16*>(x);
  auto* yf = static_cast<float*>(y);
  auto* yh = static_cast<bf16*>(y);
  const bool xb = x_type == Storage::Bf16, yb = y_type == Storage::Bf16;
  if (math == ConvMath::Tf32)
    launch_math<Tf32Math>(bn, d, xf, gamma, beta, mean, invstd, w_ohwi, bias, yf, part, stream);
  else if (!xb && !yb)
    launch_math<Bf16Math>(bn, d, xf, gamma, beta, mean, invstd, w_ohwi, bias, yf, part, stream);
  else if (xb && yb)
    launch_math<Bf16Math>(bn, d, xh, gamma, beta, mean, invstd, w_ohwi, bias, yh, part, stream);
  else if (xb)
    launch_math<Bf16Math>(bn, d, xh, gamma, beta, mean, invstd, w_ohwi, bias, yf, part, stream);
  else
    launch_math<Bf16Math>(bn, d, xf, gamma, beta, mean, invstd, w_ohwi, bias, yh, part, stream);
  RPP_CUDA_CHECK_LAUNCH(op);
  if (stats) {
    const unsigned blocks = unsigned((s.cout + kReduceChannels - 1) / kReduceChannels);
    tile_sums::sum_tile_partials_kernel<kReduceChannels, kReduceSlots><<<blocks, kReduceThreads, 0, stream>>>(
        part, pixel_tiles(s), s.cout, nullptr, out_sum, out_sumsq);
    RPP_CUDA_CHECK_LAUNCH(op);
  }
}

}  // namespace rpp::cuda
