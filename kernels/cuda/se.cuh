// kernels/cuda/se.cuh — the squeeze-and-excitation block's excitation as one kernel (the SeExcite
// graph node, runtime/fusion.h): s = sigmoid(W2 relu(W1 p)) per image, p the global average pool
// (N, C), W1 (C/r, C), W2 (C, C/r), no biases; and its backward (SeExciteBwd): dp, dW1, dW2 from
// ds, recomputing relu(W1 p) instead of storing it.
//
// Each output is computed exactly as the unfused kernels compute it (elementwise.cuh:
// linear_forward / linear_backward, relu, sigmoid): one warp per dot product with double
// accumulation over lane-strided terms and the same shuffle tree, the weight gradients one
// thread per element summing over the batch in order. So the fused and unfused GPU paths give
// the same bits, and both follow the CPU reference (kernels/cpu/ops.h: linear_forward,
// relu_forward, sigmoid_forward and their backwards) up to the order of the double additions and
// expf. Tested by tests/gpu/test_se_gpu.cpp (also on the emulator).
// Forward: one block per image. Backward: one block per image (dp and the per-image
// intermediates, kept in the workspace) and one flat kernel for dW1 and dW2. Deterministic, no
// atomics; never synchronises, never allocates.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace rpp::cuda {

// p (n, c), w1 (hidden, c), w2 (c, hidden), s (n, c). n >= 0, c >= 1, hidden >= 1, and c + hidden
// at most 6144 (the rows staged in shared memory). rpp::Error for bad sizes or a null pointer.
void se_excite_forward(int n, int c, int hidden, const float* p, const float* w1, const float* w2, float* s,
                       cudaStream_t stream);

// Device workspace of se_excite_backward: n * (c + 2 * hidden) floats.
size_t se_excite_backward_workspace_bytes(int n, int c, int hidden);

// From s (the forward's output) and ds: dp (n, c), dw1 (hidden, c), dw2 (c, hidden), all
// overwritten (with n == 0 the weight gradients are zeros). workspace: as above, 16-byte aligned.
void se_excite_backward(int n, int c, int hidden, const float* p, const float* w1, const float* w2, const float* s,
                        const float* ds, float* dp, float* dw1, float* dw2, void* workspace, cudaStream_t stream);

}  // namespace rpp::cuda
