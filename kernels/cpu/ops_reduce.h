// kernels/cpu/ops_reduce.h — internal helpers of the CPU reference ops (not part of the API):
// the two ways the reference ops split a reduction over the pool so that the result does not
// depend on the thread count or on timing.
//
//  * for_channel_runs: per-channel sums over rows (BatchNorm statistics, dgamma/dbeta, pooling
//    sums). Work is split over (group, channel) pairs; each pair is reduced by one thread over
//    its rows in row order, so a channel's sum is always the same sequence of additions.
//  * fixed_block_sums: sums of one or a few scalars over n values (losses). [0, n) is cut into
//    kSumBlocks fixed blocks, each summed in index order, and the block sums are added in block
//    order: the blocks do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>

#include "kernels/cpu/parallel.h"

namespace rpp::cpu::detail {

// Channels reduced together in one pass over the rows; their accumulators live in stack arrays
// of this length.
constexpr int kChannelRun = 64;

// Elements of work below which a loop is not worth waking the pool for.
constexpr int64_t kParallelGrain = 16384;

// Calls fn(g, c0, c1) once for every run of channels [c0, c1) of group g (0 <= g < groups),
// with c1 - c0 <= kChannelRun; together the runs cover every (group, channel) pair exactly once.
// `rows` is the number of rows each run reduces over (it only sizes the parallel grain).
template <class Fn>
void for_channel_runs(int64_t groups, int c, int64_t rows, const Fn& fn) {
  const int64_t pairs = groups * c;
  const int64_t min_chunk = std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, rows));
  parallel_for(
      pairs,
      [&](int64_t b, int64_t e) {
        while (b < e) {
          const int64_t g = b / c;
          const int c0 = int(b - g * c);
          const int c1 = int(std::min<int64_t>(std::min<int64_t>(c, c0 + kChannelRun), e - g * c));
          fn(g, c0, c1);
          b = g * c + c1;
        }
      },
      min_chunk);
}

// Number of fixed blocks a scalar reduction is cut into (also its maximum parallelism).
constexpr int kSumBlocks = 64;

// K sums over [0, n) in double: add(i, acc) adds element i's K contributions into acc[0..K).
// It is called once per i, in index order within each block, with that block's accumulators;
// out[k] is then the sum of the blocks' acc[k] in block order.
template <int K, class Fn>
void fixed_block_sums(int64_t n, const Fn& add, double (&out)[K]) {
  double part[kSumBlocks][K] = {};
  const int64_t min_blocks =
      std::max<int64_t>(1, kSumBlocks * kParallelGrain / std::max<int64_t>(1, n));
  parallel_for(
      kSumBlocks,
      [&](int64_t b0, int64_t b1) {
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t begin = n * b / kSumBlocks, end = n * (b + 1) / kSumBlocks;
          for (int64_t i = begin; i < end; ++i) add(i, part[b]);
        }
      },
      min_blocks);
  for (int k = 0; k < K; ++k) out[k] = 0;
  for (int b = 0; b < kSumBlocks; ++b)
    for (int k = 0; k < K; ++k) out[k] += part[b][k];
}

}  // namespace rpp::cpu::detail
