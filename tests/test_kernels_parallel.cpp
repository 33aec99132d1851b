// tests/test_kernels_parallel.cpp — the CPU thread pool: every index runs once, exceptions from
// the caller's or a worker's index reach the caller, and the pool stays usable afterwards.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <thread>
#include <vector>

#include "kernels/cpu/parallel.h"

using namespace rpp::cpu;

namespace {
// Runs one parallel_run and returns the set of indices seen and the number of distinct threads.
std::pair<std::set<int>, size_t> one_run() {
  std::mutex mu;
  std::set<int> idx;
  std::set<std::thread::id> threads;
  parallel_run([&](int t, int) {
    std::lock_guard<std::mutex> lk(mu);
    idx.insert(t);
    threads.insert(std::this_thread::get_id());
  });
  return {idx, threads.size()};
}
}  // namespace

TEST(ThreadPool, EveryIndexOnceOnItsOwnThread) {
  auto [idx, threads] = one_run();
  EXPECT_EQ(int(idx.size()), num_threads());
  EXPECT_EQ(int(threads), num_threads());
}

TEST(ThreadPool, ExceptionsReachTheCallerAndThePoolRecovers) {
  const int nt = num_threads();
  for (int thrower = 0; thrower < nt; ++thrower) {
    std::atomic<int> ran{0};
    try {
      parallel_run([&](int t, int) {
        ++ran;
        if (t == thrower) throw std::runtime_error("index " + std::to_string(t));
      });
      FAIL() << "no exception from index " << thrower;
    } catch (const std::runtime_error& e) {
      EXPECT_EQ(std::string(e.what()), "index " + std::to_string(thrower));
    }
    EXPECT_EQ(ran.load(), nt) << "every index still ran";
    auto [idx, threads] = one_run();  // still parallel afterwards
    EXPECT_EQ(int(idx.size()), nt);
    EXPECT_EQ(int(threads), nt);
  }
}

TEST(ThreadPool, ParallelForCoversTheRangeExactly) {
  std::vector<int> hits(10007, 0);
  parallel_for(int64_t(hits.size()), [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ++hits[size_t(i)];
  });
  for (int h : hits) ASSERT_EQ(h, 1);
}
