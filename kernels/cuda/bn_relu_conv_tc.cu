// kernels/cuda/bn_relu_conv_tc.cu — see bn_relu_conv_tc.cuh. The kernel itself (tiles, staging, K
// loop, epilogue statistics) is in conv_tc_forward.cuh, shared with the ASPP conv-BN sum.
#include "kernels/cuda/bn_relu_conv_tc.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/conv_tc_forward.cuh"
#include "kernels/cuda/tile_sums.cuh"
#include "kernels/cuda/wmma_math.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

using conv_tc::Dims;
using conv_tc::kBM;
using wmma_math::Bf16Math;
using wmma_math::Tf32Math;
constexpr int kReduceChannels = 32, kReduceSlots = 8, kReduceThreads = kReduceChannels * kReduceSlots;

template <class Math, bool kBnRelu, int kWarpsN, class TIn, class TOut>
void launch_forward(const Dims& d, const TIn* x, const float* gamma, const float* beta, const float* mean,
                    const float* invstd, const float* w, const float* bias, TOut* y, const TOut* res, double* part,
                    uint8_t* argmax, TOut* y_conv, const TIn* x2, cudaStream_t stream) {
  // The upsample-concat input's addressing costs registers (spills on sm_90), so it has its own
  // kernels, for the storage pairs of the graphs that read it: fp32 -> fp32, bf16 -> bf16.
  if constexpr (std::is_same<TIn, TOut>::value) {
    if (d.up_ca > 0) {
      conv_tc::conv_tc_kernel<Math, kBnRelu, kWarpsN, TIn, TOut, false, true>
          <<<conv_tc::grid_for<kWarpsN>(d), conv_tc::threads_for<kWarpsN>(), 0, stream>>>(
              d, x, gamma, beta, mean, invstd, w, bias, y, res, part, conv_tc::Branches{}, argmax, y_conv, x2);
      return;
    }
  } else if (d.up_ca > 0) {  // never the stored-input kernel on the view: it would read a as x
    fail("bn_relu_conv_tc_forward_upsample_concat: x and y must have one storage");
  }
  conv_tc::conv_tc_kernel<Math, kBnRelu, kWarpsN, TIn, TOut, false>
      <<<conv_tc::grid_for<kWarpsN>(d), conv_tc::threads_for<kWarpsN>(), 0, stream>>>(
          d, x, gamma, beta, mean, invstd, w, bias, y, res, part, conv_tc::Branches{}, argmax, y_conv, x2);
}

template <class Math, class TIn, class TOut>
void launch_math(bool bn, const Dims& d, const TIn* x, const float* gamma, const float* beta, const float* mean,
                 const float* invstd, const float* w, const float* bias, TOut* y, const void* res, double* part,
                 uint8_t* argmax, void* y_conv, const void* x2, cudaStream_t stream) {
  const bool narrow = d.cout <= 32;
  const auto* r = static_cast<const TOut*>(res);  // y's storage
  auto* yc = static_cast<TOut*>(y_conv);
  const auto* x2t = static_cast<const TIn*>(x2);  // x's storage
  if (bn && narrow)
    launch_forward<Math, true, 1>(d, x, gamma, beta, mean, invstd, w, bias, y, r, part, argmax, yc, x2t, stream);
  else if (bn)
    launch_forward<Math, true, 2>(d, x, gamma, beta, mean, invstd, w, bias, y, r, part, argmax, yc, x2t, stream);
  else if (narrow)
    launch_forward<Math, false, 1>(d, x, static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, w, bias, y, r,
                                   part, argmax, yc, x2t, stream);
  else
    launch_forward<Math, false, 2>(d, x, static_cast<const float*>(nullptr), nullptr, nullptr, nullptr, w, bias, y, r,
                                   part, argmax, yc, x2t, stream);
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
  bn_relu_conv_tc_forward(s, math, Storage::F32, x, gamma, beta, mean, invstd, w_ohwi, bias, Storage::F32, y, out_sum,
                          out_sumsq, workspace, stream);
}

void bn_relu_conv_tc_forward(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                             const float* gamma, const float* beta, const float* mean, const float* invstd,
                             const float* w_ohwi, const float* bias, Storage y_type, void* y, double* out_sum,
                             double* out_sumsq, void* workspace, cudaStream_t stream) {
  bn_relu_conv_tc_forward(s, math, x_type, x, gamma, beta, mean, invstd, w_ohwi, bias, y_type, y, nullptr, out_sum,
                          out_sumsq, workspace, stream);
}

namespace {
// Every public overload: a residual (or null), or the max-pool mode (pool, argmax or null); the
// input x, or with up_ca > 0 concat(upsample2(x), x2).
void forward_impl(const char* op, const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                  const void* x2, int up_ca, const float* gamma, const float* beta, const float* mean,
                  const float* invstd, const float* w_ohwi, const float* bias, Storage y_type, void* y,
                  const void* residual, bool multiply, void* y_conv, bool pool, uint8_t* argmax, double* out_sum,
                  double* out_sumsq, void* workspace, cudaStream_t stream) {
  if (!bn_relu_conv_tc_can_run(s, math, x_type, y_type))
    fail(op, ": unsupported shape, math or storage: n ", s.n, " h ", s.h, " w ", s.w, " cin ", s.cin, " cout ", s.cout,
         " kernel ", s.kh, "x", s.kw, " stride ", s.stride, " pad ", s.pad, " dilation ", s.dil, " math ",
         math == ConvMath::Tf32 ? "tf32" : "bf16", " x ", storage_name(x_type), " y ", storage_name(y_type),
         " (bf16 storage needs bf16 math)");
  if (pool && (s.ho() % 2 || s.wo() % 2))
    fail(op, ": a 2x2 max pool needs an even output height and width, got ", s.ho(), "x", s.wo());
  detail::check_not_null(op, {{"x", x}, {"w", w_ohwi}, {"y", y}});
  if (up_ca != 0) {
    detail::check_not_null(op, {{"b", x2}});
    if (up_ca < 0 || up_ca >= s.cin || s.h % 2 || s.w % 2)
      fail(op, ": concat(upsample2(a), b) needs 0 < ca < cin and an even height and width, got ca ", up_ca, " cin ",
           s.cin, " h ", s.h, " w ", s.w);
    if (x_type != y_type) fail(op, ": concat(upsample2(a), b) needs x and y in one storage");
    if (math == ConvMath::Bf16 && x_type == Storage::F32)
      fail(op, ": concat(upsample2(a), b) with bf16 math needs bf16 storage");
  }
  if (residual != nullptr && residual == y) fail(op, ": the residual may not be y itself");
  if (multiply && residual == nullptr) fail(op, ": no multiplier");
  if (y_conv != nullptr && (y_conv == y || y_conv == residual))
    fail(op, ": the convolution's output may not alias y or the multiplier");
  const bool bn = gamma || beta || mean || invstd;
  if (bn) detail::check_not_null(op, {{"gamma", gamma}, {"beta", beta}, {"mean", mean}, {"invstd", invstd}});
  const bool stats = out_sum || out_sumsq;
  if (stats) detail::check_workspace(op, workspace, bn_relu_conv_tc_workspace_bytes(s));

  Dims d{s.n,   s.h,    s.w,    s.cin, s.kh, s.kw,         s.cout,           s.stride, s.pad,
         s.dil, s.ho(), s.wo(), 0,     0,    pool ? 1 : 0, multiply ? 1 : 0, up_ca};
  d.m = int64_t(s.n) * d.ho * d.wo;
  d.k = s.kh * s.kw * s.cin;
  double* part = stats ? static_cast<double*>(workspace) : nullptr;
  const auto* xf = static_cast<const float*>(x);
  const auto* xh = static_cast<const bf16*>(x);
  auto* yf = static_cast<float*>(y);
  auto* yh = static_cast<bf16*>(y);
  const bool xb = x_type == Storage::Bf16, yb = y_type == Storage::Bf16;
  if (math == ConvMath::Tf32)
    launch_math<Tf32Math>(bn, d, xf, gamma, beta, mean, invstd, w_ohwi, bias, yf, residual, part, argmax, y_conv, x2,
                          stream);
  else if (!xb && !yb)
    launch_math<Bf16Math>(bn, d, xf, gamma, beta, mean, invstd, w_ohwi, bias, yf, residual, part, argmax, y_conv, x2,
                          stream);
  else if (xb && yb)
    launch_math<Bf16Math>(bn, d, xh, gamma, beta, mean, invstd, w_ohwi, bias, yh, residual, part, argmax, y_conv, x2,
                          stream);
  else if (xb)
    launch_math<Bf16Math>(bn, d, xh, gamma, beta, mean, invstd, w_ohwi, bias, yf, residual, part, argmax, y_conv, x2,
                          stream);
  else
    launch_math<Bf16Math>(bn, d, xf, gamma, beta, mean, invstd, w_ohwi, bias, yh, residual, part, argmax, y_conv, x2,
                          stream);
  RPP_CUDA_CHECK_LAUNCH(op);
  if (stats) {
    const unsigned blocks = unsigned((s.cout + kReduceChannels - 1) / kReduceChannels);
    tile_sums::sum_tile_partials_kernel<kReduceChannels, kReduceSlots>
        <<<blocks, kReduceThreads, 0, stream>>>(part, pixel_tiles(s), s.cout, nullptr, out_sum, out_sumsq);
    RPP_CUDA_CHECK_LAUNCH(op);
  }
}
}  // namespace

void bn_relu_conv_tc_forward(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                             const float* gamma, const float* beta, const float* mean, const float* invstd,
                             const float* w_ohwi, const float* bias, Storage y_type, void* y, const void* residual,
                             double* out_sum, double* out_sumsq, void* workspace, cudaStream_t stream) {
  forward_impl("bn_relu_conv_tc_forward", s, math, x_type, x, nullptr, 0, gamma, beta, mean, invstd, w_ohwi, bias,
               y_type, y, residual, false, nullptr, false, nullptr, out_sum, out_sumsq, workspace, stream);
}

void bn_relu_conv_tc_forward_maxpool(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                                     const float* gamma, const float* beta, const float* mean, const float* invstd,
                                     const float* w_ohwi, const float* bias, Storage y_type, void* y, uint8_t* argmax,
                                     double* out_sum, double* out_sumsq, void* workspace, cudaStream_t stream) {
  forward_impl("bn_relu_conv_tc_forward_maxpool", s, math, x_type, x, nullptr, 0, gamma, beta, mean, invstd, w_ohwi,
               bias, y_type, y, nullptr, false, nullptr, true, argmax, out_sum, out_sumsq, workspace, stream);
}

void bn_relu_conv_tc_forward_mul(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                                 const float* gamma, const float* beta, const float* mean, const float* invstd,
                                 const float* w_ohwi, const float* bias, Storage y_type, void* y,
                                 const void* multiplier, void* conv_out, double* out_sum, double* out_sumsq,
                                 void* workspace, cudaStream_t stream) {
  forward_impl("bn_relu_conv_tc_forward_mul", s, math, x_type, x, nullptr, 0, gamma, beta, mean, invstd, w_ohwi, bias,
               y_type, y, multiplier, true, conv_out, false, nullptr, out_sum, out_sumsq, workspace, stream);
}

void bn_relu_conv_tc_forward_upsample_concat(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* a,
                                             const void* b, int ca, const float* gamma, const float* beta,
                                             const float* mean, const float* invstd, const float* w_ohwi,
                                             const float* bias, Storage y_type, void* y, double* out_sum,
                                             double* out_sumsq, void* workspace, cudaStream_t stream) {
  const char* op = "bn_relu_conv_tc_forward_upsample_concat";
  if (ca == 0) fail(op, ": ca must be positive, got 0");
  forward_impl(op, s, math, x_type, a, b, ca, gamma, beta, mean, invstd, w_ohwi, bias, y_type, y, nullptr, false,
               nullptr, false, nullptr, out_sum, out_sumsq, workspace, stream);
}

}  // namespace rpp::cuda
