// runtime/executor_cuda.h — runs a planned graph on one CUDA device: the kernels of kernels/cuda
// and the cuDNN convolutions of kernels/cuda/cudnn, NHWC, activations in fp32 or (inference,
// ExecOptions::precision) bf16.
//
// Built only with CUDA and cuDNN (RESUNETPP_HAVE_CUDA and RESUNETPP_HAVE_CUDNN, set by CMake on
// the libraries that have them); otherwise make_cuda_executor throws an rpp::Error saying so.
// Plain C++: no CUDA type appears here (the stream is a void*). Implemented in
// runtime/executor_cuda.cpp; tested against the CPU executor by tests/gpu/test_executor_gpu.cpp
// (./build/gpu_test_executor_gpu).
//
// Memory, all allocated in the constructor (run() allocates nothing):
//   * the arena: one cudaMalloc carved by the plan (runtime/planner.h), every non-persistent tensor;
//   * the persistent block: one cudaMalloc for device copies of the graph's parameters, buffers
//     and optimiser state (256-byte aligned each), followed by the executor's device scalars
//     (the OptimStepDevice of the step, the squared gradient norm, the norm, the clip factor);
//   * the workspace: one cudaMalloc of the plan's workspace, the largest need of any node (the
//     cuDNN workspaces of the chosen algorithms, the launchers' reduction scratch);
//   * one pinned host block: parameter staging, input staging, a ring of step structs and the
//     read-back scalars.
// Layouts on the device: activations NHWC as on the CPU; convolution weights, their gradients
// and their optimiser state in OHWI (cuDNN's filter layout for NHWC), converted from and to the
// ParamStore's HWIO only by upload_params / download_params (and read_output), so the optimiser
// updates weights, gradients and moments in one consistent layout.
//
// One stream, one cuDNN handle bound to it, one CudnnConv per distinct convolution shape with
// algorithms chosen once at construction (deterministic and TF32 settings honoured). With
// use_graphs the first run() launches eagerly (every kernel module gets loaded and cuDNN sets
// itself up outside any capture), the second captures the whole node sequence into a CUDA graph,
// and every later run replays it. The step-dependent optimiser scalars reach the kernels through
// the device struct, which run() refreshes with an async copy before the launch, so one graph
// serves every step. Graph and eager launches run the same kernels: their results are identical.
//
// Synchronisation: run() never waits for the device (except, in the rare case that a caller
// queues four runs without ever reading anything back, for the step struct copy of four runs
// back). last_loss() / last_grad_norm() wait for the run to finish: that is the one host
// synchronisation per step, which the trainer needs anyway for its divergence check.
// read_output synchronises too. Not thread-safe: one caller at a time.
#pragma once
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "runtime/error.h"
#include "runtime/executor.h"
#include "runtime/graph.h"
#include "runtime/param_store.h"
#include "runtime/planner.h"

namespace rpp {

#if defined(RESUNETPP_HAVE_CUDA) && defined(RESUNETPP_HAVE_CUDNN)

inline constexpr bool kHaveCudaExecutor = true;

// Per tensor of g: 1 where the CUDA executor keeps the tensor in OHWI (convolution weights, the
// weight gradients Conv2dBwdFilter writes, sums of those, and the optimiser state of those
// weights), else 0. rpp::Error when another op would touch such a tensor, or a convolution takes
// its weight from a non-parameter. Host only (no device needed).
std::vector<char> cuda_ohwi_tensors(const Graph& g);

// Usable CUDA devices (0 without a driver or a GPU; never throws).
int cuda_executor_device_count();

class CudaExecutor final : public Executor {
 public:
  // Selects `device`, creates the stream and the cuDNN handle, chooses the convolution
  // algorithms, plans, allocates and uploads the ParamStore's tensors (creating those the store
  // lacks, as the CPU executor does). rpp::Error naming the failing call otherwise.
  CudaExecutor(const Graph& g, ParamStore& store, int device, const ExecOptions& options = ExecOptions());
  ~CudaExecutor() override;
  CudaExecutor(const CudaExecutor&) = delete;
  CudaExecutor& operator=(const CudaExecutor&) = delete;

  const Graph& graph() const override { return g_; }
  const Plan& plan() const override { return plan_; }
  std::string describe() const override;

  float* input_buffer(int tensor) override;
  void set_input(int tensor, const float* host) override;
  void read_output(int tensor, float* host) override;
  void run(const cpu::OptimStep* opt = nullptr) override;
  double last_loss() override;
  double last_grad_norm() override;
  void upload_params() override;
  void download_params() override;

  // ---- for tests and diagnostics ----
  int device() const { return device_; }
  void* stream() const { return stream_; }       // the cudaStream_t every launch goes to
  bool uses_graphs() const { return use_graphs_; }
  bool graph_captured() const { return graph_exec_ != nullptr; }
  // Fills the arena with NaN (0xFF bytes): an unwritten tensor read by a node becomes visible.
  void poison();
  // Waits for all work of this executor's stream.
  void synchronize();
  // Device bytes held: arena, persistent block, workspace.
  size_t device_bytes() const { return arena_bytes_ + persistent_bytes_ + workspace_bytes_; }
  // One line per distinct convolution shape: the shape, the nodes using it, the algorithms.
  std::string describe_convolutions() const;
  // Device address of a tensor that has storage (rpp::Error otherwise): inputs may be written
  // and outputs read there by kernels queued on stream() between runs.
  void* device_tensor(int tensor) const;
  // Joins with a caller's cudaStream_t (null: the legacy default stream) without blocking the
  // host: wait_for makes this executor's stream wait for the work queued on `stream` so far;
  // signal_to makes `stream` wait for the work queued on this executor's stream so far.
  void wait_for(void* stream);
  void signal_to(void* stream);
  // One run launched eagerly (no graph) with an event after every node; returns each node's
  // milliseconds (index = node index) after waiting for the run. Same effects as run(opt).
  std::vector<double> profile_run(const cpu::OptimStep* opt = nullptr);
  // One line per fused BN-ReLU-conv node: the kernel chosen and why (ExecOptions::kernels).
  std::string describe_kernels() const;
  int num_conv_shapes() const;

 private:
  struct Impl;  // cuDNN objects (kernels/cuda/cudnn types stay out of this header)
  void init();
  void release() noexcept;
  void launch_all();
  void launch(int node_index);
  bool launch_bf16(int node_index);  // a non-convolution node touching bf16 activations (else false)
  size_t workspace_need(const Node& n) const;
  size_t handwritten_filter_workspace(const Node& n) const;
  size_t handwritten_workspace(const Node& n) const;
  size_t own_conv_out_bytes(const Node& n) const;
  size_t cudnn_path_workspace(const Node& n) const;
  // A forward convolution reading an upsample-concat view (Node::view) as x: the view node, or
  // null; whether the tensor-core kernel may read it in place (else the view is materialised at
  // the start of the node's workspace, view_bytes).
  const Node* view_input(const Node& n) const;
  bool view_in_place(const Node& n, bool tensor_core) const;
  size_t view_bytes(const Node& n) const;
  bool cudnn_possible(const Node& n) const;
  void choose_kernels();
  void upload_step(const cpu::OptimStep* opt);
  void queue_readback();
  double time_node(int node_index);
  double time_saved_bn_pass(int bn_node, int producer);
  double time_launch(const std::function<void()>& fn);
  void* ptr(int tensor) const;           // device address, or null for -1
  float* fptr(int tensor) const { return static_cast<float*>(ptr(tensor)); }
  void capture_graph();
  void wait_readback();

  const Graph& g_;
  ParamStore& store_;
  ExecOptions opt_;
  int device_ = 0;
  bool use_graphs_ = true, debug_sync_ = false;
  bool bf16_ = false;      // the graph stores its activations in bf16
  // KernelChoice::Default with bf16 activations: hand-written, the cuDNN path where refused.
  bool bf16_default_ = false;
  bool training_ = false;  // the graph has backward or optimiser nodes
  Plan plan_;
  std::unique_ptr<Impl> impl_;
  void* stream_ = nullptr;       // cudaStream_t
  void* graph_ = nullptr;        // cudaGraph_t
  void* graph_exec_ = nullptr;   // cudaGraphExec_t

  // Device memory.
  char* arena_ = nullptr;
  char* persistent_ = nullptr;
  char* workspace_ = nullptr;
  size_t arena_bytes_ = 0, persistent_bytes_ = 0, workspace_bytes_ = 0;
  size_t tensors_bytes_ = 0;     // the persistent tensors' part of the persistent block
  void* d_step_ = nullptr;       // OptimStepDevice
  double* d_sumsq_ = nullptr;
  double* d_norm_ = nullptr;
  double* d_factor_ = nullptr;

  // Pinned host memory.
  char* pinned_ = nullptr;
  char* param_staging_ = nullptr;  // tensors_bytes_ bytes, laid out like the persistent block
  void* step_ring_ = nullptr;      // kStepRing OptimStepDevice structs
  float* h_loss_ = nullptr;
  double* h_norm_ = nullptr;
  static constexpr int kStepRing = 4;
  void* step_events_[kStepRing] = {};  // cudaEvent_t: the copy out of each ring slot has run
  int step_slot_ = 0;
  void* join_in_ = nullptr;   // cudaEvent_t for wait_for
  void* join_out_ = nullptr;  // cudaEvent_t for signal_to
  void* readback_event_ = nullptr;  // cudaEvent_t after the last run's scalar read-back

  // Per tensor: device address (null: no storage in this plan), persistent block offset (-1:
  // not persistent), whether the device holds it in OHWI, its input staging (host) and the event
  // of its last upload.
  std::vector<void*> dptr_;
  std::vector<int64_t> poffset_;
  std::vector<char> ohwi_;
  std::vector<float*> input_staging_;
  std::vector<void*> input_events_;  // cudaEvent_t, per tensor (null for non-inputs)

  int loss_tensor_ = -1;
  bool has_clip_ = false, has_update_ = false;
  bool writes_persistent_ = false;  // updates or training-mode BN (running statistics, counters)
  bool readback_pending_ = false;  // a run whose scalars are not yet read
  int64_t runs_ = 0;
  bool params_dirty_ = false;      // the device has parameter updates the store has not seen
  double last_loss_ = 0, last_norm_ = 0;
};

std::unique_ptr<Executor> make_cuda_executor(const Graph& g, ParamStore& store, int device,
                                             const ExecOptions& options);

#else

inline constexpr bool kHaveCudaExecutor = false;

inline int cuda_executor_device_count() { return 0; }

[[noreturn]] inline std::unique_ptr<Executor> make_cuda_executor(const Graph&, ParamStore&, int device,
                                                                 const ExecOptions&) {
  fail("device cuda:", device, ": this resunetpp was built without CUDA/cuDNN (the CUDA executor needs "
       "both: configure with a CUDA compiler and cuDNN found, see RESUNETPP_CUDA and RESUNETPP_CUDNN); "
       "use --device cpu");
}

#endif

}  // namespace rpp
