// tests/capi/test_capi_gpu.cpp — libresunetpp on a GPU: a "cuda:0" model against the "cpu" model
// of the same checkpoint (rpp_segment), the device-pointer calls against the host calls of the
// same model, on a caller's stream, in batches and from several threads at once.
// Every test skips without a usable CUDA device (fails with RPP_EXPECT_GPU=1).
// Tolerances: the GPU's fp32 network vs the CPU's, probabilities within 2e-4 absolute; masks may
// differ only where a probability is that close to the threshold. The device path repeats the
// host path's pre- and post-processing arithmetic exactly, so against the host path of the same
// CUDA model probabilities agree within 1e-6 (the sigmoid's exp is the device's) and masks may
// differ only at the threshold.
//   ./build/rpp_test_capi_gpu
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/cuda/device.cuh"
#include "tests/gpu/gpu_test_util.h"
#include "resunetpp/resunetpp.h"
#include "runtime/fileio.h"
#include "tests/capi/fixture.h"

using capi_fixture::test_image;

namespace {

std::string tmp_root() { return "/tmp/rpp_test_capi_gpu_" + std::to_string(getpid()); }

class ScratchCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(tmp_root(), ec);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new ScratchCleanup);

const std::string& tiny_path() {
  static const std::string path = [] {
    rpp::make_dirs(tmp_root());
    const std::string p = tmp_root() + "/tiny.safetensors";
    capi_fixture::write_tiny_checkpoint(p, 5);
    return p;
  }();
  return path;
}

struct ModelDeleter {
  void operator()(rpp_model* m) const { rpp_model_destroy(m); }
};
using ModelPtr = std::unique_ptr<rpp_model, ModelDeleter>;

ModelPtr load(const char* device, int batch = 1, int tta = 0, const char* precision = "fp32") {
  rpp_model_options o;
  EXPECT_EQ(rpp_model_options_init(&o, RPP_API_VERSION), RPP_STATUS_OK);
  o.device = device;
  o.precision = precision;
  o.batch = batch;
  o.tta = tta;
  rpp_model* m = nullptr;
  EXPECT_EQ(rpp_model_create_from_file(tiny_path().c_str(), &o, &m), RPP_STATUS_OK) << rpp_last_error();
  return ModelPtr(m);
}

struct Output {
  std::vector<float> prob;
  std::vector<uint8_t> mask;
};

Output host_segment(rpp_model* m, const rpp::Image& img) {
  Output o{std::vector<float>(size_t(img.w) * size_t(img.h), -1.f), std::vector<uint8_t>(size_t(img.w) * size_t(img.h), 7)};
  const rpp_image v{img.px.data(), img.w, img.h, 0};
  EXPECT_EQ(rpp_segment(m, &v, o.prob.data(), o.mask.data()), RPP_STATUS_OK) << rpp_last_error();
  return o;
}

// The host batch call on the same images: the same contexts (batch size) as a device batch call.
std::vector<Output> host_batch(rpp_model* m, const std::vector<rpp::Image>& imgs) {
  std::vector<Output> out;
  std::vector<rpp_image> views;
  std::vector<float*> probs;
  std::vector<uint8_t*> masks;
  for (const rpp::Image& img : imgs)
    out.push_back(Output{std::vector<float>(size_t(img.w) * size_t(img.h), -1.f),
                         std::vector<uint8_t>(size_t(img.w) * size_t(img.h), 7)});
  for (size_t i = 0; i < imgs.size(); ++i) {
    views.push_back(rpp_image{imgs[i].px.data(), imgs[i].w, imgs[i].h, 0});
    probs.push_back(out[i].prob.data());
    masks.push_back(out[i].mask.data());
  }
  EXPECT_EQ(rpp_segment_batch(m, views.data(), views.size(), probs.data(), masks.data()), RPP_STATUS_OK)
      << rpp_last_error();
  return out;
}

// Asserts prob within tol and masks equal except where prob is within tol of 0.5.
void expect_close(const Output& got, const Output& want, double tol, const std::string& what) {
  ASSERT_EQ(got.prob.size(), want.prob.size()) << what;
  size_t bad = 0, flips = 0;
  for (size_t i = 0; i < want.prob.size(); ++i) {
    if (!(std::fabs(double(got.prob[i]) - double(want.prob[i])) <= tol)) ++bad;
    if (got.mask[i] != want.mask[i] && std::fabs(double(want.prob[i]) - 0.5) > tol) ++flips;
  }
  EXPECT_EQ(bad, 0u) << what << ": probabilities differ by more than " << tol;
  EXPECT_EQ(flips, 0u) << what << ": mask pixels differ away from the threshold";
}

// An image in device memory with a padded row stride; freed on destruction.
struct DeviceImage {
  uint8_t* data = nullptr;
  size_t stride = 0;
  int w = 0, h = 0;
  DeviceImage(const rpp::Image& img, size_t pad) : stride(size_t(img.w) * 3 + pad), w(img.w), h(img.h) {
    std::vector<uint8_t> host(stride * size_t(h), 0xAB);
    for (int y = 0; y < h; ++y)
      std::memcpy(host.data() + size_t(y) * stride, img.px.data() + size_t(y) * size_t(w) * 3, size_t(w) * 3);
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&data), host.size()), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(data, host.data(), host.size(), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceImage() { cudaFree(data); }
  DeviceImage(const DeviceImage&) = delete;
  DeviceImage& operator=(const DeviceImage&) = delete;
  rpp_image view() const { return rpp_image{data, w, h, stride}; }
};

struct DeviceOutput {
  float* prob = nullptr;
  uint8_t* mask = nullptr;
  size_t n = 0;
  explicit DeviceOutput(size_t pixels) : n(pixels) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&prob), n * sizeof(float)), cudaSuccess);
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&mask), n), cudaSuccess);
    EXPECT_EQ(cudaMemset(prob, 0xFF, n * sizeof(float)), cudaSuccess);  // NaN: unwritten shows
    EXPECT_EQ(cudaMemset(mask, 7, n), cudaSuccess);
    // The memsets run on the legacy stream, which the callers' non-blocking streams do not wait for.
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  }
  ~DeviceOutput() {
    cudaFree(prob);
    cudaFree(mask);
  }
  DeviceOutput(const DeviceOutput&) = delete;
  DeviceOutput& operator=(const DeviceOutput&) = delete;
  Output get() const {
    Output o{std::vector<float>(n), std::vector<uint8_t>(n)};
    EXPECT_EQ(cudaMemcpy(o.prob.data(), prob, n * sizeof(float), cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(o.mask.data(), mask, n, cudaMemcpyDeviceToHost), cudaSuccess);
    return o;
  }
};

}  // namespace

TEST(CApiGpu, CudaModelMatchesTheCpuModel) {
  REQUIRE_GPU();
  ModelPtr cpu = load("cpu"), gpu = load("cuda:0");
  ASSERT_TRUE(cpu && gpu);
  EXPECT_NE(std::string(rpp_version()).find("cuda"), std::string::npos) << rpp_version();
  int k = 0;
  for (auto [w, h] : {std::pair<int, int>{32, 32}, {45, 29}, {100, 64}, {7, 90}}) {
    const rpp::Image img = test_image(w, h, uint64_t(10 + k++));
    expect_close(host_segment(gpu.get(), img), host_segment(cpu.get(), img), 2e-4,
                 std::to_string(w) + "x" + std::to_string(h));
  }
}

// precision "bf16": bf16 activations, so close to fp32 but not equal to it.
TEST(CApiGpu, Bf16ModelIsCloseToTheFp32Model) {
  REQUIRE_GPU();
  ModelPtr fp32 = load("cuda:0"), bf16 = load("cuda:0", 2, 0, "bf16");
  ASSERT_TRUE(fp32 && bf16);
  size_t differ = 0;
  int k = 0;
  for (auto [w, h] : {std::pair<int, int>{32, 32}, {45, 29}, {100, 64}}) {
    const rpp::Image img = test_image(w, h, uint64_t(40 + k++));
    const Output a = host_segment(bf16.get(), img), b = host_segment(fp32.get(), img);
    expect_close(a, b, 2e-2, std::to_string(w) + "x" + std::to_string(h) + " bf16");
    for (size_t i = 0; i < a.prob.size(); ++i) differ += a.prob[i] != b.prob[i];
  }
  EXPECT_GT(differ, 0u) << "bf16 gave exactly the fp32 probabilities: was it used?";
}

TEST(CApiGpu, DevicePathOnAUserStreamEqualsTheHostPath) {
  REQUIRE_GPU();
  ModelPtr m = load("cuda:0", /*batch=*/2);
  ASSERT_TRUE(m);
  cudaStream_t user = nullptr;
  CU(cudaStreamCreateWithFlags(&user, cudaStreamNonBlocking));
  std::vector<rpp::Image> imgs;
  std::vector<std::unique_ptr<DeviceImage>> dimg;
  std::vector<std::unique_ptr<DeviceOutput>> dout;
  std::vector<rpp_image> views;
  std::vector<float*> probs;
  std::vector<uint8_t*> masks;
  const std::pair<int, int> sizes[] = {{32, 32}, {45, 29}, {100, 64}};  // 3 images, batch 2: two runs
  for (size_t i = 0; i < 3; ++i) {
    imgs.push_back(test_image(sizes[i].first, sizes[i].second, 40 + i));
    dimg.push_back(std::make_unique<DeviceImage>(imgs.back(), i * 5));  // strides with padding
    dout.push_back(std::make_unique<DeviceOutput>(size_t(imgs.back().w) * size_t(imgs.back().h)));
    views.push_back(dimg.back()->view());
    probs.push_back(dout.back()->prob);
    masks.push_back(i == 1 ? nullptr : dout.back()->mask);  // one image asks for the probability only
  }
  ASSERT_EQ(rpp_segment_batch_device(m.get(), views.data(), views.size(), probs.data(), masks.data(), user),
            RPP_STATUS_OK)
      << rpp_last_error();
#ifdef RPP_CUDA_EMULATOR
  // The emulator counts what a device cannot report: a second call (contexts made) neither
  // waits for the device nor allocates.
  const rpp_emu::Counters before = rpp_emu::counters();
  ASSERT_EQ(rpp_segment_batch_device(m.get(), views.data(), views.size(), probs.data(), masks.data(), user),
            RPP_STATUS_OK)
      << rpp_last_error();
  const rpp_emu::Counters after = rpp_emu::counters();
  EXPECT_EQ(after.host_waits, before.host_waits) << "the device-pointer call waited for the device";
  EXPECT_EQ(after.allocations, before.allocations) << "the device-pointer call allocated";
  EXPECT_GT(after.kernels, before.kernels);
#endif
  CU(cudaStreamSynchronize(user));
  // Against the host batch call: the same batch-2 context. (A single-image host call runs on the
  // model's batch-1 context, whose convolution algorithms may differ.)
  const std::vector<Output> host = host_batch(m.get(), imgs);
  for (size_t i = 0; i < 3; ++i) {
    Output got = dout[i]->get();
    const Output& want = host[i];
    if (i == 1) {
      EXPECT_EQ(got.mask, std::vector<uint8_t>(got.mask.size(), 7)) << "mask written though not asked for";
      got.mask = want.mask;
    }
    expect_close(got, want, 1e-6, "image " + std::to_string(i));
  }
  // The single-image call, on the model's default stream (null).
  DeviceOutput one(size_t(imgs[0].w) * size_t(imgs[0].h));
  ASSERT_EQ(rpp_segment_device(m.get(), &views[0], one.prob, one.mask, nullptr), RPP_STATUS_OK) << rpp_last_error();
  CU(cudaDeviceSynchronize());
  expect_close(one.get(), host_segment(m.get(), imgs[0]), 1e-6, "rpp_segment_device");
  CU(cudaStreamDestroy(user));
}

TEST(CApiGpu, ConcurrentDeviceCallsEqualSerialOnes) {
  REQUIRE_GPU();
  ModelPtr m = load("cuda:0");
  ASSERT_TRUE(m);
  const int threads = 4;
  std::vector<rpp::Image> imgs;
  std::vector<std::unique_ptr<DeviceImage>> dimg;
  std::vector<Output> serial;
  for (int t = 0; t < threads; ++t) {
    imgs.push_back(test_image(40 + t, 30, uint64_t(70 + t)));
    dimg.push_back(std::make_unique<DeviceImage>(imgs.back(), 0));
    serial.push_back(host_segment(m.get(), imgs.back()));
  }
  std::vector<Output> got(static_cast<size_t>(threads));
  std::vector<int> status(static_cast<size_t>(threads), -1);
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      cudaStream_t s = nullptr;
      if (cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking) != cudaSuccess) return;
      DeviceOutput out(size_t(imgs[size_t(t)].w) * size_t(imgs[size_t(t)].h));
      const rpp_image v = dimg[size_t(t)]->view();
      for (int rep = 0; rep < 5; ++rep) status[size_t(t)] = rpp_segment_device(m.get(), &v, out.prob, out.mask, s);
      cudaStreamSynchronize(s);
      got[size_t(t)] = out.get();
      cudaStreamDestroy(s);
    });
  for (std::thread& th : pool) th.join();
  for (int t = 0; t < threads; ++t) {
    EXPECT_EQ(status[size_t(t)], RPP_STATUS_OK) << "thread " << t;
    expect_close(got[size_t(t)], serial[size_t(t)], 1e-6, "thread " + std::to_string(t));
  }
}

TEST(CApiGpu, DevicePathRefusesTta) {
  REQUIRE_GPU();
  ModelPtr m = load("cuda:0", 1, /*tta=*/1);
  ASSERT_TRUE(m);
  const rpp::Image img = test_image(16, 16, 3);
  DeviceImage d(img, 0);
  DeviceOutput out(256);
  const rpp_image v = d.view();
  EXPECT_EQ(rpp_segment_device(m.get(), &v, out.prob, out.mask, nullptr), RPP_STATUS_UNSUPPORTED);
  EXPECT_NE(std::string(rpp_last_error()).find("tta"), std::string::npos) << rpp_last_error();
}

