// tests/emu/mma.h — the CPU emulator's stand-in for CUDA's <mma.h> (warp matrix functions,
// nvcuda::wmma; see cuda_emu.h for the emulator itself). Only the subset the project's kernels use:
//   fragment<matrix_a | matrix_b, 16, 16, 8, precision::tf32, row_major | col_major>
//   fragment<matrix_a | matrix_b, 16, 16, 16, __nv_bfloat16, row_major | col_major>
//   fragment<accumulator, 16, 16, 8 | 16, float>
//   fill_fragment, load_matrix_sync, mma_sync, store_matrix_sync, layout_t, __float_to_tf32.
// Anything else fails to compile (the primary fragment template has no definition).
//
// Element mapping. CUDA leaves the mapping of tile elements to the lanes of a warp unspecified,
// so the emulator picks one that costs little on a CPU where each lane is a fiber:
//   * matrix_a / matrix_b: every lane holds the whole tile (num_elements = rows * cols), loaded
//     by every lane from memory, in the mathematical orientation whatever the memory layout.
//   * accumulator: lane L holds the tile elements e = row * 16 + col with e % 32 == L (8 per lane,
//     num_elements = 8, as on the hardware). mma_sync computes, and load/store_matrix_sync move,
//     only the lane's own elements, so the warp does the tile's work once between its 32 lanes,
//     and a store of which some lanes of the warp are missing leaves holes (the hardware requires
//     every lane; the tests then see the hole as poison).
// The lane is the linear thread index in the block modulo 32. A block whose size is not a
// multiple of 32 has a partial last warp; its missing lanes' accumulator elements are never
// computed (on the hardware warp matrix functions need full warps too).
//
// Arithmetic of mma_sync, d = a * b + c with fp32 accumulation:
//   * operands are rounded as the tensor cores see them: tf32 keeps 10 explicit mantissa bits,
//     rounded to nearest with ties away from zero, the rounding of cvt.rna.tf32.f32 that
//     __float_to_tf32 compiles to (CUDA's crt/mma.h); values the kernel already converted are
//     unchanged. bf16 operands are bf16 values already (their conversion, __float2bfloat16, is
//     round to nearest even: tests/emu/cuda_bf16.h).
//   * each product of two tf32 (11-bit significands) or bf16 (8-bit) values is exact in float;
//     the products are added to c one after another in k order, each addition rounded to float
//     (round to nearest even). The hardware's internal order and rounding of the additions are
//     not documented and differ (tests must allow for a few fp32 roundings per k step).
// Checks (the emulator aborts): the pointer of a load or store must be 32-byte (256-bit) aligned
// and ldm a multiple of 16 bytes' worth of elements, as the CUDA Programming Guide requires; for
// the fp32 accumulators a multiple of 32 bytes, the PTX ISA's rule (each row starts aligned to
// the 8-float fragment).
// What it cannot show: lanes of a warp that diverge around a warp matrix function, and timing.
#pragma once
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_emu.h"

namespace nvcuda {
namespace wmma {

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}

enum layout_t { mem_row_major, mem_col_major };

// cvt.rna.tf32.f32: keep the sign, the exponent and the upper 10 mantissa bits, rounding the 13
// dropped bits to nearest with ties away from zero (add half of the kept last place to the
// magnitude, then truncate; a carry into the exponent is the correct rounding, up to infinity).
// Infinity stays infinity; a NaN stays a NaN (made quiet; what the hardware makes of a NaN whose
// payload lies only in the 13 dropped bits is not documented).
inline float __float_to_tf32(float in) {
  uint32_t u;
  std::memcpy(&u, &in, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u) {
    if (u & 0x007fffffu) u |= 0x00400000u;  // NaN
    u &= 0xffffe000u;
  } else {
    u = (u + 0x1000u) & 0xffffe000u;
  }
  float out;
  std::memcpy(&out, &u, sizeof out);
  return out;
}

namespace emu {

[[noreturn]] inline void die(const char* what) {
  std::fprintf(stderr, "cuda emulator (wmma): %s\n", what);
  std::abort();
}

inline int lane() {
  const unsigned t = ::rpp_emu::g_thread.x + ::rpp_emu::g_block_dim.x *
                                                 (::rpp_emu::g_thread.y + ::rpp_emu::g_block_dim.y * ::rpp_emu::g_thread.z);
  return int(t % 32u);
}

// row_bytes: the PTX ISA's stricter rule, every row (or column) of the matrix in memory starts
// aligned to the fragment's size per thread: 16 bytes for the tf32/bf16 operand fragments used
// here, 32 bytes (8 floats) for the fp32 accumulators.
inline void check_access(const void* p, unsigned ldm, size_t elem_bytes, const char* fn, size_t row_bytes = 16) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    std::fprintf(stderr, "cuda emulator (wmma): %s: pointer %p is not 256-bit aligned\n", fn, p);
    std::abort();
  }
  if ((size_t(ldm) * elem_bytes) % row_bytes != 0) {
    std::fprintf(stderr, "cuda emulator (wmma): %s: ldm %u is not a multiple of %zu bytes\n", fn, ldm, row_bytes);
    std::abort();
  }
}

// Operand value as the tensor core multiplies it.
inline float operand(float v) { return __float_to_tf32(v); }  // tf32 storage
inline float operand(__nv_bfloat16 v) { return __bfloat162float(v); }

template <class T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

template <class L>
constexpr bool is_layout = false;
template <>
constexpr bool is_layout<row_major> = true;
template <>
constexpr bool is_layout<col_major> = true;

// A multiplicand tile of Rows x Cols, held whole by every lane; x[r * Cols + c] is element (r, c).
template <class Use, class T, int Rows, int Cols, class Layout>
struct operand_frag {
  static_assert(is_layout<Layout>, "matrix_a / matrix_b fragments need row_major or col_major");
  enum { num_elements = Rows * Cols, rows = Rows, cols = Cols };
  using element_type = T;
  using storage_element_type = typename storage<T>::type;
  using layout = Layout;
  storage_element_type x[Rows * Cols];
};

// A 16 x 16 accumulator tile of an m16n16kK product; x[i] is element e = lane() + 32 * i (row
// e / 16, column e % 16).
template <int K>
struct acc_frag {
  enum { num_elements = 8 };
  using element_type = float;
  using storage_element_type = float;
  float x[8];
};

}  // namespace emu

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment;  // only the specialisations below exist

template <class L>
class fragment<matrix_a, 16, 16, 8, precision::tf32, L>
    : public emu::operand_frag<matrix_a, precision::tf32, 16, 8, L> {};
template <class L>
class fragment<matrix_b, 16, 16, 8, precision::tf32, L>
    : public emu::operand_frag<matrix_b, precision::tf32, 8, 16, L> {};
template <class L>
class fragment<matrix_a, 16, 16, 16, __nv_bfloat16, L>
    : public emu::operand_frag<matrix_a, __nv_bfloat16, 16, 16, L> {};
template <class L>
class fragment<matrix_b, 16, 16, 16, __nv_bfloat16, L>
    : public emu::operand_frag<matrix_b, __nv_bfloat16, 16, 16, L> {};
template <>
class fragment<accumulator, 16, 16, 8, float> : public emu::acc_frag<8> {};
template <>
class fragment<accumulator, 16, 16, 16, float> : public emu::acc_frag<16> {};

template <class U, class T, int R, int C, class L, class V>
inline void fill_fragment(emu::operand_frag<U, T, R, C, L>& f, const V& v) {
  for (auto& e : f.x) {
    if constexpr (std::is_same<T, __nv_bfloat16>::value)
      e = v;  // a __nv_bfloat16 argument
    else
      e = float(v);
  }
}
template <int K>
inline void fill_fragment(emu::acc_frag<K>& f, float v) {
  for (float& e : f.x) e = v;
}

// Multiplicands: the layout is the fragment's (row_major: element (r, c) at p[r * ldm + c]).
template <class U, class T, int R, int C, class L, class P>
inline void load_matrix_sync(emu::operand_frag<U, T, R, C, L>& f, const P* p, unsigned ldm) {
  using S = typename emu::operand_frag<U, T, R, C, L>::storage_element_type;
  static_assert(std::is_same<P, S>::value, "load_matrix_sync: pointer type does not match the fragment");
  emu::check_access(p, ldm, sizeof(P), "load_matrix_sync");
  constexpr bool row = std::is_same<L, row_major>::value;
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) f.x[r * C + c] = S(p[row ? size_t(r) * ldm + c : size_t(c) * ldm + r]);
}

// Accumulators: the layout is given at the call; each lane moves its own elements.
template <int K>
inline void load_matrix_sync(emu::acc_frag<K>& f, const float* p, unsigned ldm, layout_t layout) {
  emu::check_access(p, ldm, sizeof(float), "load_matrix_sync", 32);
  const int l = emu::lane();
  for (int i = 0; i < 8; ++i) {
    const int e = l + 32 * i, r = e / 16, c = e % 16;
    f.x[i] = p[layout == mem_row_major ? size_t(r) * ldm + c : size_t(c) * ldm + r];
  }
}

template <int K>
inline void store_matrix_sync(float* p, const emu::acc_frag<K>& f, unsigned ldm, layout_t layout) {
  emu::check_access(p, ldm, sizeof(float), "store_matrix_sync", 32);
  const int l = emu::lane();
  for (int i = 0; i < 8; ++i) {
    const int e = l + 32 * i, r = e / 16, c = e % 16;
    p[layout == mem_row_major ? size_t(r) * ldm + c : size_t(c) * ldm + r] = f.x[i];
  }
}

// d = a * b + c (d may be c). The element types and shapes must pair up as on the hardware.
template <class T, int K, class LA, class LB>
inline void mma_sync(emu::acc_frag<K>& d, const emu::operand_frag<matrix_a, T, 16, K, LA>& a,
                     const emu::operand_frag<matrix_b, T, K, 16, LB>& b, const emu::acc_frag<K>& c) {
  static_assert((std::is_same<T, precision::tf32>::value && K == 8) ||
                    (std::is_same<T, __nv_bfloat16>::value && K == 16),
                "mma_sync: the emulator has tf32 m16n16k8 and bf16 m16n16k16 only");
  const int l = emu::lane();
  for (int i = 0; i < 8; ++i) {
    const int e = l + 32 * i, r = e / 16, col = e % 16;
    float acc = c.x[i];
    for (int k = 0; k < K; ++k) acc += emu::operand(a.x[r * K + k]) * emu::operand(b.x[k * 16 + col]);
    d.x[i] = acc;
  }
}

}  // namespace wmma
}  // namespace nvcuda
