// kernels/cuda/bn_relu_conv.cuh — the hand-written fused BN-ReLU-conv forward (fp32, NHWC input,
// OHWI weights as the CUDA executor keeps them): y = conv(relu(bn(x))) + bias, with BN applied
// from saved statistics while the input tile is loaded and out-of-image taps loading 0 *after*
// BN-ReLU (the conv's zero padding). Also runs a plain conv when the BN arguments are null.
// Specification: cpu::batchnorm_apply(relu) followed by cpu::conv2d_forward (kernels/cpu).
// Tested by tests/gpu/test_bn_relu_conv_gpu.cpp against the CPU reference and the cuDNN path.
//
// First version: an implicit GEMM on CUDA cores (M = N*Ho*Wo pixels, N = Cout, K = KH*KW*Cin),
// 64x64 output tiles, 16-deep K slices staged in shared memory, 4x4 outputs per thread. No tensor
// cores and no epilogue statistics yet. Never synchronises, never allocates; needs no workspace.
#pragma once
#include <cuda_runtime_api.h>

#include "kernels/cpu/conv2d.h"

namespace rpp::cuda {

// Whether bn_relu_conv_forward handles this shape: 1 <= cin <= 2048 (per-channel BN tables in
// shared memory), cout >= 1, and the output pixel count fits the grid.
bool bn_relu_conv_can_run(const cpu::Conv2dShape& s);

// x (n, h, w, cin); gamma, beta, mean, invstd (cin) or all null for a plain conv; w_ohwi
// (cout, kh, kw, cin); bias (cout) or null; y (n, ho, wo, cout). rpp::Error when the shape cannot
// run (bn_relu_conv_can_run) or a required pointer is null.
void bn_relu_conv_forward(const cpu::Conv2dShape& s, const float* x, const float* gamma,
                          const float* beta, const float* mean, const float* invstd,
                          const float* w_ohwi, const float* bias, float* y, cudaStream_t stream);

}  // namespace rpp::cuda
