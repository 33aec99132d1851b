// kernels/cuda/conv_tc_forward.cuh — the tensor-core implicit-GEMM forward convolution kernel shared
// by the fused BN-ReLU-conv (bn_relu_conv_tc.cu) and the fused ASPP conv-BN sum (conv_bn_sum.cu).
// Internal to kernels/cuda: include after <cuda_bf16.h>, <cuda_runtime.h> and <mma.h>, in a .cu.
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
// writes y = acc + bias (+ res, a residual of y's shape and storage, added in fp32 before the one
// rounding) (coalesced rows of channels) and sums y and y^2 in double. With the
// statistics requested, the 4 row groups' sums are added in a fixed order and written as the
// block's partials: workspace = { sum[tiles][cout], sumsq[tiles][cout] } doubles,
// tiles = ceil(n*ho*wo / 128) (the grid's x); tile_sums.cuh adds them up.
//
// Branch-sum mode (kSum, the ASPP): K is the concatenation of up to four branches' taps, each
// branch with its own padding, dilation and OHWI weights, and the output is
// sum_b bn_b(conv_b(x)) with eval-mode BNs. Each block folds the BNs into per-branch per-channel
// scales (applied to the weights as they are staged, before the rounding) and one per-channel
// shift (the epilogue's "bias"): s_b = gamma_b / sqrt(var_b + eps) and
// shift = sum_b ((bias_b - mean_b) * s_b + beta_b), both in double, then rounded to float. A
// K slice none of whose taps can land inside the image for any pixel of the block's tile (the
// tile's output rows and columns bound every pixel) is skipped: not loaded, not multiplied. At
// dilation 12 or 18 on a 32x32 map that is a third of the tap rows of a tile.
//
// Shared memory (static): TF32 and kBN = 64: max(A+B slices 27,648, C tile 36,864) + pixel table
// 2,048 + row-group sums 4,096 = 43,008 bytes, plus 1,360 in branch-sum mode; less for BF16 or
// kBN = 32.
#pragma once

#include <cstdint>

#include "kernels/cuda/storage.cuh"
#include "kernels/cuda/wmma_math.cuh"

namespace rpp::cuda::conv_tc {

namespace wmma = nvcuda::wmma;

constexpr int kBM = 128;         // pixels per block tile
constexpr int kBK = 32;          // K per slice
constexpr int kWarpsM = 4;       // warps along the pixels, 32 pixels each
constexpr int kStatGroups = 4;   // pixel row groups of the epilogue (threads / kBN)
constexpr int kMaxBranches = 4;  // branch-sum mode

struct Dims {
  int n, h, w, cin, kh, kw, cout, stride, pad, dil, ho, wo;
  int64_t m;  // n * ho * wo
  int k;      // kh * kw * cin, or in branch-sum mode count * kh * kw * cin
  // Max-pool mode (ho, wo even; no residual, not in branch-sum mode): the pixels are numbered
  // window by window, m = 4 * window + position (0,0), (0,1), (1,0), (1,1), windows in NHWC
  // order of the pooled output, so that a tile holds 32 whole windows; y is the pooled output.
  int pool;
  // Multiplier mode (res given): y = the convolution's output as stored, times res, in fp32, then
  // rounded; the stored convolution output also goes to y_conv when that is not null.
  int res_mul;
  // Upsample-concat input (kUpcat; 0 otherwise): x is concat(upsample2(x), x2), read in place:
  // channels below up_ca from x (n, h/2, w/2, up_ca) at the pixel (iy/2, ix/2), the others from x2
  // (n, h, w, cin - up_ca). h and w are even.
  int up_ca;
};

// Branch-sum mode: the branches' padding, dilation, OHWI weights, conv bias (or null) and eval BN.
struct Branches {
  int count = 0;  // 1..kMaxBranches
  double eps = 0.0;
  int pad[kMaxBranches] = {};
  int dil[kMaxBranches] = {};
  const float* w[kMaxBranches] = {};
  const float* bias[kMaxBranches] = {};
  const float* gamma[kMaxBranches] = {};
  const float* beta[kMaxBranches] = {};
  const float* mean[kMaxBranches] = {};
  const float* var[kMaxBranches] = {};
};

// part: null, or the workspace for the per-tile statistics partials. argmax: null, or (max-pool
// mode) each pooled output's window position. y_conv: null, or (multiplier mode) where the
// convolution's own output goes. The launch bounds ask for
// two 256-thread (four 128-thread) blocks per SM, i.e. at most 128 registers; with the k8 loop
// unrolled by 2 rather than 4 that holds without spilling.
template <class Math, bool kBnRelu, int kWarpsN, class TIn, class TOut, bool kSum, bool kUpcat = false>
__global__ void __launch_bounds__(kWarpsM * kWarpsN * 32, 4 / kWarpsN)
    conv_tc_kernel(Dims d, const TIn* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                   const float* __restrict__ mean, const float* __restrict__ invstd, const float* __restrict__ w,
                   const float* __restrict__ bias, TOut* __restrict__ y, const TOut* __restrict__ res,
                   double* __restrict__ part, Branches br, uint8_t* __restrict__ argmax,
                   TOut* __restrict__ y_conv, const TIn* __restrict__ x2) {
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
  static_assert(!(kSum && kBnRelu), "the branch sum has no input BN-ReLU");
  static_assert(!(kSum && kUpcat), "the branch sum reads a stored input");

  // The A and B slices during the K loop, the fp32 output tile in the epilogue.
  alignas(128) __shared__ unsigned char tile[kTileBytes];
  // Offset of the pixel's image in x (upsample-concat input: its first pixel's index in x2's
  // pixels); -1 past the last pixel.
  __shared__ long long pix_base[kBM];
  __shared__ int pix_iy[kBM], pix_ix[kBM];  // the pixel's top-left tap (may be in the padding)
  __shared__ double red[2][kStatGroups][kBN];
  // Branch-sum mode: folded BN scales per branch and channel, the shift per channel, and the
  // branches' padding, dilation and weights; the tile's output row and column bounds.
  __shared__ float br_scale[kSum ? kMaxBranches * kBN : 1], br_shift[kSum ? kBN : 1];
  __shared__ int br_pad[kSum ? kMaxBranches : 1], br_dil[kSum ? kMaxBranches : 1], box[kSum ? 4 : 1];
  __shared__ const float* br_w[kSum ? kMaxBranches : 1];
  T* const As = reinterpret_cast<T*>(tile);  // [kBM][kLd]
  T* const Bs = As + kBM * kLd;              // [kBN][kLd]
  float* const Cs = reinterpret_cast<float*>(tile);  // [kBM][kLdC]

  const int tid = int(threadIdx.x);
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  const int n0 = int(blockIdx.y) * kBN;
  const int pad = kSum ? 0 : d.pad;  // branch-sum mode: each tap subtracts its branch's padding
  for (int r = tid; r < kBM; r += kThreads) {
    const int64_t m = m0 + r;
    long long base = -1;
    int iy = 0, ix = 0;
    if (m < d.m) {
      int ox, oy;
      int64_t img;
      if (d.pool) {  // window-major numbering
        const int64_t win = m >> 2;
        const int q = int(m & 3), wp = d.wo >> 1, hp = d.ho >> 1;
        const int64_t t = win / wp;
        ox = 2 * int(win % wp) + (q & 1);
        oy = 2 * int(t % hp) + (q >> 1);
        img = t / hp;
      } else {
        ox = int(m % d.wo);
        const int64_t t = m / d.wo;
        oy = int(t % d.ho);
        img = t / d.ho;
      }
      base = img * d.h * d.w * (kUpcat ? 1 : d.cin);
      iy = oy * d.stride - pad;
      ix = ox * d.stride - pad;
    }
    pix_base[r] = base;
    pix_iy[r] = iy;
    pix_ix[r] = ix;
  }
  int kb = d.k;  // K of one branch
  if constexpr (kSum) {
    kb = d.kh * d.kw * d.cin;
    if (tid < kBN) {
      const int co = n0 + tid;
      double shift = 0.0;
#pragma unroll
      for (int b = 0; b < kMaxBranches; ++b) {
        float scale = 0.f;
        if (b < br.count && co < d.cout) {
          const double s = double(br.gamma[b][co]) / sqrt(double(br.var[b][co]) + br.eps);
          scale = float(s);
          const double cb = br.bias[b] ? double(br.bias[b][co]) : 0.0;
          shift += (cb - double(br.mean[b][co])) * s + double(br.beta[b][co]);
        }
        br_scale[b * kBN + tid] = scale;
      }
      br_shift[tid] = float(shift);
    }
    if (tid < kMaxBranches) {
#pragma unroll
      for (int b = 0; b < kMaxBranches; ++b)
        if (b == tid) {
          br_pad[b] = br.pad[b];
          br_dil[b] = br.dil[b];
          br_w[b] = br.w[b];
        }
    }
    if (tid == 0) {  // the tile's output rows and columns (all of them when it spans two images)
      const int64_t hw = int64_t(d.ho) * d.wo;
      const int64_t last = (m0 + kBM < d.m ? m0 + kBM : d.m) - 1;
      int oy0 = 0, oy1 = d.ho - 1, ox0 = 0, ox1 = d.wo - 1;
      if (m0 / hw == last / hw) {
        const int64_t r0 = m0 % hw, r1 = last % hw;
        oy0 = int(r0 / d.wo);
        oy1 = int(r1 / d.wo);
        if (oy0 == oy1) {
          ox0 = int(r0 % d.wo);
          ox1 = int(r1 % d.wo);
        }
      }
      box[0] = oy0 * d.stride;
      box[1] = oy1 * d.stride;
      box[2] = ox0 * d.stride;
      box[3] = ox1 * d.stride;
    }
  }

  // ---- staging: global -> registers (load), registers -> shared (store) ----
  const int kk = tid % kBK, r0 = tid / kBK;
  float a_st[kARows], b_st[kBRows];
  unsigned a_ok = 0;  // bit j: a_st[j] is an in-image tap (BN-ReLU applies)
  float bn_mean = 0.f, bn_gamma = 0.f, bn_invstd = 0.f, bn_beta = 0.f;

  auto load = [&](int k0) {
    const int k = k0 + kk;
    const bool k_ok = k < d.k;
    int ci = 0, ky = 0, kx = 0, branch = 0, kl = k;
    if (k_ok) {
      if constexpr (kSum) {
        branch = k / kb;
        kl = k - branch * kb;
      }
      ci = kl % d.cin;
      const int t = kl / d.cin;
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
    // The tap's source: x itself, or with an upsample-concat input the low-resolution part
    // (channel ci of x) or the skip (channel ci - up_ca of x2).
    const TIn* src = x;
    bool low = false;
    int src_c = d.cin, src_ci = ci;
    if constexpr (kUpcat) {
      low = ci < d.up_ca;
      if (low) {
        src_c = d.up_ca;
      } else {
        src = x2;
        src_c = d.cin - d.up_ca;
        src_ci = ci - d.up_ca;
      }
    }
    int dy = ky * d.dil, dx = kx * d.dil;
    const float* wrow = w;
    if constexpr (kSum) {
      dy = ky * br_dil[branch] - br_pad[branch];
      dx = kx * br_dil[branch] - br_pad[branch];
      wrow = br_w[branch];
    }
    a_ok = 0;
#pragma unroll
    for (int j = 0; j < kARows; ++j) {
      const int r = r0 + j * kRowStep;
      const long long base = pix_base[r];
      const int iy = pix_iy[r] + dy, ix = pix_ix[r] + dx;
      float v = 0.f;
      if (k_ok && base >= 0 && iy >= 0 && iy < d.h && ix >= 0 && ix < d.w) {
        int64_t at;
        if (!kUpcat)
          at = base + (int64_t(iy) * d.w + ix) * d.cin + ci;
        else if (low)  // base / 4: the image's first pixel at half resolution
          at = ((base >> 2) + int64_t(iy >> 1) * (d.w >> 1) + (ix >> 1)) * src_c + src_ci;
        else
          at = (base + int64_t(iy) * d.w + ix) * src_c + src_ci;
        v = detail::to_f32(src[at]);
        a_ok |= 1u << j;
      }
      a_st[j] = v;
    }
#pragma unroll
    for (int j = 0; j < kBRows; ++j) {
      const int c = r0 + j * kRowStep;
      const int co = n0 + c;
      float v = (k_ok && co < d.cout) ? wrow[int64_t(co) * kb + kl] : 0.f;
      if constexpr (kSum) v *= br_scale[branch * kBN + c];
      b_st[j] = v;
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

  // Branch-sum mode: whether any tap of slice s can land inside the image for a pixel of the tile
  // (the same answer in every thread, so the K loop stays uniform).
  const int slices = (d.k + kBK - 1) / kBK;
  auto next_live = [&](int s) {
    if constexpr (kSum) {
      const int taps = d.kh * d.kw;
      for (; s < slices; ++s) {
        const int k0 = s * kBK;
        const int k1 = (k0 + kBK < d.k ? k0 + kBK : d.k) - 1;
        bool live = false;
        for (int t = k0 / d.cin; t <= k1 / d.cin && !live; ++t) {
          const int b = t / taps, r = t - b * taps;
          const int oy = (r / d.kw) * br_dil[b] - br_pad[b], ox = (r % d.kw) * br_dil[b] - br_pad[b];
          live = box[1] + oy >= 0 && box[0] + oy < d.h && box[3] + ox >= 0 && box[2] + ox < d.w;
        }
        if (live) break;
      }
    }
    return s;
  };

  // ---- the K loop ----
  const int warp = tid / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
  typename Math::Acc acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  __syncthreads();  // the pixel table (and the branch tables)
  int s = next_live(0);
  if (s < slices) load(s * kBK);
  while (s < slices) {
    store();
    __syncthreads();
    const int next = next_live(s + 1);
    if (next < slices) load(next * kBK);
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
    s = next;
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
  if (co < d.cout && d.pool) {
    // Window wi is rows 4 wi .. 4 wi + 3 of the tile; each value is rounded to y's storage first,
    // so the maximum and its position are those of the pool over the stored convolution output.
    const float b = bias ? bias[co] : 0.f;
    for (int wi = g; wi < kBM / 4; wi += kStatGroups) {
      const int64_t m = m0 + 4 * wi;
      if (m >= d.m) break;
      float best = 0.f;
      int arg = 0;
#pragma unroll
      for (int q = 0; q < 4; ++q) {
        const float v = detail::to_f32(detail::from_f32<TOut>(Cs[(4 * wi + q) * kLdC + c] + b));
        if (q == 0 || v > best) {  // strict: the first maximum (a NaN at position 0 stays)
          best = v;
          arg = q;
        }
      }
      const int64_t o = (m >> 2) * d.cout + co;
      y[o] = detail::from_f32<TOut>(best);  // exact: best is a stored value
      if (argmax != nullptr) argmax[o] = uint8_t(arg);
      sum += double(best);
      sumsq += double(best) * double(best);
    }
  } else if (co < d.cout) {
    float b = 0.f;
    if constexpr (kSum)
      b = br_shift[c];
    else
      b = bias ? bias[co] : 0.f;
    for (int r = g; r < kBM; r += kStatGroups) {
      const int64_t m = m0 + r;
      if (m >= d.m) break;
      float out = Cs[r * kLdC + c] + b;
      if (res != nullptr && d.res_mul) {  // as the conv, then mul(): the product of the stored values
        const TOut stored = detail::from_f32<TOut>(out);
        if (y_conv != nullptr) y_conv[m * d.cout + co] = stored;
        out = detail::to_f32(stored) * detail::to_f32(res[m * d.cout + co]);
      } else if (res != nullptr) {
        out += detail::to_f32(res[m * d.cout + co]);  // as add() after the conv: same bits
      }
      const TOut q = detail::from_f32<TOut>(out);
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

// The grid: one block per 128-pixel tile (x) and kBN-channel tile (y). (The launches themselves
// are written in the .cu files, where the emulator's translator rewrites them.)
template <int kWarpsN>
dim3 grid_for(const Dims& d) {
  return dim3(unsigned((d.m + kBM - 1) / kBM), unsigned((d.cout + 32 * kWarpsN - 1) / (32 * kWarpsN)));
}
template <int kWarpsN>
constexpr int threads_for() {
  return kWarpsM * kWarpsN * 32;
}

}  // namespace rpp::cuda::conv_tc
