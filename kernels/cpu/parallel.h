// kernels/cpu/parallel.h — the CPU backend's fixed-size thread pool.
// The pool size T is fixed at first use (RESUNETPP_THREADS, else the hardware concurrency).
// Work is split statically, so every reduction that is partitioned by thread index gives the
// same bits on every run with the same T.
#pragma once
#include <cstdint>
#include <type_traits>
#include <utility>

namespace rpp::cpu {

// A non-owning reference to a callable (no allocation, unlike std::function). The callable must
// outlive the call it is passed to, which holds for lambdas passed straight to parallel_*.
template <class Sig> class FunctionRef;
template <class R, class... A>
class FunctionRef<R(A...)> {
 public:
  template <class F, class = std::enable_if_t<!std::is_same_v<std::decay_t<F>, FunctionRef>>>
  FunctionRef(F&& f)  // NOLINT: implicit by design
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* o, A... a) -> R { return (*static_cast<std::remove_reference_t<F>*>(o))(std::forward<A>(a)...); }) {}
  R operator()(A... a) const { return call_(obj_, std::forward<A>(a)...); }

 private:
  void* obj_;
  R (*call_)(void*, A...);
};

// Number of worker threads including the caller (>= 1).
int num_threads();

// Calls fn(t, T) for every t in [0, T) concurrently; t == 0 runs on the calling thread.
// Returns when all calls have returned. Not reentrant: fn must not call parallel_run again
// (nested calls run serially on the caller).
void parallel_run(FunctionRef<void(int t, int nt)> fn);

// Splits [0, n) into at most T contiguous chunks of at least min_chunk items and calls
// fn(begin, end) for each chunk concurrently.
void parallel_for(int64_t n, FunctionRef<void(int64_t begin, int64_t end)> fn,
                  int64_t min_chunk = 1);

}  // namespace rpp::cpu
