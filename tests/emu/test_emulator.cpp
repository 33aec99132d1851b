// tests/emu/test_emulator.cpp — the emulator's own behaviour, where it stands in for a device:
// device memory the host cannot touch, work that runs only when the host waits for it, and the
// rules of stream capture. Each test shows a mistake that would break on a GPU breaking here too.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "cuda_emu.h"

namespace {

#define CU(x) ASSERT_EQ((x), cudaSuccess) << #x

// One thread per element: p[i] = v.
__global__ void fill(float* p, int n, float v) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) p[i] = v;
}
// One thread per element: dst[i] = src[i] + 1.
__global__ void add_one(const float* src, float* dst, int n) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) dst[i] = src[i] + 1.f;
}

void launch_fill(float* p, int n, float v, cudaStream_t s) {
  rpp_emu::launch_config(dim3(unsigned((n + 63) / 64)), dim3(64), 0, s).run(fill, p, n, v);
}

struct Streams {
  cudaStream_t a = nullptr, b = nullptr;
  Streams() {
    cudaStreamCreateWithFlags(&a, cudaStreamNonBlocking);
    cudaStreamCreateWithFlags(&b, cudaStreamNonBlocking);
  }
  ~Streams() {
    cudaStreamDestroy(a);
    cudaStreamDestroy(b);
  }
};

TEST(EmulatorMemory, HostCodeCannotTouchDeviceMemory) {
  float* d = nullptr;
  CU(cudaMalloc(&d, 64 * sizeof(float)));
  EXPECT_DEATH({ d[3] = 1.f; }, "host code touched device memory");
  EXPECT_DEATH({ std::printf("%f\n", double(d[0])); }, "host code touched device memory");
  CU(cudaFree(d));
}

TEST(EmulatorMemory, DeviceWorkPastTheEndOfAnAllocationStops) {
  float* d = nullptr;
  CU(cudaMalloc(&d, 64 * sizeof(float)));  // 256 bytes: the next float is in the guard page
  EXPECT_DEATH(
      {
        launch_fill(d, 65, 1.f, nullptr);
        cudaDeviceSynchronize();
      },
      "guard page");
  CU(cudaFree(d));
}

TEST(EmulatorMemory, DeviceWorkBeforeTheStartOfAnAllocationStops) {
  float* d = nullptr;
  CU(cudaMalloc(&d, 4096 * sizeof(float)));  // whole pages: the float before is in the guard page
  EXPECT_DEATH(
      {
        launch_fill(d - 1, 1, 1.f, nullptr);
        cudaDeviceSynchronize();
      },
      "guard page");
  CU(cudaFree(d));
}

TEST(EmulatorMemory, NewAllocationsHoldGarbageAndFreeChecksThePointer) {
  float* d = nullptr;
  CU(cudaMalloc(&d, 16 * sizeof(float)));
  std::vector<uint32_t> h(16, 0);
  CU(cudaMemcpy(h.data(), d, 16 * sizeof(float), cudaMemcpyDeviceToHost));
  for (uint32_t v : h) EXPECT_EQ(v, 0xFFFFFFFFu);  // NaN, not a convenient zero
  std::vector<float> host(4);
  EXPECT_EQ(cudaFree(host.data()), cudaErrorInvalidValue);
  EXPECT_EQ(cudaFree(d + 1), cudaErrorInvalidValue);
  CU(cudaFree(d));
}

TEST(EmulatorStreams, WorkRunsOnlyWhenTheHostWaits) {
  Streams st;
  float* d = nullptr;
  CU(cudaMalloc(&d, 8 * sizeof(float)));
  launch_fill(d, 8, 2.f, st.a);
  // The synchronous copy waits for the legacy stream only, not for the non-blocking stream a.
  std::vector<float> h(8, 0.f);
  CU(cudaMemcpy(h.data(), d, 8 * sizeof(float), cudaMemcpyDeviceToHost));
  EXPECT_TRUE(std::isnan(h[0])) << "read before the stream ran: still the allocation's garbage";
  CU(cudaStreamSynchronize(st.a));
  CU(cudaMemcpy(h.data(), d, 8 * sizeof(float), cudaMemcpyDeviceToHost));
  for (float v : h) EXPECT_EQ(v, 2.f);
  CU(cudaFree(d));
}

TEST(EmulatorStreams, ACopyFromPinnedMemoryReadsItWhenItRuns) {
  Streams st;
  float* d = nullptr;
  float* pinned = nullptr;
  CU(cudaMalloc(&d, 2 * sizeof(float)));
  CU(cudaMallocHost(reinterpret_cast<void**>(&pinned), 2 * sizeof(float)));
  std::vector<float> pageable = {5.f, 5.f};
  pinned[0] = 1.f;
  CU(cudaMemcpyAsync(d, pinned, sizeof(float), cudaMemcpyHostToDevice, st.a));
  CU(cudaMemcpyAsync(d + 1, pageable.data(), sizeof(float), cudaMemcpyHostToDevice, st.a));
  pinned[0] = 7.f;    // too early: the copy has not run
  pageable[0] = 9.f;  // fine: a pageable source is taken at the call
  std::vector<float> h(2);
  CU(cudaMemcpyAsync(h.data(), d, 2 * sizeof(float), cudaMemcpyDeviceToHost, st.a));  // waits: pageable
  EXPECT_EQ(h[0], 7.f);
  EXPECT_EQ(h[1], 5.f);
  CU(cudaFreeHost(pinned));
  CU(cudaFree(d));
}

TEST(EmulatorStreams, AnEventOrdersTwoStreams) {
  Streams st;
  float *x = nullptr, *y = nullptr;
  CU(cudaMalloc(&x, 4 * sizeof(float)));
  CU(cudaMalloc(&y, 4 * sizeof(float)));
  cudaEvent_t e = nullptr;
  CU(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  launch_fill(x, 4, 3.f, st.a);
  CU(cudaEventRecord(e, st.a));
  CU(cudaStreamWaitEvent(st.b, e, 0));
  rpp_emu::launch_config(dim3(1), dim3(4), 0, st.b).run(add_one, static_cast<const float*>(x), y, 4);
  CU(cudaStreamSynchronize(st.b));  // runs a up to the event first
  std::vector<float> h(4);
  CU(cudaMemcpy(h.data(), y, 4 * sizeof(float), cudaMemcpyDeviceToHost));
  for (float v : h) EXPECT_EQ(v, 4.f);
  CU(cudaEventDestroy(e));
  CU(cudaFree(x));
  CU(cudaFree(y));
}

TEST(EmulatorStreams, ElapsedTimeNeedsCompletedTimingEvents) {
  Streams st;
  cudaEvent_t a = nullptr, b = nullptr, quiet = nullptr;
  CU(cudaEventCreate(&a));
  CU(cudaEventCreate(&b));
  CU(cudaEventCreateWithFlags(&quiet, cudaEventDisableTiming));
  CU(cudaEventRecord(a, st.a));
  CU(cudaEventRecord(b, st.a));
  CU(cudaEventRecord(quiet, st.a));
  float ms = -1.f;
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaErrorNotReady);
  CU(cudaEventSynchronize(b));
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, b), cudaSuccess);
  EXPECT_EQ(cudaEventElapsedTime(&ms, a, quiet), cudaErrorInvalidResourceHandle);
  for (cudaEvent_t e : {a, b, quiet}) CU(cudaEventDestroy(e));
}

TEST(EmulatorCapture, SynchronisingACapturingStreamInvalidatesTheCapture) {
  Streams st;
  CU(cudaStreamBeginCapture(st.a, cudaStreamCaptureModeThreadLocal));
  EXPECT_EQ(cudaStreamSynchronize(st.a), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(st.a, &g), cudaErrorStreamCaptureInvalidated);
  EXPECT_EQ(g, nullptr);
  CU(cudaStreamBeginCapture(st.a, cudaStreamCaptureModeThreadLocal));
  EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(st.a, &g), cudaErrorStreamCaptureInvalidated);
}

TEST(EmulatorCapture, AllocationFollowsTheCaptureMode) {
  Streams st;
  void* p = nullptr;
  cudaGraph_t g = nullptr;
  CU(cudaStreamBeginCapture(st.a, cudaStreamCaptureModeThreadLocal));
  cudaError_t other = cudaErrorInvalidValue;
  std::thread([&] {
    void* q = nullptr;
    other = cudaMalloc(&q, 64);
    if (other == cudaSuccess) other = cudaFree(q);
  }).join();
  EXPECT_EQ(other, cudaSuccess) << "another thread may allocate beside a thread-local capture";
  EXPECT_EQ(cudaMalloc(&p, 64), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamEndCapture(st.a, &g), cudaErrorStreamCaptureInvalidated);

  CU(cudaStreamBeginCapture(st.a, cudaStreamCaptureModeGlobal));
  std::thread([&] {
    void* q = nullptr;
    other = cudaMalloc(&q, 64);
  }).join();
  EXPECT_EQ(other, cudaErrorStreamCaptureUnsupported) << "a global capture forbids it on every thread";
  EXPECT_EQ(cudaStreamEndCapture(st.a, &g), cudaErrorStreamCaptureInvalidated);

  CU(cudaStreamBeginCapture(st.a, cudaStreamCaptureModeRelaxed));
  CU(cudaMalloc(&p, 64));
  CU(cudaStreamEndCapture(st.a, &g));
  CU(cudaGraphDestroy(g));
  CU(cudaFree(p));
}

TEST(EmulatorCapture, LegacyStreamWorkBesideACapturingBlockingStreamFails) {
  cudaStream_t blocking = nullptr;
  CU(cudaStreamCreate(&blocking));
  float* d = nullptr;
  CU(cudaMalloc(&d, 4 * sizeof(float)));
  float h[4] = {};
  CU(cudaStreamBeginCapture(blocking, cudaStreamCaptureModeThreadLocal));
  EXPECT_EQ(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost), cudaErrorStreamCaptureImplicit);
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(blocking, &g), cudaErrorStreamCaptureInvalidated);
  CU(cudaStreamDestroy(blocking));
  CU(cudaFree(d));
}

TEST(EmulatorCapture, WaitingOnAnEventFromOutsideTheCaptureFails) {
  Streams st;
  cudaEvent_t outside = nullptr, inside = nullptr;
  CU(cudaEventCreateWithFlags(&outside, cudaEventDisableTiming));
  CU(cudaEventCreateWithFlags(&inside, cudaEventDisableTiming));
  CU(cudaEventRecord(outside, st.b));
  CU(cudaStreamBeginCapture(st.a, cudaStreamCaptureModeThreadLocal));
  CU(cudaEventRecord(inside, st.a));
  EXPECT_EQ(cudaStreamWaitEvent(st.a, inside, 0), cudaSuccess);
  EXPECT_EQ(cudaEventSynchronize(inside), cudaErrorStreamCaptureUnsupported);
  EXPECT_EQ(cudaStreamWaitEvent(st.a, outside, 0), cudaErrorStreamCaptureIsolation);
  cudaGraph_t g = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(st.a, &g), cudaErrorStreamCaptureInvalidated);
  CU(cudaEventDestroy(outside));
  CU(cudaEventDestroy(inside));
}

TEST(EmulatorCapture, AGraphReplaysItsWorkAndCountsNoWaits) {
  Streams st;
  float* d = nullptr;
  CU(cudaMalloc(&d, 4 * sizeof(float)));
  CU(cudaStreamBeginCapture(st.a, cudaStreamCaptureModeThreadLocal));
  launch_fill(d, 4, 6.f, st.a);
  cudaGraph_t g = nullptr;
  CU(cudaStreamEndCapture(st.a, &g));
  cudaGraphExec_t exec = nullptr;
  CU(cudaGraphInstantiate(&exec, g, 0));
  const rpp_emu::Counters before = rpp_emu::counters();
  CU(cudaGraphLaunch(exec, st.a));
  const rpp_emu::Counters after = rpp_emu::counters();
  EXPECT_EQ(after.graph_launches - before.graph_launches, 1u);
  EXPECT_EQ(after.host_waits, before.host_waits);
  EXPECT_EQ(after.allocations, before.allocations);
  CU(cudaStreamSynchronize(st.a));
  EXPECT_EQ(rpp_emu::counters().host_waits - after.host_waits, 1u);
  std::vector<float> h(4);
  CU(cudaMemcpy(h.data(), d, sizeof(float) * 4, cudaMemcpyDeviceToHost));
  for (float v : h) EXPECT_EQ(v, 6.f);
  CU(cudaGraphExecDestroy(exec));
  CU(cudaGraphDestroy(g));
  CU(cudaFree(d));
}

}  // namespace
