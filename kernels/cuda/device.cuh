// kernels/cuda/device.cuh — CUDA device discovery and the engine's CUDA error check.
// The CUDA backend (graph executor, cuDNN/cuBLAS fallbacks, hand-written kernels) builds on this.
#pragma once
#include <string>

namespace rpp::cuda {

// Number of usable CUDA devices; 0 when there is no driver or no device (never throws).
int device_count();
// Why device_count() is 0 ("no CUDA device", or the runtime's error, e.g. a driver older than
// this CUDA runtime needs); empty when a device is visible.
std::string device_count_error();

// "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB, driver 12.4" for device `index`; throws rpp::Error
// naming the CUDA error if the device cannot be queried.
std::string device_description(int index);

// Fills `out[i] = a * in[i] + b` on the device and copies back: a self-contained check that the
// toolchain, driver and device work together (used by the GPU smoke test).
void saxpb_roundtrip(const float* in, float* out, int n, float a, float b);

}  // namespace rpp::cuda
