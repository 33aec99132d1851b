// tests/emu/cuda_emu.cpp — the emulator's runtime and block scheduler (see cuda_emu.h).
#include "cuda_emu.h"

#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define RPP_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define RPP_EMU_ASAN 1
#endif
#endif
#ifdef RPP_EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

// Context switch. On x86-64 a few instructions that save the callee-saved registers and swap
// stacks (glibc's swapcontext also saves the signal mask with a system call on every switch,
// which made the emulator several times slower); elsewhere ucontext.
#if defined(__x86_64__) && defined(__linux__)
#define RPP_EMU_FAST_SWITCH 1
extern "C" void rpp_emu_switch(void** save_sp, void* new_sp);
asm(R"(
  .text
  .globl rpp_emu_switch
  .type rpp_emu_switch,@function
rpp_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size rpp_emu_switch,.-rpp_emu_switch
  .section .note.GNU-stack,"",@progbits
  .text
)");
#endif

namespace rpp_emu {

uint3 g_thread, g_block;
dim3 g_block_dim, g_grid_dim;

namespace {

[[noreturn]] void die(const char* what) {
  std::fprintf(stderr, "cuda emulator: %s\n", what);
  std::abort();
}

// ---- the block scheduler ----

enum class Wait { None, Barrier, Shuffle, Done };

constexpr size_t kStackBytes = size_t(128) << 10;

struct Fiber {
#ifdef RPP_EMU_FAST_SWITCH
  void* sp = nullptr;
#else
  ucontext_t ctx;
#endif
  std::unique_ptr<char[]> stack;
  Wait wait = Wait::None;
  double shfl_value = 0;
  unsigned shfl_delta = 0;
  double shfl_result = 0;
};

struct Block {
  std::vector<Fiber> fibers;
#ifdef RPP_EMU_FAST_SWITCH
  void* scheduler_sp = nullptr;
#else
  ucontext_t scheduler;
#endif
  int current = -1;
  bool fiber_mode = true;  // false: threads run one after another on the caller's stack
  bool met_barrier = false;
  const std::function<void()>* body = nullptr;
  std::vector<unsigned char> dynamic;  // dynamic shared memory (aligned by its element type use)
#ifdef RPP_EMU_ASAN
  void* fake_stack = nullptr;
  const void* main_bottom = nullptr;
  size_t main_size = 0;
#endif
};

Block* g_run = nullptr;
std::mutex g_exec_mutex;  // one launch at a time, whichever OS thread calls

void set_thread(const Block& b, int t) {
  const unsigned bx = g_block_dim.x, by = g_block_dim.y;
  g_thread.x = unsigned(t) % bx;
  g_thread.y = (unsigned(t) / bx) % by;
  g_thread.z = unsigned(t) / (bx * by);
  (void)b;
}

// Switches from the running fiber back to the scheduler.
void yield_to_scheduler() {
  Block& b = *g_run;
  Fiber& f = b.fibers[size_t(b.current)];
#ifdef RPP_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, b.main_bottom, b.main_size);
#endif
#ifdef RPP_EMU_FAST_SWITCH
  rpp_emu_switch(&f.sp, b.scheduler_sp);
#else
  if (swapcontext(&f.ctx, &b.scheduler) != 0) die("swapcontext failed");
#endif
#ifdef RPP_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

extern "C" void rpp_emu_fiber_entry() {
  Block& b = *g_run;
#ifdef RPP_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.main_bottom, &b.main_size);
#endif
  (*b.body)();
  b.fibers[size_t(b.current)].wait = Wait::Done;
  yield_to_scheduler();
  die("a finished thread was resumed");
}

void resume(Block& b, int t) {
  b.current = t;
  set_thread(b, t);
  Fiber& f = b.fibers[size_t(t)];
  f.wait = Wait::None;
#ifdef RPP_EMU_ASAN
  __sanitizer_start_switch_fiber(&b.fake_stack, f.stack.get(), kStackBytes);
#endif
#ifdef RPP_EMU_FAST_SWITCH
  rpp_emu_switch(&b.scheduler_sp, f.sp);
#else
  if (swapcontext(&b.scheduler, &f.ctx) != 0) die("swapcontext failed");
#endif
#ifdef RPP_EMU_ASAN
  __sanitizer_finish_switch_fiber(b.fake_stack, nullptr, nullptr);
#endif
}

// Runs one block with a fiber per thread until every thread has finished.
void run_block_fibers(Block& b, int nthreads) {
  if (b.fibers.size() < size_t(nthreads)) b.fibers.resize(size_t(nthreads));
  for (int t = 0; t < nthreads; ++t) {
    Fiber& f = b.fibers[size_t(t)];
    if (!f.stack) f.stack.reset(new char[kStackBytes]);
#ifdef RPP_EMU_FAST_SWITCH
    // A frame that rpp_emu_switch "returns" into: six zeroed callee-saved registers, then the
    // entry point, then a dummy return address, so that the entry starts with the stack
    // alignment of a called function.
    auto top = reinterpret_cast<uintptr_t>(f.stack.get() + kStackBytes) & ~uintptr_t(15);
    auto* frame = reinterpret_cast<void**>(top) - 8;
    for (int r = 0; r < 6; ++r) frame[r] = nullptr;
    frame[6] = reinterpret_cast<void*>(&rpp_emu_fiber_entry);
    frame[7] = nullptr;
    f.sp = frame;
#else
    if (getcontext(&f.ctx) != 0) die("getcontext failed");
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, rpp_emu_fiber_entry, 0);
#endif
    f.wait = Wait::None;
  }
  std::vector<char> runnable(size_t(nthreads), 1);
  for (;;) {
    for (int t = 0; t < nthreads; ++t)
      if (runnable[size_t(t)]) resume(b, t);
    // Everyone is finished or waiting. Release waiters: complete warps at a shuffle first, else
    // the whole block at a barrier.
    int live = 0, at_barrier = 0, at_shuffle = 0;
    for (int t = 0; t < nthreads; ++t) {
      const Wait w = b.fibers[size_t(t)].wait;
      runnable[size_t(t)] = 0;
      live += w != Wait::Done;
      at_barrier += w == Wait::Barrier;
      at_shuffle += w == Wait::Shuffle;
    }
    if (live == 0) return;
    if (at_shuffle > 0) {
      for (int w0 = 0; w0 < nthreads; w0 += 32) {
        const int w1 = std::min(nthreads, w0 + 32);
        bool all = true, any = false;
        for (int t = w0; t < w1; ++t) {
          const Wait w = b.fibers[size_t(t)].wait;
          all = all && (w == Wait::Shuffle || w == Wait::Done);
          any = any || w == Wait::Shuffle;
        }
        if (!any) continue;
        if (!all) die("__shfl_down_sync called by only some live lanes of a warp");
        for (int t = w0; t < w1; ++t) {
          Fiber& f = b.fibers[size_t(t)];
          if (f.wait != Wait::Shuffle) continue;
          const int src = t + int(f.shfl_delta);
          f.shfl_result = src < w1 && b.fibers[size_t(src)].wait == Wait::Shuffle ? b.fibers[size_t(src)].shfl_value
                                                                                    : f.shfl_value;
          runnable[size_t(t)] = 1;
        }
      }
      continue;
    }
    if (at_barrier != live) die("deadlock: threads neither finished nor all at __syncthreads");
    for (int t = 0; t < nthreads; ++t) runnable[size_t(t)] = b.fibers[size_t(t)].wait == Wait::Barrier;
  }
}

// ---- capture ----
struct Graph {
  std::vector<std::function<void()>> ops;
};
std::map<cudaStream_t, std::unique_ptr<Graph>> g_capturing;
std::mutex g_capture_mutex;

// Runs op now, or records it when `stream` is being captured.
void enqueue(cudaStream_t stream, std::function<void()> op) {
  {
    std::lock_guard<std::mutex> lk(g_capture_mutex);
    auto it = g_capturing.find(stream);
    if (stream && it != g_capturing.end()) {
      it->second->ops.push_back(std::move(op));
      return;
    }
  }
  op();
}

cudaError_t g_last_error = cudaSuccess;

}  // namespace

void enqueue_on(cudaStream_t stream, std::function<void()> op) { enqueue(stream, std::move(op)); }

void syncthreads() {
  Block* b = g_run;
  if (!b) die("__syncthreads outside a kernel");
  if (!b->fiber_mode) die("__syncthreads in a kernel whose first block met no barrier");
  b->met_barrier = true;
  b->fibers[size_t(b->current)].wait = Wait::Barrier;
  yield_to_scheduler();
}

double shfl_down(double v, unsigned delta) {
  Block* b = g_run;
  if (!b) die("__shfl_down_sync outside a kernel");
  if (!b->fiber_mode) die("__shfl_down_sync in a kernel whose first block met no barrier");
  b->met_barrier = true;
  Fiber& f = b->fibers[size_t(b->current)];
  f.shfl_value = v;
  f.shfl_delta = delta;
  f.wait = Wait::Shuffle;
  yield_to_scheduler();
  return b->fibers[size_t(b->current)].shfl_result;
}

void* dynamic_shared_bytes() {
  if (!g_run) die("dynamic shared memory outside a kernel");
  return g_run->dynamic.data();
}

void execute(dim3 grid, dim3 block, size_t shmem, cudaStream_t stream, const std::function<void()>& thread_body) {
  const uint64_t nthreads = uint64_t(block.x) * block.y * block.z;
  if (nthreads == 0 || nthreads > 1024 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
      grid.z > 65535 || shmem > (size_t(48) << 10)) {
    g_last_error = cudaErrorInvalidConfiguration;
    return;
  }
  enqueue(stream, [grid, block, shmem, thread_body, nthreads] {
    std::lock_guard<std::mutex> lk(g_exec_mutex);
    static Block b;  // its fibers and their stacks are reused by every launch
    b.fiber_mode = true;
    b.met_barrier = false;
    b.current = -1;
    b.body = &thread_body;
    b.dynamic.assign(shmem + 16, 0xCD);  // garbage, as on the device
    g_run = &b;
    g_grid_dim = grid;
    g_block_dim = block;
    bool first = true;
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          g_block.x = x;
          g_block.y = y;
          g_block.z = z;
          if (b.fiber_mode) {
            run_block_fibers(b, int(nthreads));
            if (first && !b.met_barrier) b.fiber_mode = false;  // barrier-free: plain calls from here on
          } else {
            for (int t = 0; t < int(nthreads); ++t) {
              set_thread(b, t);
              thread_body();
            }
          }
          first = false;
        }
    g_run = nullptr;
  });
}

}  // namespace rpp_emu

using rpp_emu::enqueue;

// ---- the runtime API ----

struct CUstream_st {};
struct CUevent_st {};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return cudaErrorInvalidValue;
  *p = std::aligned_alloc(256, (bytes + 255) / 256 * 256 + 256);
  return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) { return cudaMalloc(p, bytes); }
cudaError_t cudaFree(void* p) {
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) { return cudaFree(p); }
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  if (bytes) std::memcpy(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  enqueue(s, [=] {
    if (bytes) std::memcpy(dst, src, bytes);
  });
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  if (bytes) std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  enqueue(s, [=] {
    if (bytes) std::memset(p, value, bytes);
  });
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  *s = new CUstream_st;
  return cudaSuccess;
}
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned) { return cudaStreamCreate(s); }
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
cudaError_t cudaGetLastError() {
  const cudaError_t e = rpp_emu::g_last_error;
  rpp_emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return rpp_emu::g_last_error; }
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "emulated error";
  }
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    default: return "cudaErrorUnknown";
  }
}
cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : cudaErrorInvalidValue; }
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int device) {
  if (device != 0) return cudaErrorInvalidValue;
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "%s", "CPU emulator (tests/emu)");
  p->totalGlobalMem = size_t(1) << 30;
  p->major = 9;
  p->minor = 0;
  p->multiProcessorCount = 1;
  p->l2CacheSize = 1 << 20;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->sharedMemPerBlock = size_t(48) << 10;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  *free_bytes = *total_bytes = size_t(1) << 30;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = new CUevent_st;
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t, cudaStream_t) { return cudaSuccess; }
cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t, cudaEvent_t) {
  *ms = 0.f;
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode) {
  if (!s) return cudaErrorStreamCaptureUnsupported;
  std::lock_guard<std::mutex> lk(rpp_emu::g_capture_mutex);
  rpp_emu::g_capturing[s] = std::make_unique<rpp_emu::Graph>();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  std::lock_guard<std::mutex> lk(rpp_emu::g_capture_mutex);
  auto it = rpp_emu::g_capturing.find(s);
  if (it == rpp_emu::g_capturing.end()) return cudaErrorInvalidValue;
  *g = new CUgraph_st{std::move(it->second->ops)};
  rpp_emu::g_capturing.erase(it);
  return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  *exec = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  for (const auto& op : exec->ops) enqueue(s, op);
  return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
  delete g;
  return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete exec;
  return cudaSuccess;
}
