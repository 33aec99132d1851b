// kernels/cuda/device.cu — device discovery and a round-trip smoke kernel.
#include <cuda_runtime.h>

#include <cstdio>

#include "kernels/cuda/device.cuh"
#include "runtime/error.h"

#define RPP_CUDA_CHECK(call)                                                                  \
  do {                                                                                        \
    cudaError_t err_ = (call);                                                                \
    if (err_ != cudaSuccess)                                                                  \
      ::rpp::fail(#call " failed: ", cudaGetErrorString(err_), " (", __FILE__, ":", __LINE__, ")"); \
  } while (0)

namespace rpp::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return n;
}

std::string device_count_error() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e == cudaSuccess) return n > 0 ? std::string() : std::string("no CUDA device");
  cudaGetLastError();
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

std::string device_description(int index) {
  cudaDeviceProp p{};
  RPP_CUDA_CHECK(cudaGetDeviceProperties(&p, index));
  int driver = 0;
  RPP_CUDA_CHECK(cudaDriverGetVersion(&driver));
  char buf[96];
  std::snprintf(buf, sizeof buf, ", sm_%d%d, %.1f GiB, driver %d.%d", p.major, p.minor,
                double(p.totalGlobalMem) / (1024.0 * 1024.0 * 1024.0), driver / 1000, (driver % 1000) / 10);
  return std::string(p.name) + buf;
}

namespace {
__global__ void saxpb_kernel(const float* in, float* out, int n, float a, float b) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i] = a * in[i] + b;
}
}  // namespace

void saxpb_roundtrip(const float* in, float* out, int n, float a, float b) {
  if (n <= 0) fail("saxpb_roundtrip: n must be positive, got ", n);
  float *d_in = nullptr, *d_out = nullptr;
  RPP_CUDA_CHECK(cudaMalloc(&d_in, size_t(n) * sizeof(float)));
  cudaError_t e = cudaMalloc(&d_out, size_t(n) * sizeof(float));
  if (e == cudaSuccess) e = cudaMemcpy(d_in, in, size_t(n) * sizeof(float), cudaMemcpyHostToDevice);
  if (e == cudaSuccess) {
    saxpb_kernel<<<(n + 255) / 256, 256>>>(d_in, d_out, n, a, b);
    e = cudaGetLastError();
  }
  if (e == cudaSuccess) e = cudaMemcpy(out, d_out, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost);
  cudaFree(d_in);
  cudaFree(d_out);
  if (e != cudaSuccess) fail("saxpb_roundtrip failed: ", cudaGetErrorString(e));
}

}  // namespace rpp::cuda
