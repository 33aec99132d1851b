// runtime/executor_cpu.h — runs a planned graph on the CPU reference kernels.
//
// The arena and the workspace are allocated once in the constructor; run() performs no
// allocation. Persistent tensors live in the ParamStore and are updated in place, so
// upload_params and download_params have nothing to do. Besides the Executor interface
// (runtime/executor.h) it gives direct pointers into its storage (data()), which the CPU tests use.
#pragma once
#include <string>
#include <vector>

#include "kernels/cpu/ops.h"
#include "runtime/executor.h"
#include "runtime/graph.h"
#include "runtime/param_store.h"
#include "runtime/planner.h"

namespace rpp {

size_t cpu_workspace_bytes(const Graph& g, const Node& n);

class CpuExecutor final : public Executor {
 public:
  CpuExecutor(const Graph& g, ParamStore& store, PlanMode mode = PlanMode::BestFit);
  CpuExecutor(const CpuExecutor&) = delete;
  CpuExecutor& operator=(const CpuExecutor&) = delete;

  const Plan& plan() const override { return plan_; }
  const Graph& graph() const override { return g_; }
  std::string describe() const override;
  // Pointer to a tensor's storage (arena or store). Valid for the executor's lifetime.
  float* data(int tensor);
  const float* data(int tensor) const;
  // The Executor interface over data(): input_buffer is the tensor itself, set_input and
  // read_output copy (nothing when given that same pointer).
  float* input_buffer(int tensor) override { return data(tensor); }
  void set_input(int tensor, const float* host) override;
  void read_output(int tensor, float* host) override;
  // Runs every node in order. `opt` is needed only if the graph has optimiser updates.
  void run(const cpu::OptimStep* opt = nullptr) override;
  double last_loss() override;
  void upload_params() override {}
  void download_params() override {}
  // Fills the arena with NaN (tests: makes a read of an unwritten tensor visible).
  void poison();
  // When on, run() adds each node's wall time to node_seconds() (index = node index).
  void set_profiling(bool on);
  const std::vector<double>& node_seconds() const { return node_seconds_; }
  // Global L2 norm of the parameter gradients in the last run (before any clipping); 0 if the
  // graph has no ClipGradNorm node.
  double last_grad_norm() override { return last_grad_norm_; }
  double last_grad_norm() const { return last_grad_norm_; }

 private:
  void exec(const Node& n, const cpu::OptimStep* opt);
  // Node i, after materialising the views it reads (Node::view) into view_buffer_; nothing for a
  // view itself.
  void step(int i, const cpu::OptimStep* opt);
  const Graph& g_;
  ParamStore& store_;
  Plan plan_;
  std::vector<float> arena_, workspace_;
  std::vector<float> view_buffer_;  // the view being read (one at a time), made again per reader
  std::vector<int> view_node_;      // per tensor: the view node whose output it is, or -1
  std::vector<void*> ptr_;
  bool profiling_ = false;
  std::vector<double> node_seconds_;
  double last_grad_norm_ = 0;
  bool skip_update_ = false;  // this run's loss or gradient norm is not finite
  int loss_tensor_ = -1;  // output of the graph's last Loss node, -1 if none
};

}  // namespace rpp
