// kernels/cuda/conv_bn_sum.cuh — the ASPP block's four dilated branches and their eval-mode BNs,
// summed, as one tensor-core kernel (the ConvBnSum graph node, runtime/fusion.h):
//   y = sum over branches b of bn_b(conv_b(x)),  bn_b(v) = (v - mean_b) * gamma_b / sqrt(var_b + eps) + beta_b
// with up to four branches of the same input, kernel size, stride and output size and their own
// padding and dilation (the ASPP: 3x3, dilations 1, 6, 12, 18, padding = dilation). The branch
// outputs, the BN outputs and the partial sums never exist in memory.
//
// How: one implicit GEMM whose K is the concatenation of the branches' taps (conv_tc_forward.cuh,
// branch-sum mode). The BNs are folded per block into a per-branch, per-channel weight scale and
// one per-channel shift; the operands are rounded to TF32 or BF16 (the scaled weights after the
// scaling) and multiplied by WMMA with fp32 accumulation. K slices whose taps fall outside the
// image for the whole pixel tile are skipped, which is most of the outer taps of dilations 12 and
// 18 on the 32x32 bridge.
// x and y each fp32 or bf16 (bf16 storage needs ConvMath::Bf16); y is rounded once when stored.
// Specification: cpu::conv2d_forward, cpu::batchnorm_forward_eval and cpu::add per branch
// (runtime/executor_cpu.cpp runs the ConvBnSum node that way). Differs from it by the operand
// rounding (2^-11 or 2^-8 relative per operand, the weights' after the BN scale), the fold and the
// order of the fp32 additions. Tested by tests/gpu/test_conv_bn_sum_gpu.cpp (also on the emulator).
// Needs sm_80 or newer. Never synchronises, never allocates, needs no workspace.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cpu/conv2d.h"
#include "kernels/cuda/bn_relu_conv_tc.cuh"
#include "kernels/cuda/storage.cuh"

namespace rpp::cuda {

// One branch: its convolution shape, OHWI weights (cout, kh, kw, cin), conv bias (cout, or null)
// and eval BN (gamma, beta, running mean, running variance: cout each).
struct ConvBnBranch {
  cpu::Conv2dShape shape;
  const float* w_ohwi = nullptr;
  const float* bias = nullptr;
  const float* gamma = nullptr;
  const float* beta = nullptr;
  const float* running_mean = nullptr;
  const float* running_var = nullptr;
};

constexpr int kConvBnSumMaxBranches = 4;

// Whether conv_bn_sum_tc_forward runs these branch shapes with this math and storage: 1 to 4
// branches, each one bn_relu_conv_tc_can_run, all with the same n, h, w, cin, cout, kernel, stride
// and output size, K = branches * kh * kw * cin < 2^30; bf16 storage only with bf16 math.
bool conv_bn_sum_tc_can_run(const cpu::Conv2dShape* shapes, int count, ConvMath math, Storage x_type,
                            Storage y_type);

// x (n, h, w, cin); y (n, ho, wo, cout); branches[count] as above; eps of the BNs (>= 0).
// rpp::Error when the branches cannot run (conv_bn_sum_tc_can_run), a pointer other than a bias is
// null, or eps is negative.
void conv_bn_sum_tc_forward(const ConvBnBranch* branches, int count, double eps, ConvMath math, Storage x_type,
                            const void* x, Storage y_type, void* y, cudaStream_t stream);

}  // namespace rpp::cuda
