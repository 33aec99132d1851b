// tests/gpu/test_device.cpp — GPU smoke test: the device is visible and a kernel round-trips.
// Skips (GTEST_SKIP) when no CUDA device is present, so CI without a GPU still passes.
#include <gtest/gtest.h>

#include <vector>

#include "gpu_test_util.h"
#include "kernels/cuda/device.cuh"

TEST(GpuDevice, KernelRoundTrip) {
  REQUIRE_GPU();
  std::cout << "device 0: " << rpp::cuda::device_description(0) << "\n";
  const int n = 1000;
  std::vector<float> in(n), out(n, -1.f);
  for (int i = 0; i < n; ++i) in[size_t(i)] = float(i);
  rpp::cuda::saxpb_roundtrip(in.data(), out.data(), n, 2.f, 1.f);
  for (int i = 0; i < n; ++i) ASSERT_EQ(out[size_t(i)], 2.f * float(i) + 1.f) << i;
}
