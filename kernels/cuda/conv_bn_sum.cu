// kernels/cuda/conv_bn_sum.cu — see conv_bn_sum.cuh; the kernel is conv_tc_forward.cuh's
// branch-sum mode.
#include "kernels/cuda/conv_bn_sum.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <string>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/conv_tc_forward.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

static_assert(kConvBnSumMaxBranches == conv_tc::kMaxBranches, "one limit");

template <class Math, int kWarpsN, class TIn, class TOut>
void launch(const conv_tc::Dims& d, const TIn* x, TOut* y, const conv_tc::Branches& br, cudaStream_t stream) {
  conv_tc::conv_tc_kernel<Math, false, kWarpsN, TIn, TOut, true>
      <<<conv_tc::grid_for<kWarpsN>(d), conv_tc::threads_for<kWarpsN>(), 0, stream>>>(
          d, x, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, y, static_cast<const TOut*>(nullptr), nullptr,
          br, nullptr, nullptr, static_cast<const TIn*>(nullptr));
}

template <class Math, class TIn, class TOut>
void launch_math(const conv_tc::Dims& d, const TIn* x, TOut* y, const conv_tc::Branches& br, cudaStream_t stream) {
  if (d.cout <= 32)
    launch<Math, 1>(d, x, y, br, stream);
  else
    launch<Math, 2>(d, x, y, br, stream);
}

}  // namespace

bool conv_bn_sum_tc_can_run(const cpu::Conv2dShape* shapes, int count, ConvMath math, Storage x_type,
                            Storage y_type) {
  if (shapes == nullptr || count < 1 || count > kConvBnSumMaxBranches) return false;
  const cpu::Conv2dShape& a = shapes[0];
  for (int b = 0; b < count; ++b) {
    const cpu::Conv2dShape& s = shapes[b];
    if (!bn_relu_conv_tc_can_run(s, math, x_type, y_type)) return false;
    if (s.n != a.n || s.h != a.h || s.w != a.w || s.cin != a.cin || s.cout != a.cout || s.kh != a.kh ||
        s.kw != a.kw || s.stride != a.stride || s.ho() != a.ho() || s.wo() != a.wo())
      return false;
  }
  return int64_t(count) * a.kh * a.kw * a.cin < (int64_t(1) << 30);
}

void conv_bn_sum_tc_forward(const ConvBnBranch* branches, int count, double eps, ConvMath math, Storage x_type,
                            const void* x, Storage y_type, void* y, cudaStream_t stream) {
  const char* op = "conv_bn_sum_tc_forward";
  if (branches == nullptr || count < 1 || count > kConvBnSumMaxBranches)
    fail(op, ": ", count, " branches given; 1 to ", kConvBnSumMaxBranches, " are supported");
  cpu::Conv2dShape shapes[kConvBnSumMaxBranches];
  for (int b = 0; b < count; ++b) shapes[b] = branches[b].shape;
  if (!conv_bn_sum_tc_can_run(shapes, count, math, x_type, y_type)) {
    const cpu::Conv2dShape& s = shapes[0];
    fail(op, ": unsupported branches, math or storage: ", count, " branches, n ", s.n, " h ", s.h, " w ", s.w,
         " cin ", s.cin, " cout ", s.cout, " kernel ", s.kh, "x", s.kw, " stride ", s.stride, ", math ",
         math == ConvMath::Tf32 ? "tf32" : "bf16", " x ", storage_name(x_type), " y ", storage_name(y_type),
         " (the branches must share every dimension but padding and dilation; bf16 storage needs bf16 math)");
  }
  if (!(eps >= 0.0)) fail(op, ": eps must be >= 0, got ", eps);
  detail::check_not_null(op, {{"x", x}, {"y", y}});
  conv_tc::Branches br;
  br.count = count;
  br.eps = eps;
  for (int b = 0; b < count; ++b) {
    const ConvBnBranch& c = branches[b];
    const std::string where = std::string(op) + " (branch " + std::to_string(b) + ")";
    detail::check_not_null(where.c_str(), {{"w", c.w_ohwi}, {"gamma", c.gamma}, {"beta", c.beta}, {"running_mean", c.running_mean},
                                {"running_var", c.running_var}});
    br.pad[b] = c.shape.pad;
    br.dil[b] = c.shape.dil;
    br.w[b] = c.w_ohwi;
    br.bias[b] = c.bias;
    br.gamma[b] = c.gamma;
    br.beta[b] = c.beta;
    br.mean[b] = c.running_mean;
    br.var[b] = c.running_var;
  }
  const cpu::Conv2dShape& s = shapes[0];
  conv_tc::Dims d{s.n, s.h, s.w, s.cin, s.kh, s.kw, s.cout, s.stride, 0, 1, s.ho(), s.wo(), 0, 0, 0, 0, 0};
  d.m = int64_t(s.n) * d.ho * d.wo;
  d.k = count * s.kh * s.kw * s.cin;
  const bool xb = x_type == Storage::Bf16, yb = y_type == Storage::Bf16;
  if (math == ConvMath::Tf32)
    launch_math<wmma_math::Tf32Math>(d, static_cast<const float*>(x), static_cast<float*>(y), br, stream);
  else if (!xb && !yb)
    launch_math<wmma_math::Bf16Math>(d, static_cast<const float*>(x), static_cast<float*>(y), br, stream);
  else if (xb && yb)
    launch_math<wmma_math::Bf16Math>(d, static_cast<const bf16*>(x), static_cast<bf16*>(y), br, stream);
  else if (xb)
    launch_math<wmma_math::Bf16Math>(d, static_cast<const bf16*>(x), static_cast<float*>(y), br, stream);
  else
    launch_math<wmma_math::Bf16Math>(d, static_cast<const float*>(x), static_cast<bf16*>(y), br, stream);
  RPP_CUDA_CHECK_LAUNCH(op);
}

}  // namespace rpp::cuda
