// tests/emu/cuda_emu.h — a CPU emulator for the project's own CUDA kernels, so that their GPU
// tests (tests/gpu/test_ops_gpu.cpp, test_bn_relu_conv_gpu.cpp) run, under AddressSanitizer too,
// on machines without a GPU. It is a test tool, not a backend: single OS thread, slow, and only
// the subset of CUDA the project uses.
//
// How it works
//   * The kernel sources go through tests/emu/cu2cpp.cpp, which rewrites each launch into
//     launch_config(grid, block, shmem, stream).run(kernel, args...). Everything else compiles as
//     C++ with the macros below (__global__ and __device__ vanish, __shared__ becomes a static
//     local, shared by the threads of the block that is running).
//   * run() executes the blocks one after another. Within a block every CUDA thread is a fiber
//     (ucontext) with its own stack. __syncthreads() switches back to the scheduler; when every
//     live thread of the block waits at it, all continue. __shfl_down_sync() works the same way
//     for the 32 threads of a warp. A kernel whose first block never reaches a barrier runs its
//     remaining blocks without fibers, thread after thread (a barrier met there is an error).
//   * Device memory is host memory that host code cannot touch: cudaMalloc maps whole pages
//     between two guard pages, filled with 0xFF bytes (NaN), and keeps them inaccessible except
//     while the emulator itself runs device work (a kernel, a copy, an emulated cuDNN call). Host
//     code that reads or writes a device pointer, or device work that runs past the end of its
//     allocation (rounded up to 256 bytes) or before the page it starts in, stops with a message.
//     cudaMallocHost is ordinary (pinned) host memory.
//   * Work is deferred as on a device. Each non-blocking stream has its own queue; the legacy
//     stream and the blocking streams share one. Work runs only when the host waits for it:
//     cudaStreamSynchronize, cudaEventSynchronize, cudaDeviceSynchronize, cudaFree, the
//     synchronous cudaMemcpy (legacy queue only) and a copy into pageable host memory. A
//     stream that waits on an event first runs the event's queue up to it. So a missing wait
//     leaves the host reading stale results, or overwriting a buffer before its copy has run.
//     A copy from pageable host memory takes its bytes at the call, as cudaMemcpyAsync does.
//   * Stream capture records the work, and a graph launch queues it. The rules of capture are
//     enforced: synchronising a capturing stream or the device, capture-unsafe calls
//     (cudaMalloc, cudaFree, cudaMallocHost, cudaFreeHost) from a thread that may not make them,
//     legacy-stream work beside a capturing blocking stream, and a capturing stream waiting on an
//     event recorded outside the capture fail and invalidate the capture, as on a device.
//   * rpp_emu::counters() counts host waits, allocations and kernels, so that tests can check
//     that a step or a call neither allocates nor waits.
//   * threadIdx, blockIdx, blockDim and gridDim are the scheduler's current values.
//   * Tensor cores: tests/emu/mma.h stands in for <mma.h> (the nvcuda::wmma subset of TF32
//     m16n16k8 and BF16 m16n16k16 with fp32 accumulation, operands rounded as the hardware
//     rounds them) and tests/emu/cuda_bf16.h for <cuda_bf16.h>; their headers say how.
// What it cannot show: races between threads, timing, warp divergence effects, and anything
// about the real device's memory model. Build with -ffp-contract=off so that float arithmetic
// matches the device's (no fused multiply-adds unless the code asks for fmaf).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- device-side language ----
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

// ---- runtime types ----
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInsufficientDriver = 35,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalState = 401,
  cudaErrorNotReady = 600,
  cudaErrorStreamCaptureUnsupported = 900,
  cudaErrorStreamCaptureInvalidated = 901,
  cudaErrorStreamCaptureUnmatched = 903,
  cudaErrorStreamCaptureIsolation = 904,
  cudaErrorStreamCaptureImplicit = 906,
  cudaErrorStreamCaptureWrongThread = 908,
};
using cudaError = cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4
};
enum cudaStreamCaptureMode {
  cudaStreamCaptureModeGlobal = 0,
  cudaStreamCaptureModeThreadLocal = 1,
  cudaStreamCaptureModeRelaxed = 2
};
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventDisableTiming = 2;
struct CUstream_st;
struct CUevent_st;
struct CUgraph_st;
struct CUgraphExec_st;
struct CUgraphNode_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
using cudaGraph_t = CUgraph_st*;
using cudaGraphExec_t = CUgraphExec_st*;
using cudaGraphNode_t = CUgraphNode_st*;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  int major, minor, multiProcessorCount, l2CacheSize, warpSize, maxThreadsPerBlock;
  size_t sharedMemPerBlock;
};

cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaMallocHost(void** p, size_t bytes);
cudaError_t cudaFree(void* p);
cudaError_t cudaFreeHost(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);
cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphDestroy(cudaGraph_t g);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);

// ---- device-side functions ----
template <class T>
inline T min(T a, T b) {
  return b < a ? b : a;
}
template <class T>
inline T max(T a, T b) {
  return a < b ? b : a;
}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }

namespace rpp_emu {

// The current thread's coordinates (the scheduler sets them before it resumes a thread).
extern uint3 g_thread, g_block;
extern dim3 g_block_dim, g_grid_dim;

void syncthreads();
// Lane value exchange within the current warp: every live lane of the warp must call it.
double shfl_down(double v, unsigned delta);
void* dynamic_shared_bytes();
template <class T>
T* dynamic_shared() {
  return static_cast<T*>(dynamic_shared_bytes());
}

// Queues op on `stream`, or records it when `stream` is being captured (work of the emulated
// libraries). An error when the stream's capture forbids it.
cudaError_t enqueue_on(cudaStream_t stream, std::function<void()> op);

// What the emulated runtime has done since the process started (tests take differences).
struct Counters {
  uint64_t host_waits = 0;   // the host waited for device work: stream, event or device
                             // synchronisation, a synchronous cudaMemcpy, a copy into pageable memory
  uint64_t allocations = 0;  // cudaMalloc and cudaMallocHost
  uint64_t frees = 0;        // cudaFree and cudaFreeHost of a non-null pointer
  uint64_t kernels = 0;      // kernel launches queued or recorded
  uint64_t graph_launches = 0;
};
Counters counters();

// Runs `thread_body` as every thread of every block (see the file comment).
void execute(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, const std::function<void()>& thread_body);

struct launch_config {
  dim3 grid, block;
  size_t shmem;
  cudaStream_t stream;
  launch_config(dim3 g, dim3 b, size_t sh = 0, cudaStream_t s = nullptr) : grid(g), block(b), shmem(sh), stream(s) {}
  template <class... P, class... A>
  void run(void (*kernel)(P...), A&&... args) const {
    static_assert(sizeof...(P) == sizeof...(A), "kernel launched with the wrong number of arguments");
    // Arguments are copied once, converted to the parameter types, as a launch does.
    auto params = std::make_shared<std::tuple<std::decay_t<P>...>>(std::forward<A>(args)...);
    execute(grid, block, shmem, stream, [kernel, params] { std::apply(kernel, *params); });
  }
};

}  // namespace rpp_emu

#define threadIdx (::rpp_emu::g_thread)
#define blockIdx (::rpp_emu::g_block)
#define blockDim (::rpp_emu::g_block_dim)
#define gridDim (::rpp_emu::g_grid_dim)
#define __syncthreads() ::rpp_emu::syncthreads()
#define __shfl_down_sync(mask, v, delta) ::rpp_emu::shfl_down((v), unsigned(delta))
