// kernels/cpu/parallel.h — the CPU backend's fixed-size thread pool.
// The pool size T is fixed at first use (RESUNETPP_THREADS, else the hardware concurrency).
// Work is split statically, so every reduction that is partitioned by thread index gives the
// same bits on every run with the same T.
#pragma once
#include <cstdint>
#include <functional>

namespace rpp::cpu {

// Number of worker threads including the caller (>= 1).
int num_threads();

// Calls fn(t, T) for every t in [0, T) concurrently; t == 0 runs on the calling thread.
// Returns when all calls have returned. Not reentrant: fn must not call parallel_run again
// (nested calls run serially on the caller).
void parallel_run(const std::function<void(int t, int nt)>& fn);

// Splits [0, n) into at most T contiguous chunks of at least min_chunk items and calls
// fn(begin, end) for each chunk concurrently.
void parallel_for(int64_t n, const std::function<void(int64_t begin, int64_t end)>& fn,
                  int64_t min_chunk = 1);

}  // namespace rpp::cpu
