// tests/gpu/bf16_test_util.h — bf16 helpers shared by the GPU suites that use bf16 storage
// (test_bf16_gpu, test_bf16_train_ops_gpu, test_conv_bn_sum_gpu, test_bn_relu_conv_bwd_tc_gpu):
// host conversions written from the format's definition (the upper 16 bits of a float, round to
// nearest even; independent of CUDA's), device buffers of bf16 values with guards and poison, the
// run-twice check and the bit-for-bit comparison. Header-only.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cuda/storage.cuh"

namespace rpp::gputest {

using Halves = std::vector<uint16_t>;

inline uint16_t to_bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x0040u);  // NaN stays NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float from_bf16_bits(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline Halves to_bf16(const Floats& v) {
  Halves h(v.size());
  for (size_t i = 0; i < v.size(); ++i) h[i] = to_bf16_bits(v[i]);
  return h;
}

inline Floats widen(const Halves& h) {
  Floats f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = from_bf16_bits(h[i]);
  return f;
}

// Random normal values rounded to bf16 (the form activations have in bf16 storage).
inline Halves random_bf16(size_t n, float sd = 1.f) { return to_bf16(normal(n, 0.f, sd)); }

class DevHalves : public DevBuf {
 public:
  explicit DevHalves(size_t n) : DevBuf(n * sizeof(uint16_t)), n_(n) {}
  explicit DevHalves(const Halves& h) : DevHalves(h.size()) { upload(h.data(), n_ * sizeof(uint16_t)); }
  cuda::bf16* p() const { return static_cast<cuda::bf16*>(data()); }
  Halves get() const {
    Halves h(n_);
    download(h.data(), n_ * sizeof(uint16_t));
    return h;
  }

 private:
  size_t n_;
};

// Counts the elements whose bits differ, and reports the first few.
inline void expect_same_halves(const Halves& want, const Halves& got, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == got[i]) continue;
    if (++bad <= 5)
      ADD_FAILURE() << what << ": element " << i << " is " << from_bf16_bits(got[i]) << " (0x" << std::hex
                    << got[i] << "), expected " << from_bf16_bits(want[i]) << " (0x" << want[i] << ")" << std::dec;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << want.size() << " elements differ";
}

// Runs `launch` twice on freshly poisoned outputs; the second run must repeat the first's bits.
inline Halves run_twice_bf16(const Stream& st, DevHalves& out, const std::function<void()>& launch) {
  Halves first;
  for (int run = 0; run < 2; ++run) {
    out.poison();
    launch();
    st.sync();
    const Halves got = out.get();
    if (run == 0)
      first = got;
    else
      EXPECT_EQ(first, got) << "two identical launches differ";
  }
  return first;
}

}  // namespace rpp::gputest
