// tests/gpu/gpu_test_util.h — helpers shared by the GPU tests (tests/gpu/test_*.cpp): the CUDA
// error check CU(...), REQUIRE_GPU(), seeded random data (RPP_GPU_TEST_SEED=<n> changes the base
// seed), device buffers with guard bytes and NaN poison, a non-blocking stream, and the
// bit-for-bit comparisons. Header-only (every function inline); each test file is its own
// executable. Not compiled on its own: the CMake glob only builds tests/gpu/test_*.
#pragma once

#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda/device.cuh"
#include "runtime/rng.h"

// Skips the current test when there is no CUDA device.
// With RPP_EXPECT_GPU=1 in the environment (tools/gpu_session.sh sets it) a missing device is a
// failure instead, so that a driver problem cannot pass as a run of skipped tests.
#define REQUIRE_GPU()                                                                          \
  if (::rpp::cuda::device_count() == 0) {                                                      \
    if (std::getenv("RPP_EXPECT_GPU")) FAIL() << "RPP_EXPECT_GPU is set but CUDA reports: "   \
                                              << ::rpp::cuda::device_count_error();            \
    GTEST_SKIP() << "no usable CUDA device (" << ::rpp::cuda::device_count_error() << ")";     \
  }

// The CPU emulator under AddressSanitizer (CI's sanitizer pass) is some 100 times slower than a
// GPU: there the kernel suites check every other network shape (the same code paths; the
// skipped ones run in the emulator's Release build and on a GPU). RPP_EMU_LARGE=1 keeps them all.
inline bool emulator_thins_shapes() {
#if defined(RPP_CUDA_EMULATOR) && defined(__SANITIZE_ADDRESS__)
  return std::getenv("RPP_EMU_LARGE") == nullptr;
#else
  return false;
#endif
}
template <class T>
std::vector<T> thin_for_emulator(std::vector<T> v) {
  if (!emulator_thins_shapes()) return v;
  std::vector<T> kept;
  for (size_t i = 0; i < v.size(); i += 2) kept.push_back(v[i]);
  return kept;
}

// Throws std::runtime_error naming the call and the CUDA error.
#define CU(call) ::rpp::gputest::cuda_check((call), #call)

namespace rpp::gputest {

using Floats = std::vector<float>;

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// ---- Seeds and data ----

// RPP_GPU_TEST_SEED, or a fixed default.
inline uint64_t base_seed() {
  static const uint64_t b = [] {
    const char* s = std::getenv("RPP_GPU_TEST_SEED");
    return s ? std::strtoull(s, nullptr, 10) : uint64_t(20250611);
  }();
  return b;
}

// A new seed for every buffer, derived from the base seed.
inline uint64_t next_seed() {
  static uint64_t counter = 0;
  return base_seed() * 1000003ull + ++counter;
}

inline Floats normal(size_t n, float mean = 0.f, float sd = 1.f) {
  rpp::Rng rng(next_seed());
  Floats v(n);
  for (float& x : v) x = mean + sd * rng.normal();
  return v;
}

inline Floats uniform(size_t n, float lo, float hi) {
  rpp::Rng rng(next_seed());
  Floats v(n);
  for (float& x : v) x = rng.uniform(lo, hi);
  return v;
}

// Values in {-k, ..., k}: many exact ties, and exact sums of products while they stay below 2^24.
inline Floats small_ints(size_t n, int k) {
  rpp::Rng rng(next_seed());
  Floats v(n);
  for (float& x : v) x = float(int(rng.below(uint32_t(2 * k + 1))) - k);
  return v;
}

// ---- Device buffers with guard bytes ----

constexpr size_t kGuardBytes = 512;  // before and after every buffer (keeps 256-byte alignment)
constexpr unsigned char kGuardByte = 0xA7;

// Device memory with guard bytes on both sides, poisoned (NaN) on creation. cudaMemset and
// pageable cudaMemcpy run on the legacy default stream, which does not order with the tests'
// non-blocking streams: poison() and upload() wait for the device before returning.
class DevBuf {
 public:
  explicit DevBuf(size_t bytes) : bytes_(bytes) {
    CU(cudaMalloc(&base_, bytes_ + 2 * kGuardBytes));
    CU(cudaMemset(base_, kGuardByte, bytes_ + 2 * kGuardBytes));
    poison();
  }
  ~DevBuf() { cudaFree(base_); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;

  void* data() const { return static_cast<unsigned char*>(base_) + kGuardBytes; }
  size_t bytes() const { return bytes_; }
  // All bits set: NaN as a float and as a double.
  void poison() {
    CU(cudaMemset(data(), 0xFF, bytes_));
    CU(cudaDeviceSynchronize());
  }
  void upload(const void* src, size_t bytes) {
    if (bytes) CU(cudaMemcpy(data(), src, bytes, cudaMemcpyHostToDevice));
    CU(cudaDeviceSynchronize());
  }
  void download(void* dst, size_t bytes) const {
    if (bytes) CU(cudaMemcpy(dst, data(), bytes, cudaMemcpyDeviceToHost));
  }
  // Empty when both guard regions still hold the pattern, else where they were overwritten.
  std::string guard_damage() const {
    std::vector<unsigned char> before(kGuardBytes), after(kGuardBytes);
    CU(cudaMemcpy(before.data(), base_, kGuardBytes, cudaMemcpyDeviceToHost));
    CU(cudaMemcpy(after.data(), static_cast<unsigned char*>(data()) + bytes_, kGuardBytes,
                  cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < kGuardBytes; ++i) {
      if (before[i] != kGuardByte)
        return "written " + std::to_string(kGuardBytes - i) + " bytes before the buffer";
      if (after[i] != kGuardByte) return "written " + std::to_string(i) + " bytes past the end";
    }
    return "";
  }

 private:
  void* base_ = nullptr;
  size_t bytes_;
};

// n floats on the device (poisoned, or a copy of a host vector).
class DevFloats : public DevBuf {
 public:
  explicit DevFloats(size_t n) : DevBuf(n * sizeof(float)), n_(n) {}
  explicit DevFloats(const Floats& h) : DevFloats(h.size()) { set(h); }
  float* p() const { return static_cast<float*>(data()); }
  size_t size() const { return n_; }
  void set(const Floats& h) {
    if (h.size() != n_) throw std::runtime_error("DevFloats::set: size mismatch");
    upload(h.data(), n_ * sizeof(float));
  }
  Floats get() const {
    Floats h(n_);
    download(h.data(), n_ * sizeof(float));
    return h;
  }

 private:
  size_t n_;
};

// n bytes on the device (poisoned to 0xFF, or a copy of a host vector): U8 tensors (max-pool argmax).
class DevBytes : public DevBuf {
 public:
  explicit DevBytes(size_t n) : DevBuf(n), n_(n) {}
  uint8_t* p() const { return static_cast<uint8_t*>(data()); }
  std::vector<uint8_t> get() const {
    std::vector<uint8_t> h(n_);
    download(h.data(), n_);
    return h;
  }

 private:
  size_t n_;
};

class Stream {
 public:
  Stream() { CU(cudaStreamCreateWithFlags(&s_, cudaStreamNonBlocking)); }
  ~Stream() { cudaStreamDestroy(s_); }
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  operator cudaStream_t() const { return s_; }
  void sync() const { CU(cudaStreamSynchronize(s_)); }

 private:
  cudaStream_t s_ = nullptr;
};

inline void expect_guards(std::initializer_list<const DevBuf*> bufs) {
  int k = 0;
  for (const DevBuf* b : bufs) {
    EXPECT_EQ("", b->guard_damage()) << "device buffer #" << k << " of the checked list";
    ++k;
  }
}

// ---- Comparisons ----

inline bool same_bits(const Floats& a, const Floats& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

// Runs `launch` twice on fresh poison (reset, if given, then restores inputs that the op updates
// in place, or poisons workspaces), waiting for `stream` after each, and returns the outputs of
// the first run; the second run must give the same bits.
inline std::vector<Floats> run_twice(const Stream& stream, std::initializer_list<DevFloats*> outs,
                                     const std::function<void()>& reset,
                                     const std::function<void()>& launch) {
  std::vector<Floats> first;
  for (int run = 0; run < 2; ++run) {
    for (DevFloats* o : outs) o->poison();
    if (reset) reset();
    launch();
    stream.sync();
    std::vector<Floats> got;
    for (DevFloats* o : outs) got.push_back(o->get());
    if (run == 0) {
      first = std::move(got);
    } else {
      for (size_t k = 0; k < got.size(); ++k)
        EXPECT_TRUE(same_bits(first[k], got[k]))
            << "output #" << k << " differs between two identical runs";
    }
  }
  return first;
}

}  // namespace rpp::gputest
