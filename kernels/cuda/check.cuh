// kernels/cuda/check.cuh — CUDA error checks and the small host-side launch helpers shared by
// the kernel files (kernels/cuda/*.cu). Internal: launchers' headers do not include it.
//
//   RPP_CUDA_CHECK(cudaMemcpyAsync(...));      // any runtime call -> rpp::Error with call text
//   kernel<<<grid, block, 0, stream>>>(...);
//   RPP_CUDA_CHECK_LAUNCH("relu_forward");     // right after every launch
//
// Nothing here synchronises: a launch check only sees configuration errors and errors left
// behind by earlier asynchronous work.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <initializer_list>

#include "runtime/error.h"

#ifndef RPP_CUDA_CHECK
#define RPP_CUDA_CHECK(call)                                                                  \
  do {                                                                                        \
    cudaError_t err_ = (call);                                                                \
    if (err_ != cudaSuccess)                                                                  \
      ::rpp::fail(#call " failed: ", cudaGetErrorString(err_), " (", __FILE__, ":", __LINE__, ")"); \
  } while (0)
#endif

#define RPP_CUDA_CHECK_LAUNCH(what) ::rpp::cuda::detail::check_launch((what), __FILE__, __LINE__)

namespace rpp::cuda::detail {

inline void check_launch(const char* what, const char* file, int line) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    ::rpp::fail(what, ": kernel launch failed (or an earlier asynchronous error surfaced): ",
                cudaGetErrorString(e), " (", file, ":", line, ")");
}

// Workspaces hold doubles: 16-byte alignment is required (the planner gives 256).
constexpr size_t kWorkspaceAlign = 16;

inline size_t round_up(size_t bytes, size_t to) { return (bytes + to - 1) / to * to; }

inline void check_workspace(const char* op, const void* ws, size_t need) {
  if (need == 0) return;
  if (ws == nullptr) ::rpp::fail(op, ": needs a device workspace of ", need, " bytes, got null");
  if (reinterpret_cast<uintptr_t>(ws) % kWorkspaceAlign != 0)
    ::rpp::fail(op, ": the workspace must be ", kWorkspaceAlign, "-byte aligned");
}

// Fails naming the first null device pointer: check_not_null("relu_forward", {{"x", x}, {"y", y}}).
struct NamedPtr {
  const char* name;
  const void* ptr;
};
inline void check_not_null(const char* op, std::initializer_list<NamedPtr> ptrs) {
  for (const NamedPtr& p : ptrs)
    if (p.ptr == nullptr) ::rpp::fail(op, ": device pointer `", p.name, "` is null");
}

// Grid-stride launches: at most kMaxFlatBlocks blocks of kFlatThreads threads, enough to fill an
// H100 twice over. The loop index is 32-bit when n < 2^31 (then i + stride cannot wrap).
constexpr int kFlatThreads = 256;
constexpr int64_t kMaxFlatBlocks = 2048;

inline unsigned flat_blocks(int64_t n) {
  const int64_t b = (n + kFlatThreads - 1) / kFlatThreads;
  return unsigned(b < kMaxFlatBlocks ? b : kMaxFlatBlocks);
}

inline bool index_fits_32(int64_t n) { return n < (int64_t(1) << 31); }

#ifdef __CUDACC__
// f(i) for every i in [0, n), i of type Idx; F is a trivially copyable functor with a
// `template <class Idx> __device__ void operator()(Idx) const`.
template <class Idx, class F>
__global__ void __launch_bounds__(kFlatThreads) flat_kernel(Idx n, F f) {
  const Idx stride = Idx(gridDim.x) * Idx(blockDim.x);
  for (Idx i = Idx(blockIdx.x) * Idx(blockDim.x) + Idx(threadIdx.x); i < n; i += stride) f(i);
}

template <class F>
void launch_flat(const char* what, int64_t n, const F& f, cudaStream_t stream) {
  if (n <= 0) return;
  if (index_fits_32(n))
    flat_kernel<uint32_t, F><<<flat_blocks(n), kFlatThreads, 0, stream>>>(uint32_t(n), f);
  else
    flat_kernel<uint64_t, F><<<flat_blocks(n), kFlatThreads, 0, stream>>>(uint64_t(n), f);
  check_launch(what, __FILE__, __LINE__);
}
#endif

}  // namespace rpp::cuda::detail
