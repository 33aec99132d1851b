// kernels/cuda/elementwise.cuh — the GPU versions of the elementwise, per-channel, pooling,
// resampling, concat and bias-free linear ops of kernels/cpu/ops.h, forward and backward, fp32
// NHWC; the forward ops on activations also with bf16 storage (kernels/cuda/storage.cuh: loaded
// as fp32, computed in fp32 as the fp32 version, the result rounded once to bf16, to nearest
// even; the per-channel scales and the pool's output stay fp32). Same semantics and argument
// order as rpp::cpu::*, plus (where a reduction needs one) a workspace, and a stream. For bf16
// training, some backward ops also read a bf16 saved activation (widened exactly; the gradients
// stay fp32): their results have the bits of the fp32 version on the widened values.
// Implemented in elementwise.cu; tested against the CPU reference by tests/gpu/test_ops_gpu.cpp
// (bf16: test_bf16_gpu.cpp, test_bf16_train_ops_gpu.cpp).
//
// Launchers take device pointers, never synchronise and never allocate. Reductions are
// deterministic (fixed partition and order, no float atomics). Empty sizes launch nothing.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/storage.cuh"

namespace rpp::cuda {

// ---- Elementwise over n values (outputs may alias inputs) ----
void relu_forward(int64_t n, const float* x, float* y, cudaStream_t stream);
void relu_forward(int64_t n, const bf16* x, bf16* y, cudaStream_t stream);
// dx = dy where x > 0, else 0.
void relu_backward(int64_t n, const float* x, const float* dy, float* dx, cudaStream_t stream);
void add(int64_t n, const float* a, const float* b, float* y, cudaStream_t stream);
void add(int64_t n, const bf16* a, const bf16* b, bf16* y, cudaStream_t stream);
void mul(int64_t n, const float* a, const float* b, float* y, cudaStream_t stream);
void mul(int64_t n, const bf16* a, const bf16* b, bf16* y, cudaStream_t stream);
// Mixed (the backward of a product in bf16 training): an fp32 a (a gradient) times a bf16 b (a
// saved activation), y fp32: the fp32 mul on the widened b.
void mul(int64_t n, const float* a, const bf16* b, float* y, cudaStream_t stream);
// Storage conversion (the cuDNN path of a bf16 graph stages bf16 activations in fp32 and rounds
// its fp32 results back once): widening is exact; narrowing rounds to nearest even, as every bf16
// store does (NaN stays NaN, overflow goes to infinity).
void convert(int64_t n, const bf16* x, float* y, cudaStream_t stream);
void convert(int64_t n, const float* x, bf16* y, cudaStream_t stream);
void sigmoid_forward(int64_t n, const float* x, float* y, cudaStream_t stream);
// dx = dy * y * (1 - y), y the forward output.
void sigmoid_backward(int64_t n, const float* y, const float* dy, float* dx, cudaStream_t stream);

// ---- Per-channel scale: x (N, HW, C), s (N, C) -> y ----
void scale_channels(int n, int64_t hw, int c, const float* x, const float* s, float* y,
                    cudaStream_t stream);
void scale_channels(int n, int64_t hw, int c, const bf16* x, const float* s, bf16* y,
                    cudaStream_t stream);
// ds[n, c] = sum_p dy[n, p, c] * x[n, p, c]. Workspace: scale_channels_workspace_bytes.
size_t scale_channels_workspace_bytes(int n, int64_t hw, int c);
// The bf16 version reads a bf16 x (widened); dy and ds fp32: the fp32 version's bits on the widened x.
void scale_channels_backward_scale(int n, int64_t hw, int c, const float* x, const float* dy,
                                   float* ds, void* workspace, cudaStream_t stream);
void scale_channels_backward_scale(int n, int64_t hw, int c, const bf16* x, const float* dy,
                                   float* ds, void* workspace, cudaStream_t stream);

// ---- Global average pool: x (N, HW, C) -> y (N, C) ----
// Workspace: global_avg_pool_workspace_bytes (the same as scale_channels_workspace_bytes).
size_t global_avg_pool_workspace_bytes(int n, int64_t hw, int c);
void global_avg_pool_forward(int n, int64_t hw, int c, const float* x, float* y, void* workspace,
                             cudaStream_t stream);
void global_avg_pool_forward(int n, int64_t hw, int c, const bf16* x, float* y, void* workspace,
                             cudaStream_t stream);
void global_avg_pool_backward(int n, int64_t hw, int c, const float* dy, float* dx,
                              cudaStream_t stream);

// ---- Linear without bias: x (N, I), w (O, I), y (N, O); sized for SE layers (small) ----
void linear_forward(int n, int in, int out, const float* x, const float* w, float* y,
                    cudaStream_t stream);
void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, cudaStream_t stream);

// ---- 2x2 max pool, stride 2: x (N, H, W, C) -> y (N, H/2, W/2, C); H, W even ----
// argmax, when not null: per output, the window position of the first maximum, 0..3 in the order
// (0,0), (0,1), (1,0), (1,1) (the bf16 version decides on the stored bf16 values).
void maxpool2_forward(int n, int h, int w, int c, const float* x, float* y, uint8_t* argmax, cudaStream_t stream);
void maxpool2_forward(int n, int h, int w, int c, const bf16* x, bf16* y, uint8_t* argmax, cudaStream_t stream);
// The gradient goes to the window position the forward's argmax names; h, w: the input's sizes.
void maxpool2_backward(int n, int h, int w, int c, const uint8_t* argmax, const float* dy, float* dx,
                       cudaStream_t stream);

// ---- 2x nearest upsample: x (N, H, W, C) -> y (N, 2H, 2W, C); h, w are the input sizes ----
void upsample2_forward(int n, int h, int w, int c, const float* x, float* y, cudaStream_t stream);
void upsample2_forward(int n, int h, int w, int c, const bf16* x, bf16* y, cudaStream_t stream);
void upsample2_backward(int n, int h, int w, int c, const float* dy, float* dx,
                        cudaStream_t stream);

// ---- Channel concat: a (count, ca), b (count, cb) -> y (count, ca + cb), a first ----
void concat_forward(int64_t count, int ca, int cb, const float* a, const float* b, float* y,
                    cudaStream_t stream);
void concat_forward(int64_t count, int ca, int cb, const bf16* a, const bf16* b, bf16* y,
                    cudaStream_t stream);
void concat_backward(int64_t count, int ca, int cb, const float* dy, float* da, float* db,
                     cudaStream_t stream);

// ---- Upsample and concat in one pass (fuse_upsample_concat): a (n, h, w, ca), b (n, 2h, 2w, cb)
// -> y (n, 2h, 2w, ca + cb) = concat(upsample2(a), b), the upsampled tensor never materialised.
// Backward: da (n, h, w, ca) is upsample2_backward of dy's first ca channels (the same bits),
// db a copy of the rest. ca, cb >= 1. ----
void upsample_concat_forward(int n, int h, int w, int ca, int cb, const float* a, const float* b, float* y,
                             cudaStream_t stream);
void upsample_concat_forward(int n, int h, int w, int ca, int cb, const bf16* a, const bf16* b, bf16* y,
                             cudaStream_t stream);
void upsample_concat_backward(int n, int h, int w, int ca, int cb, const float* dy, float* da, float* db,
                              cudaStream_t stream);

}  // namespace rpp::cuda
