// tests/emu/cuda_emu.cpp — the emulator's runtime and block scheduler (see cuda_emu.h).
#include "cuda_emu.h"

#include <signal.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>
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

}  // namespace
}  // namespace rpp_emu

namespace rpp_emu::rt {
struct Op {
  std::function<void()> fn;
  uint64_t seq;
};
// A stream's work in issue order. done: the sequence number of the last item run.
struct Queue {
  std::deque<Op> ops;
  uint64_t done = 0;
};
}  // namespace rpp_emu::rt

struct CUstream_st {
  std::shared_ptr<rpp_emu::rt::Queue> queue;  // its own, or the legacy stream's for a blocking stream
  bool blocking = true;
};
struct CUevent_st {
  std::shared_ptr<rpp_emu::rt::Queue> queue;  // where it was last recorded outside a capture
  uint64_t seq = 0;                           // the record's place in that queue
  cudaStream_t captured_on = nullptr;         // last recorded inside this stream's capture
  bool timing = true;
};
struct CUgraph_st {
  std::vector<std::function<void()>> ops;
};
struct CUgraphExec_st {
  std::vector<std::function<void()>> ops;
};

namespace rpp_emu {
namespace {

using rt::Op;
using rt::Queue;

// ---- queues, captures and device memory ----
// One recursive mutex guards all of it; device work runs with it held (from whichever thread
// waits for it), one item at a time.

struct CaptureState {
  std::vector<std::function<void()>> ops;
  cudaStreamCaptureMode mode;
  std::thread::id thread;
  bool invalidated = false;
};
struct DeviceAlloc {
  char* map;  // the mapping: guard page, body, guard page
  size_t map_bytes;
  char* body;  // the pages the caller's bytes lie in (their end is the body's end)
  size_t body_bytes;
  char* start;   // what cudaMalloc returned
  size_t bytes;  // as requested
};

std::recursive_mutex g_rt;
uint64_t g_seq = 0;
const std::shared_ptr<Queue> g_legacy = std::make_shared<Queue>();  // legacy and blocking streams
std::set<std::shared_ptr<Queue>> g_queues;                          // the non-blocking streams'
std::map<cudaStream_t, CaptureState> g_captures;
std::map<uintptr_t, DeviceAlloc> g_device;  // by the mapping's first byte
std::map<uintptr_t, size_t> g_pinned;       // cudaMallocHost: pointer, bytes
int g_access_depth = 0;
Counters g_counters;
cudaError_t g_last_error = cudaSuccess;

size_t page_bytes() {
  static const size_t page = size_t(sysconf(_SC_PAGESIZE));
  return page;
}

void protect_device(int prot) {
  for (auto& entry : g_device)
    if (mprotect(entry.second.body, entry.second.body_bytes, prot) != 0) die("mprotect failed");
}

// Device memory is accessible while one of these lives (device work is running).
struct DeviceAccess {
  DeviceAccess() {
    if (g_access_depth++ == 0) protect_device(PROT_READ | PROT_WRITE);
  }
  ~DeviceAccess() {
    if (--g_access_depth == 0) protect_device(PROT_NONE);
  }
  DeviceAccess(const DeviceAccess&) = delete;
  DeviceAccess& operator=(const DeviceAccess&) = delete;
};

const DeviceAlloc* device_alloc_at(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_device.upper_bound(a);
  if (it == g_device.begin()) return nullptr;
  --it;
  const DeviceAlloc& d = it->second;
  const auto m = reinterpret_cast<uintptr_t>(d.map);
  return a >= m && a < m + d.map_bytes ? &d : nullptr;
}
bool is_device(const void* p) {
  const DeviceAlloc* d = device_alloc_at(p);
  if (!d) return false;
  const auto a = reinterpret_cast<uintptr_t>(p), b = reinterpret_cast<uintptr_t>(d->body);
  return a >= b && a < b + d->body_bytes;
}
bool is_pinned(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  auto it = g_pinned.upper_bound(a);
  if (it == g_pinned.begin()) return false;
  --it;
  return a < it->first + it->second;
}

// A fault inside a device allocation's mapping: say what it was, then let the previous handler
// (AddressSanitizer's, or the default) report it.
struct sigaction g_previous_segv;
extern "C" void rpp_emu_on_segv(int sig, siginfo_t* info, void* context) {
  const DeviceAlloc* d = device_alloc_at(info->si_addr);
  if (d) {
    char msg[256];
    const auto a = reinterpret_cast<uintptr_t>(info->si_addr), b = reinterpret_cast<uintptr_t>(d->body);
    const int n = a >= b && a < b + d->body_bytes
                      ? std::snprintf(msg, sizeof msg,
                                      "cuda emulator: host code touched device memory at %p (a cudaMalloc "
                                      "allocation of %zu bytes): a device pointer used on the host\n",
                                      info->si_addr, d->bytes)
                      : std::snprintf(msg, sizeof msg,
                                      "cuda emulator: access at %p, in the guard page of a cudaMalloc allocation "
                                      "of %zu bytes: out of bounds\n",
                                      info->si_addr, d->bytes);
    if (n > 0) (void)!write(2, msg, size_t(n));
  }
  sigaction(SIGSEGV, &g_previous_segv, nullptr);
  if (!(g_previous_segv.sa_flags & SA_SIGINFO) && g_previous_segv.sa_handler == SIG_IGN) signal(SIGSEGV, SIG_DFL);
  (void)sig;
  (void)context;  // returning re-runs the faulting access under the previous handler
}
void install_segv_handler() {
  static bool installed = false;
  if (installed) return;
  installed = true;
  struct sigaction sa {};
  sa.sa_sigaction = rpp_emu_on_segv;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &g_previous_segv);
}

// Runs the queue's work up to and including sequence number `seq`. Device memory opens once for
// the whole run: changing the protection of a large arena costs about a page table walk, too
// much to pay per kernel.
void run_until(Queue& q, uint64_t seq) {
  if (q.ops.empty() || q.ops.front().seq > seq) return;
  DeviceAccess access;
  while (!q.ops.empty() && q.ops.front().seq <= seq) {
    Op op = std::move(q.ops.front());
    q.ops.pop_front();
    op.fn();
    q.done = op.seq;
  }
}
void run_all(Queue& q) { run_until(q, UINT64_MAX); }
void run_everything() {
  run_all(*g_legacy);
  for (const auto& q : g_queues) run_all(*q);
}

CaptureState* capture_of(cudaStream_t s) {
  auto it = s ? g_captures.find(s) : g_captures.end();
  return it == g_captures.end() ? nullptr : &it->second;
}

// A capture-unsafe call (an allocation or a free) now: true, and the captures it breaks
// invalidated, when a capture forbids it (a global one on any thread, a thread-local one on its
// own thread; relaxed ones never).
bool unsafe_during_capture() {
  bool bad = false;
  for (auto& c : g_captures) {
    if (c.second.mode == cudaStreamCaptureModeRelaxed) continue;
    if (c.second.mode == cudaStreamCaptureModeGlobal || c.second.thread == std::this_thread::get_id()) {
      c.second.invalidated = true;
      bad = true;
    }
  }
  return bad;
}

// Work on the legacy stream orders with every blocking stream: true (and those captures
// invalidated) when a blocking stream is capturing.
bool legacy_meets_capture() {
  bool bad = false;
  for (auto& c : g_captures)
    if (c.first->blocking) {
      c.second.invalidated = true;
      bad = true;
    }
  return bad;
}

std::shared_ptr<Queue> queue_of(cudaStream_t s) { return s ? s->queue : g_legacy; }

// Queues op on the stream, or records it in the stream's capture.
cudaError_t enqueue(cudaStream_t stream, std::function<void()> op) {
  std::lock_guard<std::recursive_mutex> lk(g_rt);
  if (CaptureState* c = capture_of(stream)) {
    if (c->invalidated) return cudaErrorStreamCaptureInvalidated;
    c->ops.push_back(std::move(op));
    return cudaSuccess;
  }
  if (!stream && legacy_meets_capture()) return cudaErrorStreamCaptureImplicit;
  queue_of(stream)->ops.push_back({std::move(op), ++g_seq});
  return cudaSuccess;
}

}  // namespace

cudaError_t enqueue_on(cudaStream_t stream, std::function<void()> op) { return enqueue(stream, std::move(op)); }

Counters counters() {
  std::lock_guard<std::recursive_mutex> lk(g_rt);
  return g_counters;
}

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
  std::lock_guard<std::recursive_mutex> lk(g_rt);
  ++g_counters.kernels;
  const cudaError_t queued = enqueue(stream, [grid, block, shmem, thread_body, nthreads] {
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
  if (queued != cudaSuccess) g_last_error = queued;
}

}  // namespace rpp_emu

using rpp_emu::enqueue;
using rpp_emu::g_rt;
using Lock = std::lock_guard<std::recursive_mutex>;

// ---- the runtime API ----

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (!p) return cudaErrorInvalidValue;
  Lock lk(g_rt);
  *p = nullptr;
  if (rpp_emu::unsafe_during_capture()) return cudaErrorStreamCaptureUnsupported;
  const size_t page = rpp_emu::page_bytes(), user = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  const size_t body = (user + page - 1) / page * page, map_bytes = body + 2 * page;
  void* m = mmap(nullptr, map_bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return cudaErrorMemoryAllocation;
  char* start = static_cast<char*>(m) + page + (body - user);  // the caller's bytes end at the guard page
  rpp_emu::DeviceAlloc d{static_cast<char*>(m), map_bytes, static_cast<char*>(m) + page, body, start, bytes};
  if (mprotect(d.body, body, PROT_READ | PROT_WRITE) != 0) rpp_emu::die("mprotect failed");
  std::memset(d.body, 0xFF, body);  // garbage, as on a device: NaN as float, double and bf16
  if (rpp_emu::g_access_depth == 0 && mprotect(d.body, body, PROT_NONE) != 0) rpp_emu::die("mprotect failed");
  rpp_emu::g_device[reinterpret_cast<uintptr_t>(m)] = d;
  rpp_emu::install_segv_handler();
  ++rpp_emu::g_counters.allocations;
  *p = start;
  return cudaSuccess;
}
cudaError_t cudaMallocHost(void** p, size_t bytes) {
  if (!p) return cudaErrorInvalidValue;
  Lock lk(g_rt);
  *p = nullptr;
  if (rpp_emu::unsafe_during_capture()) return cudaErrorStreamCaptureUnsupported;
  const size_t rounded = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
  *p = std::aligned_alloc(256, rounded);
  if (!*p) return cudaErrorMemoryAllocation;
  rpp_emu::g_pinned[reinterpret_cast<uintptr_t>(*p)] = rounded;
  ++rpp_emu::g_counters.allocations;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  Lock lk(g_rt);
  if (rpp_emu::unsafe_during_capture()) return cudaErrorStreamCaptureUnsupported;
  const rpp_emu::DeviceAlloc* d = rpp_emu::device_alloc_at(p);
  if (!d || d->start != p) return cudaErrorInvalidValue;  // not a pointer cudaMalloc returned
  rpp_emu::run_everything();                              // cudaFree waits for the device
  char* const map = d->map;
  munmap(map, d->map_bytes);
  rpp_emu::g_device.erase(reinterpret_cast<uintptr_t>(map));
  ++rpp_emu::g_counters.frees;
  return cudaSuccess;
}
cudaError_t cudaFreeHost(void* p) {
  if (!p) return cudaSuccess;
  Lock lk(g_rt);
  if (rpp_emu::unsafe_during_capture()) return cudaErrorStreamCaptureUnsupported;
  auto it = rpp_emu::g_pinned.find(reinterpret_cast<uintptr_t>(p));
  if (it == rpp_emu::g_pinned.end()) return cudaErrorInvalidValue;
  rpp_emu::run_everything();  // queued copies may still read or write it
  std::free(p);
  rpp_emu::g_pinned.erase(it);
  ++rpp_emu::g_counters.frees;
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind) {
  Lock lk(g_rt);
  if (rpp_emu::legacy_meets_capture()) return cudaErrorStreamCaptureImplicit;
  // On the legacy stream, then wait for it: it does not wait for non-blocking streams' work.
  rpp_emu::g_legacy->ops.push_back({[=] {
                                      if (bytes) std::memcpy(dst, src, bytes);
                                    },
                                    ++rpp_emu::g_seq});
  ++rpp_emu::g_counters.host_waits;
  rpp_emu::run_all(*rpp_emu::g_legacy);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind, cudaStream_t s) {
  Lock lk(g_rt);
  const bool dst_pageable = !rpp_emu::is_device(dst) && !rpp_emu::is_pinned(dst);
  const bool src_pageable = !rpp_emu::is_device(src) && !rpp_emu::is_pinned(src);
  if (!rpp_emu::capture_of(s) && dst_pageable && !src_pageable) {
    // Into pageable memory the call returns when the copy is done: the stream's work first.
    if (!s && rpp_emu::legacy_meets_capture()) return cudaErrorStreamCaptureImplicit;
    ++rpp_emu::g_counters.host_waits;
    rpp_emu::run_all(*rpp_emu::queue_of(s));
    rpp_emu::DeviceAccess access;
    if (bytes) std::memcpy(dst, src, bytes);
    return cudaSuccess;
  }
  if (src_pageable && bytes) {  // from pageable memory the bytes are taken now
    auto copy = std::make_shared<std::vector<unsigned char>>(static_cast<const unsigned char*>(src),
                                                             static_cast<const unsigned char*>(src) + bytes);
    return enqueue(s, [dst, copy] { std::memcpy(dst, copy->data(), copy->size()); });
  }
  return enqueue(s, [=] {
    if (bytes) std::memcpy(dst, src, bytes);
  });
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  return enqueue(nullptr, [=] {
    if (bytes) std::memset(p, value, bytes);
  });
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  return enqueue(s, [=] {
    if (bytes) std::memset(p, value, bytes);
  });
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (!s) return cudaErrorInvalidValue;
  Lock lk(g_rt);
  *s = new CUstream_st;
  (*s)->blocking = !(flags & cudaStreamNonBlocking);
  if ((*s)->blocking) {
    (*s)->queue = rpp_emu::g_legacy;
  } else {
    (*s)->queue = std::make_shared<rpp_emu::rt::Queue>();
    rpp_emu::g_queues.insert((*s)->queue);
  }
  return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s) return cudaErrorInvalidResourceHandle;
  Lock lk(g_rt);
  if (rpp_emu::capture_of(s)) return cudaErrorStreamCaptureUnsupported;
  rpp_emu::run_all(*s->queue);  // its work still runs; the emulator runs it now
  if (!s->blocking) rpp_emu::g_queues.erase(s->queue);
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  Lock lk(g_rt);
  if (rpp_emu::CaptureState* c = rpp_emu::capture_of(s)) {
    c->invalidated = true;
    return cudaErrorStreamCaptureUnsupported;
  }
  if (!s && rpp_emu::legacy_meets_capture()) return cudaErrorStreamCaptureImplicit;
  ++rpp_emu::g_counters.host_waits;
  rpp_emu::run_all(*rpp_emu::queue_of(s));
  return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (!e) return cudaErrorInvalidResourceHandle;
  Lock lk(g_rt);
  if (rpp_emu::CaptureState* c = rpp_emu::capture_of(s)) {
    if (e->captured_on == s) return cudaSuccess;  // recorded earlier in this capture: stream order
    if (e->captured_on) rpp_emu::die("a wait between two captures (a multi-stream capture) is not emulated");
    if (!e->queue) return cudaSuccess;  // never recorded: no dependency
    c->invalidated = true;              // a dependency across the capture's boundary
    return cudaErrorStreamCaptureIsolation;
  }
  if (e->captured_on) rpp_emu::die("a stream joining a capture through a captured event is not emulated");
  if (!e->queue) return cudaSuccess;
  if (e->queue == rpp_emu::queue_of(s)) return cudaSuccess;  // the same queue: already in order
  std::shared_ptr<rpp_emu::rt::Queue> q = e->queue;
  const uint64_t seq = e->seq;
  return enqueue(s, [q, seq] { rpp_emu::run_until(*q, seq); });
}
cudaError_t cudaDeviceSynchronize() {
  Lock lk(g_rt);
  if (!rpp_emu::g_captures.empty()) {
    for (auto& c : rpp_emu::g_captures) c.second.invalidated = true;
    return cudaErrorStreamCaptureUnsupported;
  }
  ++rpp_emu::g_counters.host_waits;
  rpp_emu::run_everything();
  return cudaSuccess;
}
cudaError_t cudaGetLastError() {
  Lock lk(g_rt);
  const cudaError_t e = rpp_emu::g_last_error;
  rpp_emu::g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  Lock lk(g_rt);
  return rpp_emu::g_last_error;
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidResourceHandle:
      return "invalid resource handle";
    case cudaErrorIllegalState:
      return "the operation cannot be performed in the present state";
    case cudaErrorNotReady:
      return "device not ready";
    case cudaErrorStreamCaptureUnsupported:
      return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
      return "operation failed due to a previous error during capture";
    case cudaErrorStreamCaptureUnmatched:
      return "the capture was not initiated in this stream";
    case cudaErrorStreamCaptureIsolation:
      return "dependency created on uncaptured work in another stream";
    case cudaErrorStreamCaptureImplicit:
      return "operation would make the legacy stream depend on a capturing blocking stream";
    case cudaErrorStreamCaptureWrongThread:
      return "attempt to terminate a thread-local capture sequence from another thread";
    default: return "emulated error";
  }
}
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidResourceHandle:
      return "cudaErrorInvalidResourceHandle";
    case cudaErrorIllegalState:
      return "cudaErrorIllegalState";
    case cudaErrorNotReady:
      return "cudaErrorNotReady";
    case cudaErrorStreamCaptureUnsupported:
      return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated:
      return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched:
      return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureIsolation:
      return "cudaErrorStreamCaptureIsolation";
    case cudaErrorStreamCaptureImplicit:
      return "cudaErrorStreamCaptureImplicit";
    case cudaErrorStreamCaptureWrongThread:
      return "cudaErrorStreamCaptureWrongThread";
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
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  if (!e) return cudaErrorInvalidValue;
  *e = new CUevent_st;
  (*e)->timing = !(flags & cudaEventDisableTiming);
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return cudaErrorInvalidResourceHandle;
  Lock lk(g_rt);
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!e) return cudaErrorInvalidResourceHandle;
  Lock lk(g_rt);
  if (rpp_emu::CaptureState* c = rpp_emu::capture_of(s)) {
    if (c->invalidated) return cudaErrorStreamCaptureInvalidated;
    e->captured_on = s;
    e->queue.reset();
    return cudaSuccess;
  }
  if (!s && rpp_emu::legacy_meets_capture()) return cudaErrorStreamCaptureImplicit;
  std::shared_ptr<rpp_emu::rt::Queue> q = rpp_emu::queue_of(s);
  q->ops.push_back({[] {}, ++rpp_emu::g_seq});
  e->queue = q;
  e->seq = rpp_emu::g_seq;
  e->captured_on = nullptr;
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return cudaErrorInvalidResourceHandle;
  Lock lk(g_rt);
  if (e->captured_on) return cudaErrorStreamCaptureUnsupported;  // a captured event has no status
  ++rpp_emu::g_counters.host_waits;
  if (e->queue) rpp_emu::run_until(*e->queue, e->seq);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!ms || !a || !b) return cudaErrorInvalidValue;
  Lock lk(g_rt);
  if (!a->timing || !b->timing) return cudaErrorInvalidResourceHandle;
  if (a->captured_on || b->captured_on) return cudaErrorStreamCaptureUnsupported;
  if (!a->queue || !b->queue) return cudaErrorInvalidResourceHandle;                 // never recorded
  if (a->queue->done < a->seq || b->queue->done < b->seq) return cudaErrorNotReady;  // nobody waited
  *ms = 0.f;
  return cudaSuccess;
}
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
  if (!s) return cudaErrorStreamCaptureUnsupported;
  Lock lk(g_rt);
  if (rpp_emu::capture_of(s)) return cudaErrorIllegalState;
  rpp_emu::CaptureState& c = rpp_emu::g_captures[s];
  c.mode = mode;
  c.thread = std::this_thread::get_id();
  return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t* g) {
  if (!g) return cudaErrorInvalidValue;
  Lock lk(g_rt);
  *g = nullptr;
  rpp_emu::CaptureState* c = rpp_emu::capture_of(s);
  if (!c) return cudaErrorIllegalState;
  if (c->mode != cudaStreamCaptureModeRelaxed && c->thread != std::this_thread::get_id())
    return cudaErrorStreamCaptureWrongThread;
  const bool invalidated = c->invalidated;
  if (!invalidated) *g = new CUgraph_st{std::move(c->ops)};
  rpp_emu::g_captures.erase(s);
  return invalidated ? cudaErrorStreamCaptureInvalidated : cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t g, unsigned long long) {
  if (!exec || !g) return cudaErrorInvalidValue;
  *exec = new CUgraphExec_st{g->ops};
  return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
  if (!exec) return cudaErrorInvalidValue;
  Lock lk(g_rt);
  ++rpp_emu::g_counters.graph_launches;
  for (const auto& op : exec->ops) {
    const cudaError_t e = enqueue(s, op);
    if (e != cudaSuccess) return e;
  }
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
