// kernels/cuda/image_ops.cuh — the C API's device-pointer path: model input from an RGB8 image
// and the outputs at the image's size from the logits, on the GPU. Same arithmetic, in the same
// order and without FMA contraction, as the host path (model/image_io.cpp resize_bilinear and
// model/inference.cpp preprocess, probabilities_from_logits, resize_map_bilinear, binary_mask),
// so both give the same bytes. Launchers never synchronise and never allocate.
// Tested by tests/capi/test_capi_gpu.cpp through rpp_segment_device.
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace rpp::cuda {

// src: interleaved RGB8, w x h, rows `stride` bytes apart (device memory). dst: (size, size, 3)
// floats, the image resized bilinearly with half-pixel centres to size x size, rounded to bytes,
// then divided by 255.
void rgb8_to_model_input(const uint8_t* src, int w, int h, size_t stride, int size, float* dst,
                         cudaStream_t stream);

// logits: (size, size) floats. Writes sigmoid(logits) resized bilinearly to w x h into prob (if
// not null) and 255/0 for prob >= threshold into mask (if not null), both w x h, row-major.
void logits_to_outputs(const float* logits, int size, int w, int h, double threshold, float* prob,
                       uint8_t* mask, cudaStream_t stream);

}  // namespace rpp::cuda
