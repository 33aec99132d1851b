// runtime/planner.cpp — liveness analysis and offset assignment (the smaller of a best-fit sweep
// over the schedule and a greedy placement by size).
#include "runtime/planner.h"

#include <algorithm>
#include <limits>
#include <map>

namespace rpp {

namespace {

size_t aligned(size_t b) { return (b + Plan::kAlign - 1) / Plan::kAlign * Plan::kAlign; }

size_t tensor_bytes(const TensorInfo& t) {
  return aligned(std::max<size_t>(1, size_t(numel(t.shape)) * dtype_size(t.dtype)));
}

// Free-list allocator over [0, infinity): best fit among free blocks, else grow at the end.
class BestFit {
 public:
  size_t alloc(size_t size) {
    auto best = free_.end();
    for (auto it = free_.begin(); it != free_.end(); ++it)
      if (it->second >= size && (best == free_.end() || it->second < best->second)) best = it;
    if (best != free_.end()) {
      size_t off = best->first, sz = best->second;
      free_.erase(best);
      if (sz > size) free_[off + size] = sz - size;
      return off;
    }
    // Grow: if the last free block touches the end, extend it instead of leaving a hole.
    if (!free_.empty()) {
      auto last = std::prev(free_.end());
      if (last->first + last->second == top_) {
        size_t off = last->first;
        free_.erase(last);
        top_ = off + size;
        high_ = std::max(high_, top_);
        return off;
      }
    }
    size_t off = top_;
    top_ += size;
    high_ = std::max(high_, top_);
    return off;
  }
  void release(size_t off, size_t size) {
    auto it = free_.emplace(off, size).first;
    // Merge with the following and the preceding block.
    auto next = std::next(it);
    if (next != free_.end() && it->first + it->second == next->first) {
      it->second += next->second;
      free_.erase(next);
    }
    if (it != free_.begin()) {
      auto prev = std::prev(it);
      if (prev->first + prev->second == it->first) {
        prev->second += it->second;
        free_.erase(it);
      }
    }
  }
  size_t high_water() const { return high_; }

 private:
  std::map<size_t, size_t> free_;  // offset -> size
  size_t top_ = 0, high_ = 0;
};

// Offline placement: the tensors by size, largest first (ties: earlier first use, then id), each
// at the lowest offset where it overlaps in bytes no already-placed tensor whose lifetime
// overlaps its own. Writes off[t] for the listed tensors; returns the arena size.
size_t greedy_by_size(const Graph& g, const std::vector<int>& ts, const std::vector<int>& first,
                      const std::vector<int>& last, std::vector<int64_t>& off) {
  std::vector<int> order = ts;
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    const size_t sa = tensor_bytes(g.tensor(a)), sb = tensor_bytes(g.tensor(b));
    if (sa != sb) return sa > sb;
    return first[size_t(a)] < first[size_t(b)];
  });
  std::vector<int> placed;
  std::vector<std::pair<size_t, size_t>> busy;  // [begin, end) of the placed tensors live with t
  size_t high = 0;
  for (int t : order) {
    const size_t size = tensor_bytes(g.tensor(t));
    busy.clear();
    for (int q : placed)
      if (first[size_t(q)] <= last[size_t(t)] && first[size_t(t)] <= last[size_t(q)])
        busy.push_back({size_t(off[size_t(q)]), size_t(off[size_t(q)]) + tensor_bytes(g.tensor(q))});
    std::sort(busy.begin(), busy.end());
    size_t at = 0;
    for (const auto& [b, e] : busy) {
      if (at + size <= b) break;  // the gap before this interval holds it
      at = std::max(at, e);
    }
    off[size_t(t)] = int64_t(at);
    high = std::max(high, at + size);
    placed.push_back(t);
  }
  return high;
}

}  // namespace

Plan make_plan(const Graph& g, PlanMode mode, const WorkspaceFn& workspace) {
  const int nt = g.num_tensors(), nn = g.num_nodes();
  Plan p;
  p.offset.assign(size_t(nt), -1);
  p.first.assign(size_t(nt), std::numeric_limits<int>::max());
  p.last.assign(size_t(nt), -1);

  std::vector<char> in_arena(size_t(nt), 0);
  for (int t = 0; t < nt; ++t) {
    const TensorInfo& ti = g.tensor(t);
    if (is_persistent(ti.kind)) {
      p.persistent_bytes += size_t(numel(ti.shape)) * dtype_size(ti.dtype);
      continue;
    }
    in_arena[size_t(t)] = 1;
    if (ti.kind == TensorKind::Input) p.first[size_t(t)] = -1;
  }
  for (int i = 0; i < nn; ++i) {
    const Node& n = g.node(i);
    for (int t : n.out) p.first[size_t(t)] = std::min(p.first[size_t(t)], i);
    for (int t : n.in)
      if (t >= 0) p.last[size_t(t)] = std::max(p.last[size_t(t)], i);
    if (workspace) p.workspace_bytes = std::max(p.workspace_bytes, workspace(g, n));
  }
  for (int t = 0; t < nt; ++t) {
    if (!in_arena[size_t(t)]) continue;
    const TensorInfo& ti = g.tensor(t);
    if (p.first[size_t(t)] == std::numeric_limits<int>::max()) {
      if (ti.kind != TensorKind::Input) {  // never written: not part of this run
        p.first[size_t(t)] = -1;
        p.last[size_t(t)] = -1;
        in_arena[size_t(t)] = 0;
        continue;
      }
    }
    if (ti.is_output || ti.kind == TensorKind::Input) p.last[size_t(t)] = nn;  // readable after the run
    // A written but never read tensor still needs bytes while its node runs.
    p.last[size_t(t)] = std::max(p.last[size_t(t)], p.first[size_t(t)]);
    p.naive_bytes += tensor_bytes(ti);
  }
  p.workspace_bytes = aligned(p.workspace_bytes);

  if (mode == PlanMode::Naive) {
    size_t off = 0;
    for (int t = 0; t < nt; ++t) {
      if (!in_arena[size_t(t)]) continue;
      p.offset[size_t(t)] = int64_t(off);
      off += tensor_bytes(g.tensor(t));
    }
    p.arena_bytes = off;
    return p;
  }

  // Event sweep over the schedule: at position i, allocate the tensors first written at i, then
  // free the tensors whose last use is i (so a node's outputs never overlap its own inputs).
  std::vector<std::vector<int>> born(size_t(nn) + 2), dies(size_t(nn) + 2);
  for (int t = 0; t < nt; ++t) {
    if (!in_arena[size_t(t)]) continue;
    born[size_t(p.first[size_t(t)] + 1)].push_back(t);
    dies[size_t(p.last[size_t(t)] + 1)].push_back(t);
  }
  BestFit alloc;
  for (size_t pos = 0; pos < born.size(); ++pos) {
    // Larger tensors first within one position: fewer holes.
    std::stable_sort(born[pos].begin(), born[pos].end(), [&](int a, int b) {
      return tensor_bytes(g.tensor(a)) > tensor_bytes(g.tensor(b));
    });
    for (int t : born[pos]) p.offset[size_t(t)] = int64_t(alloc.alloc(tensor_bytes(g.tensor(t))));
    for (int t : dies[pos]) alloc.release(size_t(p.offset[size_t(t)]), tensor_bytes(g.tensor(t)));
  }
  p.arena_bytes = alloc.high_water();

  // The same liveness placed offline, largest tensors first; kept when it needs less.
  std::vector<int> ts;
  for (int t = 0; t < nt; ++t)
    if (in_arena[size_t(t)]) ts.push_back(t);
  std::vector<int64_t> by_size = p.offset;
  const size_t greedy = greedy_by_size(g, ts, p.first, p.last, by_size);
  if (greedy < p.arena_bytes) {
    p.offset = std::move(by_size);
    p.arena_bytes = greedy;
  }
  return p;
}

void verify_plan(const Graph& g, const Plan& p) {
  struct Item { int t; size_t b, e; };
  std::vector<Item> items;
  for (int t = 0; t < g.num_tensors(); ++t) {
    if (p.offset[size_t(t)] < 0) continue;
    size_t b = size_t(p.offset[size_t(t)]);
    items.push_back({t, b, b + tensor_bytes(g.tensor(t))});
    if (b + tensor_bytes(g.tensor(t)) > p.arena_bytes) fail("plan: tensor ", g.tensor(t).name, " ends past the arena");
    if (b % Plan::kAlign) fail("plan: tensor ", g.tensor(t).name, " is not aligned");
  }
  for (size_t i = 0; i < items.size(); ++i)
    for (size_t j = i + 1; j < items.size(); ++j) {
      const Item &a = items[i], &b = items[j];
      bool bytes = a.b < b.e && b.b < a.e;
      bool time = p.first[size_t(a.t)] <= p.last[size_t(b.t)] && p.first[size_t(b.t)] <= p.last[size_t(a.t)];
      if (bytes && time) fail("plan: tensors ", g.tensor(a.t).name, " and ", g.tensor(b.t).name, " overlap while both live");
    }
}

}  // namespace rpp
