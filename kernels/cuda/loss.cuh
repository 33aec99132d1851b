// kernels/cuda/loss.cuh — the segmentation losses on the GPU: BCE with logits (mean over all n
// values) and soft Dice over the whole batch (smoothing 1, p = sigmoid(x)), forward and
// backward, on fp32 logits x and targets t (n values each). Same formulas and argument order as
// rpp::cpu::bce_with_logits_* / dice_loss_* (kernels/cpu/ops.h), plus a workspace and a stream.
// Implemented in loss.cu; tested against the CPU reference by tests/gpu/test_ops_gpu.cpp.
//
// The loss stays on the device: the forward writes it to a device float (`loss`), so a captured
// CUDA graph needs no host round trip; the host copies it back when it wants to look. With
// `accumulate` the value is added to what `loss` already holds (bce + dice in one scalar).
// Sums are taken in double over a fixed partition with a fixed combine order (no atomics), so
// the same inputs give the same bits on every run. Launchers never synchronise or allocate.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace rpp::cuda {

// Device workspace (bytes, a multiple of 256; 16-byte alignment) for every launcher here that
// takes one; scratch only, needs no initialisation.
size_t loss_workspace_bytes(int64_t n);

// loss (one device float) = mean(max(x, 0) - x t + log(1 + exp(-|x|)))  [+ previous value].
void bce_with_logits_forward(int64_t n, const float* x, const float* t, float* loss,
                             bool accumulate, void* workspace, cudaStream_t stream);
// dx = dloss * (sigmoid(x) - t) / n  [added to dx with accumulate]. dloss is a host value, fixed
// when a graph is captured.
void bce_with_logits_backward(int64_t n, const float* x, const float* t, double dloss, float* dx,
                              bool accumulate, cudaStream_t stream);

// loss = 1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)  [+ previous value].
void dice_loss_forward(int64_t n, const float* x, const float* t, float* loss, bool accumulate,
                       void* workspace, cudaStream_t stream);
// dx = dloss * d loss / dx  [added to dx with accumulate]; recomputes the three sums itself, as
// the CPU reference does, so it needs the workspace too.
void dice_loss_backward(int64_t n, const float* x, const float* t, double dloss, float* dx,
                        bool accumulate, void* workspace, cudaStream_t stream);

}  // namespace rpp::cuda
