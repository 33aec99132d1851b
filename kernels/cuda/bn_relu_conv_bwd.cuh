// kernels/cuda/bn_relu_conv_bwd.cuh — the hand-written backward passes of the fused BN-ReLU-conv
// (fp32, NHWC activations, OHWI weights as the CUDA executor keeps them), the kernels behind the
// graph ops BnReluConv2dBwdData and BnReluConv2dBwdFilter (runtime/graph.h). With a = relu(bn(x))
// the forward's conv input (bn from saved statistics, see bn_relu_conv.cuh):
//  * backward-data: dx = conv_backward_data(dz, w), then zeroed wherever the recomputed bn(x) is
//    not > 0 (NaN included) — the gradient w.r.t. the BN output, ReLU mask applied. bn(x) is the
//    forward kernel's float expression, fmaf(x - mean, float(double(gamma) * double(invstd)),
//    beta), so the mask follows exactly the ReLU decisions of bn_relu_conv_forward. A variant
//    (bn_relu_conv_backward_data_with_sums) also emits the per-channel sums of dx and dx * xhat
//    that the backward of that BN needs;
//  * backward-filter: dw = conv_backward_filter(a, dz) and db = the sum of dz over pixels, with a
//    recomputed while x is loaded (never stored) and the conv's zero padding applied after
//    BN-ReLU. Deterministic: the same bits on every run and every device (no atomics; a fixed
//    split of the pixels and a fixed-order reduction).
// Null BN arguments (all four) give the plain conv passes (no mask, a = x).
// Specification: cpu::conv2d_backward_data then cpu::bn_relu_mask_inplace, and
// cpu::batchnorm_apply(relu) then cpu::conv2d_backward_filter (kernels/cpu), as the CPU executor
// runs these ops (the CPU's BN value is computed in double: the mask may differ from it only
// where bn(x) is within rounding of 0). Tested by tests/gpu/test_bn_relu_conv_bwd_gpu.cpp.
//
// First version: implicit GEMMs on CUDA cores, 64x64 tiles, 16-deep K slices in shared memory,
// 4x4 results per thread, like the forward. No tensor cores. Never synchronises, never allocates.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

#include "kernels/cpu/conv2d.h"

namespace rpp::cuda {

// Whether both backward passes handle this shape: every size >= 1 (pad >= 0), a non-empty output,
// h, w, pad <= 2^24, stride <= 255, kh*kw*cin and kh*kw*cout < 2^30, and grids within limits.
bool bn_relu_conv_bwd_can_run(const cpu::Conv2dShape& s);

// dz (n, ho, wo, cout); w_ohwi (cout, kh, kw, cin); x (n, h, w, cin) and gamma, beta, mean,
// invstd (cin), or the four BN arguments all null for a plain conv backward-data (x is then not
// read and may be null); dx (n, h, w, cin), overwritten. Needs no workspace. rpp::Error when the shape cannot run
// (bn_relu_conv_bwd_can_run) or a required pointer is null.
void bn_relu_conv_backward_data(const cpu::Conv2dShape& s, const float* dz, const float* w_ohwi,
                                const float* x, const float* gamma, const float* beta,
                                const float* mean, const float* invstd, float* dx,
                                cudaStream_t stream);

// Device workspace bn_relu_conv_backward_data_with_sums needs for this shape, a function of the
// shape only: the per-block partial sums, 2 * tiles * cin doubles rounded up to 256 bytes, with
// tiles = stride^2 * ceil(n * ceil(h / stride) * ceil(w / stride) / 64) (the blocks along the
// pixels: 64 pixels of the largest parity class per block, one grid layer per class). The pointer
// passed must be 16-byte aligned. 0 for a shape that cannot run.
size_t bn_relu_conv_backward_data_sums_workspace_bytes(const cpu::Conv2dShape& s);

// bn_relu_conv_backward_data with the BN arguments required, plus the per-channel reductions that
// the backward of that BN (the one whose input is x, with saved statistics mean and invstd) needs,
// taken from the values this kernel writes (dy = dx, the masked gradient), so that BN backward is
// then only an elementwise pass (batchnorm_backward_from_sums, batchnorm.cuh):
//   sum_dy[c]      = sum over the n*h*w pixels of dx,
//   sum_dy_xhat[c] = (sum over the pixels of dx * (x - mean)) * invstd,
// in double, with xhat as cuda::batchnorm_backward forms it: each product double(dx) *
// (double(x) - double(mean)) summed, then one multiplication by double(invstd) per channel (so
// that the two paths differ only in the order of the sums). dx is the same bits as
// bn_relu_conv_backward_data gives. Deterministic, no atomics: each block writes its 64-pixel
// tile's partial sums (in a fixed order) to the workspace, then a second kernel adds every
// channel's partials in a fixed tree. Every element counts, masked ones too (their dx is 0; a
// NaN x makes the product, hence sum_dy_xhat, NaN, as in batchnorm_backward). sum_dy and
// sum_dy_xhat (cin doubles each) are overwritten. workspace:
// bn_relu_conv_backward_data_sums_workspace_bytes(s) bytes, scratch. rpp::Error when the shape
// cannot run, a pointer is null, or the workspace is misaligned.
void bn_relu_conv_backward_data_with_sums(const cpu::Conv2dShape& s, const float* dz, const float* w_ohwi,
                                          const float* x, const float* gamma, const float* beta,
                                          const float* mean, const float* invstd, float* dx, double* sum_dy,
                                          double* sum_dy_xhat, void* workspace, cudaStream_t stream);

// Device workspace bn_relu_conv_backward_filter needs for this shape, a function of the shape
// only: the per-split partial sums of dw and db, splits * cout * (kh*kw*cin + 1) floats rounded up
// to 256 bytes, or 0 when the pixels are not split (splits = 1). With P = n*ho*wo and T = the
// number of 64x64 tiles of dw, splits = min(ceil(512 / T), ceil(P / 256)) (at least 1), then
// trimmed so that every split but the last has the same multiple of 16 pixels. The pointer passed
// must be 16-byte aligned. 0 for a shape that cannot run.
size_t bn_relu_conv_backward_filter_workspace_bytes(const cpu::Conv2dShape& s);

// x (n, h, w, cin); gamma, beta, mean, invstd (cin) or all null for a plain conv; dz
// (n, ho, wo, cout); dw_ohwi (cout, kh, kw, cin) and db (cout, may be null), overwritten.
// workspace: bn_relu_conv_backward_filter_workspace_bytes(s) bytes (may be null when 0).
void bn_relu_conv_backward_filter(const cpu::Conv2dShape& s, const float* x, const float* gamma,
                                  const float* beta, const float* mean, const float* invstd,
                                  const float* dz, float* dw_ohwi, float* db, void* workspace,
                                  cudaStream_t stream);

}  // namespace rpp::cuda
