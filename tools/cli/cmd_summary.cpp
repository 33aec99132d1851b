// tools/cli/cmd_summary.cpp — `resunetpp summary`: layers, parameters, FLOPs and memory plans.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <map>
#include <sstream>

#include "model/resunetpp.h"
#include "runtime/autodiff.h"
#include "runtime/executor.h"
#include "runtime/executor_cuda.h"
#include "runtime/executor_cpu.h"
#include "runtime/fusion.h"
#include "tools/cli/commands.h"
#include "tools/cli/flags.h"

namespace rpp::cli {

namespace {
// The training arena of the graph with the other fusion setting, for comparison.
std::string other_graph_line(ModelConfig cfg, int batch, int size) {
  cfg.fuse = !cfg.fuse;
  ModelGraph m = build_resunetpp(cfg, batch, size, size, true);
  append_backward_and_update(m.graph, m.loss, OptimizerKind::Adam);
  const Plan p = make_plan(m.graph, PlanMode::BestFit, cpu_workspace_bytes);
  return std::string("  ") + (cfg.fuse ? "fused" : "unfused") + " graph: arena " + mib(p.arena_bytes) + " (" +
         std::to_string(p.arena_bytes) + " bytes)\n";
}

// What the backward's memory measures do in this training graph: values recomputed, outputs written
// in place, and the arena without the recomputation and the reordering (runtime/autodiff.h).
std::string backward_memory_line(const ModelConfig& cfg, int batch, int size, const Graph& g, const Plan& p) {
  int remade = 0, in_place = 0;
  for (const Node& n : g.nodes())
    remade += !n.out.empty() && g.tensor(n.out[0]).name.rfind("recompute(", 0) == 0;
  for (int t : p.alias) in_place += t >= 0;
  ModelGraph m = build_resunetpp(cfg, batch, size, size, true);
  append_optimizer(m.graph, append_backward(m.graph, m.loss, BackwardOptions{false, false, false}),
                   OptimizerKind::Adam);
  const Plan q = make_plan(m.graph, PlanMode::BestFit, cpu_workspace_bytes);
  return "  backward: " + std::to_string(remade) + " forward values recomputed instead of kept, " +
         std::to_string(in_place) + " outputs written over a dying input; without the recomputation and the " +
         "reordering (and so without views): arena " + mib(q.arena_bytes) + " (" + std::to_string(q.arena_bytes) +
         " bytes)\n";
}

// The CUDA executor's own plans: device bytes and cuDNN algorithm choices (needs a GPU).
void print_cuda_plans(const Graph& train, const Graph& infer, int device, int batch, KernelChoice kernels) {
#if defined(RESUNETPP_HAVE_CUDA) && defined(RESUNETPP_HAVE_CUDNN)
  for (const Graph* g : {&train, &infer}) {
    ParamStore store;
    init_params(*g, store, 1);
    ExecOptions eo;
    eo.kernels = kernels;
    CudaExecutor ex(*g, store, device, eo);
    const Plan& p = ex.plan();
    std::cout << "\n" << (g == &train ? "training" : "inference") << " on " << ex.describe() << ", batch " << batch
              << ":\n  arena " << mib(p.arena_bytes) << " (" << p.arena_bytes << " bytes), workspace "
              << mib(p.workspace_bytes) << ", device memory held " << mib(ex.device_bytes()) << "\n"
              << "  convolutions (" << ex.num_conv_shapes() << " distinct shapes):\n"
              << ex.describe_convolutions();
    const std::string k = ex.describe_kernels();
    if (!k.empty()) std::cout << "  convolution kernels:\n" << k;
  }
#else
  (void)train;
  (void)infer;
  (void)batch;
  (void)kernels;
  fail("--device cuda:", device, ": this resunetpp was built without CUDA/cuDNN");
#endif
}

}  // namespace

int cmd_summary(int argc, char** argv) {
  int size = 256, batch = 16;
  std::string filters = "16,32,64,128,256";
  Flags f("summary", "Print the network's layers, parameter count, FLOPs and the memory plans\n"
                     "for training and inference at the given input size and batch.");
  f.add("size", &size, "input height and width (multiple of 8)");
  f.add("batch", &batch, "batch size of the plans");
  f.add("filters", &filters, "channel counts of stem, encoders and bridge", "LIST");
  std::string device = "cpu";
  f.add("device", &device,
        "cpu: plans with the CPU's workspace needs; cuda[:N] or auto: also builds the CUDA executor for both "
        "graphs and prints its device memory and the cuDNN algorithms chosen per convolution shape",
        "DEV");
  std::string kernels = "default";
  f.add("kernels", &kernels, "with --device cuda: default, cudnn, handwritten or auto (see train --help)", "NAME");
  std::string fuse = "auto";
  f.add("fuse", &fuse,
        "BN-ReLU-conv and SE-MLP fusion (and, for inference, the ASPP conv-BN sums): auto (as the device "
        "runs it: on for cuda, off for cpu), on or off",
        "MODE");
  if (!f.parse(argc, argv, 2, std::cout)) return 0;
  ModelConfig cfg;
  cfg.filters = parse_filters(filters, "--filters");
  const DeviceSpec dev = parse_device(device);
  const KernelChoice kernel_choice = parse_kernel_choice(kernels);
  if (fuse != "auto" && fuse != "on" && fuse != "off") fail("--fuse must be auto, on or off, got '", fuse, "'");
  cfg.fuse = fuse == "auto" ? dev.cuda : fuse == "on";
  if (dev.cuda && !kHaveCudaExecutor) fail("--device ", device, ": this resunetpp was built without CUDA/cuDNN");
  if (dev.cuda && dev.index >= cuda_executor_device_count())
    fail("--device ", device, ": ", cuda_executor_device_count(), " CUDA device(s) visible");
  ModelGraph train = build_resunetpp(cfg, batch, size, size, true);
  ModelGraph infer = build_resunetpp(cfg, batch, size, size, false);
  const int64_t fwd_flops = infer.graph.forward_flops();
  append_backward_and_update(train.graph, train.loss, OptimizerKind::Adam);

  std::cout << "ResUNet++  filters " << filters << "  input " << size << "x" << size << "x" << cfg.in_channels
            << "  batch " << batch << "\n\n";
  // One row per top-level module, in execution order.
  struct Row { std::string shape; int64_t params = 0, flops = 0; int nodes = 0; };
  std::vector<std::string> order;
  std::map<std::string, Row> rows;
  const Graph& g = infer.graph;
  for (const Node& n : g.nodes()) {
    const std::string mod = n.name.substr(0, n.name.find('.'));
    if (!rows.count(mod)) order.push_back(mod);
    Row& r = rows[mod];
    r.flops += n.flops;
    r.nodes++;
    if (!n.out.empty()) {
      Shape s = g.tensor(n.out[0]).shape;
      r.shape = shape_str(s);
    }
  }
  for (const TensorInfo& t : g.tensors())
    if (t.kind == TensorKind::Param) rows[t.name.substr(0, t.name.find('.'))].params += numel(t.shape);
  std::cout << std::left << std::setw(10) << "module" << std::setw(24) << "output (N,H,W,C)" << std::right
            << std::setw(12) << "params" << std::setw(16) << "GFLOP/image" << std::setw(8) << "ops" << "\n";
  for (const std::string& m : order) {
    const Row& r = rows[m];
    std::cout << std::left << std::setw(10) << m << std::setw(24) << r.shape << std::right << std::setw(12)
              << thousands(r.params) << std::setw(16) << std::fixed << std::setprecision(3)
              << double(r.flops) / batch / 1e9 << std::setw(8) << r.nodes << "\n";
  }
  std::cout.unsetf(std::ios::fixed);
  int64_t running = 0, counters = 0;
  for (const TensorInfo& t : g.tensors())
    if (t.kind == TensorKind::Buffer) (t.dtype == DType::I64 ? counters : running) += numel(t.shape);
  std::cout << "\nparameters: " << thousands(count_params(g)) << " trainable, " << thousands(running)
            << " BN running statistics, " << counters << " BN batch counters\n";
  std::cout << "forward: " << std::setprecision(4) << double(fwd_flops) / batch / 1e9
            << " GFLOP per image; training step: " << double(train.graph.forward_flops() + 0) / batch / 1e9
            << " GFLOP forward + backward ";
  int64_t bwd = 0;
  for (const Node& n : train.graph.nodes())
    if (!is_forward(n.op)) bwd += n.flops;
  std::cout << double(bwd) / batch / 1e9 << " = " << double(train.graph.forward_flops() + bwd) / batch / 1e9
            << " GFLOP per image (multiply-add = 2)\n";
  int fused = 0, sums = 0, se = 0, bn_sums = 0, adds = 0, pools = 0, up_cat = 0, products = 0;
  for (const Node& n : g.nodes()) {
    fused += n.op == OpKind::BnReluConv2d;
    se += n.op == OpKind::SeExcite;
    adds += residual_input(n) >= 0;
    pools += is_forward(n.op) && n.conv.max_pool;
    up_cat += n.op == OpKind::UpsampleConcat;
    products += is_forward(n.op) && n.conv.multiply;
  }
  int views_train = 0, views_infer = 0;
  for (const Node& n : infer.graph.nodes()) {
    sums += n.op == OpKind::ConvBnSum;
    views_infer += n.view;
  }
  for (const Node& n : train.graph.nodes()) {
    bn_sums += n.op == OpKind::BnApplySum;
    views_train += n.view;
  }
  if (cfg.fuse)
    std::cout << "fusion: " << fused
              << " BN-ReLU-conv chains fused (only their pre-BN inputs are kept for "
                 "backward); "
              << se << " SE MLPs fused (linear, ReLU, linear, sigmoid: one kernel each way); inference: " << sums
              << " ASPP blocks fused into one conv-BN sum each (their branch outputs never exist); training: "
              << bn_sums << " ASPP blocks' BN applications and sum in one pass each; " << adds
              << " residual and attention adds done by the convolution before them; " << pools
              << " max pools done by the convolution before them (training keeps 1-byte window indices, not the "
                 "convolution's output); "
              << products << " attention products done by the convolution before them; " << up_cat
              << " decoder upsamples and concats in one pass each (the upsampled tensor never exists); " << views_infer
              << " (inference) and " << views_train
              << " (training forward) of those read in place by the next block's BN statistics and convolutions "
                 "(the concatenation is never stored)\n\n";
  else
    std::cout << "fusion: off (--fuse on shows the fused graph the CUDA executor runs)\n\n";
  for (auto* mg : {&train, &infer}) {
    Plan p = make_plan(mg->graph, PlanMode::BestFit, cpu_workspace_bytes);
    const bool tr = mg == &train;
    std::cout << "plan (" << (tr ? "training, adam" : "inference") << ", batch " << batch << ", cpu): "
              << mg->graph.num_nodes() << " nodes, " << mg->graph.num_tensors() << " tensors\n"
              << "  arena " << mib(p.arena_bytes) << " (" << p.arena_bytes << " bytes) vs naive sum "
              << mib(p.naive_bytes) << " (" << p.naive_bytes << " bytes): " << std::setprecision(3)
              << 100.0 * (1.0 - double(p.arena_bytes) / double(p.naive_bytes)) << "% saved\n"
              << (tr ? other_graph_line(cfg, batch, size) + backward_memory_line(cfg, batch, size, mg->graph, p)
                     : std::string())
              << "  workspace " << mib(p.workspace_bytes) << ", parameters" << (tr ? " + optimiser state " : " ")
              << mib(p.persistent_bytes) << "\n";
    {  // the fused graph (as CUDA runs it) with its activations stored in bf16
      ModelConfig fused = cfg;
      fused.fuse = true;
      ModelGraph half = build_resunetpp(fused, batch, size, size, tr);
      if (tr) append_backward_and_update(half.graph, half.loss, OptimizerKind::Adam);
      store_activations_in_bf16(half.graph);
      const Plan h = make_plan(half.graph, PlanMode::BestFit, cpu_workspace_bytes);
      std::cout << "  fused graph with bf16 activations ("
                << (tr ? "train --precision bf16: gradients fp32" : "eval/predict --precision bf16")
                << ", cuda only): arena " << mib(h.arena_bytes) << " (" << h.arena_bytes << " bytes) vs naive sum "
                << mib(h.naive_bytes) << " (" << h.naive_bytes << " bytes)\n";
    }
  }
  if (dev.cuda) print_cuda_plans(train.graph, infer.graph, dev.index, batch, kernel_choice);
  return 0;
}

}  // namespace rpp::cli
