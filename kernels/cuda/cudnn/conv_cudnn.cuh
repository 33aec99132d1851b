// kernels/cuda/cudnn/conv_cudnn.cuh — the cuDNN fallback convolution: one fp32 conv shape
// (rpp::cpu::Conv2dShape) forward, backward-data and backward-filter (+ bias gradient), NHWC
// activations, plus the weight repacks between the engine's HWIO and cuDNN's filter layout.
// Built only when CMake finds cuDNN (RESUNETPP_HAVE_CUDNN); implemented in conv_cudnn.cu and
// tested against kernels/cpu/conv2d.h by tests/gpu/test_conv_gpu.cpp (./build/gpu_test_conv_gpu).
//
// Layouts (the same semantics as rpp::cpu::conv2d_*):
//   x, dx (N, H, W, Cin); y, dy (N, Ho, Wo, Cout); bias, dbias (Cout);
//   w, dw (Cout, KH, KW, Cin), "OHWI": cuDNN's filter layout for NHWC tensors (it calls it KRSC).
//   The engine keeps HWIO (KH, KW, Cin, Cout); repack_hwio_to_ohwi / repack_ohwi_to_hwio convert.
//
// Usage:
//   CudnnConv conv(shape);                                 // descriptors only; no device work
//   cudnnSetStream(handle, stream);                        // the caller owns handle and stream
//   conv.choose_algorithms(handle, /*deterministic=*/true, /*allow_tf32=*/false, nullptr, limit);
//   size_t ws_bytes = conv.workspace_bytes();              // size the shared workspace to this
//   conv.forward(handle, x, w_ohwi, bias, y, ws);
//   conv.backward_data(handle, dy, w_ohwi, dx, ws);
//   conv.backward_filter(handle, x, dy, dw_ohwi, dbias, ws);
//
// Every pass runs on the handle's stream (cudnnGetStream): cuDNN's own kernels and this file's
// (bias add, bias gradient) alike, so there is no second stream argument that could disagree.
// Nothing here synchronises or allocates device memory; outputs are overwritten (beta = 0).
// The legacy cuDNN API used here is marked deprecated in cuDNN 9, but its headers emit the
// deprecation attributes only when CUDNN_WARN_DEPRECATED is defined, which this project never
// does, so no warning is silenced anywhere.
#pragma once
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/cpu/conv2d.h"

// Throws rpp::Error naming the call, cuDNN's status string (and, from cuDNN 9, its last error
// message), the file and the line: RPP_CUDNN_CHECK(cudnnSetStream(handle, stream)).
#define RPP_CUDNN_CHECK(call)                                                 \
  do {                                                                        \
    const cudnnStatus_t rpp_cudnn_status_ = (call);                           \
    if (rpp_cudnn_status_ != CUDNN_STATUS_SUCCESS)                            \
      ::rpp::cuda::detail::cudnn_fail(rpp_cudnn_status_, #call, __FILE__, __LINE__); \
  } while (0)

#if defined(__CUDACC__)
#define RPP_CUDNN_HD __host__ __device__
#else
#define RPP_CUDNN_HD
#endif

namespace rpp::cuda {

namespace detail {
[[noreturn]] void cudnn_fail(cudnnStatus_t status, const char* call, const char* file, int line);
}  // namespace detail

// ---- weight repacks: HWIO (KH, KW, Cin, Cout) <-> OHWI (Cout, KH, KW, Cin) ----

// Flat OHWI index of the element at flat HWIO index i. A bijection of [0, kh*kw*cin*cout);
// both repack directions use it (host and device), so the host tests check the device's map.
RPP_CUDNN_HD inline int64_t hwio_to_ohwi_index(int64_t i, int kh, int kw, int cin, int cout) {
  const int64_t co = i % cout;
  int64_t r = i / cout;
  const int64_t ci = r % cin;
  r /= cin;
  const int64_t x = r % kw;
  const int64_t y = r / kw;
  return ((co * kh + y) * kw + x) * cin + ci;
}

// Device launchers (stream-ordered, no synchronisation). src and dst must not overlap. Both take
// the filter's (kh, kw, cin, cout), whichever direction.
void repack_hwio_to_ohwi(int kh, int kw, int cin, int cout, const float* hwio, float* ohwi,
                         cudaStream_t stream);
void repack_ohwi_to_hwio(int kh, int kw, int cin, int cout, const float* ohwi, float* hwio,
                         cudaStream_t stream);

// Host versions (plan-time repacks of host copies, tests).
void repack_hwio_to_ohwi_host(int kh, int kw, int cin, int cout, const float* hwio, float* ohwi);
void repack_ohwi_to_hwio_host(int kh, int kw, int cin, int cout, const float* ohwi, float* hwio);

// ---- algorithm choice ----

// Which algorithm families choose_algorithms may return.
enum class CudnnAlgoFamily {
  Any,      // everything cuDNN offers for the shape (implicit GEMM, FFT, Winograd, ...)
  GemmOnly  // only algorithms that form each output as a plain sum of products (implicit or
            // explicit GEMM): exact for small-integer data, unlike FFT and Winograd transforms
};

// Device buffers of this conv's real sizes that cudnnFind*Ex times the candidates on. Their
// contents are scratch: y, dx and dw are overwritten and x, w and dy are only read, so one
// buffer may serve as x and dx, and one as y and dy.
struct CudnnFindBuffers {
  const float* x = nullptr;       // (N, H, W, Cin)
  const float* w_ohwi = nullptr;  // (Cout, KH, KW, Cin)
  const float* dy = nullptr;      // (N, Ho, Wo, Cout)
  float* y = nullptr;             // (N, Ho, Wo, Cout)
  float* dx = nullptr;            // (N, H, W, Cin)
  float* dw_ohwi = nullptr;       // (Cout, KH, KW, Cin)
};

// The chosen algorithm and math type of each pass (what a plan records).
struct CudnnConvAlgos {
  cudnnConvolutionFwdAlgo_t fwd = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  cudnnConvolutionBwdDataAlgo_t bwd_data = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
  cudnnConvolutionBwdFilterAlgo_t bwd_filter = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
  cudnnMathType_t fwd_math = CUDNN_FMA_MATH;
  cudnnMathType_t bwd_data_math = CUDNN_FMA_MATH;
  cudnnMathType_t bwd_filter_math = CUDNN_FMA_MATH;
};

// One convolution shape on cuDNN, fp32 data and fp32 compute. Owns its descriptors (RAII);
// neither copyable nor movable (hold it by unique_ptr). Not thread-safe: one caller at a time,
// with a handle that is not used concurrently elsewhere.
class CudnnConv {
 public:
  // Checks the shape on the host (every size positive, the kernel fits the padded input, every
  // tensor below 2^31 elements) and creates the descriptors. Throws rpp::Error.
  explicit CudnnConv(const rpp::cpu::Conv2dShape& shape);
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  const rpp::cpu::Conv2dShape& shape() const { return shape_; }

  // Picks one algorithm per pass, the first acceptable one in cuDNN's order:
  //  * find == nullptr: cudnnGetConvolution*Algorithm_v7, cuDNN's heuristics ranking (no device
  //    work, nothing is timed; ws may be null);
  //  * find != nullptr: cudnnFindConvolution*AlgorithmEx, which runs and times every candidate
  //    on those buffers with `ws` (ws_bytes of it) as workspace, and ranks them by time. The
  //    buffers are overwritten (see CudnnFindBuffers); the stream is synchronised by cuDNN.
  // Acceptable: status success; cuDNN's workspace for it <= ws_bytes (for backward-filter,
  // ws_bytes minus the bias-gradient partials, so that workspace_bytes() <= ws_bytes always);
  // deterministic results when `deterministic` (cuDNN's determinism flag, and never
  // BWD_DATA_ALGO_0 or BWD_FILTER_ALGO_0/3, which sum with atomics); in `family`.
  // Math: allow_tf32 == false sets CUDNN_FMA_MATH, which restricts cuDNN to FMA kernels (no TF32
  // tensor cores) and rejects any candidate reporting a tensor-op math type; allow_tf32 == true
  // searches with CUDNN_DEFAULT_MATH (TF32 tensor cores allowed on sm_80+) and runs each pass
  // with the math type cuDNN reported for the chosen algorithm.
  // Throws rpp::Error naming the pass when no candidate is acceptable.
  void choose_algorithms(cudnnHandle_t handle, bool deterministic, bool allow_tf32, void* ws,
                         size_t ws_bytes, const CudnnFindBuffers* find = nullptr,
                         CudnnAlgoFamily family = CudnnAlgoFamily::Any);

  // Uses the given algorithms (e.g. a recorded plan); checks each with cuDNN's workspace query.
  void use_algorithms(cudnnHandle_t handle, const CudnnConvAlgos& algos);

  bool has_algorithms() const { return chosen_; }
  const CudnnConvAlgos& algorithms() const { return algos_; }
  // "fwd IMPLICIT_PRECOMP_GEMM/fma, bwd_data ALGO_1/fma, bwd_filter ALGO_1/fma".
  std::string describe_algorithms() const;

  // Workspace bytes (multiples of 256; valid after choosing) of each pass and their maximum,
  // the size of the one workspace every pass may share. 16-byte alignment required (the
  // planner gives 256). Contents are scratch. backward_filter's includes the bias gradient's
  // partial sums, placed after cuDNN's part.
  size_t forward_workspace_bytes() const { return fwd_ws_; }
  size_t backward_data_workspace_bytes() const { return bwd_data_ws_; }
  size_t backward_filter_workspace_bytes() const { return bwd_filter_ws_ + bias_ws_; }
  size_t workspace_bytes() const;

  // y = conv(x, w) + bias; bias may be null (no bias). Overwrites y.
  void forward(cudnnHandle_t handle, const float* x, const float* w_ohwi, const float* bias,
               float* y, void* ws) const;
  // dx = dL/dx from dy. Overwrites dx.
  void backward_data(cudnnHandle_t handle, const float* dy, const float* w_ohwi, float* dx,
                     void* ws) const;
  // dw = dL/dw (OHWI) and, when dbias is not null, dbias = sum of dy over N, Ho, Wo per channel
  // (this file's deterministic reduction: fixed row groups summed in double, in a fixed order).
  // Overwrites both.
  void backward_filter(cudnnHandle_t handle, const float* x, const float* dy, float* dw_ohwi,
                       float* dbias, void* ws) const;

 private:
  enum Pass { kFwd = 0, kBwdData = 1, kBwdFilter = 2 };
  void destroy() noexcept;
  void require_algorithms(const char* op) const;
  // Sets conv_desc_[pass] to `math` and asks cuDNN for the algorithm's workspace.
  size_t query_workspace(cudnnHandle_t handle, Pass pass, int algo, cudnnMathType_t math,
                         bool* supported);

  rpp::cpu::Conv2dShape shape_;
  cudnnTensorDescriptor_t x_desc_ = nullptr;   // (N, Cin, H, W) dims, NHWC format
  cudnnTensorDescriptor_t y_desc_ = nullptr;   // (N, Cout, Ho, Wo) dims, NHWC format
  cudnnFilterDescriptor_t w_desc_ = nullptr;   // (Cout, Cin, KH, KW) dims, NHWC format = OHWI
  cudnnConvolutionDescriptor_t conv_desc_[3] = {nullptr, nullptr, nullptr};  // one per Pass
  CudnnConvAlgos algos_;
  bool chosen_ = false;
  size_t fwd_ws_ = 0, bwd_data_ws_ = 0, bwd_filter_ws_ = 0;  // cuDNN's, rounded up to 256
  size_t bias_ws_ = 0;                                       // bias-gradient partials
};

}  // namespace rpp::cuda
