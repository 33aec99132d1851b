// kernels/cuda/cudnn/conv_cudnn.cu — the cuDNN fallback convolution (CudnnConv), the HWIO <-> OHWI
// weight repacks and the bias kernels. See conv_cudnn.cuh for the API and layouts;
// tests/gpu/test_conv_gpu.cpp checks everything against kernels/cpu/conv2d.h.
//
// cuDNN's legacy convolution API (cudnn_cnn.h), fp32 data, fp32 compute:
//  * tensors are described with dims in (N, C, H, W) order and format CUDNN_TENSOR_NHWC, which
//    makes the memory order (N, H, W, C); the filter with dims (K=Cout, C=Cin, R=KH, S=KW) and
//    format NHWC, memory order (K, R, S, C) = OHWI;
//  * one convolution descriptor per pass (same geometry: pad, stride, dilation, cross-correlation
//    as PyTorch and the CPU reference), so each pass can carry the math type of its algorithm.
// Bias add and bias gradient are this file's kernels: the bias gradient needs no cuDNN call
// (cudnnConvolutionBackwardBias is deprecated in cuDNN 9) and is deterministic by construction:
//   partial: block (g, t) sums rows [g R, (g+1) R) of channel tile t: thread (lc, lr) owns
//            channel lc of the tile and rows lr, lr + rs, ... (kBiasRowIters of them), in double;
//            thread lr = 0 then adds the rs lanes in lane order -> part[g][c];
//   finalize: one block per channel; thread i sums groups i, i + 256, ... then a fixed tree.
// The partition depends only on (N*Ho*Wo, Cout), so repeated runs give the same bits.
#include "kernels/cuda/cudnn/conv_cudnn.cuh"

#include <cuda_runtime.h>

#include <algorithm>
#include <initializer_list>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cuda/check.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace detail {

void cudnn_fail(cudnnStatus_t status, const char* call, const char* file, int line) {
  std::string more;
#if CUDNN_MAJOR >= 9
  char last[512] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  if (last[0] != '\0') more = std::string(" [") + last + "]";
#endif
  ::rpp::fail(call, " failed: ", cudnnGetErrorString(status), more, " (", file, ":", line, ")");
}

}  // namespace detail

namespace {

using detail::check_not_null;
using detail::check_workspace;
using detail::launch_flat;
using detail::round_up;

constexpr size_t kWsRound = 256;
constexpr int64_t kMaxElems = int64_t(1) << 31;  // cuDNN's 4-d descriptors index with int

// ---- repack ----

struct HwioToOhwi {
  const float* src;
  float* dst;
  int kh, kw, cin, cout;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    dst[hwio_to_ohwi_index(int64_t(i), kh, kw, cin, cout)] = src[i];
  }
};

struct OhwiToHwio {
  const float* src;
  float* dst;
  int kh, kw, cin, cout;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    dst[i] = src[hwio_to_ohwi_index(int64_t(i), kh, kw, cin, cout)];
  }
};

// a * b * ... < limit, without overflow (every factor positive).
bool product_below(std::initializer_list<int64_t> factors, int64_t limit) {
  int64_t p = 1;
  for (int64_t f : factors) {
    if (f <= 0 || p > (limit - 1) / f) return false;
    p *= f;
  }
  return p < limit;
}

int64_t filter_count(const char* op, int kh, int kw, int cin, int cout) {
  if (kh <= 0 || kw <= 0 || cin <= 0 || cout <= 0)
    fail(op, ": filter dims must be positive, got kh ", kh, ", kw ", kw, ", cin ", cin, ", cout ",
         cout);
  if (!product_below({kh, kw, cin, cout}, int64_t(1) << 40))
    fail(op, ": filter of ", kh, "x", kw, "x", cin, "x", cout, " elements is too large");
  return int64_t(kh) * kw * cin * cout;
}

void check_no_overlap(const char* op, const float* a, const float* b, int64_t n) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  const auto bytes = uintptr_t(n) * sizeof(float);
  if (pa < pb + bytes && pb < pa + bytes) fail(op, ": source and destination overlap");
}

// ---- bias ----

struct AddBias {
  float* y;
  const float* bias;
  int c;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    y[i] += bias[i % Idx(c)];
  }
};

constexpr int kBiasThreads = 256;   // both kernels; the finalize tree assumes a power of two
constexpr int kBiasRowIters = 32;   // rows per thread in a partial block
constexpr int kBiasTile = 32;       // channels per partial block (one warp's width)

struct BiasTiling {
  int tc;          // channels per block: min(c, 32)
  int rs;          // row lanes: kBiasThreads / tc
  int tiles;       // ceil(c / tc)
  int64_t rows;    // rows per group: rs * kBiasRowIters
  int64_t groups;  // ceil(m / rows)
};

BiasTiling bias_tiling(int64_t m, int c) {
  BiasTiling t{};
  t.tc = std::min(c, kBiasTile);
  t.rs = kBiasThreads / t.tc;
  t.tiles = (c + t.tc - 1) / t.tc;
  t.rows = int64_t(t.rs) * kBiasRowIters;
  t.groups = (m + t.rows - 1) / t.rows;
  return t;
}

size_t bias_partials_bytes(int64_t m, int c) {
  const BiasTiling t = bias_tiling(m, c);
  return round_up(size_t(t.groups) * size_t(c) * sizeof(double), kWsRound);
}

// dy (m, c) -> part (groups, c).
__global__ void __launch_bounds__(kBiasThreads)
    bias_grad_partial(const float* __restrict__ dy, int64_t m, int c, BiasTiling t,
                      double* __restrict__ part) {
  __shared__ double lanes[kBiasThreads];
  const int tid = int(threadIdx.x);
  const int lc = tid % t.tc, lr = tid / t.tc;
  const int ch = int(blockIdx.y) * t.tc + lc;
  const int64_t g = int64_t(blockIdx.x);
  double s = 0.0;
  if (lr < t.rs && ch < c) {
    const int64_t r0 = g * t.rows + lr;
    for (int k = 0; k < kBiasRowIters; ++k) {
      const int64_t r = r0 + int64_t(k) * t.rs;
      if (r >= m) break;
      s += double(dy[r * c + ch]);
    }
  }
  lanes[tid] = s;
  __syncthreads();
  if (lr == 0 && ch < c) {
    double total = 0.0;
    for (int j = 0; j < t.rs; ++j) total += lanes[j * t.tc + lc];
    part[g * c + ch] = total;
  }
}

// part (groups, c) -> dbias (c); one block per channel.
__global__ void __launch_bounds__(kBiasThreads)
    bias_grad_finalize(const double* __restrict__ part, int64_t groups, int c,
                       float* __restrict__ dbias) {
  __shared__ double lanes[kBiasThreads];
  const int ch = int(blockIdx.x);
  const int tid = int(threadIdx.x);
  double s = 0.0;
  for (int64_t g = tid; g < groups; g += kBiasThreads) s += part[g * c + ch];
  lanes[tid] = s;
  __syncthreads();
  for (int step = kBiasThreads / 2; step > 0; step >>= 1) {
    if (tid < step) lanes[tid] += lanes[tid + step];
    __syncthreads();
  }
  if (tid == 0) dbias[ch] = float(lanes[0]);
}

// ---- cuDNN helpers ----

cudaStream_t handle_stream(cudnnHandle_t handle) {
  cudaStream_t s = nullptr;
  RPP_CUDNN_CHECK(cudnnGetStream(handle, &s));
  return s;
}

const char* fwd_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return "IMPLICIT_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return "IMPLICIT_PRECOMP_GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: return "GEMM";
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return "DIRECT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING: return "FFT_TILING";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD: return "WINOGRAD";
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
    default: return "?";
  }
}

const char* bwd_data_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_0: return "ALGO_0";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1: return "ALGO_1";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING: return "FFT_TILING";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD: return "WINOGRAD";
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
    default: return "?";
  }
}

const char* bwd_filter_name(int a) {
  switch (a) {
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0: return "ALGO_0";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1: return "ALGO_1";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT: return "FFT";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3: return "ALGO_3";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD: return "WINOGRAD";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED: return "WINOGRAD_NONFUSED";
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING: return "FFT_TILING";
    default: return "?";
  }
}

const char* math_name(cudnnMathType_t m) {
  switch (m) {
    case CUDNN_DEFAULT_MATH: return "default";
    case CUDNN_TENSOR_OP_MATH: return "tensor_op";
    case CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION: return "tensor_op_conv";
    case CUDNN_FMA_MATH: return "fma";
    default: return "?";
  }
}

const char* status_name(cudnnStatus_t s) { return cudnnGetErrorString(s); }

// Pass-specific facts for the selection filter (pass index as in CudnnConv::Pass).
const char* pass_name(int pass) {
  return pass == 0 ? "forward" : pass == 1 ? "backward-data" : "backward-filter";
}

const char* algo_name(int pass, int algo) {
  return pass == 0 ? fwd_name(algo) : pass == 1 ? bwd_data_name(algo) : bwd_filter_name(algo);
}

// Summed with atomics: results vary from run to run.
bool known_nondeterministic(int pass, int algo) {
  if (pass == 1) return algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0;
  if (pass == 2)
    return algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
  return false;
}

// Plain sums of products (no FFT or Winograd transform).
bool gemm_family(int pass, int algo) {
  switch (pass) {
    case 0:
      return algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM ||
             algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
             algo == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || algo == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
    case 1:
      return algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    default:
      return algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 ||
             algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
             algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
  }
}

bool tensor_op_math(cudnnMathType_t m) {
  return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

struct Choice {
  int algo = -1;
  cudnnMathType_t math = CUDNN_FMA_MATH;
  size_t ws = 0;
};

struct Policy {
  bool deterministic;
  bool allow_tf32;
  CudnnAlgoFamily family;
};

// The first acceptable entry of a cuDNN perf list (heuristic or timed order). `query(algo, math,
// &supported)` gives cuDNN's workspace for the algorithm under that math type. On failure the
// message lists every candidate and why it was refused.
template <class Perf, class Query>
Choice pick(int pass, const std::vector<Perf>& perfs, int returned,
            const Policy& pol, size_t limit, const Query& query) {
  std::ostringstream why;
  for (int i = 0; i < returned; ++i) {
    const Perf& p = perfs[size_t(i)];
    const int algo = int(p.algo);
    why << "\n  " << algo_name(pass, algo) << "/" << math_name(p.mathType) << ": ";
    if (p.status != CUDNN_STATUS_SUCCESS) {
      why << status_name(p.status);
      continue;
    }
    if (pol.deterministic &&
        (p.determinism != CUDNN_DETERMINISTIC || known_nondeterministic(pass, algo))) {
      why << "not deterministic";
      continue;
    }
    if (pol.family == CudnnAlgoFamily::GemmOnly && !gemm_family(pass, algo)) {
      why << "not a GEMM algorithm";
      continue;
    }
    if (!pol.allow_tf32 && tensor_op_math(p.mathType)) {
      why << "tensor-op math with TF32 disallowed";
      continue;
    }
    const cudnnMathType_t math = pol.allow_tf32 ? p.mathType : CUDNN_FMA_MATH;
    bool supported = false;
    const size_t ws = query(algo, math, &supported);
    if (!supported) {
      why << "workspace query refused";
      continue;
    }
    if (ws > limit) {
      why << "needs " << ws << " workspace bytes, limit " << limit;
      continue;
    }
    return Choice{algo, math, ws};
  }
  fail("CudnnConv::choose_algorithms: no acceptable ", pass_name(pass), " algorithm (deterministic ",
       pol.deterministic, ", allow_tf32 ", pol.allow_tf32, ", gemm only ",
       pol.family == CudnnAlgoFamily::GemmOnly, ", workspace limit ", limit, " bytes); cuDNN offered ",
       returned, ":", why.str());
}

}  // namespace

// ---- repack launchers ----

void repack_hwio_to_ohwi(int kh, int kw, int cin, int cout, const float* hwio, float* ohwi,
                         cudaStream_t stream) {
  const char* op = "repack_hwio_to_ohwi";
  const int64_t n = filter_count(op, kh, kw, cin, cout);
  check_not_null(op, {{"hwio", hwio}, {"ohwi", ohwi}});
  check_no_overlap(op, hwio, ohwi, n);
  launch_flat(op, n, HwioToOhwi{hwio, ohwi, kh, kw, cin, cout}, stream);
}

void repack_ohwi_to_hwio(int kh, int kw, int cin, int cout, const float* ohwi, float* hwio,
                         cudaStream_t stream) {
  const char* op = "repack_ohwi_to_hwio";
  const int64_t n = filter_count(op, kh, kw, cin, cout);
  check_not_null(op, {{"ohwi", ohwi}, {"hwio", hwio}});
  check_no_overlap(op, ohwi, hwio, n);
  launch_flat(op, n, OhwiToHwio{ohwi, hwio, kh, kw, cin, cout}, stream);
}

void repack_hwio_to_ohwi_host(int kh, int kw, int cin, int cout, const float* hwio, float* ohwi) {
  const int64_t n = filter_count("repack_hwio_to_ohwi_host", kh, kw, cin, cout);
  for (int64_t i = 0; i < n; ++i) ohwi[hwio_to_ohwi_index(i, kh, kw, cin, cout)] = hwio[i];
}

void repack_ohwi_to_hwio_host(int kh, int kw, int cin, int cout, const float* ohwi, float* hwio) {
  const int64_t n = filter_count("repack_ohwi_to_hwio_host", kh, kw, cin, cout);
  for (int64_t i = 0; i < n; ++i) hwio[i] = ohwi[hwio_to_ohwi_index(i, kh, kw, cin, cout)];
}

// ---- CudnnConv ----

CudnnConv::CudnnConv(const rpp::cpu::Conv2dShape& s) : shape_(s) {
  const char* op = "CudnnConv";
  if (s.n < 1 || s.h < 1 || s.w < 1 || s.cin < 1 || s.cout < 1)
    fail(op, ": sizes must be positive, got n ", s.n, ", h ", s.h, ", w ", s.w, ", cin ", s.cin,
         ", cout ", s.cout);
  if (s.kh < 1 || s.kw < 1 || s.stride < 1 || s.dil < 1 || s.pad < 0)
    fail(op, ": need kh, kw, stride, dilation >= 1 and pad >= 0, got kernel ", s.kh, "x", s.kw,
         ", stride ", s.stride, ", dilation ", s.dil, ", pad ", s.pad);
  // Keeps the shape's own int arithmetic (Conv2dShape::out_size) free of overflow.
  if (int64_t(std::max(s.h, s.w)) + 2 * int64_t(s.pad) >= kMaxElems ||
      int64_t(s.dil) * (std::max(s.kh, s.kw) - 1) >= kMaxElems)
    fail(op, ": padding or dilated kernel extent out of range (pad ", s.pad, ", dilation ", s.dil,
         ", kernel ", s.kh, "x", s.kw, ")");
  const auto out = [&](int in, int k) {
    const int64_t span = int64_t(in) + 2 * int64_t(s.pad) - int64_t(s.dil) * (k - 1) - 1;
    return span < 0 ? int64_t(0) : span / s.stride + 1;
  };
  const int64_t ho = out(s.h, s.kh), wo = out(s.w, s.kw);
  if (ho < 1 || wo < 1)
    fail(op, ": the dilated ", s.kh, "x", s.kw, " kernel (dilation ", s.dil,
         ") does not fit the padded ", s.h, "x", s.w, " input (pad ", s.pad, ")");
  if (!product_below({s.n, s.h, s.w, s.cin}, kMaxElems) ||
      !product_below({s.n, ho, wo, s.cout}, kMaxElems) ||
      !product_below({s.kh, s.kw, s.cin, s.cout}, kMaxElems))
    fail(op, ": a tensor of this conv has 2^31 elements or more (n ", s.n, ", ", s.h, "x", s.w,
         "x", s.cin, " -> ", ho, "x", wo, "x", s.cout, ")");
  if (ho != s.ho() || wo != s.wo())
    fail(op, ": output size ", ho, "x", wo, " differs from the reference's ", s.ho(), "x", s.wo());
  const BiasTiling bt = bias_tiling(int64_t(s.n) * ho * wo, s.cout);
  if (bt.tiles > 65535) fail(op, ": too many output channels for the bias gradient: ", s.cout);
  bias_ws_ = bias_partials_bytes(int64_t(s.n) * ho * wo, s.cout);

  try {
    RPP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x_desc_));
    RPP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x_desc_, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s.n,
                                               s.cin, s.h, s.w));
    RPP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y_desc_));
    RPP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(y_desc_, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s.n,
                                               s.cout, int(ho), int(wo)));
    RPP_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w_desc_));
    // Note the argument order: data type before format here, format first for tensors.
    RPP_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w_desc_, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC,
                                               s.cout, s.cin, s.kh, s.kw));
    for (cudnnConvolutionDescriptor_t& d : conv_desc_) {
      RPP_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&d));
      RPP_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(d, s.pad, s.pad, s.stride, s.stride, s.dil,
                                                      s.dil, CUDNN_CROSS_CORRELATION,
                                                      CUDNN_DATA_FLOAT));
      RPP_CUDNN_CHECK(cudnnSetConvolutionMathType(d, CUDNN_FMA_MATH));
    }
    int dn = 0, dc = 0, dh = 0, dw = 0;
    RPP_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(conv_desc_[kFwd], x_desc_, w_desc_, &dn,
                                                          &dc, &dh, &dw));
    if (dn != s.n || dc != s.cout || dh != ho || dw != wo)
      fail(op, ": cuDNN computes an output of (n ", dn, ", c ", dc, ", h ", dh, ", w ", dw,
           "), the reference (n ", s.n, ", c ", s.cout, ", h ", ho, ", w ", wo, ")");
  } catch (...) {
    destroy();
    throw;
  }
}

CudnnConv::~CudnnConv() { destroy(); }

// Non-throwing: a destroy only fails for a null or invalid descriptor, and none is.
void CudnnConv::destroy() noexcept {
  for (cudnnConvolutionDescriptor_t& d : conv_desc_) {
    if (d) (void)cudnnDestroyConvolutionDescriptor(d);
    d = nullptr;
  }
  if (w_desc_) (void)cudnnDestroyFilterDescriptor(w_desc_);
  if (y_desc_) (void)cudnnDestroyTensorDescriptor(y_desc_);
  if (x_desc_) (void)cudnnDestroyTensorDescriptor(x_desc_);
  w_desc_ = nullptr;
  y_desc_ = nullptr;
  x_desc_ = nullptr;
}

size_t CudnnConv::query_workspace(cudnnHandle_t handle, Pass pass, int algo, cudnnMathType_t math,
                                  bool* supported) {
  size_t bytes = 0;
  cudnnStatus_t st = cudnnSetConvolutionMathType(conv_desc_[pass], math);
  if (st == CUDNN_STATUS_SUCCESS) {
    switch (pass) {
      case kFwd:
        st = cudnnGetConvolutionForwardWorkspaceSize(handle, x_desc_, w_desc_, conv_desc_[kFwd],
                                                     y_desc_, cudnnConvolutionFwdAlgo_t(algo),
                                                     &bytes);
        break;
      case kBwdData:
        st = cudnnGetConvolutionBackwardDataWorkspaceSize(
            handle, w_desc_, y_desc_, conv_desc_[kBwdData], x_desc_,
            cudnnConvolutionBwdDataAlgo_t(algo), &bytes);
        break;
      case kBwdFilter:
        st = cudnnGetConvolutionBackwardFilterWorkspaceSize(
            handle, x_desc_, y_desc_, conv_desc_[kBwdFilter], w_desc_,
            cudnnConvolutionBwdFilterAlgo_t(algo), &bytes);
        break;
    }
  }
  *supported = st == CUDNN_STATUS_SUCCESS;
  return round_up(bytes, kWsRound);
}

void CudnnConv::choose_algorithms(cudnnHandle_t handle, bool deterministic, bool allow_tf32,
                                  void* ws, size_t ws_bytes, const CudnnFindBuffers* find,
                                  CudnnAlgoFamily family) {
  const char* op = "CudnnConv::choose_algorithms";
  check_not_null(op, {{"handle", handle}});
  if (find) {
    check_not_null(op, {{"find->x", find->x}, {"find->w_ohwi", find->w_ohwi}, {"find->dy", find->dy},
                        {"find->y", find->y}, {"find->dx", find->dx}, {"find->dw_ohwi", find->dw_ohwi}});
    check_workspace(op, ws, ws_bytes);
  }
  if (ws_bytes < bias_ws_)
    fail(op, ": the workspace limit (", ws_bytes, " bytes) is below the bias gradient's ", bias_ws_,
         " bytes");
  chosen_ = false;
  const Policy pol{deterministic, allow_tf32, family};
  const cudnnMathType_t search_math = allow_tf32 ? CUDNN_DEFAULT_MATH : CUDNN_FMA_MATH;
  for (cudnnConvolutionDescriptor_t d : conv_desc_)
    RPP_CUDNN_CHECK(cudnnSetConvolutionMathType(d, search_math));
  // Backward-filter's cuDNN part shares the limit with the bias partials placed after it.
  const size_t filter_limit = (ws_bytes - bias_ws_) / kWsRound * kWsRound;
  const auto query = [&](Pass pass) {
    return [this, handle, pass](int algo, cudnnMathType_t math, bool* ok) {
      return query_workspace(handle, pass, algo, math, ok);
    };
  };
  // Each pick may leave a descriptor at a candidate's math type: reset before each search.
  const auto reset_math = [&](Pass pass) {
    RPP_CUDNN_CHECK(cudnnSetConvolutionMathType(conv_desc_[pass], search_math));
  };

  int count = 0, got = 0;
  Choice fwd, bwd_data, bwd_filter;
  {
    RPP_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithmMaxCount(handle, &count));
    std::vector<cudnnConvolutionFwdAlgoPerf_t> perf(size_t(std::max(count, 1)));
    if (find)
      RPP_CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithmEx(
          handle, x_desc_, find->x, w_desc_, find->w_ohwi, conv_desc_[kFwd], y_desc_, find->y,
          count, &got, perf.data(), ws, ws_bytes));
    else
      RPP_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(
          handle, x_desc_, w_desc_, conv_desc_[kFwd], y_desc_, count, &got, perf.data()));
    fwd = pick(kFwd, perf, got, pol, ws_bytes, query(kFwd));
  }
  {
    reset_math(kBwdData);
    RPP_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithmMaxCount(handle, &count));
    std::vector<cudnnConvolutionBwdDataAlgoPerf_t> perf(size_t(std::max(count, 1)));
    if (find)
      RPP_CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithmEx(
          handle, w_desc_, find->w_ohwi, y_desc_, find->dy, conv_desc_[kBwdData], x_desc_,
          find->dx, count, &got, perf.data(), ws, ws_bytes));
    else
      RPP_CUDNN_CHECK(cudnnGetConvolutionBackwardDataAlgorithm_v7(
          handle, w_desc_, y_desc_, conv_desc_[kBwdData], x_desc_, count, &got, perf.data()));
    bwd_data = pick(kBwdData, perf, got, pol, ws_bytes, query(kBwdData));
  }
  {
    reset_math(kBwdFilter);
    RPP_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(handle, &count));
    std::vector<cudnnConvolutionBwdFilterAlgoPerf_t> perf(size_t(std::max(count, 1)));
    if (find)
      RPP_CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithmEx(
          handle, x_desc_, find->x, y_desc_, find->dy, conv_desc_[kBwdFilter], w_desc_,
          find->dw_ohwi, count, &got, perf.data(), ws, filter_limit));
    else
      RPP_CUDNN_CHECK(cudnnGetConvolutionBackwardFilterAlgorithm_v7(
          handle, x_desc_, y_desc_, conv_desc_[kBwdFilter], w_desc_, count, &got, perf.data()));
    bwd_filter = pick(kBwdFilter, perf, got, pol, filter_limit, query(kBwdFilter));
  }

  CudnnConvAlgos a;
  a.fwd = cudnnConvolutionFwdAlgo_t(fwd.algo);
  a.bwd_data = cudnnConvolutionBwdDataAlgo_t(bwd_data.algo);
  a.bwd_filter = cudnnConvolutionBwdFilterAlgo_t(bwd_filter.algo);
  a.fwd_math = fwd.math;
  a.bwd_data_math = bwd_data.math;
  a.bwd_filter_math = bwd_filter.math;
  use_algorithms(handle, a);
}

void CudnnConv::use_algorithms(cudnnHandle_t handle, const CudnnConvAlgos& a) {
  const char* op = "CudnnConv::use_algorithms";
  check_not_null(op, {{"handle", handle}});
  chosen_ = false;
  const struct {
    Pass pass;
    int algo;
    cudnnMathType_t math;
    size_t* ws;
  } passes[] = {{kFwd, int(a.fwd), a.fwd_math, &fwd_ws_},
                {kBwdData, int(a.bwd_data), a.bwd_data_math, &bwd_data_ws_},
                {kBwdFilter, int(a.bwd_filter), a.bwd_filter_math, &bwd_filter_ws_}};
  for (const auto& p : passes) {
    bool ok = false;
    // Leaves the descriptor at the pass's math type: what the pass then runs with.
    *p.ws = query_workspace(handle, p.pass, p.algo, p.math, &ok);
    if (!ok)
      fail(op, ": cuDNN does not support ", pass_name(int(p.pass)), " algorithm ",
           algo_name(int(p.pass), p.algo), "/", math_name(p.math), " for this convolution");
  }
  algos_ = a;
  chosen_ = true;
}

std::string CudnnConv::describe_algorithms() const {
  if (!chosen_) return "(no algorithms chosen)";
  std::ostringstream s;
  s << "fwd " << fwd_name(algos_.fwd) << "/" << math_name(algos_.fwd_math) << ", bwd_data "
    << bwd_data_name(algos_.bwd_data) << "/" << math_name(algos_.bwd_data_math) << ", bwd_filter "
    << bwd_filter_name(algos_.bwd_filter) << "/" << math_name(algos_.bwd_filter_math);
  return s.str();
}

size_t CudnnConv::workspace_bytes() const {
  return std::max({fwd_ws_, bwd_data_ws_, bwd_filter_ws_ + bias_ws_});
}

void CudnnConv::require_algorithms(const char* op) const {
  if (!chosen_) fail(op, ": call choose_algorithms or use_algorithms first");
}

void CudnnConv::forward(cudnnHandle_t handle, const float* x, const float* w_ohwi,
                        const float* bias, float* y, void* ws) const {
  const char* op = "CudnnConv::forward";
  require_algorithms(op);
  check_not_null(op, {{"handle", handle}, {"x", x}, {"w_ohwi", w_ohwi}, {"y", y}});
  check_workspace(op, ws, fwd_ws_);
  const float one = 1.f, zero = 0.f;  // beta 0: y is write-only (may hold NaN)
  RPP_CUDNN_CHECK(cudnnConvolutionForward(handle, &one, x_desc_, x, w_desc_, w_ohwi,
                                          conv_desc_[kFwd], algos_.fwd, ws, fwd_ws_, &zero,
                                          y_desc_, y));
  if (bias) {
    const int64_t n = int64_t(shape_.n) * shape_.ho() * shape_.wo() * shape_.cout;
    launch_flat("CudnnConv::forward bias", n, AddBias{y, bias, shape_.cout}, handle_stream(handle));
  }
}

void CudnnConv::backward_data(cudnnHandle_t handle, const float* dy, const float* w_ohwi,
                              float* dx, void* ws) const {
  const char* op = "CudnnConv::backward_data";
  require_algorithms(op);
  check_not_null(op, {{"handle", handle}, {"dy", dy}, {"w_ohwi", w_ohwi}, {"dx", dx}});
  check_workspace(op, ws, bwd_data_ws_);
  const float one = 1.f, zero = 0.f;
  RPP_CUDNN_CHECK(cudnnConvolutionBackwardData(handle, &one, w_desc_, w_ohwi, y_desc_, dy,
                                               conv_desc_[kBwdData], algos_.bwd_data, ws,
                                               bwd_data_ws_, &zero, x_desc_, dx));
}

void CudnnConv::backward_filter(cudnnHandle_t handle, const float* x, const float* dy,
                                float* dw_ohwi, float* dbias, void* ws) const {
  const char* op = "CudnnConv::backward_filter";
  require_algorithms(op);
  check_not_null(op, {{"handle", handle}, {"x", x}, {"dy", dy}, {"dw_ohwi", dw_ohwi}});
  check_workspace(op, ws, bwd_filter_ws_ + (dbias ? bias_ws_ : 0));
  const float one = 1.f, zero = 0.f;
  RPP_CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, &one, x_desc_, x, y_desc_, dy,
                                                 conv_desc_[kBwdFilter], algos_.bwd_filter, ws,
                                                 bwd_filter_ws_, &zero, w_desc_, dw_ohwi));
  if (!dbias) return;
  const int64_t m = int64_t(shape_.n) * shape_.ho() * shape_.wo();
  const int c = shape_.cout;
  const BiasTiling t = bias_tiling(m, c);
  double* part = reinterpret_cast<double*>(static_cast<unsigned char*>(ws) + bwd_filter_ws_);
  const cudaStream_t stream = handle_stream(handle);
  const dim3 grid(unsigned(t.groups), unsigned(t.tiles));
  bias_grad_partial<<<grid, kBiasThreads, 0, stream>>>(dy, m, c, t, part);
  RPP_CUDA_CHECK_LAUNCH("CudnnConv::backward_filter bias partial");
  bias_grad_finalize<<<unsigned(c), kBiasThreads, 0, stream>>>(part, t.groups, c, dbias);
  RPP_CUDA_CHECK_LAUNCH("CudnnConv::backward_filter bias finalize");
}

}  // namespace rpp::cuda
