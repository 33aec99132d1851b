// kernels/cpu/conv2d.cpp — reference 2-D convolution (NHWC, HWIO) as im2col + GEMM on the CPU.
//
// Plain C++ loops, no intrinsics: the GEMM micro-kernel keeps an MR x NR block of C in a local
// array that GCC holds in vector registers at -O3 -march=native. Exercised by
// tests/test_kernels_conv2d.cpp (exact small-integer tests, gradient checks, guards, determinism).
//
// Every pass forks once (parallel_run) and splits its pixels statically by thread index, so the
// result is a pure function of the inputs and the thread count. Nothing is allocated on the heap:
// gather tiles, repacked weights and partial sums live in the caller's workspace, whose size the
// *_workspace functions compute from the same helpers the passes use.
//
// Three shortcuts keep the work close to the useful FLOPs:
// - "Live" taps: a kernel row kh (column kw) that no output pixel can place inside the image (a
//   large dilation on a small image, e.g. dilation 18 on 8x8) contributes only zeros; it is left
//   out of K in all three passes (dw gets zeros there).
// - 1x1, stride 1, pad 0: x (forward, backward-filter) or dy (backward-data) is the A matrix.
// - Backward-data with stride s > 1 is split into s*s parity classes of input pixels: in class
//   (iy % s, ix % s) only the taps with matching parity reach an output pixel, so each class
//   multiplies by its own repacked weight block and never multiplies the structural zeros.
#include "kernels/cpu/conv2d.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <sstream>
#include <string>

#include "kernels/cpu/parallel.h"
#include "runtime/error.h"

namespace rpp::cpu {
namespace {

// ------------------------------------------------------------------------------------------------
// GEMM
// ------------------------------------------------------------------------------------------------

// Register blocks: MR rows of A (one broadcast each per k) times NR contiguous columns of B, the
// MR x NR block of C held in vector registers across the whole k loop. V is the number of lanes
// of the widest vector register the build targets. The wide block, 6 x 2V, keeps 12 independent
// FMA chains in flight (enough to hide the FMA latency on both ports); the narrow block, 8 x V,
// serves N <= V (Cout 16 in float with AVX-512), where the wide one would multiply padding.
#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#else
constexpr int kVecBytes = 32;
#endif
template <class T>
struct Blocking {
  static constexpr int V = kVecBytes / int(sizeof(T));
  static constexpr int MR_WIDE = 6, NR_WIDE = 2 * V;
  static constexpr int MR_NARROW = 8, NR_NARROW = V;
  static constexpr int KC = 256;  // k block: a packed B panel is KC x NR_WIDE (32 KiB at most)
};

// How A is addressed inside the micro-kernel: row-major rows (a_col == 1), column-major (a_row ==
// 1, MR consecutive values per k) or anything else through per-row offsets.
enum class ALayout { kRows, kCols, kGeneral };

// The pragmas make GCC unroll the i and j loops completely, so `acc` becomes MR*NR/V vector
// registers and its SLP vectoriser turns each row of j into one vector FMA per register. The
// update is written as std::fma (one instruction with -mfma) rather than acc + a*b: GCC orders the
// operands of a commutative `+` by SSA number, which differs from lane to lane after unrolling,
// and the SLP vectoriser then gives up on some rows and leaves them scalar.
template <class T>
inline T fmadd(T a, T b, T c) {
#if defined(__FMA__)
  return std::fma(a, b, c);
#else
  return c + a * b;
#endif
}

// C[0..MR)[0..NR) (+)= sum_k A(i, k) * B[k][j], B with row stride ldb.
// A(i, k) = a[off[i] + k * a_col]; for kRows off[i] = i * a_row, for kCols off[i] = i.
template <class T, int MR, int NR, ALayout L>
void micro_kernel(int64_t kc, const T* a, const int64_t* off, int64_t a_col, const T* bp,
                  int64_t ldb, T* c, int64_t ldc, bool accumulate) {
  T acc[MR][NR];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
    for (int j = 0; j < NR; ++j) acc[i][j] = accumulate ? c[i * ldc + j] : T(0);
  if constexpr (L == ALayout::kRows) {
    const T* ar[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) ar[i] = a + off[i];
    for (int64_t k = 0; k < kc; ++k) {
      const T* b = bp + k * ldb;
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T ai = ar[i][k];
#pragma GCC unroll 64
        for (int j = 0; j < NR; ++j) acc[i][j] = fmadd(ai, b[j], acc[i][j]);
      }
    }
  } else if constexpr (L == ALayout::kCols) {
    for (int64_t k = 0; k < kc; ++k) {
      const T* b = bp + k * ldb;
      const T* ak = a + k * a_col;
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T ai = ak[i];
#pragma GCC unroll 64
        for (int j = 0; j < NR; ++j) acc[i][j] = fmadd(ai, b[j], acc[i][j]);
      }
    }
  } else {
    int64_t o[MR];
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) o[i] = off[i];
    for (int64_t k = 0; k < kc; ++k) {
      const T* b = bp + k * ldb;
      const T* ak = a + k * a_col;
#pragma GCC unroll 16
      for (int i = 0; i < MR; ++i) {
        const T ai = ak[o[i]];
#pragma GCC unroll 64
        for (int j = 0; j < NR; ++j) acc[i][j] = fmadd(ai, b[j], acc[i][j]);
      }
    }
  }
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 64
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
}

// Column panels of B and C: wide panels while more than NR_NARROW columns remain, then one narrow
// panel; a panel narrower than its register block is zero-padded in B and clipped in C.
template <class T>
int64_t panel_width(int64_t remaining) {
  return remaining > Blocking<T>::NR_NARROW ? Blocking<T>::NR_WIDE : Blocking<T>::NR_NARROW;
}

// Sweeps the rows of A in blocks of MR against one kc x NR panel of B (row stride ldb), producing
// nr <= NR columns of C.
template <class T, int MR, int NR>
void gemm_sweep(int64_t M, int64_t kc, int64_t nr, const T* A, int64_t a_row, int64_t a_col,
                ALayout layout, const T* bp, int64_t ldb, T* C, int64_t ldc, bool acc) {
  int64_t full_off[MR];
  for (int i = 0; i < MR; ++i) full_off[i] = layout == ALayout::kCols ? i : i * a_row;
  for (int64_t ic = 0; ic < M; ic += MR) {
    const int64_t mr = std::min<int64_t>(MR, M - ic);
    const T* a = A + ic * a_row;
    T* c = C + ic * ldc;
    if (mr == MR && nr == NR) {
      switch (layout) {
        case ALayout::kRows:
          micro_kernel<T, MR, NR, ALayout::kRows>(kc, a, full_off, a_col, bp, ldb, c, ldc, acc);
          break;
        case ALayout::kCols:
          micro_kernel<T, MR, NR, ALayout::kCols>(kc, a, full_off, a_col, bp, ldb, c, ldc, acc);
          break;
        case ALayout::kGeneral:
          micro_kernel<T, MR, NR, ALayout::kGeneral>(kc, a, full_off, a_col, bp, ldb, c, ldc, acc);
          break;
      }
    } else {
      // Edge block: rows past M re-read row mr-1 (finite values, results discarded) and the
      // block goes through a local copy of C, so no element outside C is read or written.
      int64_t off[MR];
      for (int i = 0; i < MR; ++i) off[i] = std::min<int64_t>(i, mr - 1) * a_row;
      T tmp[MR * NR] = {};
      if (acc)
        for (int64_t i = 0; i < mr; ++i)
          for (int64_t j = 0; j < nr; ++j) tmp[i * NR + j] = c[i * ldc + j];
      if (layout == ALayout::kRows)
        micro_kernel<T, MR, NR, ALayout::kRows>(kc, a, off, a_col, bp, ldb, tmp, NR, acc);
      else
        micro_kernel<T, MR, NR, ALayout::kGeneral>(kc, a, off, a_col, bp, ldb, tmp, NR, acc);
      for (int64_t i = 0; i < mr; ++i)
        for (int64_t j = 0; j < nr; ++j) c[i * ldc + j] = tmp[i * NR + j];
    }
  }
}

template <class T>
void gemm_sweep_any(int64_t width, int64_t M, int64_t kc, int64_t nr, const T* A, int64_t a_row,
                    int64_t a_col, ALayout layout, const T* bp, int64_t ldb, T* C, int64_t ldc,
                    bool acc) {
  using Blk = Blocking<T>;
  if (width == Blk::NR_WIDE)
    gemm_sweep<T, Blk::MR_WIDE, Blk::NR_WIDE>(M, kc, nr, A, a_row, a_col, layout, bp, ldb, C, ldc,
                                              acc);
  else
    gemm_sweep<T, Blk::MR_NARROW, Blk::NR_NARROW>(M, kc, nr, A, a_row, a_col, layout, bp, ldb, C,
                                                  ldc, acc);
}

ALayout a_layout(int64_t a_row, int64_t a_col) {
  return a_col == 1 ? ALayout::kRows : a_row == 1 ? ALayout::kCols : ALayout::kGeneral;
}

// C = A * B (+ C). A panel of B (kc x width) is copied into a contiguous stack buffer when it is
// partial (the last nr < width columns, zero-padded so the micro-kernel never reads past the
// columns of B) or when many row blocks will read it (M > 2*kc, as in backward-filter, where a
// contiguous panel avoids the cache-set conflicts of a large ldb). Otherwise (the forward and
// backward-data tiles, M <= 256 rows) it is read in place: measured, the copy costs more there.
template <class T>
void gemm_impl(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_col,
               const T* B, int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  using Blk = Blocking<T>;
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, T(0));
    return;
  }
  alignas(64) T pack[Blk::KC * Blk::NR_WIDE];
  const ALayout layout = a_layout(a_row, a_col);
  for (int64_t pc = 0; pc < K; pc += Blk::KC) {
    const int64_t kc = std::min<int64_t>(Blk::KC, K - pc);
    const bool acc = accumulate || pc > 0;
    for (int64_t jc = 0; jc < N;) {
      const int64_t width = panel_width<T>(N - jc), nr = std::min(width, N - jc);
      const T* b = B + pc * ldb + jc;
      const T* bp = b;
      int64_t ldp = ldb;
      if (nr != width || (ldb != width && M > 2 * kc)) {
        for (int64_t k = 0; k < kc; ++k) {
          T* dst = pack + k * width;
          for (int64_t j = 0; j < nr; ++j) dst[j] = b[k * ldb + j];
          for (int64_t j = nr; j < width; ++j) dst[j] = T(0);
        }
        bp = pack;
        ldp = width;
      }
      gemm_sweep_any(width, M, kc, nr, A + pc * a_col, a_row, a_col, layout, bp, ldp, C + jc, ldc,
                     acc);
      jc += nr;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Shapes, live taps, tiles, workspace layout
// ------------------------------------------------------------------------------------------------

// Tile of pixels gathered at once: about kTileElems elements (512 KiB of float, inside L2),
// between kMinRows and kMaxRows rows, a multiple of 24 so that both register blocks (6 and 8
// rows) divide it.
constexpr int64_t kTileElems = int64_t(1) << 17;
constexpr int64_t kMinRows = 24, kMaxRows = 240;
// Per-thread slices start on 64-byte boundaries (for float) so threads never share a line.
constexpr int64_t kAlign = 16;

int64_t round_up(int64_t v, int64_t a) { return (v + a - 1) / a * a; }
int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

std::string describe(const Conv2dShape& s) {
  std::ostringstream os;
  os << "N=" << s.n << " H=" << s.h << " W=" << s.w << " Cin=" << s.cin << " Cout=" << s.cout
     << " kernel=" << s.kh << "x" << s.kw << " stride=" << s.stride << " pad=" << s.pad
     << " dilation=" << s.dil;
  return os.str();
}

struct Geom {
  int64_t n, h, w, cin, cout, kh, kw, st, pad, dil, ho, wo;
  int64_t kh0, kh1, kw0, kw1;  // live taps: [kh0, kh1) x [kw0, kw1)
  int64_t nkh, nkw, klive;     // klive = nkh * nkw * cin, the K of the forward GEMM
  bool direct;                 // 1x1, stride 1, pad 0: no gather needed
  int64_t out_pixels() const { return n * ho * wo; }
  int64_t in_pixels() const { return n * h * w; }
};

// First live kernel index along one axis and one past the last. Tap k is live when the range of
// input coordinates it reads, [k*dil - pad, (o-1)*st - pad + k*dil], meets [0, size).
void live_range(int64_t size, int64_t k, int64_t o, int64_t st, int64_t pad, int64_t dil,
                int64_t& k0, int64_t& k1) {
  k0 = std::max<int64_t>(0, ceil_div(pad - (o - 1) * st, dil));
  k1 = std::min<int64_t>(k, (size - 1 + pad) / dil + 1);
  if (k1 < k0) k1 = k0;
}

Geom make_geom(const Conv2dShape& s, const char* fn) {
  const bool positive = s.n > 0 && s.h > 0 && s.w > 0 && s.cin > 0 && s.cout > 0 && s.kh > 0 &&
                        s.kw > 0 && s.stride > 0 && s.dil > 0 && s.pad >= 0;
  if (!positive)
    fail(fn, ": invalid convolution shape (every size, the stride and the dilation must be >= 1 "
             "and pad >= 0): ", describe(s));
  Geom g;
  g.n = s.n, g.h = s.h, g.w = s.w, g.cin = s.cin, g.cout = s.cout;
  g.kh = s.kh, g.kw = s.kw, g.st = s.stride, g.pad = s.pad, g.dil = s.dil;
  const int64_t ext_h = g.dil * (g.kh - 1) + 1, ext_w = g.dil * (g.kw - 1) + 1;
  if (ext_h > g.h + 2 * g.pad || ext_w > g.w + 2 * g.pad)
    fail(fn, ": output size would be <= 0: the dilated kernel (", ext_h, "x", ext_w,
         ") is larger than the padded input (", g.h + 2 * g.pad, "x", g.w + 2 * g.pad, "): ",
         describe(s));
  g.ho = (g.h + 2 * g.pad - ext_h) / g.st + 1;
  g.wo = (g.w + 2 * g.pad - ext_w) / g.st + 1;
  // Bounds that keep every element count and index below 2^62.
  if (g.ho > INT32_MAX || g.wo > INT32_MAX || g.n * g.h * g.w > (int64_t(1) << 40) ||
      g.n * g.ho * g.wo > (int64_t(1) << 40) || g.cin > (1 << 20) || g.cout > (1 << 20) ||
      g.kh * g.kw > (1 << 20))
    fail(fn, ": convolution too large: ", describe(s));
  live_range(g.h, g.kh, g.ho, g.st, g.pad, g.dil, g.kh0, g.kh1);
  live_range(g.w, g.kw, g.wo, g.st, g.pad, g.dil, g.kw0, g.kw1);
  g.nkh = g.kh1 - g.kh0;
  g.nkw = g.kw1 - g.kw0;
  g.klive = g.nkh * g.nkw * g.cin;
  g.direct = g.kh == 1 && g.kw == 1 && g.st == 1 && g.pad == 0;
  return g;
}

int64_t tile_rows(int64_t k, int64_t pixels, int64_t threads) {
  int64_t r = k > 0 ? (kTileElems / k + 12) / 24 * 24 : kMaxRows;
  r = std::min(kMaxRows, std::max(kMinRows, r));
  const int64_t per_thread = std::max<int64_t>(1, ceil_div(pixels, threads));
  return std::min(r, per_thread);
}

// Taps of one parity class along one axis (backward-data): kernel indices k in [k0, k1) with
// (p + pad - k*dil) divisible by st, i.e. an arithmetic progression first + i*step. Along that
// progression the output coordinate (i + pad - k*dil)/st drops by d_out per step.
struct ClassTaps {
  int64_t first = 0, step = 1, count = 0, d_out = 0;
};

ClassTaps class_taps(int64_t p, int64_t k0, int64_t k1, int64_t st, int64_t pad, int64_t dil) {
  ClassTaps c;
  const int64_t g = std::gcd(dil, st);
  c.step = st / g;
  c.d_out = dil / g;
  for (int64_t k = k0; k < std::min(k1, k0 + c.step); ++k) {
    if ((p + pad - k * dil) % st == 0) {
      c.first = k;
      c.count = (k1 - 1 - k) / c.step + 1;
      break;
    }
  }
  return c;
}

// Input coordinates of parity p along an axis of length size.
int64_t class_len(int64_t size, int64_t p, int64_t st) {
  return p < size ? (size - p + st - 1) / st : 0;
}

// Backward-data layout: the repacked weights of every parity class, one after the other, then
// one slice per thread holding the gather tile and (stride > 1) the output tile before its
// scatter.
struct BwdDataLayout {
  int64_t wr_elems = 0;  // repacked weights, all classes
  int64_t k_max = 0;     // largest class K
  int64_t rows = 0;      // tile rows
  int64_t slice = 0;     // per-thread elements
  int64_t total = 0;
};

BwdDataLayout bwd_data_layout(const Geom& g, int64_t threads) {
  BwdDataLayout l;
  for (int64_t py = 0; py < g.st; ++py) {
    if (class_len(g.h, py, g.st) == 0) continue;
    const ClassTaps th = class_taps(py, g.kh0, g.kh1, g.st, g.pad, g.dil);
    for (int64_t px = 0; px < g.st; ++px) {
      if (class_len(g.w, px, g.st) == 0) continue;
      const ClassTaps tw = class_taps(px, g.kw0, g.kw1, g.st, g.pad, g.dil);
      const int64_t kc = th.count * tw.count * g.cout;
      l.wr_elems += kc * g.cin;
      l.k_max = std::max(l.k_max, kc);
    }
  }
  l.wr_elems = round_up(l.wr_elems, kAlign);
  l.rows = tile_rows(l.k_max, g.in_pixels(), threads);
  if (!g.direct && l.k_max > 0)
    l.slice = round_up(l.rows * l.k_max + (g.st > 1 ? l.rows * g.cin : 0), kAlign);
  l.total = l.wr_elems + threads * l.slice;
  return l;
}

// Forward layout: one gather tile per thread (none for 1x1 stride 1 pad 0).
int64_t fwd_rows(const Geom& g, int64_t threads) {
  return tile_rows(g.klive, g.out_pixels(), threads);
}
int64_t fwd_slice(const Geom& g, int64_t threads) {
  return g.direct || g.klive == 0 ? 0 : round_up(fwd_rows(g, threads) * g.klive, kAlign);
}
// Backward-filter slice: partial dw (klive x cout), partial dbias (cout), gather tile.
int64_t bwf_slice(const Geom& g, int64_t threads) {
  int64_t s = round_up(g.klive * g.cout, kAlign) + round_up(g.cout, kAlign);
  if (!g.direct && g.klive > 0) s += round_up(fwd_rows(g, threads) * g.klive, kAlign);
  return s;
}

// Short copies and fills (one channel vector, a few kernel taps): inline loops in 64-byte chunks,
// which GCC turns into vector moves; a libc memcpy/memset call per pixel and tap costs more than
// the move itself at these sizes.
template <class T>
inline void copy_elems(T* __restrict dst, const T* __restrict src, int64_t n) {
  constexpr int C = 64 / int(sizeof(T));
  int64_t i = 0;
  for (; i + C <= n; i += C)
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) dst[i + j] = src[i + j];
  for (; i < n; ++i) dst[i] = src[i];
}

template <class T>
inline void zero_elems(T* dst, int64_t n) {
  constexpr int C = 64 / int(sizeof(T));
  int64_t i = 0;
  for (; i + C <= n; i += C)
#pragma GCC unroll 16
    for (int j = 0; j < C; ++j) dst[i + j] = T(0);
  for (; i < n; ++i) dst[i] = T(0);
}

// dst (cols x rows) = src (rows x cols)^T, both row-major, in 16 x 16 blocks so that neither side
// walks a whole column of cache lines.
template <class T>
void transpose(const T* src, int64_t rows, int64_t cols, T* dst) {
  constexpr int64_t B = 16;
  for (int64_t r0 = 0; r0 < rows; r0 += B)
    for (int64_t c0 = 0; c0 < cols; c0 += B) {
      const int64_t r1 = std::min(rows, r0 + B), c1 = std::min(cols, c0 + B);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * cols + c];
    }
}

// Gathers output pixels [p0, p1) into rows of `col` (row stride klive), columns ordered
// (kh, kw, ci) over the live taps, zeros where the tap falls in the padding. With dilation 1 the
// kw taps of one kernel row are adjacent input pixels, so an interior row is one copy.
template <class T>
void im2col(const Geom& g, const T* x, int64_t p0, int64_t p1, T* col) {
  int64_t ox = p0 % g.wo, oy = (p0 / g.wo) % g.ho, n = p0 / (g.wo * g.ho);
  const int64_t span = g.nkw * g.cin;  // one kernel row of the gathered row
  for (int64_t p = p0; p < p1; ++p) {
    T* dst = col + (p - p0) * g.klive;
    const T* xn = x + n * g.h * g.w * g.cin;
    const int64_t ix0 = ox * g.st - g.pad + g.kw0 * g.dil;  // input column of the first live kw
    const bool row_inside = g.dil == 1 && ix0 >= 0 && ix0 + g.nkw - 1 < g.w;
    for (int64_t kh = g.kh0; kh < g.kh1; ++kh, dst += span) {
      const int64_t iy = oy * g.st - g.pad + kh * g.dil;
      if (iy < 0 || iy >= g.h) {
        zero_elems(dst, span);
        continue;
      }
      const T* xrow = xn + iy * g.w * g.cin;
      if (row_inside) {
        copy_elems(dst, xrow + ix0 * g.cin, span);
        continue;
      }
      T* d = dst;
      for (int64_t j = 0, ix = ix0; j < g.nkw; ++j, ix += g.dil, d += g.cin) {
        if (ix < 0 || ix >= g.w)
          zero_elems(d, g.cin);
        else
          copy_elems(d, xrow + ix * g.cin, g.cin);
      }
    }
    if (++ox == g.wo) {
      ox = 0;
      if (++oy == g.ho) oy = 0, ++n;
    }
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------
// Public entry points
// ------------------------------------------------------------------------------------------------

template <class T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_col, const T* B,
          int64_t ldb, T* C, int64_t ldc, bool accumulate) {
  gemm_impl(M, N, K, A, a_row, a_col, B, ldb, C, ldc, accumulate);
}

size_t conv2d_forward_workspace(const Conv2dShape& s) {
  const Geom g = make_geom(s, "conv2d_forward_workspace");
  return size_t(num_threads() * fwd_slice(g, num_threads()));
}

size_t conv2d_backward_data_workspace(const Conv2dShape& s) {
  const Geom g = make_geom(s, "conv2d_backward_data_workspace");
  return size_t(bwd_data_layout(g, num_threads()).total);
}

size_t conv2d_backward_filter_workspace(const Conv2dShape& s) {
  const Geom g = make_geom(s, "conv2d_backward_filter_workspace");
  return size_t(num_threads() * bwf_slice(g, num_threads()));
}

template <class T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, T* ws) {
  const Geom g = make_geom(s, "conv2d_forward");
  const int threads = num_threads();
  const int64_t slice = fwd_slice(g, threads), rows = fwd_rows(g, threads);
  RPP_CHECK(x && w && y, "conv2d_forward: null tensor pointer");
  RPP_CHECK(ws || slice == 0, "conv2d_forward: null workspace, ", threads * slice,
            " elements needed");
  const int64_t P = g.out_pixels();
  // Weight rows of the live taps: one block when every kw is live, else one block per live kh.
  const bool one_block = g.nkw == g.kw;
  parallel_run([&](int t, int nt) {
    const int64_t pb = P * t / nt, pe = P * (t + 1) / nt;
    T* col = ws + t * slice;  // (rows, klive)
    for (int64_t p0 = pb; p0 < pe; p0 += rows) {
      const int64_t m = std::min(rows, pe - p0);
      T* yt = y + p0 * g.cout;  // (m, Cout)
      if (bias)
        for (int64_t i = 0; i < m; ++i) copy_elems(yt + i * g.cout, bias, g.cout);
      if (g.klive == 0) {
        if (!bias) zero_elems(yt, m * g.cout);
        continue;
      }
      if (g.direct) {
        gemm_impl(m, g.cout, g.cin, x + p0 * g.cin, g.cin, int64_t(1), w, g.cout, yt, g.cout,
                  bias != nullptr);
        continue;
      }
      im2col(g, x, p0, p0 + m, col);
      if (one_block) {
        gemm_impl(m, g.cout, g.klive, col, g.klive, int64_t(1), w + g.kh0 * g.kw * g.cin * g.cout,
                  g.cout, yt, g.cout, bias != nullptr);
      } else {
        const int64_t kblk = g.nkw * g.cin;
        for (int64_t kh = g.kh0; kh < g.kh1; ++kh)
          gemm_impl(m, g.cout, kblk, col + (kh - g.kh0) * kblk, g.klive, int64_t(1),
                    w + (kh * g.kw + g.kw0) * g.cin * g.cout, g.cout, yt, g.cout,
                    bias != nullptr || kh > g.kh0);
      }
    }
  });
}

template <class T>
void conv2d_backward_data(const Conv2dShape& s, const T* dy, const T* w, T* dx, T* ws) {
  const Geom g = make_geom(s, "conv2d_backward_data");
  const int threads = num_threads();
  const BwdDataLayout lay = bwd_data_layout(g, threads);
  RPP_CHECK(dy && w && dx, "conv2d_backward_data: null tensor pointer");
  RPP_CHECK(ws || lay.total == 0, "conv2d_backward_data: null workspace, ", lay.total,
            " elements needed");
  const int64_t st = g.st;

  // Repack the weights class by class: Wr_c[(a, b, co)][ci] = W[kh_a][kw_b][ci][co] for the
  // class's kh progression (a, ascending) and kw progression (b, descending: see the gather).
  // Serial: K*Cout*Cin copies, small next to the GEMM's K*Cout*Cin*pixels/s^2 multiply-adds.
  {
    T* wr = ws;
    for (int64_t py = 0; py < st; ++py) {
      if (class_len(g.h, py, st) == 0) continue;
      const ClassTaps th = class_taps(py, g.kh0, g.kh1, st, g.pad, g.dil);
      for (int64_t px = 0; px < st; ++px) {
        if (class_len(g.w, px, st) == 0) continue;
        const ClassTaps tw = class_taps(px, g.kw0, g.kw1, st, g.pad, g.dil);
        for (int64_t a = 0; a < th.count; ++a) {
          const int64_t kh = th.first + a * th.step;
          for (int64_t b = 0; b < tw.count; ++b) {
            const int64_t kw = tw.first + (tw.count - 1 - b) * tw.step;
            transpose(w + (kh * g.kw + kw) * g.cin * g.cout, g.cin, g.cout, wr);
            wr += g.cout * g.cin;
          }
        }
      }
    }
  }

  parallel_run([&](int t, int nt) {
    T* gat = ws + lay.wr_elems + t * lay.slice;  // (rows, K_class)
    T* obuf = gat + lay.rows * lay.k_max;        // (rows, Cin), stride > 1 only
    const T* wr = ws;  // this class's (K_class, Cin) block
    for (int64_t py = 0; py < st; ++py) {
      const int64_t hc = class_len(g.h, py, st);
      if (hc == 0) continue;
      const ClassTaps th = class_taps(py, g.kh0, g.kh1, st, g.pad, g.dil);
      for (int64_t px = 0; px < st; ++px) {
        const int64_t wc = class_len(g.w, px, st);
        if (wc == 0) continue;
        const ClassTaps tw = class_taps(px, g.kw0, g.kw1, st, g.pad, g.dil);
        const int64_t kc = th.count * tw.count * g.cout;
        const int64_t pc = g.n * hc * wc;  // pixels in the class, ordered (n, a, b)
        const int64_t qb = pc * t / nt, qe = pc * (t + 1) / nt;
        for (int64_t q0 = qb; q0 < qe; q0 += std::max<int64_t>(lay.rows, 1)) {
          const int64_t m = std::min(lay.rows, qe - q0);
          if (kc == 0) {  // no tap reaches these pixels (e.g. 1x1 stride 2, odd positions)
            for (int64_t q = q0; q < q0 + m; ++q) {
              const int64_t b = q % wc, a = (q / wc) % hc, n = q / (wc * hc);
              T* d = dx + ((n * g.h + py + a * st) * g.w + px + b * st) * g.cin;
              zero_elems(d, g.cin);
            }
            continue;
          }
          if (g.direct) {
            gemm_impl(m, g.cin, g.cout, dy + q0 * g.cout, g.cout, int64_t(1), wr, g.cin,
                      dx + q0 * g.cin, g.cin, false);
            continue;
          }
          // Gather: row r holds dy at the output pixel each class tap maps input pixel q to.
          // The kw taps run in descending order, so their output columns ascend by d_out; with
          // d_out == 1 and all of them inside the image they are one contiguous block of dy.
          int64_t b = q0 % wc, a = (q0 / wc) % hc, n = q0 / (wc * hc);
          const int64_t span = tw.count * g.cout;
          // Output row of the first kh and output column of the last (largest) kw, where the
          // ascending run starts; stepping b moves ix by st and so the column by exactly 1.
          const int64_t kw_last = tw.first + (tw.count - 1) * tw.step;
          int64_t oy_first = 0, ox0 = 0;
          auto start_row = [&] {
            oy_first = (py + a * st + g.pad - th.first * g.dil) / st;
            ox0 = (px + b * st + g.pad - kw_last * g.dil) / st;
          };
          start_row();
          for (int64_t r = 0; r < m; ++r) {
            const T* dyn = dy + n * g.ho * g.wo * g.cout;
            T* dst = gat + r * kc;
            const bool run_inside = tw.d_out == 1 && ox0 >= 0 && ox0 + tw.count - 1 < g.wo;
            int64_t oy = oy_first;
            for (int64_t i = 0; i < th.count; ++i, oy -= th.d_out, dst += span) {
              if (oy < 0 || oy >= g.ho) {
                zero_elems(dst, span);
                continue;
              }
              const T* dyrow = dyn + oy * g.wo * g.cout;
              if (run_inside) {
                copy_elems(dst, dyrow + ox0 * g.cout, span);
                continue;
              }
              T* d = dst;
              for (int64_t j = 0, ox = ox0; j < tw.count; ++j, ox += tw.d_out, d += g.cout) {
                if (ox < 0 || ox >= g.wo)
                  zero_elems(d, g.cout);
                else
                  copy_elems(d, dyrow + ox * g.cout, g.cout);
              }
            }
            if (++b == wc) {
              b = 0;
              if (++a == hc) a = 0, ++n;
              start_row();
            } else {
              ++ox0;
            }
          }
          if (st == 1) {
            gemm_impl(m, g.cin, kc, gat, kc, int64_t(1), wr, g.cin, dx + q0 * g.cin, g.cin, false);
            continue;
          }
          gemm_impl(m, g.cin, kc, gat, kc, int64_t(1), wr, g.cin, obuf, g.cin, false);
          b = q0 % wc, a = (q0 / wc) % hc, n = q0 / (wc * hc);
          for (int64_t r = 0; r < m; ++r) {
            T* d = dx + ((n * g.h + py + a * st) * g.w + px + b * st) * g.cin;
            copy_elems(d, obuf + r * g.cin, g.cin);
            if (++b == wc) {
              b = 0;
              if (++a == hc) a = 0, ++n;
            }
          }
        }
        wr += kc * g.cin;
      }
    }
  });
}

template <class T>
void conv2d_backward_filter(const Conv2dShape& s, const T* x, const T* dy, T* dw, T* dbias,
                            T* ws) {
  const Geom g = make_geom(s, "conv2d_backward_filter");
  const int threads = num_threads();
  const int64_t slice = bwf_slice(g, threads), rows = fwd_rows(g, threads);
  RPP_CHECK(x && dy && dw, "conv2d_backward_filter: null tensor pointer");
  RPP_CHECK(ws, "conv2d_backward_filter: null workspace, ", threads * slice, " elements needed");
  const int64_t P = g.out_pixels();
  const int64_t part_elems = round_up(g.klive * g.cout, kAlign);
  const int64_t bias_elems = round_up(g.cout, kAlign);

  parallel_run([&](int t, int nt) {
    T* part = ws + t * slice;       // (klive, Cout): this thread's dw over its pixels
    T* pbias = part + part_elems;   // (Cout)
    T* col = pbias + bias_elems;    // (rows, klive)
    std::fill(part, part + g.klive * g.cout, T(0));
    std::fill(pbias, pbias + g.cout, T(0));
    const int64_t pb = P * t / nt, pe = P * (t + 1) / nt;
    for (int64_t p0 = pb; p0 < pe; p0 += rows) {
      const int64_t m = std::min(rows, pe - p0);
      const T* dyt = dy + p0 * g.cout;  // (m, Cout)
      if (dbias)
        for (int64_t i = 0; i < m; ++i)
          for (int64_t co = 0; co < g.cout; ++co) pbias[co] += dyt[i * g.cout + co];
      if (g.klive == 0) continue;
      // part += col^T * dy_tile: A = col read transposed (a_row = 1, a_col = klive).
      if (g.direct) {
        gemm_impl(g.cin, g.cout, m, x + p0 * g.cin, int64_t(1), g.cin, dyt, g.cout, part, g.cout,
                  true);
      } else {
        im2col(g, x, p0, p0 + m, col);
        gemm_impl(g.klive, g.cout, m, col, int64_t(1), g.klive, dyt, g.cout, part, g.cout, true);
      }
    }
  });

  // Fixed-order reduction of the partials: thread 0 + thread 1 + ... (dead taps get zeros).
  const int64_t wrow = g.cin * g.cout;  // one tap of dw
  for (int64_t kh = 0; kh < g.kh; ++kh) {
    for (int64_t kw = 0; kw < g.kw; ++kw) {
      T* d = dw + (kh * g.kw + kw) * wrow;
      if (kh < g.kh0 || kh >= g.kh1 || kw < g.kw0 || kw >= g.kw1) {
        std::fill(d, d + wrow, T(0));
        continue;
      }
      const int64_t off = ((kh - g.kh0) * g.nkw + (kw - g.kw0)) * wrow;
      std::copy(ws + off, ws + off + wrow, d);
      for (int t = 1; t < threads; ++t) {
        const T* src = ws + t * slice + off;
        for (int64_t i = 0; i < wrow; ++i) d[i] += src[i];
      }
    }
  }
  if (dbias) {
    std::copy(ws + part_elems, ws + part_elems + g.cout, dbias);
    for (int t = 1; t < threads; ++t) {
      const T* src = ws + t * slice + part_elems;
      for (int64_t co = 0; co < g.cout; ++co) dbias[co] += src[co];
    }
  }
}

#define RPP_INSTANTIATE_CONV2D(T)                                                                \
  template void conv2d_forward<T>(const Conv2dShape&, const T*, const T*, const T*, T*, T*);     \
  template void conv2d_backward_data<T>(const Conv2dShape&, const T*, const T*, T*, T*);         \
  template void conv2d_backward_filter<T>(const Conv2dShape&, const T*, const T*, T*, T*, T*);   \
  template void gemm<T>(int64_t, int64_t, int64_t, const T*, int64_t, int64_t, const T*, int64_t, \
                        T*, int64_t, bool);
RPP_INSTANTIATE_CONV2D(float)
RPP_INSTANTIATE_CONV2D(double)
#undef RPP_INSTANTIATE_CONV2D

}  // namespace rpp::cpu
