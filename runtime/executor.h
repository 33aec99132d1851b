// runtime/executor.h — what every backend's executor offers the trainer, the evaluator and the
// predictor: inputs in, a run, outputs and two scalars out, and the parameter synchronisation
// that a device with its own memory needs. Implemented by CpuExecutor (runtime/executor_cpu.h)
// and CudaExecutor (runtime/executor_cuda.h); make_executor picks one from a device string.
//
//   auto ex = make_executor(graph, store, "cuda:0", ExecOptions{});
//   ex->set_input(image, host_images);      // (N, H, W, C) floats
//   ex->run(&step);                         // forward, loss, backward, clipping, update
//   double loss = ex->last_loss();          // CUDA: the one host synchronisation of a step
//   ex->download_params();                  // device -> ParamStore, e.g. before a checkpoint
//
// Data always crosses this interface in the engine's layouts (NHWC, HWIO conv weights), whatever
// a device keeps internally.
#pragma once
#include <cstddef>
#include <memory>
#include <string>

#include "kernels/cpu/ops.h"
#include "runtime/graph.h"
#include "runtime/param_store.h"
#include "runtime/planner.h"

namespace rpp {

// Which implementation runs the convolution nodes on CUDA, fused BN-ReLU-conv and plain, forward,
// backward-data and backward-filter: cuDNN (for the fused nodes with BN-ReLU or mask kernels
// around it), the hand-written kernels (kernels/cuda/bn_relu_conv*.cuh; the forward on tensor
// cores when TF32 is allowed), or the faster of the two timed once per (node kind, shape) at plan
// time. Default: cuDNN with fp32 activations (the hand-written kernels have not yet run on a
// GPU); with bf16 activations the hand-written BF16 tensor-core kernels, and the cuDNN path for a
// node whose shape they cannot run. The CPU has one implementation and ignores this.
enum class KernelChoice { Default, Cudnn, Handwritten, Auto };
// "default", "cudnn", "handwritten", "auto"; rpp::Error naming the string otherwise.
KernelChoice parse_kernel_choice(const std::string& name);
const char* kernel_choice_name(KernelChoice k);

// How activations are stored. Bf16 (inference and training): the graph stores its forward
// activation tensors in bf16 (store_activations_in_bf16, runtime/fusion.h; the Predictor and the
// trainer do it; gradients, statistics, parameters and optimiser state stay fp32); all arithmetic
// stays fp32 or wider. The CUDA executor runs the convolution passes on the hand-written bf16
// tensor-core kernels or on the cuDNN path, which stages each bf16 operand in fp32, runs the fp32
// cuDNN convolution (TF32 when allowed) and rounds a bf16 output once (see KernelChoice). The CPU
// executor runs fp32 only.
enum class Precision { F32, Bf16 };
// "fp32", "bf16"; rpp::Error naming the string otherwise.
Precision parse_precision(const std::string& name);
const char* precision_name(Precision p);

struct ExecOptions {
  PlanMode plan_mode = PlanMode::BestFit;
  // CUDA only (the CPU backend is always deterministic and has no other choice):
  bool deterministic = true;   // cuDNN algorithms whose results do not vary between runs
  bool allow_tf32 = false;     // TF32 tensor-core convolutions (off: fp32 FMA, close to the CPU)
  bool use_graphs = true;      // capture the node sequence once as a CUDA graph, then replay it
                               // (the environment variable RPP_CUDA_GRAPHS=0 switches it off)
  bool debug_sync = false;     // eager, synchronise and check after every node (names the node);
                               // also switched on by the environment variable RPP_CUDA_DEBUG_SYNC=1
  size_t conv_workspace_limit = size_t(1) << 30;  // cuDNN workspace cap per convolution (bytes)
  // The hand-written kernels have not run on a GPU yet: with fp32 activations the cuDNN path
  // stays the default (KernelChoice::Default).
  KernelChoice kernels = KernelChoice::Default;
  Precision precision = Precision::F32;  // must agree with the graph's activation dtypes
};

// A parsed device string: "cpu", "cuda" (= "cuda:0") or "cuda:N".
struct DeviceSpec {
  bool cuda = false;
  int index = 0;
};
// rpp::Error naming the string for anything else. "auto" is resolved first (resolve_device).
DeviceSpec parse_device(const std::string& device);
// "auto" -> "cuda:0" when this build has the CUDA executor and a CUDA device is visible, else
// "cpu". Any other string is returned unchanged.
std::string resolve_device(const std::string& device);

class Executor {
 public:
  virtual ~Executor() = default;

  virtual const Graph& graph() const = 0;
  virtual const Plan& plan() const = 0;
  // "cpu (2 threads)", "cuda:0 (NVIDIA H100 ..., sm_90, ...)".
  virtual std::string describe() const = 0;

  // Host memory for an Input tensor that the caller may fill in place and then pass to
  // set_input (which then copies nothing on the CPU and nothing host-side on the GPU). Valid
  // for the executor's lifetime.
  virtual float* input_buffer(int tensor) = 0;
  // Copies numel(tensor) floats from host into an Input tensor for the next run().
  virtual void set_input(int tensor, const float* host) = 0;
  // Copies a tensor's numel floats to host after run() (waits for the run to finish). The
  // tensor must be an output, an input or a persistent tensor (others may share bytes).
  virtual void read_output(int tensor, float* host) = 0;
  // Runs every node in order. `opt` is required when the graph has optimiser updates.
  // A training step whose loss or global gradient norm is NaN or infinite is skipped: its
  // optimiser updates leave parameters and optimiser state unchanged (on a GPU decided on the
  // device, without a host synchronisation), and BN channels with non-finite batch statistics
  // keep their running statistics. The caller sees it as a non-finite last_loss() or
  // last_grad_norm() and should not count the step as an optimiser step.
  virtual void run(const cpu::OptimStep* opt = nullptr) = 0;
  // The graph's loss after the last run (NaN when the graph has no Loss node).
  virtual double last_loss() = 0;
  // Global L2 norm of the parameter gradients in the last run, before clipping (0 when the
  // graph has no ClipGradNorm node).
  virtual double last_grad_norm() = 0;
  // ParamStore -> executor: after the store was changed from outside (a checkpoint loaded,
  // weights copied in). No-op on the CPU, whose executor works on the store itself.
  virtual void upload_params() = 0;
  // Executor -> ParamStore: before reading the store (checkpoints, another executor over the
  // same store). No-op on the CPU; on a GPU skipped when no run has changed the device copy
  // since the last upload or download.
  virtual void download_params() = 0;
};

// "cpu" -> CpuExecutor; "cuda[:N]" -> CudaExecutor on device N, or rpp::Error when this build has
// no CUDA/cuDNN backend or there is no such device.
std::unique_ptr<Executor> make_executor(const Graph& g, ParamStore& store, const std::string& device,
                                        const ExecOptions& options = ExecOptions());

}  // namespace rpp
