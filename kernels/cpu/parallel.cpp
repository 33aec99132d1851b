// kernels/cpu/parallel.cpp — persistent worker threads woken by a generation counter.
#include "kernels/cpu/parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace rpp::cpu {
namespace {

class Pool {
 public:
  explicit Pool(int n) : n_(n) {
    for (int t = 1; t < n_; ++t) workers_.emplace_back([this, t] { loop(t); });
  }
  ~Pool() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
      ++generation_;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  int size() const { return n_; }

  // Exceptions: the first one thrown by any index (caller or worker) is rethrown on the caller
  // after every index has finished, and the pool stays usable.
  void run(FunctionRef<void(int, int)> fn) {
    if (n_ == 1) {
      fn(0, 1);
      return;
    }
    if (in_run_.exchange(true)) {
      // Nested call, or a call from another thread while the pool is busy: run every index on
      // the caller, in order (same partition, same results).
      for (int t = 0; t < n_; ++t) fn(t, n_);
      return;
    }
    struct Release {
      std::atomic<bool>& flag;
      ~Release() { flag = false; }
    } release{in_run_};
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      error_ = nullptr;
      pending_ = n_ - 1;
      ++generation_;
    }
    cv_.notify_all();
    std::exception_ptr mine;
    try {
      fn(0, n_);
    } catch (...) {
      mine = std::current_exception();
    }
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_ == 0; });
    fn_ = nullptr;
    std::exception_ptr err = mine ? mine : error_;
    error_ = nullptr;
    lk.unlock();
    if (err) std::rethrow_exception(err);
  }

 private:
  void loop(int t) {
    uint64_t seen = 0;
    for (;;) {
      const FunctionRef<void(int, int)>* fn;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (stop_) return;
        fn = fn_;
      }
      std::exception_ptr err;
      try {
        (*fn)(t, n_);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> lk(mu_);
      if (err && !error_) error_ = err;
      if (--pending_ == 0) done_cv_.notify_one();
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const FunctionRef<void(int, int)>* fn_ = nullptr;
  std::exception_ptr error_;  // first exception of a worker in the current run
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
  std::atomic<bool> in_run_{false};
};

int pool_size_from_env() {
  if (const char* s = std::getenv("RESUNETPP_THREADS")) {
    int v = std::atoi(s);
    if (v >= 1) return std::min(v, 256);
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc == 0 ? 1 : int(std::min(hc, 256u));
}

Pool& pool() {
  static Pool p(pool_size_from_env());
  return p;
}

}  // namespace

int num_threads() { return pool().size(); }

void parallel_run(FunctionRef<void(int, int)> fn) { pool().run(fn); }

void parallel_for(int64_t n, FunctionRef<void(int64_t, int64_t)> fn, int64_t min_chunk) {
  if (n <= 0) return;
  const int64_t nt = num_threads();
  int64_t chunks = std::min<int64_t>(nt, std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk)));
  if (chunks <= 1) {
    fn(0, n);
    return;
  }
  parallel_run([&](int t, int) {
    if (t >= chunks) return;
    int64_t b = n * t / chunks, e = n * (t + 1) / chunks;
    if (b < e) fn(b, e);
  });
}

}  // namespace rpp::cpu
