// runtime/autodiff.h — reverse-mode differentiation over the graph IR.
#pragma once
#include "runtime/graph.h"

namespace rpp {

// Appends to g the backward nodes that compute d(loss)/d(param) for every Param, then a
// ClipGradNorm node over all parameter gradients (it measures the global norm every step and
// scales when the step's clip limit is set), then one OptimizerUpdate node per Param (in parameter order) with the optimiser state tensors it needs,
// named "<param>.<state>" ("momentum_buffer", or "exp_avg" and "exp_avg_sq"), as OptState tensors.
// Gradient contributions to a tensor used more than once are summed with Add nodes in the
// order the uses are met walking backwards, so the result is deterministic. In a graph whose
// ASPP blocks were fused (fuse_bn_apply_sum), the sum of the branches' backward-data becomes one
// ConvSumBwdData node (fuse_aspp_backward_data, runtime/fusion.h). A node's filter gradient is
// emitted before its backward-data, so that dy dies where dx is born.
void append_backward_and_update(Graph& g, int loss, OptimizerKind opt);

// The memory passes append_backward runs after differentiating (runtime/fusion.h). They leave
// every value as it was; they only shorten lifetimes. Off only to measure what they save.
struct BackwardOptions {
  bool recompute = true;  // recompute_for_backward: cheap forward values made again in backward
  bool sink = true;       // sink_backward_nodes: backward nodes moved next to their outputs' readers
  bool views = true;      // view_upsample_concats: upsample-concats read in place, never stored
};

// The two halves of the above. append_backward returns, for every Param in creation order, the
// tensor that holds d(loss)/d(param) after a run.
std::vector<int> append_backward(Graph& g, int loss, const BackwardOptions& options = {});
void append_optimizer(Graph& g, const std::vector<int>& param_grads, OptimizerKind opt);

// Names of the optimiser state tensors for one parameter.
std::vector<std::string> optimizer_state_names(OptimizerKind opt);

}  // namespace rpp
