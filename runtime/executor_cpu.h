// runtime/executor_cpu.h — runs a planned graph on the CPU reference kernels.
//
// The arena and the workspace are allocated once in the constructor; run() performs no
// allocation. Persistent tensors live in the ParamStore and are updated in place.
#pragma once
#include <vector>

#include "kernels/cpu/ops.h"
#include "runtime/graph.h"
#include "runtime/param_store.h"
#include "runtime/planner.h"

namespace rpp {

size_t cpu_workspace_bytes(const Graph& g, const Node& n);

class CpuExecutor {
 public:
  CpuExecutor(const Graph& g, ParamStore& store, PlanMode mode = PlanMode::BestFit);
  CpuExecutor(const CpuExecutor&) = delete;
  CpuExecutor& operator=(const CpuExecutor&) = delete;

  const Plan& plan() const { return plan_; }
  const Graph& graph() const { return g_; }
  // Pointer to a tensor's storage (arena or store). Valid for the executor's lifetime.
  float* data(int tensor);
  const float* data(int tensor) const;
  // Runs every node in order. `opt` is needed only if the graph has optimiser updates.
  void run(const cpu::OptimStep* opt = nullptr);
  // Fills the arena with NaN (tests: makes a read of an unwritten tensor visible).
  void poison();
  // When on, run() adds each node's wall time to node_seconds() (index = node index).
  void set_profiling(bool on);
  const std::vector<double>& node_seconds() const { return node_seconds_; }
  // Global L2 norm of the parameter gradients in the last run (before any clipping); 0 if the
  // graph has no ClipGradNorm node.
  double last_grad_norm() const { return last_grad_norm_; }

 private:
  void exec(const Node& n, const cpu::OptimStep* opt);
  const Graph& g_;
  ParamStore& store_;
  Plan plan_;
  std::vector<float> arena_, workspace_;
  std::vector<void*> ptr_;
  bool profiling_ = false;
  std::vector<double> node_seconds_;
  double last_grad_norm_ = 0;
};

}  // namespace rpp
