// kernels/cuda/bn_relu_conv_bwd_tc.cu — see bn_relu_conv_bwd_tc.cuh.
//
// Common to both passes
//   * K runs in slices of kBK = 32. A thread stages a fixed lane of the slice's K (data) or of
//     the tile's columns (filter) for several rows, so that a warp reads consecutive addresses of
//     the NHWC / OHWI tensors. The next slice is loaded into registers (raw values) while the
//     current one is multiplied, then converted (Math::convert: __float_to_tf32 or
//     __float2bfloat16; BN-ReLU first where it applies) and stored into shared memory.
//   * Operand rows in shared memory are padded by 16 bytes (4 floats, 8 bf16): every WMMA pointer
//     used is then 32-byte aligned (a fragment starts a multiple of 8 TF32 / 16 BF16 rows and of
//     16 columns into a slice, and 8 * (W + 4) * 4 and 16 * (W + 8) * 2 bytes are multiples of
//     32 for any W) and every operand ldm a multiple of 16 bytes; the slices start 128-byte
//     aligned. The fp32 C tile's rows are padded by 8 floats (ldm a multiple of 32 bytes, the PTX
//     rule for accumulator fragments; the emulator checks it).
//   * Every warp owns a 32 x 32 piece of the block tile as 2 x 2 accumulators (backward-filter's
//     narrow tile: 16 x 32 as 1 x 2). After the K loop the accumulators go through shared memory
//     (the C tile, in the space of the slices) to a thread-per-column layout for coalesced,
//     bounds-checked global stores.
//   * Barrier pattern (one set of shared buffers, no double buffering):
//       prologue: shared tables written; __syncthreads (tables visible); load(0) [registers]
//       slice s:  store(s) into As/Bs                       (last read of As/Bs: before B2 of s-1)
//                 __syncthreads  B1                         (slice s visible to every warp)
//                 load(s + 1) into registers                (global memory and the tables only)
//                 WMMA over slice s                         (reads As/Bs)
//                 __syncthreads  B2                         (every warp is done with slice s)
//       epilogue: store_matrix_sync into Cs (aliases As/Bs: safe after B2 of the last slice, or
//                 when there was no slice, nothing read them); __syncthreads; threads read Cs;
//                 the cross-thread sums go through their own arrays behind one more barrier.
//     Backward-filter has, besides, a per-slice pixel table (see there) with its own rule.
//
// Backward-data (M = input pixels of one stride-parity class, N = cin, K = live taps x cout,
// concatenated over up to four branches: DataBranches, the ASPP's summed backward-data; one
// branch for a single convolution).
// Grid (ceil(pixels of the largest class / 128), ceil(cin / kBN), stride^2): as the fp32 kernel,
// blockIdx.z picks the class (iy % stride, ix % stride), whose live taps form an arithmetic
// progression along each axis and are the same for all its pixels. Thread 0 narrows each
// branch's progressions to the taps that reach an output from the class rows (and, for a
// one-row tile, columns) the block's pixels span, into a shared tap table (begin and end slice
// per branch) written before the first barrier; the slice count is uniform in the block. K runs
// branch by branch, tap by tap, 32 output channels at a time (a slice never straddles two taps;
// channels past cout stage 0). A block
// tabulates its 128 pixels once in shared memory (image offset in dz, coordinates in the class
// grid, index in x / dx; read back as warp-wide broadcasts), so a tap's dz offsets need no
// division. A (As[pixel][k], row-major, dz) and B (Bs[k][channel], row-major, OHWI weights).
// Epilogue: thread t owns channel t % kBN and every 4th pixel from t / kBN: it recomputes bn(x)
// (BN parameters in registers), zeroes the masked values, writes dx and, with the sums, adds
// g and g * (x - mean) in double over its 32 pixels in pixel order; the 4 groups are added in
// group order through shared memory and the block writes its partials to
// part = { sum_dy[tiles][cin], sum_dy_xm[tiles][cin] } (tile = blockIdx.z * gridDim.x +
// blockIdx.x; a block past its class's pixels writes zeros). tile_sums.cuh's kernel then adds each
// channel's tiles (8 interleaved strided sums, then those 8 in order) and scales by invstd.
// Shared memory (static), TF32, kBN = 64: max(slices 18,432 + 8,704, C 36,864) + pixel table
// 3,072 (+ 4,096 for the sums) = 39,936 (44,032) bytes; less for BF16 or kBN = 32.
//
// Backward-filter (M = cout, N = kh*kw*cin in OHWI order, K = n*ho*wo output pixels).
// Grid (ceil(N / 128), ceil(cout / kBM), splits); the pixels of split z are
// [z * chunk, min((z + 1) * chunk, P)) (plan_filter). 256 threads in 2 x 4 warps; kBM = 64 (warp
// pieces 32 x 32) or, when cout <= 32, kBM = 32 (warp pieces 16 x 32: the same 8 warps, half the
// staged values per thread). A (As[pixel][co], i.e. a col-major A, dz) and B (Bs[pixel][column],
// row-major, relu(bn(x)) at the column's tap and channel). Thread t stages column n0 + t % 128
// (its tap and channel decoded once into an x offset, BN scale and shift in registers) and output
// channel m0 + t % kBM. The 32 pixels of a slice are decoded by 32 threads into a shared table
// (x offset and coordinates of the top-left tap) that the loads read: table(s + 1)
// is written just before B1 of slice s and read by load(s + 1) between B1 and B2 of slice s;
// the next write, table(s + 2), comes after B2 of slice s. For table(1) to wait for the reads of
// table(0) (load(0), in the prologue), the prologue ends with one more barrier.
// db: the blocks of the first column tile also add the raw (unrounded) dz values they stage, per
// thread in a fixed order, then the 4 (kBM = 64) or 8 (kBM = 32) threads of each output channel
// in order through shared memory. With one split, the GEMM kernel writes dw and db; otherwise every block writes its
// partials to the workspace, { dw[splits][cout][N], db[splits][cout] }, and reduce_splits_kernel
// adds every element's partials in split order.
// Shared memory (static), TF32, kBM = 64: max(slices 8,704 + 16,896, C 34,816) + pixel table 512
// + db sums 1,024 = 36,352 bytes; less for BF16 or kBM = 32.
// Registers: the launch bounds ask for two 256-thread blocks per SM (at most 128 registers); with
// backward-filter's k-step loop not unrolled that holds without spilling on sm_90, and on sm_80
// but for 4 bytes in the BF16 BN-ReLU kBM = 64 variant (ptxas -v). Backward-data's two TF32 narrow-
// tile variants (cin <= 32) spill 4 bytes on sm_90 since the branch table (its pointers now come from
// shared memory, not the parameter space); not measured.
#include "kernels/cuda/bn_relu_conv_bwd_tc.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/tile_sums.cuh"
#include "kernels/cuda/conv_bwd_common.cuh"
#include "kernels/cuda/wmma_math.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

namespace wmma = nvcuda::wmma;

constexpr int kBK = 32;             // K per slice, both passes
constexpr int kDataBM = 128;        // backward-data: pixels per block tile
constexpr int kDataWarpsM = 4;      //   warps along the pixels (32 each); kWarpsN = 1 or 2 along cin
constexpr int kFilterBN = 128;      // backward-filter: columns per block tile
constexpr int kFilterWarpsM = 2;    //   a 2 x 4 grid of warps (256 threads), each owning
constexpr int kFilterWarpsN = 4;    //   kFragsM x 2 accumulators: (16 kFragsM) x 32

constexpr int kMaxCoord = 1 << 24;  // h, w, pad
constexpr int kPastSplit = -(1 << 30);  // backward-filter pixel table: a row past the split's pixels
constexpr int kMaxStride = 255;     // stride^2 parity classes in grid.z

// Backward-filter split-K: about kTargetBlocks blocks, each split at least kMinSplitPixels
// pixels. Constants, not device properties: the split, hence dw's bits, is the same everywhere.
constexpr int64_t kTargetBlocks = 512;
constexpr int64_t kMinSplitPixels = 512;
constexpr int kReduceThreads = 256;
constexpr int64_t kMaxReduceBlocks = 2048;
constexpr int kSumChannels = 32, kSumSlots = 8;  // the tile sums (tile_sums.cuh): 32 channels x 8 slots
constexpr int kMaxDataBranches = kConvSumMaxBranches;  // backward-data: convolutions summed in one launch

using wmma_math::Bf16Math;
using wmma_math::Tf32Math;

using conv_bwd::ceil_div;
using conv_bwd::Dims;
using conv_bwd::FilterDims;
using conv_bwd::dims_of;
using conv_bwd::Taps;

// ------------------------------------------------------------------------------------------------
// Backward-data
// ------------------------------------------------------------------------------------------------

// The convolutions whose input gradients one backward-data launch sums: one, or the ASPP's
// branches (the shape of Dims but for the padding and dilation; d.pad and d.dil are not read).
struct DataBranches {
  int count;
  const float* dz[kMaxDataBranches];
  const float* w[kMaxDataBranches];
  int pad[kMaxDataBranches], dil[kMaxDataBranches];
};

// A branch's live taps for one block's pixels and its slices' place in the block's K.
struct BranchTaps {
  const float* dz;
  const float* w;
  Taps ty, tx;
  int pad, dil;
  int begin, end;  // slices [begin, end) of the block's K
};

// part: kSums only, the per-tile partial sums (see the file comment).
template <class Math, bool kBnRelu, bool kSums, int kWarpsN, class XT>
__global__ void __launch_bounds__(kDataWarpsM * kWarpsN * 32, 4 / kWarpsN)
    bwd_data_tc_kernel(Dims d, DataBranches br, const XT* __restrict__ x, const float* __restrict__ gamma,
                       const float* __restrict__ beta, const float* __restrict__ mean,
                       const float* __restrict__ invstd, float* __restrict__ dx, double* __restrict__ part) {
  static_assert(kBnRelu || !kSums, "the BN sums need the BN arguments");
  using T = typename Math::T;
  constexpr int kThreads = kDataWarpsM * kWarpsN * 32;
  constexpr int kBM = kDataBM, kBN = 32 * kWarpsN;
  constexpr int kLdA = kBK + Math::kPad;  // As[pixel][k]
  constexpr int kLdB = kBN + Math::kPad;  // Bs[k][channel]
  constexpr int kLdC = kBN + 8;           // Cs[pixel][channel], fp32; rows 32-byte aligned (PTX rule)
  constexpr int kSliceBytes = (kBM * kLdA + kBK * kLdB) * int(sizeof(T));
  constexpr int kCBytes = kBM * kLdC * int(sizeof(float));
  constexpr int kARowStep = kThreads / kBK, kARows = kBM / kARowStep;  // 8 or 4, 16 or 32
  constexpr int kBRowStep = kThreads / kBN, kBRows = kBK / kBRowStep;  // 4, 8
  constexpr int kGroups = kThreads / kBN;                               // epilogue pixel groups: 4
  static_assert(kThreads % kBK == 0 && kThreads % kBN == 0 && kBK % kBRowStep == 0 && kBM % kGroups == 0,
                "staging layout");
  static_assert((kBM * kLdA * int(sizeof(T))) % 128 == 0, "Bs must start 128-byte aligned");

  // The A and B slices during the K loop, the fp32 C tile in the epilogue.
  constexpr int kTileBytes = kSliceBytes > kCBytes ? kSliceBytes : kCBytes;
  alignas(128) __shared__ unsigned char tile[kTileBytes];
  // Pixel table, written before the first barrier and only read after it.
  __shared__ long long pix_z[kBM];          // img * ho * wo (dz pixel index of the image); -1: past the class
  __shared__ int pix_qy[kBM], pix_qx[kBM];  // coordinates in the class grid
  __shared__ long long pix_x[kBM];          // pixel index in x and dx; -1: past the class
  __shared__ BranchTaps taps[kMaxDataBranches];  // written by thread 0 before the first barrier
  T* const As = reinterpret_cast<T*>(tile);
  T* const Bs = As + kBM * kLdA;
  float* const Cs = reinterpret_cast<float*>(tile);

  const int tid = int(threadIdx.x);
  const int s = d.stride;
  const int py = int(blockIdx.z) / s, px = int(blockIdx.z) % s;
  const int hq = (d.h - py + s - 1) / s, wq = (d.w - px + s - 1) / s;  // 0 when h < stride etc.
  const int64_t mc = int64_t(d.n) * hq * wq;                           // pixels of the class
  const int64_t m0 = int64_t(blockIdx.x) * kBM;
  const int c0 = int(blockIdx.y) * kBN;
  [[maybe_unused]] const int64_t tiles = int64_t(gridDim.x) * gridDim.z;
  [[maybe_unused]] const int64_t tile_id = int64_t(blockIdx.z) * gridDim.x + blockIdx.x;

  for (int r = tid; r < kBM; r += kThreads) {
    const int64_t m = m0 + r;
    long long zb = -1, xi = -1;
    int qy = 0, qx = 0;
    if (m < mc) {
      qx = int(m % wq);
      const int64_t t = m / wq;
      qy = int(t % hq);
      const int64_t img = t / hq;
      zb = img * d.ho * d.wo;
      xi = (img * d.h + py + s * qy) * d.w + px + s * qx;
    }
    pix_z[r] = zb;
    pix_qy[r] = qy;
    pix_qx[r] = qx;
    pix_x[r] = xi;
  }
  const int co_slices = (d.cout + kBK - 1) / kBK;
  if (tid == 0 && m0 < mc) {
    // The class coordinates the block's pixels span: exact when they lie in one image (columns
    // too when in one row), else the whole class. A tap that reaches no output from that range
    // is skipped (not loaded, not multiplied): it would add only zeros.
    const int64_t m1 = (m0 + kBM < mc ? m0 + kBM : mc) - 1;
    const int64_t plane = int64_t(hq) * wq;
    int qy_lo = 0, qy_hi = hq - 1, qx_lo = 0, qx_hi = wq - 1;
    if (m0 / plane == m1 / plane) {
      const int64_t r0 = m0 % plane, r1 = m1 % plane;
      qy_lo = int(r0 / wq);
      qy_hi = int(r1 / wq);
      if (qy_lo == qy_hi) {
        qx_lo = int(r0 % wq);
        qx_hi = int(r1 % wq);
      }
    }
    int begin = 0;
#pragma unroll
    for (int b = 0; b < kMaxDataBranches; ++b) {  // (unrolled: br stays in the parameter space)
      if (b >= br.count) break;
      BranchTaps t;
      t.dz = br.dz[b];
      t.w = br.w[b];
      t.pad = br.pad[b];
      t.dil = br.dil[b];
      t.ty = conv_bwd::live_taps(py, qy_lo, qy_hi, d.kh, d.ho, s, t.pad, t.dil);
      t.tx = conv_bwd::live_taps(px, qx_lo, qx_hi, d.kw, d.wo, s, t.pad, t.dil);
      t.begin = begin;
      begin += t.ty.count * t.tx.count * co_slices;  // < 2^30 per branch (can_run), 4 branches at most
      t.end = begin;
      taps[b] = t;
    }
  }
  __syncthreads();  // the pixel and tap tables; every block meets a barrier (the emulator needs block 0 to)

  if (m0 >= mc) {  // the whole block (uniform): this class has fewer pixels than the largest
    if constexpr (kSums) {
      if (tid < kBN && c0 + tid < d.cin) {
        part[tile_id * d.cin + c0 + tid] = 0.0;
        part[(tiles + tile_id) * d.cin + c0 + tid] = 0.0;
      }
    }
    return;
  }

  const int slices = taps[br.count - 1].end;  // uniform in the block

  // ---- staging ----
  const int kk_a = tid % kBK, ra0 = tid / kBK;  // A: output channel lane, first pixel row
  const int nn_b = tid % kBN, kb0 = tid / kBN;  // B: input channel lane, first output channel row
  const int ci_b = c0 + nn_b;
  const bool ci_ok = ci_b < d.cin;
  const int64_t w_co_stride = int64_t(d.kh) * d.kw * d.cin;
  float a_st[kARows], b_st[kBRows];

  auto load = [&](int sl) {
    int b = 0;
    while (sl >= taps[b].end) ++b;  // the branch: slices < taps[count - 1].end
    const BranchTaps& bt = taps[b];
    const int local = sl - bt.begin;
    const int tap = local / co_slices;
    const int co0 = (local - tap * co_slices) * kBK;
    const int jy = tap / bt.tx.count, jx = tap - jy * bt.tx.count;
    const int ky = bt.ty.first + jy * bt.ty.step, kx = bt.tx.first + jx * bt.tx.step;
    {
      const float* __restrict__ const w = bt.w;
      const int64_t w_tap = (int64_t(ky) * d.kw + kx) * d.cin + ci_b;
#pragma unroll
      for (int j = 0; j < kBRows; ++j) {
        const int cob = co0 + kb0 + j * kBRowStep;
        b_st[j] = (ci_ok && cob < d.cout) ? w[int64_t(cob) * w_co_stride + w_tap] : 0.f;
      }
    }
    // Output coordinate of class pixel (qy, qx) through tap (ky, kx): (qy + ay, qx + ax), exact.
    const int ay = (py + bt.pad - ky * bt.dil) / s, ax = (px + bt.pad - kx * bt.dil) / s;
    const float* __restrict__ const dz = bt.dz;
    const int co = co0 + kk_a;
    const bool co_ok = co < d.cout;
#pragma unroll
    for (int j = 0; j < kARows; ++j) {
      const int r = ra0 + j * kARowStep;
      const long long zb = pix_z[r];
      const int oy = pix_qy[r] + ay, ox = pix_qx[r] + ax;
      float v = 0.f;
      if (co_ok && zb >= 0 && oy >= 0 && oy < d.ho && ox >= 0 && ox < d.wo)
        v = dz[(zb + int64_t(oy) * d.wo + ox) * d.cout + co];
      a_st[j] = v;
    }
  };

  auto store = [&] {
#pragma unroll
    for (int j = 0; j < kARows; ++j) As[(ra0 + j * kARowStep) * kLdA + kk_a] = Math::convert(a_st[j]);
#pragma unroll
    for (int j = 0; j < kBRows; ++j) Bs[(kb0 + j * kBRowStep) * kLdB + nn_b] = Math::convert(b_st[j]);
  };

  // ---- the K loop (barrier pattern: file comment) ----
  const int warp = tid / 32, wm = warp / kWarpsN, wn = warp % kWarpsN;
  typename Math::Acc acc[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  if (slices > 0) load(0);
  for (int sl = 0; sl < slices; ++sl) {
    store();
    __syncthreads();  // B1: slice sl visible
    if (sl + 1 < slices) load(sl + 1);
#pragma unroll 2
    for (int k8 = 0; k8 < kBK; k8 += Math::kFragK) {
      typename Math::template FragA<wmma::row_major> fa[2];
      typename Math::template FragB<wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * kLdA + k8, kLdA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + k8 * kLdB + wn * 32 + j * 16, kLdB);
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();  // B2: slice sl read by every warp before the next store or the C tile
  }

  // ---- epilogue ----
#pragma unroll
  for (int i = 0; i < 2; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * 32 + i * 16) * kLdC + wn * 32 + j * 16, acc[i][j], kLdC,
                              wmma::mem_row_major);
  __syncthreads();  // the C tile complete before threads read other warps' pieces
  const int c = tid % kBN, g = tid / kBN;
  const int ci = c0 + c;
  [[maybe_unused]] double s_dy = 0.0, s_dyx = 0.0;
  if (ci < d.cin) {
    [[maybe_unused]] float bn_mean = 0.f, bn_scale = 0.f, bn_shift = 0.f;
    if constexpr (kBnRelu) {
      bn_mean = mean[ci];
      bn_scale = float(double(gamma[ci]) * double(invstd[ci]));
      bn_shift = beta[ci];
    }
    for (int r = g; r < kBM; r += kGroups) {
      const long long xi = pix_x[r];
      if (xi < 0) break;  // the class's pixels end here (the rest of the table is past them too)
      float v = Cs[r * kLdC + c];
      if constexpr (kBnRelu) {
        const float xv = detail::to_f32(x[xi * d.cin + ci]);
        const float b = fmaf(xv - bn_mean, bn_scale, bn_shift);
        if (!(b > 0.f)) v = 0.f;  // as bn_relu_mask_inplace: NaN masks too
        if constexpr (kSums) {
          const double gv = double(v);  // as batchnorm_backward: dy * (x - mean) in double
          s_dy += gv;
          s_dyx += gv * (double(xv) - double(bn_mean));
        }
      }
      dx[xi * d.cin + ci] = v;
    }
  }
  if constexpr (kSums) {
    __shared__ double red[2][kGroups][kBN];  // written once, read after the barrier below
    red[0][g][c] = s_dy;
    red[1][g][c] = s_dyx;
    __syncthreads();
    if (g == 0 && ci < d.cin) {
#pragma unroll
      for (int q = 1; q < kGroups; ++q) {
        s_dy += red[0][q][c];
        s_dyx += red[1][q][c];
      }
      part[tile_id * d.cin + ci] = s_dy;
      part[(tiles + tile_id) * d.cin + ci] = s_dyx;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Backward-filter
// ------------------------------------------------------------------------------------------------

struct FilterPlan {
  int64_t pixels;  // n * ho * wo, the K of the GEMM
  int64_t chunk;   // pixels per split, a multiple of kBK
  int splits;
  int bm;                    // output channels per block tile: 32 or 64
  int col_tiles, row_tiles;  // over kh*kw*cin and cout
};

FilterPlan plan_filter(const cpu::Conv2dShape& s) {
  FilterPlan p{};
  p.pixels = int64_t(s.n) * s.ho() * s.wo();
  p.bm = s.cout <= 32 ? 32 : 64;
  p.col_tiles = int(ceil_div(int64_t(s.kh) * s.kw * s.cin, kFilterBN));
  p.row_tiles = int(ceil_div(s.cout, p.bm));
  const conv_bwd::SplitK k = conv_bwd::split_pixels(p.pixels, int64_t(p.col_tiles) * p.row_tiles, kTargetBlocks,
                                                     kMinSplitPixels, kBK);
  p.chunk = k.chunk;
  p.splits = k.splits;
  return p;
}

// out_w: dw (one split) or the partials [split][cout][ncol]; out_b: db or [split][cout], or null.
template <class Math, bool kBnRelu, int kFragsM, class XT>
__global__ void __launch_bounds__(kFilterWarpsM * kFilterWarpsN * 32, 2)
    bwd_filter_tc_kernel(FilterDims f, const XT* __restrict__ x, const float* __restrict__ gamma,
                         const float* __restrict__ beta, const float* __restrict__ mean,
                         const float* __restrict__ invstd, const float* __restrict__ dz,
                         float* __restrict__ out_w, float* __restrict__ out_b) {
  using T = typename Math::T;
  constexpr int kThreads = kFilterWarpsM * kFilterWarpsN * 32;
  constexpr int kWM = 16 * kFragsM;  // output channels per warp
  constexpr int kBM = kFilterWarpsM * kWM, kBN = kFilterBN;
  constexpr int kLdA = kBM + Math::kPad;  // As[pixel][output channel]: A col-major
  constexpr int kLdB = kBN + Math::kPad;  // Bs[pixel][column]: B row-major
  constexpr int kLdC = kBN + 8;           // Cs[output channel][column], fp32; rows 32-byte aligned
  constexpr int kSliceBytes = kBK * (kLdA + kLdB) * int(sizeof(T));
  constexpr int kCBytes = kBM * kLdC * int(sizeof(float));
  constexpr int kARowStep = kThreads / kBM, kARows = kBK / kARowStep;  // 8 or 4, 4 or 8
  constexpr int kBRowStep = kThreads / kBN, kBRows = kBK / kBRowStep;  // 2, 16
  constexpr int kCRowStep = kThreads / kBN;                             // epilogue rows per pass
  static_assert(kThreads % kBM == 0 && kThreads % kBN == 0 && kBK % kARowStep == 0 && kBRows <= 32,
                "staging layout");
  static_assert((kBK * kLdA * int(sizeof(T))) % 128 == 0, "Bs must start 128-byte aligned");

  constexpr int kTileBytes = kSliceBytes > kCBytes ? kSliceBytes : kCBytes;
  alignas(128) __shared__ unsigned char tile[kTileBytes];
  // The current slice's pixels (see the file comment for when it is written and read).
  __shared__ long long pix_off[kBK];        // x offset of the pixel's top-left tap, channel 0 (may be
                                            // outside the image: only added to in-image offsets)
  __shared__ int pix_iy[kBK], pix_ix[kBK];  // the top-left tap (may be in the padding); iy -2^30: past the split
  __shared__ float red_b[kARowStep][kBM];   // db: written after the K loop, read after the C barrier
  T* const As = reinterpret_cast<T*>(tile);
  T* const Bs = As + kBK * kLdA;
  float* const Cs = reinterpret_cast<float*>(tile);

  const Dims& d = f.d;
  const int tid = int(threadIdx.x);
  const int n0 = int(blockIdx.x) * kBN, m0 = int(blockIdx.y) * kBM;
  const int split = int(blockIdx.z);
  const int64_t p_begin = int64_t(split) * f.chunk;
  const int64_t p_end = p_begin + f.chunk < f.pixels ? p_begin + f.chunk : f.pixels;
  const int64_t slices = (p_end - p_begin + kBK - 1) / kBK;  // >= 1: every split has pixels
  const bool do_bias = out_b != nullptr && blockIdx.x == 0;    // uniform in the block

  // Table of slice sl's pixels, by threads 0 .. kBK-1.
  auto write_table = [&](int64_t sl) {
    if (tid < kBK) {
      const int64_t p = p_begin + int64_t(sl) * kBK + tid;
      long long off = 0;
      int iy = kPastSplit, ix = 0;
      if (p < p_end) {
        const int ox = int(p % d.wo);
        const int64_t t = p / d.wo;
        const int oy = int(t % d.ho);
        const int64_t img = t / d.ho;
        iy = oy * d.stride - d.pad;
        ix = ox * d.stride - d.pad;
        off = ((img * d.h + iy) * d.w + ix) * d.cin;
      }
      pix_off[tid] = off;
      pix_iy[tid] = iy;
      pix_ix[tid] = ix;
    }
  };

  // ---- staging ----
  // A: output channel m0 + co_l of pixel lanes pa0 + j * kARowStep.
  const int co_l = tid % kBM, pa0 = tid / kBM;
  const int co_a = m0 + co_l;
  const bool co_ok = co_a < d.cout;
  // B: column n0 + cl of pixel lanes pb0 + j * kBRowStep.
  const int cl = tid % kBN, pb0 = tid / kBN;
  const int col = n0 + cl;
  const bool col_ok = col < f.ncol;
  int offy = 0, offx = 0;
  int64_t col_off = 0;  // x offset of the column's tap and channel from the pixel's top-left tap
  [[maybe_unused]] float bn_mean = 0.f, bn_scale = 0.f, bn_shift = 0.f;
  if (col_ok) {
    const int ci = col % d.cin;
    const int tap = col / d.cin;
    offy = (tap / d.kw) * d.dil;
    offx = (tap % d.kw) * d.dil;
    col_off = (int64_t(offy) * d.w + offx) * d.cin + ci;
    if constexpr (kBnRelu) {
      bn_mean = mean[ci];
      bn_scale = float(double(gamma[ci]) * double(invstd[ci]));
      bn_shift = beta[ci];
    }
  }
  float a_st[kARows];
  XT b_st[kBRows];  // raw x (a bf16 x is widened in store(): half the registers)
  unsigned b_ok = 0;  // bit j: b_st[j] is an in-image value (BN-ReLU applies)
  float bias_acc = 0.f;

  auto load = [&](int64_t sl) {
    const int64_t p0 = p_begin + int64_t(sl) * kBK;
#pragma unroll
    for (int j = 0; j < kARows; ++j) {
      const int64_t p = p0 + pa0 + j * kARowStep;
      a_st[j] = (co_ok && p < p_end) ? dz[p * d.cout + co_a] : 0.f;
    }
    b_ok = 0;
#pragma unroll
    for (int j = 0; j < kBRows; ++j) {
      const int lane = pb0 + j * kBRowStep;
      const int iy = pix_iy[lane] + offy, ix = pix_ix[lane] + offx;  // iy < 0 past the split
      XT v{};  // +0 (value-initialised)
      if (col_ok && iy >= 0 && iy < d.h && ix >= 0 && ix < d.w) {
        v = x[pix_off[lane] + col_off];
        b_ok |= 1u << j;
      }
      b_st[j] = v;
    }
  };

  auto store = [&] {
#pragma unroll
    for (int j = 0; j < kARows; ++j) {
      if (do_bias) bias_acc += a_st[j];  // db from the unrounded dz, in a fixed order
      As[(pa0 + j * kARowStep) * kLdA + co_l] = Math::convert(a_st[j]);
    }
#pragma unroll
    for (int j = 0; j < kBRows; ++j) {
      float v = detail::to_f32(b_st[j]);
      if constexpr (kBnRelu) {
        if ((b_ok >> j) & 1u) {
          v = fmaf(v - bn_mean, bn_scale, bn_shift);
          v = (v > 0.f || v != v) ? v : 0.f;  // NaN propagates, as relu_forward
        }
      }
      Bs[(pb0 + j * kBRowStep) * kLdB + cl] = Math::convert(v);
    }
  };

  // ---- the K loop (barrier pattern: file comment) ----
  const int warp = tid / 32, wm = warp / kFilterWarpsN, wn = warp % kFilterWarpsN;
  typename Math::Acc acc[kFragsM][2];
#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.f);

  write_table(0);
  __syncthreads();  // table(0) visible
  load(0);
  __syncthreads();  // table(0) read by every thread before table(1) is written
  for (int64_t sl = 0; sl < slices; ++sl) {
    store();
    if (sl + 1 < slices) write_table(sl + 1);
    __syncthreads();  // B1: slice sl and table(sl + 1) visible
    if (sl + 1 < slices) load(sl + 1);
#pragma unroll 1
    for (int k8 = 0; k8 < kBK; k8 += Math::kFragK) {
      typename Math::template FragA<wmma::col_major> fa[kFragsM];
      typename Math::template FragB<wmma::row_major> fb[2];
#pragma unroll
      for (int i = 0; i < kFragsM; ++i) wmma::load_matrix_sync(fa[i], As + k8 * kLdA + wm * kWM + i * 16, kLdA);
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], Bs + k8 * kLdB + wn * 32 + j * 16, kLdB);
#pragma unroll
      for (int i = 0; i < kFragsM; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
    __syncthreads();  // B2: slice sl and table(sl + 1) read before the next store / table / C tile
  }

  // ---- epilogue ----
#pragma unroll
  for (int i = 0; i < kFragsM; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j)
      wmma::store_matrix_sync(Cs + (wm * kWM + i * 16) * kLdC + wn * 32 + j * 16, acc[i][j], kLdC,
                              wmma::mem_row_major);
  if (do_bias) red_b[pa0][co_l] = bias_acc;
  __syncthreads();  // the C tile and the db partials complete
  float* const ow = out_w + int64_t(split) * d.cout * f.ncol;
  if (col_ok) {
    for (int r = pb0; r < kBM; r += kCRowStep) {
      const int co = m0 + r;
      if (co >= d.cout) break;
      ow[int64_t(co) * f.ncol + col] = Cs[r * kLdC + cl];
    }
  }
  if (do_bias && tid < kBM && m0 + tid < d.cout) {
    float b = red_b[0][tid];
#pragma unroll
    for (int q = 1; q < kARowStep; ++q) b += red_b[q][tid];
    out_b[int64_t(split) * d.cout + m0 + tid] = b;
  }
}

// ------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------

// Backward-data grid for tiles of kBN input channels.
dim3 data_grid(const cpu::Conv2dShape& s, int bn) {
  const int64_t class_pixels = int64_t(s.n) * ceil_div(s.h, s.stride) * ceil_div(s.w, s.stride);
  return dim3(unsigned(ceil_div(class_pixels, kDataBM)), unsigned(ceil_div(s.cin, bn)),
              unsigned(s.stride * s.stride));
}

int64_t data_tiles(const cpu::Conv2dShape& s) {
  const dim3 g = data_grid(s, 64);
  return int64_t(g.x) * g.z;
}

bool shape_runs(const cpu::Conv2dShape& s) {
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.cin < 1 || s.cout < 1) return false;
  if (s.kh < 1 || s.kw < 1 || s.stride < 1 || s.dil < 1 || s.pad < 0) return false;
  if (s.h > kMaxCoord || s.w > kMaxCoord || s.pad > kMaxCoord || s.stride > kMaxStride) return false;
  if (s.ho() < 1 || s.wo() < 1) return false;  // also bounds dil * (k - 1) by h + 2 * pad
  const int64_t taps = int64_t(s.kh) * s.kw;
  if (taps * s.cin >= (int64_t(1) << 30) || taps * s.cout >= (int64_t(1) << 30)) return false;
  const int64_t class_pixels = int64_t(s.n) * ceil_div(s.h, s.stride) * ceil_div(s.w, s.stride);
  if (ceil_div(class_pixels, kDataBM) > 0x7fffffff || ceil_div(s.cin, 32) > 65535) return false;
  if (ceil_div(s.cout, 32) > 65535) return false;
  if (int64_t(s.n) * s.ho() * s.wo() > (int64_t(1) << 40)) return false;
  return true;
}

bool math_ok(ConvMath m) { return m == ConvMath::Tf32 || m == ConvMath::Bf16; }

[[noreturn]] void fail_shape(const char* op, const cpu::Conv2dShape& s, ConvMath math) {
  fail(op, ": unsupported shape or math: n ", s.n, " h ", s.h, " w ", s.w, " cin ", s.cin, " cout ", s.cout,
       " kernel ", s.kh, "x", s.kw, " stride ", s.stride, " pad ", s.pad, " dilation ", s.dil, " math ",
       static_cast<int>(math));
}

// One convolution as a DataBranches of one.
DataBranches one_branch(const cpu::Conv2dShape& s, const float* dz, const float* w) {
  DataBranches b{};
  b.count = 1;
  b.dz[0] = dz;
  b.w[0] = w;
  b.pad[0] = s.pad;
  b.dil[0] = s.dil;
  return b;
}

template <class Math, class XT, bool kBnRelu, bool kSums, int kWarpsN>
void launch_data(const cpu::Conv2dShape& s, const DataBranches& br, const XT* x, const float* gamma,
                 const float* beta, const float* mean, const float* invstd, float* dx, double* part,
                 cudaStream_t stream) {
  const dim3 grid = data_grid(s, 32 * kWarpsN);
  bwd_data_tc_kernel<Math, kBnRelu, kSums, kWarpsN, XT><<<grid, kDataWarpsM * kWarpsN * 32, 0, stream>>>(
      dims_of(s), br, x, gamma, beta, mean, invstd, dx, part);
}

template <class Math, class XT, bool kBnRelu, bool kSums>
void launch_data_width(const cpu::Conv2dShape& s, const DataBranches& br, const XT* x, const float* gamma,
                       const float* beta, const float* mean, const float* invstd, float* dx, double* part,
                       cudaStream_t stream) {
  if (s.cin <= 32)
    launch_data<Math, XT, kBnRelu, kSums, 1>(s, br, x, gamma, beta, mean, invstd, dx, part, stream);
  else
    launch_data<Math, XT, kBnRelu, kSums, 2>(s, br, x, gamma, beta, mean, invstd, dx, part, stream);
}

template <class Math, class XT>
void launch_data_math(bool bn, bool sums, const cpu::Conv2dShape& s, const DataBranches& br, const XT* x,
                      const float* gamma, const float* beta, const float* mean, const float* invstd, float* dx,
                      double* part, cudaStream_t stream) {
  if (sums)
    launch_data_width<Math, XT, true, true>(s, br, x, gamma, beta, mean, invstd, dx, part, stream);
  else if (bn)
    launch_data_width<Math, XT, true, false>(s, br, x, gamma, beta, mean, invstd, dx, nullptr, stream);
  else
    launch_data_width<Math, XT, false, false>(s, br, static_cast<const XT*>(nullptr), nullptr, nullptr, nullptr,
                                              nullptr, dx, nullptr, stream);
}

template <class Math, class XT, bool kBnRelu, int kFragsM>
void launch_filter(const FilterPlan& p, const FilterDims& f, const XT* x, const float* gamma, const float* beta,
                   const float* mean, const float* invstd, const float* dz, float* out_w, float* out_b,
                   cudaStream_t stream) {
  const dim3 grid(unsigned(p.col_tiles), unsigned(p.row_tiles), unsigned(p.splits));
  bwd_filter_tc_kernel<Math, kBnRelu, kFragsM, XT><<<grid, kFilterWarpsM * kFilterWarpsN * 32, 0, stream>>>(
      f, x, gamma, beta, mean, invstd, dz, out_w, out_b);
}

template <class Math, class XT>
void launch_filter_math(bool bn, const FilterPlan& p, const FilterDims& f, const XT* x, const float* gamma,
                        const float* beta, const float* mean, const float* invstd, const float* dz, float* out_w,
                        float* out_b, cudaStream_t stream) {
  const bool narrow = p.bm == 32;
  if (bn && narrow)
    launch_filter<Math, XT, true, 1>(p, f, x, gamma, beta, mean, invstd, dz, out_w, out_b, stream);
  else if (bn)
    launch_filter<Math, XT, true, 2>(p, f, x, gamma, beta, mean, invstd, dz, out_w, out_b, stream);
  else if (narrow)
    launch_filter<Math, XT, false, 1>(p, f, x, nullptr, nullptr, nullptr, nullptr, dz, out_w, out_b, stream);
  else
    launch_filter<Math, XT, false, 2>(p, f, x, nullptr, nullptr, nullptr, nullptr, dz, out_w, out_b, stream);
}

}  // namespace

bool bn_relu_conv_bwd_tc_can_run(const cpu::Conv2dShape& s, ConvMath math) { return math_ok(math) && shape_runs(s); }

bool bn_relu_conv_bwd_tc_can_run(const cpu::Conv2dShape& s, ConvMath math, Storage x_type) {
  return bn_relu_conv_bwd_tc_can_run(s, math) && (x_type == Storage::F32 || math == ConvMath::Bf16);
}

size_t bn_relu_conv_tc_backward_data_workspace_bytes(const cpu::Conv2dShape& s) {
  if (!shape_runs(s)) return 0;
  return detail::round_up(2 * size_t(data_tiles(s)) * size_t(s.cin) * sizeof(double), 256);
}

void bn_relu_conv_tc_backward_data(const cpu::Conv2dShape& s, ConvMath math, const float* dz, const float* w_ohwi,
                                   Storage x_type, const void* x, const float* gamma, const float* beta,
                                   const float* mean, const float* invstd, float* dx, double* sum_dy,
                                   double* sum_dy_xhat, void* workspace, cudaStream_t stream) {
  const char* op = "bn_relu_conv_tc_backward_data";
  if (!bn_relu_conv_bwd_tc_can_run(s, math, x_type)) fail_shape(op, s, math);
  detail::check_not_null(op, {{"dz", dz}, {"w", w_ohwi}, {"dx", dx}});
  const bool bn = gamma || beta || mean || invstd;  // x is read only for the mask
  if (bn)
    detail::check_not_null(op, {{"x", x}, {"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}});
  const bool sums = sum_dy || sum_dy_xhat;
  if (sums && !bn) fail(op, ": the BN sums (sum_dy, sum_dy_xhat) need the BN arguments");
  if (sums) detail::check_workspace(op, workspace, bn_relu_conv_tc_backward_data_workspace_bytes(s));
  double* part = sums ? static_cast<double*>(workspace) : nullptr;
  const auto* xf = static_cast<const float*>(x);
  const DataBranches br = one_branch(s, dz, w_ohwi);
  if (bn && x_type == Storage::Bf16)  // (the plain conv does not read x: the fp32 instantiations)
    launch_data_math<Bf16Math>(bn, sums, s, br, static_cast<const bf16*>(x), gamma, beta, mean, invstd, dx, part,
                               stream);
  else if (math == ConvMath::Tf32)
    launch_data_math<Tf32Math>(bn, sums, s, br, xf, gamma, beta, mean, invstd, dx, part, stream);
  else
    launch_data_math<Bf16Math>(bn, sums, s, br, xf, gamma, beta, mean, invstd, dx, part, stream);
  RPP_CUDA_CHECK_LAUNCH(op);
  if (sums) {
    const unsigned blocks = unsigned(ceil_div(s.cin, kSumChannels));
    tile_sums::sum_tile_partials_kernel<kSumChannels, kSumSlots><<<blocks, kSumChannels * kSumSlots, 0, stream>>>(
        part, data_tiles(s), s.cin, invstd, sum_dy, sum_dy_xhat);
    RPP_CUDA_CHECK_LAUNCH(op);
  }
}

void bn_relu_conv_tc_backward_data(const cpu::Conv2dShape& s, ConvMath math, const float* dz, const float* w_ohwi,
                                   const float* x, const float* gamma, const float* beta, const float* mean,
                                   const float* invstd, float* dx, double* sum_dy, double* sum_dy_xhat,
                                   void* workspace, cudaStream_t stream) {
  bn_relu_conv_tc_backward_data(s, math, dz, w_ohwi, Storage::F32, x, gamma, beta, mean, invstd, dx, sum_dy,
                                sum_dy_xhat, workspace, stream);
}

bool conv_sum_tc_backward_data_can_run(const cpu::Conv2dShape* shapes, int count, ConvMath math) {
  if (!math_ok(math) || !shapes || count < 1 || count > kConvSumMaxBranches) return false;
  const cpu::Conv2dShape& a = shapes[0];
  for (int b = 0; b < count; ++b) {
    const cpu::Conv2dShape& s = shapes[b];
    if (!shape_runs(s)) return false;
    if (s.n != a.n || s.h != a.h || s.w != a.w || s.cin != a.cin || s.cout != a.cout || s.kh != a.kh ||
        s.kw != a.kw || s.stride != a.stride || s.ho() != a.ho() || s.wo() != a.wo())
      return false;
  }
  return true;
}

void conv_sum_tc_backward_data(const ConvBwdDataBranch* branches, int count, ConvMath math, float* dx,
                               cudaStream_t stream) {
  const char* op = "conv_sum_tc_backward_data";
  if (!branches || count < 1 || count > kConvSumMaxBranches)
    fail(op, ": ", count, " branches; 1 to ", kConvSumMaxBranches, " are supported");
  cpu::Conv2dShape shapes[kConvSumMaxBranches];
  DataBranches br{};
  br.count = count;
  for (int b = 0; b < count; ++b) {
    shapes[b] = branches[b].shape;
    br.dz[b] = branches[b].dz;
    br.w[b] = branches[b].w_ohwi;
    br.pad[b] = branches[b].shape.pad;
    br.dil[b] = branches[b].shape.dil;
    detail::check_not_null(op, {{"dz", br.dz[b]}, {"w", br.w[b]}});
  }
  if (!conv_sum_tc_backward_data_can_run(shapes, count, math)) {
    for (int b = 0; b < count; ++b)
      if (!bn_relu_conv_bwd_tc_can_run(shapes[b], math)) fail_shape(op, shapes[b], math);
    fail(op, ": the ", count, " branches differ in more than padding and dilation (batch, sizes, channels, kernel, "
         "stride or output size)");
  }
  detail::check_not_null(op, {{"dx", dx}});
  const cpu::Conv2dShape& s = shapes[0];
  if (math == ConvMath::Tf32)
    launch_data_math<Tf32Math, float>(false, false, s, br, nullptr, nullptr, nullptr, nullptr, nullptr, dx, nullptr,
                                      stream);
  else
    launch_data_math<Bf16Math, float>(false, false, s, br, nullptr, nullptr, nullptr, nullptr, nullptr, dx, nullptr,
                                      stream);
  RPP_CUDA_CHECK_LAUNCH(op);
}

size_t bn_relu_conv_tc_backward_filter_workspace_bytes(const cpu::Conv2dShape& s) {
  if (!shape_runs(s)) return 0;
  const FilterPlan p = plan_filter(s);
  if (p.splits <= 1) return 0;
  const size_t per_split = size_t(s.cout) * (size_t(s.kh) * s.kw * s.cin + 1);  // dw and db partials
  return detail::round_up(size_t(p.splits) * per_split * sizeof(float), 256);
}

void bn_relu_conv_tc_backward_filter(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                                     const float* gamma, const float* beta, const float* mean,
                                     const float* invstd, const float* dz, float* dw_ohwi, float* db,
                                     void* workspace, cudaStream_t stream) {
  const char* op = "bn_relu_conv_tc_backward_filter";
  if (!bn_relu_conv_bwd_tc_can_run(s, math, x_type)) fail_shape(op, s, math);
  detail::check_not_null(op, {{"x", x}, {"dz", dz}, {"dw", dw_ohwi}});
  const bool bn = gamma || beta || mean || invstd;
  if (bn) detail::check_not_null(op, {{"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}});
  detail::check_workspace(op, workspace, bn_relu_conv_tc_backward_filter_workspace_bytes(s));
  const FilterPlan p = plan_filter(s);
  const FilterDims f{dims_of(s), s.kh * s.kw * s.cin, p.pixels, p.chunk};
  const int64_t count_w = int64_t(s.cout) * f.ncol;
  float* out_w = dw_ohwi;
  float* out_b = db;
  if (p.splits > 1) {
    out_w = static_cast<float*>(workspace);
    out_b = db ? out_w + int64_t(p.splits) * count_w : nullptr;
  }
  const auto* xf = static_cast<const float*>(x);
  if (x_type == Storage::Bf16)
    launch_filter_math<Bf16Math>(bn, p, f, static_cast<const bf16*>(x), gamma, beta, mean, invstd, dz, out_w, out_b,
                                 stream);
  else if (math == ConvMath::Tf32)
    launch_filter_math<Tf32Math>(bn, p, f, xf, gamma, beta, mean, invstd, dz, out_w, out_b, stream);
  else
    launch_filter_math<Bf16Math>(bn, p, f, xf, gamma, beta, mean, invstd, dz, out_w, out_b, stream);
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

void bn_relu_conv_tc_backward_filter(const cpu::Conv2dShape& s, ConvMath math, const float* x,
                                     const float* gamma, const float* beta, const float* mean,
                                     const float* invstd, const float* dz, float* dw_ohwi, float* db,
                                     void* workspace, cudaStream_t stream) {
  bn_relu_conv_tc_backward_filter(s, math, Storage::F32, x, gamma, beta, mean, invstd, dz, dw_ohwi, db, workspace,
                                  stream);
}

}  // namespace rpp::cuda
