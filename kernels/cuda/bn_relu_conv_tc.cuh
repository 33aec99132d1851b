// kernels/cuda/bn_relu_conv_tc.cuh — the fused BN-ReLU-conv forward on tensor cores (fp32 NHWC
// input, OHWI weights, fp32 output, as bn_relu_conv.cuh): y = conv(relu(bn(x))) + bias, with BN
// applied from saved statistics in float while the input is loaded (v = fmaf(v - mean[c],
// float(double(gamma) * double(invstd)), beta[c]); ReLU propagating NaN), out-of-image taps loading
// 0 *after* BN-ReLU, and a plain conv when the BN arguments are null. The operands are rounded to
// TF32 (round to nearest, ties away: __float_to_tf32) or BF16 (round to nearest even) when staged
// in shared memory and multiplied by WMMA with fp32 accumulation; the bias is added in fp32 in the
// epilogue. So y differs from the fp32 kernel by the operand rounding (2^-11 or 2^-8 relative per
// operand) and the order of the fp32 additions.
// Specification: cpu::batchnorm_apply(relu) followed by cpu::conv2d_forward (kernels/cpu).
// Tested by tests/gpu/test_bn_relu_conv_tc_gpu.cpp (also on the CPU emulator of tests/emu).
//
// Epilogue statistics: with out_sum / out_sumsq non-null, the per-output-channel sum and sum of
// squares of y over all n*ho*wo pixels (each value as stored in y, bias included, accumulated in
// double), so that a following BatchNorm can skip its statistics pass. Deterministic: every block
// writes its pixel tile's per-channel partials into the workspace and a second kernel adds them up
// in a fixed order; no atomics, the same bits on every run.
//
// Design: an implicit GEMM (M = N*Ho*Wo pixels, N = Cout, K = KH*KW*Cin), 128-pixel x 64-channel
// block tiles (32-channel tiles, half the threads, when cout <= 32), 32-deep K slices prefetched
// into registers while the previous slice is multiplied; every warp owns 2x2 WMMA tiles of 16x16.
// Ragged edges (any cin, cout, pixel count; K not a multiple of the slice) are zero-filled.
// Needs Ampere or newer (sm_80+: TF32/BF16 WMMA). Never synchronises, never allocates.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/conv2d.h"
#include "kernels/cuda/storage.cuh"

namespace rpp::cuda {

// The multiplication precision: the operands are rounded to TF32 (10 explicit mantissa bits) or
// BF16 (7), the products accumulated in fp32.
enum class ConvMath { Tf32, Bf16 };

// Whether bn_relu_conv_tc_forward handles this shape and math: every valid conv shape (n, h, w,
// cin, cout >= 1, a non-empty output, kernel, stride, dilation >= 1, pad >= 0) whose pixel-tile
// and channel-tile counts fit the grid and K = kh*kw*cin < 2^30; math one of the ConvMath values.
bool bn_relu_conv_tc_can_run(const cpu::Conv2dShape& s, ConvMath math);

// Device workspace for the epilogue statistics: 2 * ceil(n*ho*wo / 128) * cout doubles (0 when
// the shape cannot run). Only used when out_sum or out_sumsq is non-null; then it must be at
// least this large and 16-byte aligned (the planner's workspaces are).
size_t bn_relu_conv_tc_workspace_bytes(const cpu::Conv2dShape& s);

// x (n, h, w, cin); gamma, beta, mean, invstd (cin) or all null for a plain conv; w_ohwi
// (cout, kh, kw, cin); bias (cout) or null; y (n, ho, wo, cout); out_sum, out_sumsq (cout doubles)
// or null, each independently; workspace as above. rpp::Error when the shape or math cannot run
// (bn_relu_conv_tc_can_run), a required pointer is null, only some BN arguments are given, or the
// statistics are asked for without a suitable workspace.
void bn_relu_conv_tc_forward(const cpu::Conv2dShape& s, ConvMath math, const float* x, const float* gamma,
                             const float* beta, const float* mean, const float* invstd, const float* w_ohwi,
                             const float* bias, float* y, double* out_sum, double* out_sumsq, void* workspace,
                             cudaStream_t stream);

// bf16 storage (bf16 mixed precision): x and y each fp32 or bf16 (storage.cuh), with
// ConvMath::Bf16 when either is bf16. A bf16 x is widened exactly before BN-ReLU (in fp32, as
// above); y is the fp32 result rounded once to bf16 (nearest even), and the epilogue statistics
// are those of the stored (rounded) values. Everything else as above.
bool bn_relu_conv_tc_can_run(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, Storage y_type);
void bn_relu_conv_tc_forward(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                             const float* gamma, const float* beta, const float* mean, const float* invstd,
                             const float* w_ohwi, const float* bias, Storage y_type, void* y, double* out_sum,
                             double* out_sumsq, void* workspace, cudaStream_t stream);
// With a residual (fuse_conv_add, runtime/fusion.h): y = conv(...) + bias + residual, the residual
// (n, ho, wo, cout) in y's storage and added in fp32 before y is rounded (so with fp32 storage y
// has the bits of the conv followed by add()); the statistics are those of this y. residual may
// be null (no add) and may not alias y.
void bn_relu_conv_tc_forward(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                             const float* gamma, const float* beta, const float* mean, const float* invstd,
                             const float* w_ohwi, const float* bias, Storage y_type, void* y, const void* residual,
                             double* out_sum, double* out_sumsq, void* workspace, cudaStream_t stream);
// With the 2x2 max pool of the output fused into the epilogue (fuse_conv_pool): y (n, ho/2, wo/2,
// cout) is the pool of the convolution's output as stored in y's storage (each value rounded
// first, as the unfused convolution stores it), argmax (y's shape, or null) each output's window
// position 0..3 in the order (0,0), (0,1), (1,0), (1,1), the first maximum winning; the
// statistics, when asked for, are those of the pooled y. ho and wo must be even. The
// full-resolution output is never written.
void bn_relu_conv_tc_forward_maxpool(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                                     const float* gamma, const float* beta, const float* mean, const float* invstd,
                                     const float* w_ohwi, const float* bias, Storage y_type, void* y, uint8_t* argmax,
                                     double* out_sum, double* out_sumsq, void* workspace, cudaStream_t stream);

// With a multiplier (fuse_conv_mul): y = c * multiplier, where c is the convolution's output (bias
// included) as stored in y's storage, the product taken in fp32 and rounded once (so y has the
// bits of the convolution followed by mul()); conv_out, when not null, receives c (what the
// product's backward reads). The multiplier has y's shape and storage and may not be null;
// neither it nor conv_out may alias y. The statistics are those of y.
void bn_relu_conv_tc_forward_mul(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* x,
                                 const float* gamma, const float* beta, const float* mean, const float* invstd,
                                 const float* w_ohwi, const float* bias, Storage y_type, void* y,
                                 const void* multiplier, void* conv_out, double* out_sum, double* out_sumsq,
                                 void* workspace, cudaStream_t stream);

// With the input given as concat(upsample2(a), b) and read in place (a view: view_upsample_concats,
// runtime/fusion.h): a (n, h/2, w/2, ca) and b (n, h, w, cin - ca), both in x_type, s.h and s.w
// even, 0 < ca < cin. Each tap loads the value that the stored concatenation holds (channel c < ca
// of a at the pixel (y/2, x/2), else channel c - ca of b), so y and the statistics have the bits of
// the launch on the stored tensor. No residual, pool or multiplier; everything else as above.
void bn_relu_conv_tc_forward_upsample_concat(const cpu::Conv2dShape& s, ConvMath math, Storage x_type, const void* a,
                                             const void* b, int ca, const float* gamma, const float* beta,
                                             const float* mean, const float* invstd, const float* w_ohwi,
                                             const float* bias, Storage y_type, void* y, double* out_sum,
                                             double* out_sumsq, void* workspace, cudaStream_t stream);

}  // namespace rpp::cuda
