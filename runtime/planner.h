// runtime/planner.h — static memory plan: liveness of every non-persistent tensor and its offset
// in one arena (best-fit reuse, 256-byte alignment), plus one workspace shared by all nodes.
//
// The schedule is the graph's node order (builders and autodiff append in topological order).
// A tensor lives from the node that writes it (inputs: from the start) to the last node that reads
// it (outputs: to the end). An elementwise node may write its output over an input that it is the
// last reader of (Plan::alias): the two then form one block of bytes. A view's output (Node::view)
// has no bytes; the view's inputs live until its last reader instead. Persistent tensors (params,
// buffers, optimiser state) are not in the arena; an executor keeps them in their own storage.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "runtime/graph.h"

namespace rpp {

enum class PlanMode {
  BestFit,  // liveness-based reuse
  Naive,    // every tensor at its own offset (for testing the plan against no reuse)
};

struct Plan {
  static constexpr size_t kAlign = 256;
  std::vector<int64_t> offset;  // bytes into the arena per tensor id; -1 for persistent tensors
  std::vector<int> first, last; // schedule positions of definition and last use (-1: before start)
  size_t arena_bytes = 0;
  size_t naive_bytes = 0;       // sum of all arena tensors' aligned sizes
  size_t workspace_bytes = 0;
  // Per tensor: the input whose bytes it takes over (an in-place output, see inplace_inputs in
  // graph.h), or -1. The two share an offset; the input is read by no node after the one that
  // writes the output. Naive plans have none.
  std::vector<int> alias;
  size_t persistent_bytes = 0;  // params + buffers + optimiser state
};

// Bytes of workspace a node needs on the executor whose needs are given (per backend).
using WorkspaceFn = std::function<size_t(const Graph&, const Node&)>;

Plan make_plan(const Graph& g, PlanMode mode, const WorkspaceFn& workspace);

// Checks the invariant that makes the plan correct: no two tensors whose lifetimes overlap share
// bytes, except an in-place output and the input it takes over, which must have the same size and
// place and whose input no later node reads. Throws rpp::Error describing the first conflict.
void verify_plan(const Graph& g, const Plan& p);

}  // namespace rpp
