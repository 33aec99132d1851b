// kernels/cuda/bn_relu_conv_bwd.cu — see bn_relu_conv_bwd.cuh.
//
// Both passes: blocks of 256 threads own a 64 x 64 tile of a GEMM; thread (ty, tx) of the 16 x 16
// grid accumulates rows ty*4 .. ty*4+3 and columns tx, tx+16, tx+32, tx+48 (so that a warp's
// reads of the B slice and its stores hit consecutive addresses). K runs in slices of 16 staged
// in shared memory; every K slice is summed in increasing K order with fmaf.
//
// Backward-data (M = input pixels, N = cin, K = live taps x cout). The input pixels are split into
// stride x stride parity classes (iy % stride, ix % stride), one per blockIdx.z: in a class the
// taps that reach an output pixel are the same for every pixel (ky with (iy + pad - ky*dil)
// divisible by stride, and ky for which some pixel of the class lands inside the output), an
// arithmetic progression of ky; the others are structural zeros and never multiplied. The K loop
// runs tap by tap, 16 output channels at a time, so a slice never straddles two taps: A (64
// pixels x 16 channels of dz, contiguous in NHWC) and B (16 channels x 64 input channels of w,
// contiguous in OHWI) are read without decoding K per element. The epilogue recomputes bn(x) for
// each element and zeroes the gradient where it is not > 0.
// With the BN sums (kSums, bn_relu_conv_backward_data_with_sums) the epilogue also accumulates,
// per thread and column, sum g and sum g * (x - mean) in double over its 4 pixels (g the value
// written), the 16 row threads of each column are added in row order through shared memory, and
// the block writes its partials to part[2][cin][tiles] (tile = blockIdx.z * gridDim.x +
// blockIdx.x; a block past its class's pixels writes zeros). bwd_data_sums_kernel, one block per
// channel, then adds a channel's tiles (contiguous) with 256 strided sums and a fixed tree, and
// scales the second sum by invstd. The plain and mask-only instantiations are unchanged.
//
// Backward-filter (M = cout, N = kh*kw*cin in OHWI order, K = n*ho*wo output pixels). Each
// thread loads one fixed column of the B slice (one tap and input channel: decoded once, its BN
// scale and shift kept in registers) and one fixed output channel of the A slice (dz), for 4
// pixels per slice whose coordinates it walks incrementally. The pixels are split into `splits`
// contiguous chunks (blockIdx.z), chosen from the shape alone so that about kTargetBlocks blocks
// run; each writes its 64 x 64 partial sums (and, for the first column tile, the partial sums of
// dz per output channel: db) to the workspace, and a second kernel adds the partials of every
// element in split order. With one split the GEMM kernel writes dw and db directly.
#include "kernels/cuda/bn_relu_conv_bwd.cuh"

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/conv_bwd_common.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

constexpr int kThreads = 256;
constexpr int kBM = 64, kBN = 64, kBK = 16, kTM = 4, kTN = 4;
constexpr int kTX = kBN / kTN;  // 16 threads across the columns of a tile
static_assert((kBM / kTM) * (kBN / kTN) == kThreads, "one thread per 4x4 micro-tile");

// Backward-filter split-K: about kTargetBlocks blocks (a few waves on an H100's 132 SMs), each
// split at least kMinSplitPixels pixels. Constants, not device properties: the split, hence the
// bits of dw, is the same on every device.
constexpr int64_t kTargetBlocks = 512;
constexpr int64_t kMinSplitPixels = 256;
constexpr int kReduceThreads = 256;
constexpr int64_t kMaxReduceBlocks = 2048;
constexpr int kSumThreads = 256;  // bwd_data_sums_kernel; a power of two (tree)

constexpr int kMaxCoord = 1 << 24;  // h, w, pad: every coordinate computed stays below 2^26
constexpr int kMaxStride = 255;     // stride^2 parity classes in grid.z

using conv_bwd::ceil_div;
using conv_bwd::Dims;
using conv_bwd::FilterDims;
using conv_bwd::dims_of;
using conv_bwd::live_taps;
using conv_bwd::Taps;

// ------------------------------------------------------------------------------------------------
// Backward-data
// ------------------------------------------------------------------------------------------------

// part: kSums only, the per-tile partial sums [2][cin][tiles] (see the file comment).
// One K slice of both passes' register-tiled GEMM: thread (ty, tx) owns rows ty*kTM .. +kTM of
// As's second index and columns tx, tx + kTX, ... of Bs's, and adds the kBK products in order.
template <int kLdA>
__device__ __forceinline__ void fma_slice(const float (&As)[kBK][kLdA], const float (&Bs)[kBK][kBN], int ty, int tx,
                                          float (&acc)[kTM][kTN]) {
#pragma unroll
  for (int kk = 0; kk < kBK; ++kk) {
    float a[kTM], b[kTN];
#pragma unroll
    for (int i = 0; i < kTM; ++i) a[i] = As[kk][ty * kTM + i];
#pragma unroll
    for (int j = 0; j < kTN; ++j) b[j] = Bs[kk][tx + j * kTX];
#pragma unroll
    for (int i = 0; i < kTM; ++i)
#pragma unroll
      for (int j = 0; j < kTN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

template <bool kBnRelu, bool kSums>
__global__ void __launch_bounds__(kThreads)
    bwd_data_kernel(Dims d, const float* __restrict__ dz, const float* __restrict__ w,
                    const float* __restrict__ x, const float* __restrict__ gamma,
                    const float* __restrict__ beta, const float* __restrict__ mean,
                    const float* __restrict__ invstd, float* __restrict__ dx, double* __restrict__ part) {
  static_assert(kBnRelu || !kSums, "the BN sums need the BN arguments");
  __shared__ float As[kBK][kBM + 1];  // As[output channel lane][pixel]
  __shared__ float Bs[kBK][kBN];      // Bs[output channel lane][input channel]
  __shared__ float t_mean[kBN], t_scale[kBN], t_shift[kBN];

  const int tid = int(threadIdx.x);
  const int c0 = int(blockIdx.y) * kBN;
  if constexpr (kBnRelu) {
    if (tid < kBN) {
      const int c = c0 + tid;
      t_mean[tid] = c < d.cin ? mean[c] : 0.f;
      t_scale[tid] = c < d.cin ? float(double(gamma[c]) * double(invstd[c])) : 0.f;
      t_shift[tid] = c < d.cin ? beta[c] : 0.f;
    }
  }
  __syncthreads();  // every block meets a barrier, even one with no live tap

  // Parity class of this block and its pixels (n, hq, wq): input pixel (py + s*qy, px + s*qx).
  const int s = d.stride;
  const int py = int(blockIdx.z) / s, px = int(blockIdx.z) % s;
  const int hq = (d.h - py + s - 1) / s, wq = (d.w - px + s - 1) / s;
  const int64_t mc = int64_t(d.n) * hq * wq;
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  [[maybe_unused]] const int64_t tiles = int64_t(gridDim.x) * gridDim.z;
  [[maybe_unused]] const int64_t tile = int64_t(blockIdx.z) * gridDim.x + blockIdx.x;
  if (m0 >= mc) {  // the whole block: this class has fewer pixels than the largest
    if constexpr (kSums) {
      if (tid < kBN && c0 + tid < d.cin) {
        part[int64_t(c0 + tid) * tiles + tile] = 0.0;
        part[(int64_t(d.cin) + c0 + tid) * tiles + tile] = 0.0;
      }
    }
    return;
  }
  const Taps tyy = live_taps(py, hq, d.kh, d.ho, s, d.pad, d.dil);
  const Taps txx = live_taps(px, wq, d.kw, d.wo, s, d.pad, d.dil);

  // A-slice ownership: channel lane kk_a = tid % kBK of pixels tid / kBK + r * kRowStep.
  constexpr int kRowStep = kThreads / kBK, kARows = kBM * kBK / kThreads;
  static_assert(kThreads % kBK == 0 && kBM % kRowStep == 0, "A-slice ownership");
  const int kk_a = tid % kBK;
  int a_img[kARows], a_iyp[kARows], a_ixp[kARows];  // a_img -1: past the class's pixels
#pragma unroll
  for (int r = 0; r < kARows; ++r) {
    const int64_t m = m0 + tid / kBK + r * kRowStep;
    a_img[r] = -1;
    a_iyp[r] = a_ixp[r] = 0;
    if (m < mc) {
      const int qx = int(m % wq);
      const int64_t t2 = m / wq;
      a_iyp[r] = py + s * int(t2 % hq) + d.pad;
      a_ixp[r] = px + s * qx + d.pad;
      a_img[r] = int(t2 / hq);
    }
  }
  // B-slice ownership: input channel nn_b = tid % kBN of channel lanes tid / kBN + r * kBRowStep.
  constexpr int kBRowStep = kThreads / kBN, kBRows = kBN * kBK / kThreads;
  static_assert(kThreads % kBN == 0 && kBK % kBRowStep == 0, "B-slice ownership");
  const int nn_b = tid % kBN;
  const bool ci_ok = c0 + nn_b < d.cin;
  const int64_t w_co_stride = int64_t(d.kh) * d.kw * d.cin;

  const int tx = tid % kTX, ty = tid / kTX;
  float acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = 0.f;

  for (int jy = 0; jy < tyy.count; ++jy) {
    const int ky = tyy.first + jy * tyy.step;
    for (int jx = 0; jx < txx.count; ++jx) {
      const int kx = txx.first + jx * txx.step;
      int64_t a_off[kARows];  // dz offset of output pixel (img, oy, ox), or -1 outside
#pragma unroll
      for (int r = 0; r < kARows; ++r) {
        a_off[r] = -1;
        const int oyn = a_iyp[r] - ky * d.dil, oxn = a_ixp[r] - kx * d.dil;
        if (a_img[r] >= 0 && oyn >= 0 && oxn >= 0) {
          const int oy = oyn / s, ox = oxn / s;  // exact in this class
          if (oy < d.ho && ox < d.wo) a_off[r] = ((int64_t(a_img[r]) * d.ho + oy) * d.wo + ox) * d.cout;
        }
      }
      const float* wt = w + (int64_t(ky) * d.kw + kx) * d.cin + c0 + nn_b;
      for (int co0 = 0; co0 < d.cout; co0 += kBK) {
        {
          const int co = co0 + kk_a;
#pragma unroll
          for (int r = 0; r < kARows; ++r)
            As[kk_a][tid / kBK + r * kRowStep] = (a_off[r] >= 0 && co < d.cout) ? dz[a_off[r] + co] : 0.f;
        }
#pragma unroll
        for (int r = 0; r < kBRows; ++r) {
          const int kk = tid / kBN + r * kBRowStep;
          const int co = co0 + kk;
          Bs[kk][nn_b] = (ci_ok && co < d.cout) ? wt[int64_t(co) * w_co_stride] : 0.f;
        }
        __syncthreads();
        fma_slice(As, Bs, ty, tx, acc);
        __syncthreads();
      }
    }
  }

  // kSums: this thread's sums of g and g * (x - mean) for its columns j (over its pixels i).
  [[maybe_unused]] double s_dy[kTN], s_dyx[kTN];
  if constexpr (kSums) {
#pragma unroll
    for (int j = 0; j < kTN; ++j) s_dy[j] = s_dyx[j] = 0.0;
  }
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int64_t m = m0 + ty * kTM + i;
    if (m >= mc) continue;
    const int qx = int(m % wq);
    const int64_t t2 = m / wq;
    const int iy = py + s * int(t2 % hq), ix = px + s * qx;
    const int64_t base = ((t2 / hq * d.h + iy) * d.w + ix) * d.cin;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int cc = tx + j * kTX, ci = c0 + cc;
      if (ci >= d.cin) continue;
      float v = acc[i][j];
      if constexpr (kBnRelu) {
        const float xv = x[base + ci];
        const float b = fmaf(xv - t_mean[cc], t_scale[cc], t_shift[cc]);
        if (!(b > 0.f)) v = 0.f;  // as bn_relu_mask_inplace: NaN masks too
        if constexpr (kSums) {
          // As cuda::batchnorm_backward's partial sums: dy * (x - mean) in double.
          const double g = double(v);
          s_dy[j] += g;
          s_dyx[j] += g * (double(xv) - double(t_mean[cc]));
        }
      }
      dx[base + ci] = v;
    }
  }
  if constexpr (kSums) {
    __shared__ double red[2][kBM / kTM][kBN];  // [sum][row thread ty][column]
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      red[0][ty][tx + j * kTX] = s_dy[j];
      red[1][ty][tx + j * kTX] = s_dyx[j];
    }
    __syncthreads();
    if (tid < kBN && c0 + tid < d.cin) {
      double a = red[0][0][tid], b = red[1][0][tid];
#pragma unroll
      for (int q = 1; q < kBM / kTM; ++q) {
        a += red[0][q][tid];
        b += red[1][q][tid];
      }
      part[int64_t(c0 + tid) * tiles + tile] = a;
      part[(int64_t(d.cin) + c0 + tid) * tiles + tile] = b;
    }
  }
}

// One block per channel c: sum_dy[c] = the sum of its tiles' partials part[0][c][*], and
// sum_dy_xhat[c] = (the sum of part[1][c][*]) * invstd[c], as batchnorm_backward scales its sum.
// Thread t adds tiles t, t + kSumThreads, ... in order, then a fixed tree adds the threads.
__global__ void __launch_bounds__(kSumThreads)
    bwd_data_sums_kernel(const double* __restrict__ part, int64_t tiles, int cin,
                         const float* __restrict__ invstd, double* __restrict__ sum_dy,
                         double* __restrict__ sum_dy_xhat) {
  __shared__ double red[2][kSumThreads];
  const int t = int(threadIdx.x);
  const int c = int(blockIdx.x);
  const double* pa = part + int64_t(c) * tiles;
  const double* pb = part + (int64_t(cin) + c) * tiles;
  double a = 0.0, b = 0.0;
  for (int64_t i = t; i < tiles; i += kSumThreads) {
    a += pa[i];
    b += pb[i];
  }
  red[0][t] = a;
  red[1][t] = b;
  __syncthreads();
  for (int h = kSumThreads / 2; h > 0; h >>= 1) {
    if (t < h) {
      red[0][t] += red[0][t + h];
      red[1][t] += red[1][t + h];
    }
    __syncthreads();
  }
  if (t == 0) {
    sum_dy[c] = red[0][0];
    sum_dy_xhat[c] = red[1][0] * double(invstd[c]);
  }
}

// ------------------------------------------------------------------------------------------------
// Backward-filter
// ------------------------------------------------------------------------------------------------

struct FilterPlan {
  int64_t pixels;  // n * ho * wo, the K of the GEMM
  int64_t chunk;   // pixels per split, a multiple of kBK
  int splits;
  int col_tiles, row_tiles;  // over kh*kw*cin and cout
};

FilterPlan plan_filter(const cpu::Conv2dShape& s) {
  FilterPlan p{};
  p.pixels = int64_t(s.n) * s.ho() * s.wo();
  const int64_t ncol = int64_t(s.kh) * s.kw * s.cin;
  p.col_tiles = int(ceil_div(ncol, kBN));
  p.row_tiles = int(ceil_div(s.cout, kBM));
  const conv_bwd::SplitK k = conv_bwd::split_pixels(p.pixels, int64_t(p.col_tiles) * p.row_tiles, kTargetBlocks,
                                                     kMinSplitPixels, kBK);
  p.chunk = k.chunk;
  p.splits = k.splits;
  return p;
}

// Output pixel coordinates walked forward by a fixed number of pixels.
struct PixelWalk {
  int img, oy, ox;
  __device__ __forceinline__ void start(int64_t p, int ho, int wo) {
    ox = int(p % wo);
    const int64_t t = p / wo;
    oy = int(t % ho);
    img = int(t / ho);
  }
  __device__ __forceinline__ void advance(int by, int ho, int wo) {
    ox += by;
    while (ox >= wo) {
      ox -= wo;
      if (++oy == ho) {
        oy = 0;
        ++img;
      }
    }
  }
};

// out_w: dw (one split) or the partial sums [split][cout][ncol]; out_b: db or [split][cout], or
// null for no bias gradient.
template <bool kBnRelu>
__global__ void __launch_bounds__(kThreads)
    bwd_filter_kernel(FilterDims f, const float* __restrict__ x, const float* __restrict__ gamma,
                      const float* __restrict__ beta, const float* __restrict__ mean,
                      const float* __restrict__ invstd, const float* __restrict__ dz,
                      float* __restrict__ out_w, float* __restrict__ out_b) {
  __shared__ float As[kBK][kBM];  // As[pixel lane][output channel]: dz
  __shared__ float Bs[kBK][kBN];  // Bs[pixel lane][column]: relu(bn(x)) at the column's tap
  const Dims& d = f.d;
  const int tid = int(threadIdx.x);
  const int n0 = int(blockIdx.x) * kBN, m0 = int(blockIdx.y) * kBM;
  const int split = int(blockIdx.z);
  const int64_t p_begin = int64_t(split) * f.chunk;
  const int64_t p_end = p_begin + f.chunk < f.pixels ? p_begin + f.chunk : f.pixels;

  // Loader ownership: lane nn = tid % 64 (column n0 + nn of B, output channel m0 + nn of A) of
  // pixel lanes tid / 64 + r * kRowStep.
  constexpr int kRowStep = kThreads / kBN, kRows = kBN * kBK / kThreads;
  static_assert(kBM == kBN && kThreads % kBN == 0 && kBK % kRowStep == 0, "loader ownership");
  const int nn = tid % kBN, lane0 = tid / kBN;
  const int col = n0 + nn;
  const bool col_ok = col < f.ncol;
  int ci = 0, offy = 0, offx = 0;
  float bn_mean = 0.f, bn_scale = 0.f, bn_shift = 0.f;
  if (col_ok) {
    ci = col % d.cin;
    const int tap = col / d.cin;
    offy = (tap / d.kw) * d.dil - d.pad;
    offx = (tap % d.kw) * d.dil - d.pad;
    if constexpr (kBnRelu) {
      bn_mean = mean[ci];
      bn_scale = float(double(gamma[ci]) * double(invstd[ci]));
      bn_shift = beta[ci];
    }
  }
  const int co_a = m0 + nn;
  const bool co_ok = co_a < d.cout;
  PixelWalk walk[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) walk[r].start(p_begin + lane0 + r * kRowStep, d.ho, d.wo);

  const bool do_bias = out_b != nullptr && blockIdx.x == 0;
  float bias_acc = 0.f;  // tid < kBM: output channel m0 + tid

  const int tx = tid % kTX, ty = tid / kTX;
  float acc[kTM][kTN];
#pragma unroll
  for (int i = 0; i < kTM; ++i)
#pragma unroll
    for (int j = 0; j < kTN; ++j) acc[i][j] = 0.f;

  for (int64_t p0 = p_begin; p0 < p_end; p0 += kBK) {
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int lane = lane0 + r * kRowStep;
      const int64_t p = p0 + lane;
      const bool in = p < p_end;
      As[lane][nn] = (in && co_ok) ? dz[p * d.cout + co_a] : 0.f;
      float v = 0.f;
      if (in && col_ok) {
        const int iy = walk[r].oy * d.stride + offy, ix = walk[r].ox * d.stride + offx;
        if (iy >= 0 && iy < d.h && ix >= 0 && ix < d.w) {
          v = x[((int64_t(walk[r].img) * d.h + iy) * d.w + ix) * d.cin + ci];
          if constexpr (kBnRelu) {
            v = fmaf(v - bn_mean, bn_scale, bn_shift);
            v = (v > 0.f || v != v) ? v : 0.f;  // NaN propagates, as relu_forward
          }
        }
      }
      Bs[lane][nn] = v;
      walk[r].advance(kBK, d.ho, d.wo);
    }
    __syncthreads();
    if (do_bias && tid < kBM) {
#pragma unroll
      for (int kk = 0; kk < kBK; ++kk) bias_acc += As[kk][tid];
    }
    fma_slice(As, Bs, ty, tx, acc);
    __syncthreads();
  }

  float* ow = out_w + int64_t(split) * d.cout * f.ncol;
#pragma unroll
  for (int i = 0; i < kTM; ++i) {
    const int co = m0 + ty * kTM + i;
    if (co >= d.cout) continue;
#pragma unroll
    for (int j = 0; j < kTN; ++j) {
      const int c = n0 + tx + j * kTX;
      if (c < f.ncol) ow[int64_t(co) * f.ncol + c] = acc[i][j];
    }
  }
  if (do_bias && tid < kBM && m0 + tid < d.cout) out_b[int64_t(split) * d.cout + m0 + tid] = bias_acc;
}

// Backward-data grid: (pixels of the largest parity class / 64, cin / 64, stride^2).
dim3 data_grid(const cpu::Conv2dShape& s) {
  const int64_t class_pixels = int64_t(s.n) * ceil_div(s.h, s.stride) * ceil_div(s.w, s.stride);
  return dim3(unsigned(ceil_div(class_pixels, kBM)), unsigned(ceil_div(s.cin, kBN)), unsigned(s.stride * s.stride));
}

// The blocks along the pixels (grid x times z): one partial sum per channel each.
int64_t data_tiles(const cpu::Conv2dShape& s) {
  const dim3 g = data_grid(s);
  return int64_t(g.x) * g.z;
}

[[noreturn]] void fail_shape(const char* op, const cpu::Conv2dShape& s) {
  fail(op, ": unsupported shape n ", s.n, " h ", s.h, " w ", s.w, " cin ", s.cin, " cout ", s.cout, " kernel ", s.kh,
       "x", s.kw, " stride ", s.stride, " pad ", s.pad, " dilation ", s.dil);
}

}  // namespace

bool bn_relu_conv_bwd_can_run(const cpu::Conv2dShape& s) {
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.cin < 1 || s.cout < 1) return false;
  if (s.kh < 1 || s.kw < 1 || s.stride < 1 || s.dil < 1 || s.pad < 0) return false;
  if (s.h > kMaxCoord || s.w > kMaxCoord || s.pad > kMaxCoord || s.stride > kMaxStride) return false;
  if (s.ho() < 1 || s.wo() < 1) return false;  // also bounds dil * (k - 1) by h + 2 * pad
  const int64_t taps = int64_t(s.kh) * s.kw;
  if (taps * s.cin >= (int64_t(1) << 30) || taps * s.cout >= (int64_t(1) << 30)) return false;
  // Backward-data grid: (pixels of the largest parity class / 64, cin / 64, stride^2).
  const int64_t class_pixels = int64_t(s.n) * ceil_div(s.h, s.stride) * ceil_div(s.w, s.stride);
  if (ceil_div(class_pixels, kBM) > 0x7fffffff || ceil_div(s.cin, kBN) > 65535) return false;
  // Backward-filter grid: (kh*kw*cin / 64, cout / 64, splits <= kTargetBlocks).
  if (ceil_div(s.cout, kBM) > 65535) return false;
  if (int64_t(s.n) * s.ho() * s.wo() > (int64_t(1) << 40)) return false;
  return true;
}

void bn_relu_conv_backward_data(const cpu::Conv2dShape& s, const float* dz, const float* w_ohwi,
                                const float* x, const float* gamma, const float* beta,
                                const float* mean, const float* invstd, float* dx,
                                cudaStream_t stream) {
  const char* op = "bn_relu_conv_backward_data";
  if (!bn_relu_conv_bwd_can_run(s)) fail_shape(op, s);
  detail::check_not_null(op, {{"dz", dz}, {"w", w_ohwi}, {"dx", dx}});
  const bool bn = gamma || beta || mean || invstd;  // x is read only for the mask
  if (bn)
    detail::check_not_null(op, {{"x", x}, {"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}});
  const Dims d = dims_of(s);
  const dim3 grid = data_grid(s);
  if (bn)
    bwd_data_kernel<true, false><<<grid, kThreads, 0, stream>>>(d, dz, w_ohwi, x, gamma, beta, mean, invstd, dx,
                                                                 nullptr);
  else
    bwd_data_kernel<false, false><<<grid, kThreads, 0, stream>>>(d, dz, w_ohwi, nullptr, nullptr, nullptr,
                                                                  nullptr, nullptr, dx, nullptr);
  RPP_CUDA_CHECK_LAUNCH(op);
}

size_t bn_relu_conv_backward_data_sums_workspace_bytes(const cpu::Conv2dShape& s) {
  if (!bn_relu_conv_bwd_can_run(s)) return 0;
  return detail::round_up(2 * size_t(data_tiles(s)) * size_t(s.cin) * sizeof(double), 256);
}

void bn_relu_conv_backward_data_with_sums(const cpu::Conv2dShape& s, const float* dz, const float* w_ohwi,
                                          const float* x, const float* gamma, const float* beta,
                                          const float* mean, const float* invstd, float* dx, double* sum_dy,
                                          double* sum_dy_xhat, void* workspace, cudaStream_t stream) {
  const char* op = "bn_relu_conv_backward_data_with_sums";
  if (!bn_relu_conv_bwd_can_run(s)) fail_shape(op, s);
  detail::check_not_null(op, {{"dz", dz}, {"w", w_ohwi}, {"x", x}, {"gamma", gamma}, {"beta", beta},
                              {"mean", mean}, {"invstd", invstd}, {"dx", dx}, {"sum_dy", sum_dy},
                              {"sum_dy_xhat", sum_dy_xhat}});
  detail::check_workspace(op, workspace, bn_relu_conv_backward_data_sums_workspace_bytes(s));
  const Dims d = dims_of(s);
  const dim3 grid = data_grid(s);
  double* part = static_cast<double*>(workspace);
  bwd_data_kernel<true, true><<<grid, kThreads, 0, stream>>>(d, dz, w_ohwi, x, gamma, beta, mean, invstd, dx, part);
  RPP_CUDA_CHECK_LAUNCH(op);
  bwd_data_sums_kernel<<<unsigned(s.cin), kSumThreads, 0, stream>>>(part, data_tiles(s), s.cin, invstd, sum_dy,
                                                                    sum_dy_xhat);
  RPP_CUDA_CHECK_LAUNCH(op);
}

size_t bn_relu_conv_backward_filter_workspace_bytes(const cpu::Conv2dShape& s) {
  if (!bn_relu_conv_bwd_can_run(s)) return 0;
  const FilterPlan p = plan_filter(s);
  if (p.splits <= 1) return 0;
  const size_t per_split = size_t(s.cout) * (size_t(s.kh) * s.kw * s.cin + 1);  // dw and db partials
  return detail::round_up(size_t(p.splits) * per_split * sizeof(float), 256);
}

void bn_relu_conv_backward_filter(const cpu::Conv2dShape& s, const float* x, const float* gamma,
                                  const float* beta, const float* mean, const float* invstd,
                                  const float* dz, float* dw_ohwi, float* db, void* workspace,
                                  cudaStream_t stream) {
  const char* op = "bn_relu_conv_backward_filter";
  if (!bn_relu_conv_bwd_can_run(s)) fail_shape(op, s);
  detail::check_not_null(op, {{"x", x}, {"dz", dz}, {"dw", dw_ohwi}});
  const bool bn = gamma || beta || mean || invstd;
  if (bn) detail::check_not_null(op, {{"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}});
  detail::check_workspace(op, workspace, bn_relu_conv_backward_filter_workspace_bytes(s));
  const FilterPlan p = plan_filter(s);
  FilterDims f{dims_of(s), s.kh * s.kw * s.cin, p.pixels, p.chunk};
  const int64_t count_w = int64_t(s.cout) * f.ncol;
  float* out_w = dw_ohwi;
  float* out_b = db;
  if (p.splits > 1) {
    out_w = static_cast<float*>(workspace);
    out_b = db ? out_w + int64_t(p.splits) * count_w : nullptr;
  }
  const dim3 grid(unsigned(p.col_tiles), unsigned(p.row_tiles), unsigned(p.splits));
  if (bn)
    bwd_filter_kernel<true><<<grid, kThreads, 0, stream>>>(f, x, gamma, beta, mean, invstd, dz, out_w, out_b);
  else
    bwd_filter_kernel<false><<<grid, kThreads, 0, stream>>>(f, x, nullptr, nullptr, nullptr, nullptr, dz, out_w,
                                                             out_b);
  RPP_CUDA_CHECK_LAUNCH(op);
  if (p.splits > 1) {
    const int64_t total = count_w + (db ? s.cout : 0);
    int64_t blocks = ceil_div(total, kReduceThreads);
    if (blocks > kMaxReduceBlocks) blocks = kMaxReduceBlocks;
    conv_bwd::reduce_splits_kernel<kReduceThreads>
        <<<unsigned(blocks), kReduceThreads, 0, stream>>>(count_w, s.cout, p.splits, out_w, out_b, dw_ohwi, db);
    RPP_CUDA_CHECK_LAUNCH(op);
  }
}

}  // namespace rpp::cuda
