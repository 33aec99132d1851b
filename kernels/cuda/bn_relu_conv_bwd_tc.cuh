// kernels/cuda/bn_relu_conv_bwd_tc.cuh — the fused BN-ReLU-conv backward passes on tensor cores:
// the same operations as bn_relu_conv_bwd.cuh (fp32 NHWC activations, OHWI weights; read that
// header for the semantics), with the GEMM operands rounded to TF32 (round to nearest, ties away:
// __float_to_tf32) or BF16 (round to nearest even) when staged in shared memory and multiplied by
// WMMA with fp32 accumulation, as bn_relu_conv_tc.cuh does for the forward. With a = relu(bn(x)):
//  * backward-data: dx = conv_backward_data(dz, w), zeroed wherever the recomputed bn(x) is not
//    > 0 (NaN included), bn(x) being the forward kernels' float expression fmaf(x - mean,
//    float(double(gamma) * double(invstd)), beta), so the mask is exactly the fp32 kernel's (and
//    the forward's ReLU decisions). Optionally (sum_dy / sum_dy_xhat non-null) the per-channel
//    sums that the backward of that BN needs, from the values written, formed as
//    bn_relu_conv_backward_data_with_sums forms them (double: sum dx, and sum dx * (x - mean)
//    times invstd), deterministic;
//  * backward-filter: dw = conv_backward_filter(a, dz), a = relu(bn(x)) computed in float while x
//    is loaded (the conv's zero padding applied after BN-ReLU), then rounded to the math's type;
//    db = the sum of dz over the pixels, in fp32 from the unrounded dz. Deterministic: a split of
//    the pixels fixed by the shape and a fixed-order reduction, no atomics.
// Null BN arguments (all four) give the plain conv passes (no mask, a = x).
// So dx and dw differ from the fp32 kernels' by the operand rounding (2^-11 or 2^-8 relative per
// operand) and the order of the fp32 additions; the mask, the sums' formation and db do not
// depend on the math. Specification: as bn_relu_conv_bwd.cuh (kernels/cpu conv2d_backward_data +
// bn_relu_mask_inplace; batchnorm_apply(relu) + conv2d_backward_filter).
// Tested by tests/gpu/test_bn_relu_conv_bwd_tc_gpu.cpp (also on the CPU emulator of tests/emu).
//
// Design: implicit GEMMs with 32-deep K slices, operands staged through registers (the next
// slice is loaded while the current one is multiplied) into shared memory; every warp owns 2 x 2
// WMMA accumulators of 16 x 16 (TF32 m16n16k8 or BF16 m16n16k16); results leave through shared
// memory. Backward-data: 128 input pixels x 64 input channels per block (x 32, half the
// threads, when cin <= 32), per stride-parity class of the input pixels with only the live taps
// multiplied (as the fp32 kernel). Backward-filter: 64 output channels x 128 (tap, input channel)
// columns per block (32 x 128 when cout <= 32), the pixels split into chunks (see the workspace
// function). Needs Ampere or newer (sm_80+). Never synchronises, never allocates.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/cpu/conv2d.h"
#include "kernels/cuda/bn_relu_conv_tc.cuh"  // ConvMath

namespace rpp::cuda {

// Whether both tensor-core backward passes handle this shape and math: math one of the ConvMath
// values, and the shape as bn_relu_conv_bwd_can_run requires: every size >= 1 (pad >= 0), a
// non-empty output, h, w, pad <= 2^24, stride <= 255, kh*kw*cin and kh*kw*cout < 2^30,
// n*ho*wo <= 2^40, and grids within limits.
bool bn_relu_conv_bwd_tc_can_run(const cpu::Conv2dShape& s, ConvMath math);

// Device workspace bn_relu_conv_tc_backward_data needs when it computes the BN sums, a function
// of the shape only: the per-block partial sums, 2 * tiles * cin doubles rounded up to 256 bytes,
// tiles = stride^2 * ceil(n * ceil(h / stride) * ceil(w / stride) / 128) (128 pixels of the largest
// parity class per block, one grid layer per class). 0 for a shape that cannot run.
size_t bn_relu_conv_tc_backward_data_workspace_bytes(const cpu::Conv2dShape& s);

// dz (n, ho, wo, cout); w_ohwi (cout, kh, kw, cin); x (n, h, w, cin) and gamma, beta, mean,
// invstd (cin), or the four BN arguments all null for a plain conv backward-data (x is then not
// read and may be null); dx (n, h, w, cin), overwritten.
// sum_dy, sum_dy_xhat (cin doubles each) or null, each independently: with either non-null the
// BN arguments are required, workspace must hold bn_relu_conv_tc_backward_data_workspace_bytes(s)
// bytes (16-byte aligned, scratch) and the requested sums are overwritten:
//   sum_dy[c]      = sum over the n*h*w pixels of dx,
//   sum_dy_xhat[c] = (sum over the pixels of double(dx) * (double(x) - double(mean))) * invstd,
// in double, every element counted (masked ones add 0; a NaN x makes sum_dy_xhat NaN). dx has the
// same bits with or without the sums. With both null, workspace is not used (may be null).
// rpp::Error when the shape or math cannot run, a required pointer is null, only some BN
// arguments are given, sums are asked for without BN arguments, or the workspace is missing or
// misaligned.
void bn_relu_conv_tc_backward_data(const cpu::Conv2dShape& s, ConvMath math, const float* dz, const float* w_ohwi,
                                   const float* x, const float* gamma, const float* beta, const float* mean,
                                   const float* invstd, float* dx, double* sum_dy, double* sum_dy_xhat,
                                   void* workspace, cudaStream_t stream);

// Device workspace bn_relu_conv_tc_backward_filter needs for this shape, a function of the shape
// only: the per-split partial sums of dw and db, splits * cout * (kh*kw*cin + 1) floats rounded
// up to 256 bytes, or 0 when the pixels are not split (splits = 1). With P = n*ho*wo, bm = 32
// when cout <= 32 else 64, T = ceil(cout / bm) * ceil(kh*kw*cin / 128) block tiles of dw,
// splits = min(ceil(512 / T), ceil(P / 512)) (at least 1); each split but the last then takes
// chunk = ceil(ceil(P / splits) / 32) * 32 pixels, and splits = ceil(P / chunk). 0 for a shape
// that cannot run.
size_t bn_relu_conv_tc_backward_filter_workspace_bytes(const cpu::Conv2dShape& s);

// x (n, h, w, cin); gamma, beta, mean, invstd (cin) or all null for a plain conv; dz
// (n, ho, wo, cout); dw_ohwi (cout, kh, kw, cin) and db (cout, may be null), overwritten.
// workspace: bn_relu_conv_tc_backward_filter_workspace_bytes(s) bytes, 16-byte aligned (may be
// null when that is 0). rpp::Error when the shape or math cannot run, a required pointer is null,
// only some BN arguments are given, or the workspace is missing or misaligned.
void bn_relu_conv_tc_backward_filter(const cpu::Conv2dShape& s, ConvMath math, const float* x,
                                     const float* gamma, const float* beta, const float* mean,
                                     const float* invstd, const float* dz, float* dw_ohwi, float* db,
                                     void* workspace, cudaStream_t stream);

// bf16 storage of x (bf16 mixed-precision training: the saved activations are bf16, the
// gradients dz, dx, dw, db fp32): x_type says whether x is fp32 or bf16; a bf16 x needs
// ConvMath::Bf16. A bf16 x is widened exactly to fp32 where it is loaded and then used as above (the
// mask and BN recomputation, the sums, BN-ReLU before the operand rounding), so the results equal
// the fp32-x passes run on the widened x, bit for bit. The fp32-x overloads above are these with
// Storage::F32.
bool bn_relu_conv_bwd_tc_can_run(const cpu::Conv2dShape& s, ConvMath math, Storage x_type);
void bn_relu_conv_tc_backward_data(const cpu::Conv2dShape& s, ConvMath math, const float* dz, const float* w_ohwi,
                                   Storage x_type, const void* x, const float* gamma, const float* beta,
                                   const float* mean, const float* invstd, float* dx, double* sum_dy,
                                   double* sum_dy_xhat, void* workspace, cudaStream_t stream);
void bn_relu_conv_tc_backward_filter(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                                     const float* gamma, const float* beta, const float* mean,
                                     const float* invstd, const float* dz, float* dw_ohwi, float* db,
                                     void* workspace, cudaStream_t stream);

// ---- The ASPP's backward-data: the branches' input gradients summed in one launch ----
// dx = sum over branches b of conv_backward_data(dz_b, w_b) for up to four convolutions of the
// same input that differ only in padding and dilation (the ASPP: 3x3, dilations 1, 6, 12, 18).
// One implicit GEMM whose K is the concatenation of the branches' live taps (per block: a tap
// that reaches no output pixel from the block's pixels is skipped, as the forward's branch-sum
// mode skips dead slices), so the branch gradients and the adds of the unfused graph never
// exist. Plain convolutions (no BN-ReLU mask, no sums); dz, w and dx fp32, the operands rounded
// to the math's type as above, fp32 accumulation in branch, tap, channel order. Specification:
// cpu::conv2d_backward_data per branch and cpu::add (runtime/executor_cpu.cpp runs the
// ConvSumBwdData node that way). Tested by tests/gpu/test_conv_sum_bwd_gpu.cpp.
constexpr int kConvSumMaxBranches = 4;

struct ConvBwdDataBranch {
  cpu::Conv2dShape shape;     // the branch's convolution (forward shape)
  const float* dz = nullptr;  // (n, ho, wo, cout)
  const float* w_ohwi = nullptr;  // (cout, kh, kw, cin)
};

// Whether conv_sum_tc_backward_data runs these branch shapes with this math: 1 to 4 branches,
// each bn_relu_conv_bwd_tc_can_run, all with the same n, h, w, cin, cout, kernel, stride and output
// size (padding and dilation free).
bool conv_sum_tc_backward_data_can_run(const cpu::Conv2dShape* shapes, int count, ConvMath math);

// dx (n, h, w, cin), overwritten. Needs no workspace. rpp::Error when the branches cannot run
// (naming the first shape that cannot, or saying they differ) or a pointer is null.
void conv_sum_tc_backward_data(const ConvBwdDataBranch* branches, int count, ConvMath math, float* dx,
                               cudaStream_t stream);

}  // namespace rpp::cuda
