// runtime/executor_cuda.cpp — the CUDA executor (runtime/executor_cuda.h): one switch over the op
// set calling the launchers of kernels/cuda and the cuDNN convolutions, plus the memory, transfer
// and CUDA-graph bookkeeping around it. Host code only (compiled by the C++ compiler): every
// kernel lives in kernels/cuda. Compiled to nothing without CUDA and cuDNN.
//
// Exercised by tests/gpu/test_executor_gpu.cpp (against the CPU executor, graph replay against
// eager launches, save/load/continue, no allocation per step). To debug a failing node, run with
// RPP_CUDA_DEBUG_SYNC=1: eager launches, a synchronisation after every node, errors name the node;
// RPP_CUDA_GRAPHS=0 keeps eager launches without the synchronisations (graph vs kernel problems).
#include "runtime/executor_cuda.h"

#if defined(RESUNETPP_HAVE_CUDA) && defined(RESUNETPP_HAVE_CUDNN)

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <iomanip>
#include <limits>
#include <map>
#include <sstream>

#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/bn_relu_conv.cuh"
#include "kernels/cuda/bn_relu_conv_bwd.cuh"
#include "kernels/cuda/bn_relu_conv_bwd_tc.cuh"
#include "kernels/cuda/bn_relu_conv_tc.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/conv_bn_sum.cuh"
#include "kernels/cuda/cudnn/conv_cudnn.cuh"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/loss.cuh"
#include "kernels/cuda/optim.cuh"
#include "kernels/cuda/se.cuh"

namespace rpp {

namespace {

constexpr size_t kAlign = Plan::kAlign;  // 256: every device and pinned sub-buffer starts aligned

size_t align_up(size_t b) { return (b + kAlign - 1) / kAlign * kAlign; }

cudaStream_t as_stream(void* s) { return static_cast<cudaStream_t>(s); }
cudaEvent_t as_event(void* e) { return static_cast<cudaEvent_t>(e); }

// Makes `device` current for the scope and restores the caller's device afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    int cur = -1;
    RPP_CUDA_CHECK(cudaGetDevice(&cur));
    if (cur != device) {
      RPP_CUDA_CHECK(cudaSetDevice(device));
      prev_ = cur;
    }
  }
  ~DeviceGuard() {
    if (prev_ >= 0) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

using ConvKey = std::array<int, 10>;
ConvKey conv_key(const cpu::Conv2dShape& s) {
  return {s.n, s.h, s.w, s.cin, s.cout, s.kh, s.kw, s.stride, s.pad, s.dil};
}

// The ASPP's branch-sum nodes: the inference conv-BN sum and the training backward-data sum. Their
// only hand-written kernels are tensor-core ones; their cuDNN paths run the branches in turn.
bool is_branch_sum(OpKind k) { return k == OpKind::ConvBnSum || k == OpKind::ConvSumBwdData; }

// Node kinds with a hand-written kernel beside cuDNN (choose_kernels): every convolution pass,
// fused or plain (the hand-written kernels run a plain conv when given no BN arguments), and the
// ASPP's branch sums (cuDNN path: the conv, eval BN and add of each branch in turn; or each
// branch's backward-data and the add).
bool has_handwritten_kernel(OpKind k) {
  return k == OpKind::BnReluConv2d || k == OpKind::BnReluConv2dBwdData || k == OpKind::BnReluConv2dBwdFilter ||
         k == OpKind::Conv2d || k == OpKind::Conv2dBwdData || k == OpKind::Conv2dBwdFilter || is_branch_sum(k);
}

// The branches of a ConvSumBwdData node (in: per branch dy, w) for conv_sum_tc_backward_data.
template <class F>
int conv_sum_bwd_branches(const Node& n, F f, cuda::ConvBwdDataBranch* out) {
  const int count = int(n.branches.shapes.size());
  if (count < 1 || count > cuda::kConvSumMaxBranches || n.in.size() != size_t(2 * count))
    fail("CUDA executor: ConvSumBwdData node ", n.name, " has ", count, " branches and ", n.in.size(), " inputs");
  for (int b = 0; b < count; ++b) out[b] = {n.branches.shapes[size_t(b)], f(n.in[size_t(2 * b)]), f(n.in[size_t(2 * b + 1)])};
  return count;
}

// The branches of a ConvBnSum node (in: x, then per branch w, b, gamma, beta, running_mean,
// running_var) for conv_bn_sum_tc_forward; f maps a tensor id to its device pointer.
template <class F>
int conv_bn_sum_branches(const Node& n, F f, cuda::ConvBnBranch* out) {
  const int count = int(n.branches.shapes.size());
  if (count < 1 || count > cuda::kConvBnSumMaxBranches || n.in.size() != size_t(1 + 6 * count))
    fail("CUDA executor: ConvBnSum node ", n.name, " has ", count, " branches and ", n.in.size(), " inputs");
  for (int b = 0; b < count; ++b) {
    const size_t i = size_t(1 + 6 * b);
    out[b] = {n.branches.shapes[size_t(b)], f(n.in[i]), f(n.in[i + 1]), f(n.in[i + 2]),
              f(n.in[i + 3]), f(n.in[i + 4]), f(n.in[i + 5])};
  }
  return count;
}

cuda::Storage storage_of(const TensorInfo& t) {
  return t.dtype == DType::BF16 ? cuda::Storage::Bf16 : cuda::Storage::F32;
}

// Whether the ConvBnSum node's hand-written tensor-core kernel runs it with this math and the
// node's storage.
bool conv_bn_sum_can_run(const Graph& g, const Node& n, cuda::ConvMath math) {
  return cuda::conv_bn_sum_tc_can_run(n.branches.shapes.data(), int(n.branches.shapes.size()), math,
                                      storage_of(g.tensor(n.in[0])), storage_of(g.tensor(n.out[0])));
}

// Likewise for the ConvSumBwdData node (its tensors are gradients and weights: fp32).
bool conv_sum_bwd_can_run(const Node& n, cuda::ConvMath math) {
  return cuda::conv_sum_tc_backward_data_can_run(n.branches.shapes.data(), int(n.branches.shapes.size()), math);
}

// Forward convolution nodes (the tensor-core kernel and its epilogue statistics apply to them).
bool is_conv_forward(OpKind k) { return k == OpKind::BnReluConv2d || k == OpKind::Conv2d; }

// With TF32 allowed, whether a convolution node's hand-written kernel runs on tensor cores.
bool tensor_core_can_run(const Graph& g, const Node& n) {
  if (n.op == OpKind::ConvBnSum) return conv_bn_sum_can_run(g, n, cuda::ConvMath::Tf32);
  if (n.op == OpKind::ConvSumBwdData) return conv_sum_bwd_can_run(n, cuda::ConvMath::Tf32);
  if (is_conv_forward(n.op)) return cuda::bn_relu_conv_tc_can_run(n.conv.shape, cuda::ConvMath::Tf32);
  if (has_handwritten_kernel(n.op)) return cuda::bn_relu_conv_bwd_tc_can_run(n.conv.shape, cuda::ConvMath::Tf32);
  return false;
}

bool is_conv_op(OpKind k) {
  return k == OpKind::Conv2d || k == OpKind::Conv2dBwdData || k == OpKind::Conv2dBwdFilter ||
         k == OpKind::BnReluConv2d || k == OpKind::BnReluConv2dBwdData || k == OpKind::BnReluConv2dBwdFilter;
}

// The convolution nodes (forward, conv-BN sum and backward) of a graph with bf16 activations:
// the hand-written tensor-core kernel with BF16 operands, or the cuDNN path with every bf16
// operand staged in fp32.
bool conv_bf16(bool bf16_graph, const Node& n) {
  return bf16_graph && (is_conv_op(n.op) || is_branch_sum(n.op));
}

// Whether the bf16 tensor-core kernel of a convolution node runs its shape and storage.
bool bf16_conv_can_run(const Graph& g, const Node& n) {
  auto st = [&](int t) { return storage_of(g.tensor(t)); };
  switch (n.op) {
    case OpKind::ConvBnSum: return conv_bn_sum_can_run(g, n, cuda::ConvMath::Bf16);
    case OpKind::ConvSumBwdData: return conv_sum_bwd_can_run(n, cuda::ConvMath::Bf16);
    case OpKind::Conv2d:
    case OpKind::BnReluConv2d:
      return cuda::bn_relu_conv_tc_can_run(n.conv.shape, cuda::ConvMath::Bf16, st(n.in[0]), st(n.out[0]));
    case OpKind::BnReluConv2dBwdData:
      return cuda::bn_relu_conv_bwd_tc_can_run(n.conv.shape, cuda::ConvMath::Bf16, st(n.in[2]));
    case OpKind::Conv2dBwdFilter:
    case OpKind::BnReluConv2dBwdFilter:
      return cuda::bn_relu_conv_bwd_tc_can_run(n.conv.shape, cuda::ConvMath::Bf16, st(n.in[0]));
    default: return cuda::bn_relu_conv_bwd_tc_can_run(n.conv.shape, cuda::ConvMath::Bf16);
  }
}


// Whether g stores activations in bf16, after checking that it agrees with `precision` and that
// every node gets dtypes its kernels take. Only rank-4 Activation tensors may be bf16 (gradients,
// statistics, per-channel vectors, parameters and optimiser state stay fp32). Per node:
// convolutions (forward and backward) take either dtype for the activations they read and write;
// elementwise, pooling, resampling, concat, eval and training BN and the ASPP sum take one dtype
// in and out; the backward ops that read a saved activation (BN, channel scale, the
// gradient of a Mul) take it in either dtype with fp32 gradients; every other node is fp32 only.
bool check_storage(const Graph& g, Precision precision) {
  bool bf16 = false;
  for (const TensorInfo& ti : g.tensors()) {
    if (ti.dtype == DType::BF16 && (ti.kind != TensorKind::Activation || ti.shape.size() != 4))
      fail("CUDA executor: tensor ", ti.name, " is bf16; only rank-4 activations may be (store_activations_in_bf16)");
    if (ti.dtype == DType::U8 && ti.kind != TensorKind::Activation)
      fail("CUDA executor: tensor ", ti.name, " is U8; only max-pool window indices (activations) may be");
    if (ti.dtype != DType::F32 && ti.dtype != DType::BF16 && ti.dtype != DType::U8 && !is_persistent(ti.kind))
      fail("CUDA executor: tensor ", ti.name, " has dtype ", dtype_name(ti.dtype),
           "; activations are fp32 or bf16 (max-pool window indices U8)");
    bf16 = bf16 || ti.dtype == DType::BF16;
  }
  if (bf16 != (precision == Precision::Bf16))
    fail("CUDA executor: precision ", precision_name(precision), " but the graph stores its activations in ",
         bf16 ? "bf16" : "fp32", " (store_activations_in_bf16, runtime/fusion.h, makes a bf16 graph)");
  if (!bf16) return false;
  auto dt = [&](int t) { return g.tensor(t).dtype; };
  for (const Node& n : g.nodes()) {
    auto need_same = [&](const std::vector<int>& ts) {
      for (int t : ts)
        if (t >= 0 && dt(t) != dt(n.out[0]))
          fail("CUDA executor: ", op_name(n.op), " node ", n.name, " mixes fp32 and bf16 tensors (", g.tensor(t).name,
               ", ", g.tensor(n.out[0]).name, ")");
    };
    // Every tensor of the node but those listed (the saved activations it may read in bf16).
    auto need_f32_except = [&](const std::vector<int>& either) {
      auto check = [&](int t) {
        if (t < 0 || dt(t) != DType::BF16) return;
        for (int e : either)
          if (e == t) return;
        fail("CUDA executor: ", op_name(n.op), " node ", n.name, ": tensor ", g.tensor(t).name,
             " is bf16; this node takes it in fp32 only",
             n.op == OpKind::ReluBwd
                 ? " (bf16 training runs the fused graph; build it with fusion on)"
                 : "");
      };
      for (int t : n.in) check(t);
      for (int t : n.out) check(t);
    };
    switch (n.op) {
      case OpKind::Conv2d:
      case OpKind::BnReluConv2d: {
        // A residual or multiplier, and a multiplied convolution's own output, in y's storage.
        const int r = residual_input(n) >= 0 ? residual_input(n) : multiplier_input(n);
        const int own = n.conv.multiply && n.out.size() > 1 ? n.out[1] : -1;
        need_same({r, own});
        need_f32_except({n.in[0], n.out[0], r, own});
        break;
      }
      case OpKind::ConvBnSum: need_f32_except({n.in[0], n.out[0]}); break;
      case OpKind::Conv2dBwdFilter:
      case OpKind::BnReluConv2dBwdFilter: need_f32_except({n.in[0]}); break;
      case OpKind::BnReluConv2dBwdData: need_f32_except({n.in[2]}); break;
      case OpKind::BatchNorm:
        need_same({n.in[0]});
        need_f32_except({n.in[0], n.out[0]});
        break;
      case OpKind::BatchNormStats:
      case OpKind::GlobalAvgPool:
      case OpKind::BatchNormBwd:
      case OpKind::ScaleChannelsBwd: need_f32_except({n.in[0]}); break;
      case OpKind::BnApplySum: {
        std::vector<int> xs;  // every branch's x, then y
        for (size_t b = 0; b < n.in.size(); b += 5) xs.push_back(n.in[b]);
        need_same(xs);
        xs.push_back(n.out[0]);
        need_f32_except(xs);
        break;
      }
      case OpKind::Relu:
      case OpKind::MaxPool2:
      case OpKind::Upsample2: need_same({n.in[0]}); break;
      case OpKind::Add:
      case OpKind::Concat:
      case OpKind::UpsampleConcat: need_same({n.in[0], n.in[1]}); break;
      case OpKind::Mul:  // forward: one dtype; a gradient's Mul: fp32 gradient times either, fp32 out
        if (dt(n.out[0]) == DType::BF16)
          need_same({n.in[0], n.in[1]});
        else if (dt(n.in[0]) == DType::BF16 && dt(n.in[1]) == DType::BF16)
          fail("CUDA executor: Mul node ", n.name, " has two bf16 inputs and an fp32 output");
        break;
      case OpKind::ScaleChannels:
        need_same({n.in[0]});
        need_f32_except({n.in[0], n.out[0]});
        break;
      default: need_f32_except({});
    }
  }
  return true;
}

bool env_on(const char* name) {
  const char* v = std::getenv(name);
  return v && *v && std::strcmp(v, "0") != 0;
}

}  // namespace

// The cuDNN side: the handle and one CudnnConv per distinct shape, shared by every node of it.
struct CudaExecutor::Impl {
  cudnnHandle_t handle = nullptr;
  std::map<ConvKey, std::unique_ptr<cuda::CudnnConv>> convs;
  std::map<ConvKey, int> conv_users;            // nodes per shape (diagnostics)
  std::vector<const cuda::CudnnConv*> node_conv;  // per node, null for non-conv nodes
  // Per node: the fused forward runs the hand-written kernel (else the cuDNN composition), and
  // why, for describe_kernels().
  std::vector<char> handwritten;
  std::vector<std::string> kernel_reason;
  // Per node: a hand-written fused forward runs on tensor cores (TF32 allowed, the shape fits).
  std::vector<char> tensor_core;
  // Epilogue statistics (bn_relu_conv_tc.cuh): per fused forward node whose output feeds a
  // training BatchNormStats node, the byte offset in the persistent block of its 2*cout doubles
  // (sum, then sum of squares), or -1; per BatchNormStats node, the producer whose sums it uses
  // this run (decided by choose_kernels), or -1 for the two-pass statistics of its input.
  std::vector<int64_t> sums_off;
  std::vector<int> stats_src;
  std::vector<int> stats_candidate;  // per BatchNormStats node: the possible producer, or -1
  std::vector<int> view_node;        // per tensor: the view node (Node::view) whose output it is, or -1

  const cuda::CudnnConv& conv_for(const cpu::Conv2dShape& s) const {
    auto it = convs.find(conv_key(s));
    if (it == convs.end()) fail("CUDA executor: no cuDNN convolution prepared for this shape");
    return *it->second;
  }
};

CudaExecutor::CudaExecutor(const Graph& g, ParamStore& store, int device, const ExecOptions& options)
    : g_(g), store_(store), opt_(options), device_(device), impl_(std::make_unique<Impl>()) {
  const int count = cuda::device_count();
  if (count == 0) fail("device cuda:", device, ": no CUDA device is visible (no driver or no GPU)");
  if (device < 0 || device >= count)
    fail("device cuda:", device, ": this machine has ", count, " CUDA device(s) (cuda:0 to cuda:", count - 1, ")");
  debug_sync_ = opt_.debug_sync || env_on("RPP_CUDA_DEBUG_SYNC");
  const char* graphs_env = std::getenv("RPP_CUDA_GRAPHS");  // "0": eager launches, for bisecting
  use_graphs_ = opt_.use_graphs && !debug_sync_ && !(graphs_env && std::strcmp(graphs_env, "0") == 0);
  try {
    init();
  } catch (...) {
    release();
    throw;
  }
}

CudaExecutor::~CudaExecutor() { release(); }

void CudaExecutor::init() {
  DeviceGuard guard(device_);
  const int nt = g_.num_tensors(), nn = g_.num_nodes();

  cudaStream_t s = nullptr;
  RPP_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  RPP_CUDNN_CHECK(cudnnCreate(&impl_->handle));
  RPP_CUDNN_CHECK(cudnnSetStream(impl_->handle, s));

  store_.ensure(g_);
  ohwi_ = cuda_ohwi_tensors(g_);
  bf16_ = check_storage(g_, opt_.precision);
  bf16_default_ = bf16_ && opt_.kernels == KernelChoice::Default;
  if (opt_.kernels == KernelChoice::Default) opt_.kernels = bf16_ ? KernelChoice::Handwritten : KernelChoice::Cudnn;
  training_ = false;
  for (const Node& n : g_.nodes()) training_ = training_ || !is_forward(n.op);

  // One CudnnConv per distinct shape, algorithms chosen once (cuDNN's heuristics, no timing).
  impl_->node_conv.assign(size_t(nn), nullptr);
  auto prepare = [&](const Node& n, const cpu::Conv2dShape& shape) {
    const ConvKey key = conv_key(shape);
    auto it = impl_->convs.find(key);
    if (it == impl_->convs.end()) {
      std::unique_ptr<cuda::CudnnConv> conv;
      try {
        conv = std::make_unique<cuda::CudnnConv>(shape);
        conv->choose_algorithms(impl_->handle, opt_.deterministic, opt_.allow_tf32, nullptr,
                                opt_.conv_workspace_limit);
      } catch (const Error& e) {
        fail("CUDA executor: convolution ", n.name, ": ", e.what());
      }
      it = impl_->convs.emplace(key, std::move(conv)).first;
    }
    ++impl_->conv_users[key];
    return it->second.get();
  };
  for (int i = 0; i < nn; ++i) {
    const Node& n = g_.node(i);
    if (!cudnn_possible(n)) continue;  // bf16, hand-written: no cuDNN convolution needed
    if (is_conv_op(n.op)) impl_->node_conv[size_t(i)] = prepare(n, n.conv.shape);
    if (is_branch_sum(n.op))  // the cuDNN path runs the branches one by one
      for (const cpu::Conv2dShape& b : n.branches.shapes) prepare(n, b);
  }

  impl_->view_node = view_nodes_by_tensor(g_);

  // Epilogue-sums candidates (hand-written kernels possible):
  //  * a training BatchNormStats node whose input comes straight from a fused forward node that
  //    may run on tensor cores (TF32 allowed): sum and sum of squares of the conv output;
  //  * a BatchNormBwd node whose dy comes straight from a fused backward-data node over the same
  //    x and saved statistics: sum(dy) and sum(dy * (x - mean)) * invstd of the masked dy.
  impl_->stats_candidate.assign(size_t(nn), -1);
  impl_->sums_off.assign(size_t(nn), -1);
  if (opt_.kernels != KernelChoice::Cudnn) {
    std::vector<int> producer(size_t(nt), -1);
    for (int i = 0; i < nn; ++i)
      for (int t : g_.node(i).out)
        if (t >= 0) producer[size_t(t)] = i;
    for (int i = 0; i < nn; ++i) {
      const Node& n = g_.node(i);
      if (n.op == OpKind::BatchNormStats && n.bn.training && (opt_.allow_tf32 || bf16_)) {
        const int p = producer[size_t(n.in[0])];
        if (p >= 0 && is_conv_forward(g_.node(p).op) &&
            (bf16_ ? bf16_conv_can_run(g_, g_.node(p))
                   : cuda::bn_relu_conv_tc_can_run(g_.node(p).conv.shape, cuda::ConvMath::Tf32)))
          impl_->stats_candidate[size_t(i)] = p;
      } else if (n.op == OpKind::BatchNormBwd && n.in.size() >= 5) {
        const int p = producer[size_t(n.in[1])];
        if (p < 0) continue;
        const Node& d = g_.node(p);
        if (d.op == OpKind::BnReluConv2dBwdData && d.in.size() >= 7 && d.in[2] == n.in[0] && d.in[5] == n.in[3] &&
            d.in[6] == n.in[4] && d.in[3] == n.in[2] &&
            (bf16_ ? bf16_conv_can_run(g_, d)
                   : cuda::bn_relu_conv_bwd_can_run(d.conv.shape) ||
                         (opt_.allow_tf32 && cuda::bn_relu_conv_bwd_tc_can_run(d.conv.shape, cuda::ConvMath::Tf32))))
          impl_->stats_candidate[size_t(i)] = p;
      }
    }
  }

  plan_ = make_plan(g_, opt_.plan_mode, [this](const Graph&, const Node& n) { return workspace_need(n); });

  // Persistent block: the graph's persistent tensors, then the executor's device scalars.
  poffset_.assign(size_t(nt), -1);
  size_t off = 0;
  for (int t = 0; t < nt; ++t) {
    const TensorInfo& ti = g_.tensor(t);
    if (!is_persistent(ti.kind)) continue;
    poffset_[size_t(t)] = int64_t(off);
    off += align_up(std::max<size_t>(1, size_t(numel(ti.shape)) * dtype_size(ti.dtype)));
  }
  tensors_bytes_ = off;
  const size_t step_off = off;
  off += align_up(sizeof(cuda::OptimStepDevice));
  const size_t scalars_off = off;
  off += align_up(3 * sizeof(double));
  for (int i = 0; i < nn; ++i) {
    const int p = impl_->stats_candidate[size_t(i)];
    if (p < 0 || impl_->sums_off[size_t(p)] >= 0) continue;
    impl_->sums_off[size_t(p)] = int64_t(off);
    const Node& pn = g_.node(p);  // sums over the forward's output or the backward-data's input channels
    off += align_up(2 * size_t(is_conv_forward(pn.op) ? pn.conv.shape.cout : pn.conv.shape.cin) * sizeof(double));
  }
  persistent_bytes_ = off;
  arena_bytes_ = std::max<size_t>(kAlign, plan_.arena_bytes);
  workspace_bytes_ = std::max<size_t>(kAlign, plan_.workspace_bytes);

  void* p = nullptr;
  RPP_CUDA_CHECK(cudaMalloc(&p, arena_bytes_));
  arena_ = static_cast<char*>(p);
  RPP_CUDA_CHECK(cudaMalloc(&p, persistent_bytes_));
  persistent_ = static_cast<char*>(p);
  RPP_CUDA_CHECK(cudaMalloc(&p, workspace_bytes_));
  workspace_ = static_cast<char*>(p);
  d_step_ = persistent_ + step_off;
  d_sumsq_ = reinterpret_cast<double*>(persistent_ + scalars_off);
  d_norm_ = d_sumsq_ + 1;
  d_factor_ = d_sumsq_ + 2;

  dptr_.assign(size_t(nt), nullptr);
  for (int t = 0; t < nt; ++t) {
    if (poffset_[size_t(t)] >= 0)
      dptr_[size_t(t)] = persistent_ + poffset_[size_t(t)];
    else if (plan_.offset[size_t(t)] >= 0)
      dptr_[size_t(t)] = arena_ + plan_.offset[size_t(t)];
  }

  // Pinned host block: parameter staging, input staging, the step ring, the read-back scalars.
  size_t hoff = 0;
  const size_t param_off = hoff;
  hoff += align_up(std::max<size_t>(1, tensors_bytes_));
  std::vector<int64_t> input_off(size_t(nt), -1);
  for (int t = 0; t < nt; ++t) {
    const TensorInfo& ti = g_.tensor(t);
    if (ti.kind != TensorKind::Input || !dptr_[size_t(t)]) continue;
    if (ti.dtype != DType::F32) fail("CUDA executor: input ", ti.name, " is not F32");
    input_off[size_t(t)] = int64_t(hoff);
    hoff += align_up(size_t(numel(ti.shape)) * sizeof(float));
  }
  const size_t ring_off = hoff;
  hoff += kStepRing * align_up(sizeof(cuda::OptimStepDevice));
  const size_t readback_off = hoff;
  hoff += align_up(sizeof(float) + sizeof(double) * 2);
  RPP_CUDA_CHECK(cudaMallocHost(&p, hoff));
  pinned_ = static_cast<char*>(p);
  param_staging_ = pinned_ + param_off;
  step_ring_ = pinned_ + ring_off;
  h_norm_ = reinterpret_cast<double*>(pinned_ + readback_off);
  h_loss_ = reinterpret_cast<float*>(pinned_ + readback_off + sizeof(double));
  input_staging_.assign(size_t(nt), nullptr);
  input_events_.assign(size_t(nt), nullptr);
  for (int t = 0; t < nt; ++t) {
    if (input_off[size_t(t)] < 0) continue;
    input_staging_[size_t(t)] = reinterpret_cast<float*>(pinned_ + input_off[size_t(t)]);
    cudaEvent_t e = nullptr;
    RPP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    input_events_[size_t(t)] = e;
  }
  for (void*& ev : step_events_) {
    cudaEvent_t e = nullptr;
    RPP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    ev = e;
  }
  for (void** ev : {&join_in_, &join_out_, &readback_event_}) {
    cudaEvent_t e = nullptr;
    RPP_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    *ev = e;
  }

  for (const Node& n : g_.nodes()) {
    if (n.op == OpKind::Loss) loss_tensor_ = n.out[0];
    if (n.op == OpKind::ClipGradNorm) has_clip_ = true;
    if (n.op == OpKind::OptimizerUpdate) has_update_ = true;
    if ((n.op == OpKind::BatchNorm || n.op == OpKind::BatchNormStats) && n.bn.training) writes_persistent_ = true;
  }
  writes_persistent_ = writes_persistent_ || has_update_;

  // Defined contents everywhere (a node reading an unwritten tensor reads zeros, not garbage;
  // tests use poison() to make such a read visible instead).
  RPP_CUDA_CHECK(cudaMemsetAsync(arena_, 0, arena_bytes_, s));
  RPP_CUDA_CHECK(cudaMemsetAsync(persistent_, 0, persistent_bytes_, s));
  upload_params();  // synchronises
  choose_kernels();
}

// Kernel choice for the convolution nodes (fused BN-ReLU-conv and plain): the hand-written kernel
// (kernels/cuda/bn_relu_conv.cuh) or the cuDNN composition (BN-ReLU staged, cuDNN conv); and
// likewise for their backward-data and backward-filter nodes (kernels/cuda/bn_relu_conv_bwd.cuh
// against cuDNN plus the mask kernel / staged BN-ReLU). Auto times both on the node's own
// tensors, once per distinct (op, shape), before any run.
void CudaExecutor::choose_kernels() {
  const int nn = g_.num_nodes();
  impl_->handwritten.assign(size_t(nn), 0);
  impl_->kernel_reason.assign(size_t(nn), std::string());
  impl_->tensor_core.assign(size_t(nn), 0);
  impl_->stats_src.assign(size_t(nn), -1);
  for (int i = 0; i < nn; ++i) {
    const Node& n = g_.node(i);
    impl_->tensor_core[size_t(i)] =
        conv_bf16(bf16_, n) ? bf16_conv_can_run(g_, n) : opt_.allow_tf32 && tensor_core_can_run(g_, n);
  }
  std::map<std::pair<int, ConvKey>, std::pair<bool, std::string>> decided;
  for (int i = 0; i < nn; ++i) {
    const Node& n = g_.node(i);
    if (!has_handwritten_kernel(n.op)) continue;
    // The branch sums have only the tensor-core kernel (TF32 allowed); bf16 operands only the
    // BF16 tensor-core kernels.
    const bool can = impl_->tensor_core[size_t(i)] ||
                     (!bf16_ && !is_branch_sum(n.op) &&
                      (is_conv_forward(n.op) ? cuda::bn_relu_conv_can_run(n.conv.shape)
                                             : cuda::bn_relu_conv_bwd_can_run(n.conv.shape)));
    std::pair<bool, std::string> choice;
    switch (opt_.kernels) {
      case KernelChoice::Default:  // resolved in init()
      case KernelChoice::Cudnn: choice = {false, "forced (--kernels cudnn)"}; break;
      case KernelChoice::Handwritten:
        if (bf16_default_) {
          choice = can ? std::make_pair(true, std::string("the default with bf16 activations"))
                       : std::make_pair(false, std::string("the BF16 tensor-core kernel cannot run this shape"));
          break;
        }
        if (!can && is_branch_sum(n.op) && !opt_.allow_tf32 && !bf16_) {
          // Its only hand-written kernel uses tensor cores; in strict fp32 the branches run on cuDNN.
          choice = {false, "the fused ASPP kernel needs tensor cores (--allow-tf32 or bf16); cuDNN path"};
          break;
        }
        if (!can) fail("CUDA executor: --kernels handwritten, but node ", n.name, " (", op_name(n.op),
                       ") has a shape the hand-written kernel cannot run");
        choice = {true, "forced (--kernels handwritten)"};
        break;
      case KernelChoice::Auto: {
        if (!can) {
          choice = {false, "auto: the hand-written kernel cannot run this shape"};
          break;
        }
        // The BN node whose reductions this node's hand-written kernel would do in its epilogue
        // (the tensor-core forward, any hand-written backward-data): the cuDNN path leaves them
        // to that BN, so their time counts against it.
        int bn_consumer = -1;
        const bool gives_sums = n.op == OpKind::BnReluConv2dBwdData || impl_->tensor_core[size_t(i)];
        for (int j = 0; j < nn && gives_sums; ++j)
          if (impl_->stats_candidate[size_t(j)] == i) bn_consumer = j;
        const std::pair<int, ConvKey> key{int(n.op) + (bn_consumer >= 0 ? 256 : 0), conv_key(n.conv.shape)};
        auto it = is_branch_sum(n.op) ? decided.end() : decided.find(key);  // branches not in the key
        if (it != decided.end()) {
          choice = it->second;
          break;
        }
        impl_->handwritten[size_t(i)] = 0;
        const double t_conv = time_node(i);
        impl_->handwritten[size_t(i)] = 1;
        const double t_hand = time_node(i);
        const double t_bn = bn_consumer >= 0 ? time_saved_bn_pass(bn_consumer, i) : 0.0;
        const double t_cudnn = t_conv + t_bn;
        std::ostringstream why;
        why << "auto: hand-written " << std::fixed << std::setprecision(1) << t_hand * 1e3 << " us, cuDNN path "
            << t_cudnn * 1e3 << " us";
        if (bn_consumer >= 0)
          why << " (" << t_conv * 1e3 << " us + " << t_bn * 1e3 << " us of BN reductions in "
              << g_.node(bn_consumer).name << " that the hand-written epilogue does)";
        // A 10% margin, so that timing noise does not flip the choice between two processes (the
        // paths round differently; a flip would break exact --resume). Auto is still not
        // reproducible across machines: --kernels cudnn|handwritten is.
        choice = {t_hand < 0.9 * t_cudnn, why.str()};
        decided[key] = choice;
        break;
      }
    }
    impl_->handwritten[size_t(i)] = choice.first ? 1 : 0;
    impl_->kernel_reason[size_t(i)] = choice.second;
  }
  // A BN whose input a hand-written tensor-core forward produced takes that kernel's sums; a BN
  // backward whose dy a hand-written backward-data produced takes that kernel's sums.
  for (int i = 0; i < nn; ++i) {
    const int p = impl_->stats_candidate[size_t(i)];
    if (p >= 0 && impl_->handwritten[size_t(p)] &&
        (g_.node(p).op == OpKind::BnReluConv2dBwdData || impl_->tensor_core[size_t(p)]))
      impl_->stats_src[size_t(i)] = p;
  }
}

// Median milliseconds of one node launched alone (3 warm-up launches, then 7 timed), with the
// node's current kernel choice. Only before the first run: it writes the node's outputs and the
// workspace, which hold nothing yet.
double CudaExecutor::time_node(int index) {
  return time_launch([&] { launch(index); });
}

// The per-channel reductions a BN node (training BatchNormStats or BatchNormBwd) would do itself
// if its producer did not give them, minus what it does with the producer's epilogue sums:
// the time the hand-written producer saves it, in milliseconds. Timed on the node's own tensors;
// the running statistics are left alone (null running pointers), and the outputs written are
// activations and gradients that the first run overwrites.
double CudaExecutor::time_saved_bn_pass(int bn_index, int producer) {
  const Node& n = g_.node(bn_index);
  cudaStream_t s = as_stream(stream_);
  auto in = [&](size_t i) { return fptr(n.in[i]); };
  auto out = [&](size_t i) { return fptr(n.out[i]); };
  const int c = int(g_.tensor(n.in[0]).shape.back());
  const int64_t cnt = numel(g_.tensor(n.in[0]).shape) / c;
  const auto* sums = reinterpret_cast<const double*>(persistent_ + impl_->sums_off[size_t(producer)]);
  const bool x_bf16 = g_.tensor(n.in[0]).dtype == DType::BF16;  // a bf16 graph's saved activation
  const auto* xh = static_cast<const cuda::bf16*>(ptr(n.in[0]));
  if (n.op == OpKind::BatchNormStats) {
    const double own = time_launch([&] {
      if (x_bf16)
        cuda::batchnorm_stats_train(cnt, c, xh, out(0), out(1), nullptr, nullptr, n.bn.momentum, n.bn.eps,
                                    workspace_, s);
      else
        cuda::batchnorm_stats_train(cnt, c, in(0), out(0), out(1), nullptr, nullptr, n.bn.momentum, n.bn.eps,
                                    workspace_, s);
    });
    const double from = time_launch([&] {
      cuda::batchnorm_stats_from_sums(cnt, c, sums, sums + c, out(0), out(1), nullptr, nullptr, n.bn.momentum,
                                      n.bn.eps, s);
    });
    return std::max(0.0, own - from);
  }
  const double own = time_launch([&] {
    if (x_bf16)
      cuda::batchnorm_backward(cnt, c, xh, in(1), in(2), in(3), in(4), out(0), out(1), out(2), workspace_, s);
    else
      cuda::batchnorm_backward(cnt, c, in(0), in(1), in(2), in(3), in(4), out(0), out(1), out(2), workspace_, s);
  });
  const double from = time_launch([&] {
    if (x_bf16)
      cuda::batchnorm_backward_from_sums(cnt, c, xh, in(1), in(2), in(3), in(4), sums, sums + c, out(0), out(1),
                                         out(2), s);
    else
      cuda::batchnorm_backward_from_sums(cnt, c, in(0), in(1), in(2), in(3), in(4), sums, sums + c, out(0), out(1),
                                         out(2), s);
  });
  return std::max(0.0, own - from);
}

// Median of 7 timed launches after 3 untimed ones, in milliseconds (CUDA events, synchronised).
double CudaExecutor::time_launch(const std::function<void()>& fn) {
  cudaStream_t s = as_stream(stream_);
  cudaEvent_t a = nullptr, b = nullptr;
  RPP_CUDA_CHECK(cudaEventCreate(&a));
  RPP_CUDA_CHECK(cudaEventCreate(&b));
  std::vector<float> ms;
  try {
    for (int r = 0; r < 10; ++r) {
      RPP_CUDA_CHECK(cudaEventRecord(a, s));
      fn();
      RPP_CUDA_CHECK(cudaEventRecord(b, s));
      RPP_CUDA_CHECK(cudaEventSynchronize(b));
      float t = 0;
      RPP_CUDA_CHECK(cudaEventElapsedTime(&t, a, b));
      if (r >= 3) ms.push_back(t);
    }
  } catch (...) {
    (void)cudaEventDestroy(a);
    (void)cudaEventDestroy(b);
    throw;
  }
  (void)cudaEventDestroy(a);
  (void)cudaEventDestroy(b);
  std::sort(ms.begin(), ms.end());
  return double(ms[ms.size() / 2]);
}

std::string CudaExecutor::describe_kernels() const {
  std::ostringstream os;
  for (int i = 0; i < g_.num_nodes(); ++i) {
    const Node& n = g_.node(i);
    if (n.op == OpKind::BatchNormStats || n.op == OpKind::BatchNormBwd) {
      if (impl_->stats_src[size_t(i)] >= 0)
        os << "  " << n.name << " (" << op_name(n.op) << "): from the epilogue sums of "
           << g_.node(impl_->stats_src[size_t(i)]).name << "\n";
      continue;
    }
    if (!has_handwritten_kernel(n.op)) continue;
    os << "  " << n.name << " (" << op_name(n.op) << "): "
       << (!impl_->handwritten[size_t(i)] ? (bf16_ ? "cuDNN path (bf16 operands staged in fp32)" : "cuDNN path")
           : conv_bf16(bf16_, n)           ? "hand-written (BF16 tensor cores)"
           : impl_->tensor_core[size_t(i)] ? "hand-written (TF32 tensor cores)"
                                           : "hand-written")
       << ", " << impl_->kernel_reason[size_t(i)];
    const bool epilogue = impl_->handwritten[size_t(i)] && impl_->tensor_core[size_t(i)];
    if (n.conv.max_pool) os << (epilogue ? "; 2x2 max pool in the epilogue" : "; 2x2 max pool after it");
    if (n.conv.multiply) os << (epilogue ? "; product in the epilogue" : "; product after it");
    os << "\n";
  }
  return os.str();
}

// Frees everything; safe on a partly built executor and never throws.
void CudaExecutor::release() noexcept {
  int cur = -1;
  const bool switched = cudaGetDevice(&cur) == cudaSuccess && cur != device_ && cudaSetDevice(device_) == cudaSuccess;
  if (stream_) (void)cudaStreamSynchronize(as_stream(stream_));
  if (graph_exec_) (void)cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph_exec_));
  if (graph_) (void)cudaGraphDestroy(static_cast<cudaGraph_t>(graph_));
  graph_exec_ = graph_ = nullptr;
  if (impl_) {
    impl_->convs.clear();
    if (impl_->handle) (void)cudnnDestroy(impl_->handle);
    impl_->handle = nullptr;
  }
  for (void*& e : input_events_) {
    if (e) (void)cudaEventDestroy(as_event(e));
    e = nullptr;
  }
  for (void*& e : step_events_) {
    if (e) (void)cudaEventDestroy(as_event(e));
    e = nullptr;
  }
  for (void** e : {&join_in_, &join_out_, &readback_event_}) {
    if (*e) (void)cudaEventDestroy(as_event(*e));
    *e = nullptr;
  }
  if (pinned_) (void)cudaFreeHost(pinned_);
  if (workspace_) (void)cudaFree(workspace_);
  if (persistent_) (void)cudaFree(persistent_);
  if (arena_) (void)cudaFree(arena_);
  pinned_ = workspace_ = persistent_ = arena_ = nullptr;
  if (stream_) (void)cudaStreamDestroy(as_stream(stream_));
  stream_ = nullptr;
  if (switched) (void)cudaSetDevice(cur);
}

std::string CudaExecutor::describe() const {
  std::string d;
  try {
    d = cuda::device_description(device_);
  } catch (const Error& e) {
    d = e.what();
  }
  return "cuda:" + std::to_string(device_) + " (" + d + ")" + (use_graphs_ ? ", CUDA graph" : ", eager") +
         (bf16_ ? ", bf16 activations" : opt_.allow_tf32 ? ", TF32 convolutions" : ", fp32 convolutions") +
         (opt_.deterministic ? ", deterministic" : "");
}

// ---- weight layouts ----

// Conv weights (parameters), the weight gradients Conv2dBwdFilter writes, their sums and the
// optimiser state of those weights live in OHWI on the device. Any other op touching one of
// them would read the wrong layout, so the graph is checked here, once.
std::vector<char> cuda_ohwi_tensors(const Graph& g) {
  const int nt = g.num_tensors();
  std::vector<char> ohwi(size_t(nt), 0);
  auto name = [&](int t) { return g.tensor(t).name; };
  for (const Node& n : g.nodes()) {
    std::vector<int> ws;
    if (n.op == OpKind::Conv2d || n.op == OpKind::Conv2dBwdData || n.op == OpKind::BnReluConv2dBwdData)
      ws.push_back(n.in.size() > 1 ? n.in[1] : -1);
    else if (n.op == OpKind::BnReluConv2d)
      ws.push_back(n.in.size() > 5 ? n.in[5] : -1);
    else if (n.op == OpKind::ConvBnSum)
      for (size_t b = 0; b < n.branches.shapes.size(); ++b) ws.push_back(1 + 6 * b < n.in.size() ? n.in[1 + 6 * b] : -1);
    else if (n.op == OpKind::ConvSumBwdData)
      for (size_t b = 0; b < n.branches.shapes.size(); ++b) ws.push_back(2 * b + 1 < n.in.size() ? n.in[2 * b + 1] : -1);
    else
      continue;
    for (int w : ws) {
      if (w < 0 || g.tensor(w).kind != TensorKind::Param)
        fail("CUDA executor: convolution ", n.name, " takes its weight from ",
             w < 0 ? std::string("nowhere") : "tensor " + name(w),
             "; this backend needs convolution weights to be parameters (kept in OHWI on the device)");
      ohwi[size_t(w)] = 1;
    }
  }
  for (const Node& n : g.nodes()) {
    auto marked = [&](int t) { return t >= 0 && ohwi[size_t(t)]; };
    auto refuse = [&](int t) {
      fail("CUDA executor: ", op_name(n.op), " node ", n.name, " uses ", name(t),
           ", which the device keeps in OHWI (a convolution weight, its gradient or its optimiser state); "
           "only convolutions, gradient sums, clipping and optimiser updates may");
    };
    switch (n.op) {
      case OpKind::Conv2d:
        if (marked(n.in[0])) refuse(n.in[0]);
        if (n.in.size() > 2 && marked(n.in[2])) refuse(n.in[2]);
        break;
      case OpKind::Conv2dBwdData:
        if (marked(n.in[0])) refuse(n.in[0]);
        break;
      case OpKind::BnReluConv2d:  // x, gamma, beta, mean, invstd, w, b: only w is OHWI
        for (size_t i = 0; i < n.in.size(); ++i)
          if (i != 5 && marked(n.in[i])) refuse(n.in[i]);
        break;
      case OpKind::BnReluConv2dBwdData:  // dz, w, x, gamma, beta, mean, invstd: only w is OHWI
        for (size_t i = 0; i < n.in.size(); ++i)
          if (i != 1 && marked(n.in[i])) refuse(n.in[i]);
        break;
      case OpKind::ConvBnSum:  // x, then per branch w, b, gamma, beta, mean, var: only the w are OHWI
        for (size_t i = 0; i < n.in.size(); ++i)
          if (i % 6 != 1 && marked(n.in[i])) refuse(n.in[i]);
        break;
      case OpKind::ConvSumBwdData:  // per branch dy, w: only the w are OHWI
        for (size_t i = 0; i < n.in.size(); i += 2)
          if (marked(n.in[i])) refuse(n.in[i]);
        break;
      case OpKind::BnReluConv2dBwdFilter:
      case OpKind::Conv2dBwdFilter:
        for (int t : n.in)
          if (marked(t)) refuse(t);
        if (!n.out.empty() && n.out[0] >= 0) {
          if (g.tensor(n.out[0]).shape.size() != 4) fail("CUDA executor: weight gradient of ", n.name, " is not 4-D");
          ohwi[size_t(n.out[0])] = 1;
        }
        break;
      case OpKind::Add: {
        const bool a = marked(n.in[0]), b = marked(n.in[1]);
        if (a != b) refuse(a ? n.in[0] : n.in[1]);
        if (a) ohwi[size_t(n.out[0])] = 1;
        break;
      }
      case OpKind::ClipGradNorm:
        break;  // layout-free: sums of squares and a uniform scale
      case OpKind::OptimizerUpdate: {
        const bool p = marked(n.in[0]), gr = marked(n.in[1]);
        if (p != gr)
          fail("CUDA executor: the update of ", name(n.in[0]), " pairs a ", p ? "OHWI" : "plain", " parameter with a ",
               gr ? "OHWI" : "plain", " gradient ", name(n.in[1]));
        for (size_t i = 2; i < n.in.size(); ++i)
          if (n.in[i] >= 0) ohwi[size_t(n.in[i])] = p ? 1 : 0;
        break;
      }
      default:
        for (int t : n.in)
          if (marked(t)) refuse(t);
        for (int t : n.out)
          if (marked(t)) refuse(t);
        break;
    }
  }
  return ohwi;
}

// ---- planning ----

// The larger of the hand-written backward-filter kernels' workspaces for this node (0 with
// --kernels cudnn): both may be chosen, the tensor-core one only with TF32 allowed.
size_t CudaExecutor::handwritten_filter_workspace(const Node& n) const {
  if (opt_.kernels == KernelChoice::Cudnn) return 0;
  size_t need = 0;
  if (cuda::bn_relu_conv_bwd_can_run(n.conv.shape))
    need = cuda::bn_relu_conv_backward_filter_workspace_bytes(n.conv.shape);
  if (opt_.allow_tf32) need = std::max(need, cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(n.conv.shape));
  return need;
}

// Whether a convolution node may take the cuDNN path, so that its cuDNN convolutions are prepared
// and that path's workspace counts: always with fp32 activations; with bf16 ones unless the
// hand-written kernels are forced (or the default) and run its shape.
bool CudaExecutor::cudnn_possible(const Node& n) const {
  if (!conv_bf16(bf16_, n)) return true;
  return opt_.kernels != KernelChoice::Handwritten || !bf16_conv_can_run(g_, n);
}

// A convolution's own output where it is no tensor, in y's storage, which the paths other than
// the tensor-core kernel write at the start of the workspace: a pooled convolution's
// (fuse_conv_pool), an inference graph's multiplied one (fuse_conv_mul); 0 for other nodes.
size_t CudaExecutor::own_conv_out_bytes(const Node& n) const {
  if (!n.conv.max_pool && !(n.conv.multiply && n.out.size() == 1)) return 0;
  const cpu::Conv2dShape& s = n.conv.shape;
  const size_t count = size_t(s.n) * size_t(s.ho()) * size_t(s.wo()) * size_t(s.cout);
  return align_up(count * dtype_size(g_.tensor(n.out[0]).dtype));
}

// The hand-written kernels' workspace for a convolution node (0 with --kernels cudnn): the
// tensor-core forward's statistics partials (or a convolution's own output for the fp32 FMA
// kernel, own_conv_out_bytes), a backward-data's BN-sum partials, a backward-filter's split-K
// partials.
size_t CudaExecutor::handwritten_workspace(const Node& n) const {
  if (opt_.kernels == KernelChoice::Cudnn) return 0;
  const cpu::Conv2dShape& cs = n.conv.shape;
  if (conv_bf16(bf16_, n)) {  // the BF16 tensor-core kernels only
    if (!bf16_conv_can_run(g_, n)) return 0;
    switch (n.op) {
      case OpKind::Conv2d:
      case OpKind::BnReluConv2d:
        return (view_in_place(n, true) ? 0 : view_bytes(n)) +
               (training_ ? cuda::bn_relu_conv_tc_workspace_bytes(cs) : 0);
      case OpKind::BnReluConv2dBwdData: return cuda::bn_relu_conv_tc_backward_data_workspace_bytes(cs);
      case OpKind::Conv2dBwdFilter:
      case OpKind::BnReluConv2dBwdFilter: return cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(cs);
      default: return 0;
    }
  }
  switch (n.op) {
    case OpKind::Conv2d:
    case OpKind::BnReluConv2d:  // the FMA kernel may run where the tensor-core kernel cannot
      return view_bytes(n) +
             std::max(opt_.allow_tf32 ? cuda::bn_relu_conv_tc_workspace_bytes(cs) : size_t(0), own_conv_out_bytes(n));
    case OpKind::BnReluConv2dBwdData: {
      size_t need = 0;
      if (cuda::bn_relu_conv_bwd_can_run(cs)) need = cuda::bn_relu_conv_backward_data_sums_workspace_bytes(cs);
      if (opt_.allow_tf32) need = std::max(need, cuda::bn_relu_conv_tc_backward_data_workspace_bytes(cs));
      return need;
    }
    case OpKind::Conv2dBwdFilter:
    case OpKind::BnReluConv2dBwdFilter: return handwritten_filter_workspace(n);
    default: return 0;
  }
}

// The cuDNN path's workspace for a convolution node, in the order launch() lays it out: a pooled
// convolution's full-resolution output, the bf16 operands staged in fp32 (bf16 graphs only), the
// BN-ReLU input staged in fp32 (fused nodes), a branch's output or gradient (branch sums), then
// cuDNN's own workspace.
size_t CudaExecutor::cudnn_path_workspace(const Node& n) const {
  if (!cudnn_possible(n)) return 0;
  auto f32 = [&](int t) { return align_up(size_t(numel(g_.tensor(t).shape)) * sizeof(float)); };
  auto staged = [&](int t) { return g_.tensor(t).dtype == DType::BF16 ? f32(t) : size_t(0); };
  if (is_branch_sum(n.op)) {
    size_t conv_ws = 0;
    for (const cpu::Conv2dShape& b : n.branches.shapes) {
      const cuda::CudnnConv& c = impl_->conv_for(b);
      conv_ws = std::max(conv_ws, n.op == OpKind::ConvBnSum ? c.forward_workspace_bytes()
                                                            : c.backward_data_workspace_bytes());
    }
    const size_t io = n.op == OpKind::ConvBnSum ? staged(n.in[0]) + staged(n.out[0]) : 0;
    return io + f32(n.out[0]) + conv_ws;
  }
  const cuda::CudnnConv& c = impl_->conv_for(n.conv.shape);
  // The convolution's output: y, or its own output (own_conv_out_bytes); in fp32 first when
  // stored in bf16.
  const cpu::Conv2dShape& cs = n.conv.shape;
  const size_t conv_out = own_conv_out_bytes(n) + (g_.tensor(n.out[0]).dtype == DType::BF16
                                                      ? align_up(size_t(cs.n) * cs.ho() * cs.wo() * cs.cout * 4)
                                                      : size_t(0));
  switch (n.op) {
    case OpKind::Conv2d:
      return view_bytes(n) + staged(n.in[0]) + conv_out + c.forward_workspace_bytes();
    case OpKind::BnReluConv2d:
      return f32(n.in[0]) + conv_out + c.forward_workspace_bytes();  // a view: staged in place
    case OpKind::Conv2dBwdData:
    case OpKind::BnReluConv2dBwdData: return c.backward_data_workspace_bytes();  // the mask reads x as stored
    case OpKind::Conv2dBwdFilter: return staged(n.in[0]) + c.backward_filter_workspace_bytes();
    case OpKind::BnReluConv2dBwdFilter: return f32(n.in[0]) + c.backward_filter_workspace_bytes();
    default: return 0;
  }
}

const Node* CudaExecutor::view_input(const Node& n) const {
  if (!is_conv_forward(n.op) || n.in.empty() || n.in[0] < 0) return nullptr;
  const int v = impl_->view_node[size_t(n.in[0])];
  return v >= 0 ? &g_.node(v) : nullptr;
}

// The tensor-core kernel reads concat(upsample2(a), b) in place in its plain mode (no residual,
// pool or multiplier) with x and y in one storage (bn_relu_conv_tc_forward_upsample_concat).
bool CudaExecutor::view_in_place(const Node& n, bool tensor_core) const {
  const DType x = g_.tensor(n.in[0]).dtype;
  return tensor_core && view_input(n) != nullptr && residual_input(n) < 0 && !n.conv.max_pool && !n.conv.multiply &&
         x == g_.tensor(n.out[0]).dtype && (!bf16_ || x == DType::BF16);
}

size_t CudaExecutor::view_bytes(const Node& n) const {
  if (!view_input(n)) return 0;
  const TensorInfo& t = g_.tensor(n.in[0]);
  return align_up(size_t(numel(t.shape)) * dtype_size(t.dtype));
}

size_t CudaExecutor::workspace_need(const Node& n) const {
  auto sh = [&](int t) -> const Shape& { return g_.tensor(t).shape; };
  if (is_conv_op(n.op) || is_branch_sum(n.op)) return std::max(cudnn_path_workspace(n), handwritten_workspace(n));
  switch (n.op) {
    case OpKind::BatchNormStats: {
      if (!n.bn.training) return 0;
      const Shape& xs = sh(n.in[0]);
      const int c = int(xs.back());
      return cuda::batchnorm_workspace_bytes(numel(xs) / c, c);
    }
    case OpKind::BatchNorm:
    case OpKind::BatchNormBwd: {
      if (n.op == OpKind::BatchNorm && !n.bn.training) return 0;
      const Shape& xs = sh(n.in[0]);
      const int c = int(xs.back());
      return cuda::batchnorm_workspace_bytes(numel(xs) / c, c);
    }
    case OpKind::ScaleChannelsBwd: {
      const Shape& xs = sh(n.in[0]);
      return cuda::scale_channels_workspace_bytes(int(xs[0]), xs[1] * xs[2], int(xs[3]));
    }
    case OpKind::GlobalAvgPool: {
      const Shape& xs = sh(n.in[0]);
      return cuda::global_avg_pool_workspace_bytes(int(xs[0]), xs[1] * xs[2], int(xs[3]));
    }
    case OpKind::Loss:
    case OpKind::LossBwd: return cuda::loss_workspace_bytes(numel(sh(n.in[0])));
    case OpKind::SeExciteBwd: {
      const Shape& w1 = sh(n.in[1]);  // (hidden, c)
      return cuda::se_excite_backward_workspace_bytes(int(sh(n.in[0])[0]), int(w1[1]), int(w1[0]));
    }
    case OpKind::ClipGradNorm: {
      size_t need = 0;
      for (int t : n.in) need = std::max(need, cuda::sum_squares_workspace_bytes(numel(sh(t))));
      return need;
    }
    default: return 0;
  }
}

void* CudaExecutor::ptr(int t) const {
  if (t < 0) return nullptr;
  void* p = dptr_.at(size_t(t));
  if (!p) fail("CUDA executor: tensor ", g_.tensor(t).name, " has no storage in this plan");
  return p;
}

// ---- inputs, outputs, parameters ----

float* CudaExecutor::input_buffer(int t) {
  if (t < 0 || t >= g_.num_tensors() || !input_staging_[size_t(t)])
    fail("CUDA executor: input_buffer: tensor ", t < 0 || t >= g_.num_tensors() ? std::to_string(t) : g_.tensor(t).name,
         " is not an input of this graph");
  DeviceGuard guard(device_);
  // The previous upload from this staging must have left before the caller writes it again.
  RPP_CUDA_CHECK(cudaEventSynchronize(as_event(input_events_[size_t(t)])));
  return input_staging_[size_t(t)];
}

void CudaExecutor::set_input(int t, const float* host) {
  float* staging = input_buffer(t);  // checks t, waits for the staging to be free
  const size_t bytes = size_t(numel(g_.tensor(t).shape)) * sizeof(float);
  if (host != staging) std::memcpy(staging, host, bytes);
  DeviceGuard guard(device_);
  RPP_CUDA_CHECK(cudaMemcpyAsync(ptr(t), staging, bytes, cudaMemcpyHostToDevice, as_stream(stream_)));
  RPP_CUDA_CHECK(cudaEventRecord(as_event(input_events_[size_t(t)]), as_stream(stream_)));
}

void CudaExecutor::read_output(int t, float* host) {
  if (t < 0 || t >= g_.num_tensors()) fail("CUDA executor: read_output: no tensor ", t);
  const TensorInfo& ti = g_.tensor(t);
  if (ti.dtype != DType::F32) fail("CUDA executor: read_output: ", ti.name, " is not F32");
  const size_t n = size_t(numel(ti.shape));
  DeviceGuard guard(device_);
  if (!ohwi_[size_t(t)]) {
    RPP_CUDA_CHECK(cudaMemcpyAsync(host, ptr(t), n * sizeof(float), cudaMemcpyDeviceToHost, as_stream(stream_)));
    RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
    return;
  }
  std::vector<float> dev(n);  // OHWI on the device, HWIO for the caller
  RPP_CUDA_CHECK(cudaMemcpyAsync(dev.data(), ptr(t), n * sizeof(float), cudaMemcpyDeviceToHost, as_stream(stream_)));
  RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
  const Shape& s = ti.shape;  // (KH, KW, Cin, Cout)
  cuda::repack_ohwi_to_hwio_host(int(s[0]), int(s[1]), int(s[2]), int(s[3]), dev.data(), host);
}

void CudaExecutor::upload_params() {
  DeviceGuard guard(device_);
  wait_readback();
  RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));  // the staging is free
  for (int t = 0; t < g_.num_tensors(); ++t) {
    if (poffset_[size_t(t)] < 0) continue;
    const TensorInfo& ti = g_.tensor(t);
    const Tensor& src = store_.get(ti.name);
    if (src.nbytes() != size_t(numel(ti.shape)) * dtype_size(ti.dtype))
      fail("CUDA executor: store tensor ", ti.name, " has ", src.nbytes(), " bytes, the graph expects ",
           size_t(numel(ti.shape)) * dtype_size(ti.dtype));
    char* dst = param_staging_ + poffset_[size_t(t)];
    if (ohwi_[size_t(t)]) {
      const Shape& s = ti.shape;  // HWIO in the store
      cuda::repack_hwio_to_ohwi_host(int(s[0]), int(s[1]), int(s[2]), int(s[3]), src.data<float>(),
                                     reinterpret_cast<float*>(dst));
    } else {
      std::memcpy(dst, src.raw(), src.nbytes());
    }
  }
  if (tensors_bytes_ > 0)
    RPP_CUDA_CHECK(cudaMemcpyAsync(persistent_, param_staging_, tensors_bytes_, cudaMemcpyHostToDevice,
                                   as_stream(stream_)));
  RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
  params_dirty_ = false;
}

void CudaExecutor::download_params() {
  if (!params_dirty_) return;  // the store already holds what the device holds
  DeviceGuard guard(device_);
  wait_readback();
  if (tensors_bytes_ > 0)
    RPP_CUDA_CHECK(cudaMemcpyAsync(param_staging_, persistent_, tensors_bytes_, cudaMemcpyDeviceToHost,
                                   as_stream(stream_)));
  RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
  for (int t = 0; t < g_.num_tensors(); ++t) {
    if (poffset_[size_t(t)] < 0) continue;
    const TensorInfo& ti = g_.tensor(t);
    Tensor& dst = store_.get(ti.name);
    const char* src = param_staging_ + poffset_[size_t(t)];
    if (ohwi_[size_t(t)]) {
      const Shape& s = ti.shape;
      cuda::repack_ohwi_to_hwio_host(int(s[0]), int(s[1]), int(s[2]), int(s[3]),
                                     reinterpret_cast<const float*>(src), dst.data<float>());
    } else {
      std::memcpy(dst.raw(), src, dst.nbytes());
    }
  }
  params_dirty_ = false;
}

// ---- running ----

void CudaExecutor::upload_step(const cpu::OptimStep* opt) {
  if (has_update_ && !opt) fail("graph has optimiser updates but run() got no optimiser step");
  cudaStream_t s = as_stream(stream_);
  if (has_update_ || has_clip_) {
    // Without a step (a clipping node but no updates) the struct only says "do not clip".
    const cpu::OptimStep no_step{};
    const cuda::OptimStepDevice h = cuda::make_optim_step_device(opt ? *opt : no_step);
    const int slot = step_slot_;
    step_slot_ = (step_slot_ + 1) % kStepRing;
    // The copy out of this slot was queued kStepRing runs ago; in a trainer, which reads the
    // loss every step, it finished long since and this returns at once.
    RPP_CUDA_CHECK(cudaEventSynchronize(as_event(step_events_[slot])));
    auto* src = reinterpret_cast<cuda::OptimStepDevice*>(static_cast<char*>(step_ring_) +
                                                         size_t(slot) * align_up(sizeof(cuda::OptimStepDevice)));
    *src = h;
    RPP_CUDA_CHECK(cudaMemcpyAsync(d_step_, src, sizeof h, cudaMemcpyHostToDevice, s));
    RPP_CUDA_CHECK(cudaEventRecord(as_event(step_events_[slot]), s));
  }
}

void CudaExecutor::queue_readback() {
  cudaStream_t s = as_stream(stream_);
  ++runs_;
  if (loss_tensor_ >= 0)
    RPP_CUDA_CHECK(cudaMemcpyAsync(h_loss_, ptr(loss_tensor_), sizeof(float), cudaMemcpyDeviceToHost, s));
  if (has_clip_) RPP_CUDA_CHECK(cudaMemcpyAsync(h_norm_, d_norm_, sizeof(double), cudaMemcpyDeviceToHost, s));
  // wait_readback waits for this event, not for the stream: work queued after the run (the next
  // batch's upload) does not delay it.
  RPP_CUDA_CHECK(cudaEventRecord(as_event(readback_event_), s));
  readback_pending_ = true;
  if (writes_persistent_) params_dirty_ = true;
}

void CudaExecutor::run(const cpu::OptimStep* opt) {
  DeviceGuard guard(device_);
  upload_step(opt);
  if (use_graphs_ && runs_ > 0) {  // the first run is eager: a warm-up outside any capture
    if (!graph_exec_) capture_graph();
    RPP_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph_exec_), as_stream(stream_)));
  } else {
    launch_all();
  }
  queue_readback();
}

std::vector<double> CudaExecutor::profile_run(const cpu::OptimStep* opt) {
  DeviceGuard guard(device_);
  const int nn = g_.num_nodes();
  cudaStream_t s = as_stream(stream_);
  std::vector<cudaEvent_t> ev(size_t(nn) + 1, nullptr);
  auto destroy = [&] {
    for (cudaEvent_t& e : ev)
      if (e) (void)cudaEventDestroy(e);
  };
  std::vector<double> ms(size_t(nn), 0.0);
  try {
    for (cudaEvent_t& e : ev) RPP_CUDA_CHECK(cudaEventCreate(&e));
    upload_step(opt);
    RPP_CUDA_CHECK(cudaEventRecord(ev[0], s));
    for (int i = 0; i < nn; ++i) {
      try {
        launch(i);
      } catch (const Error& e) {
        fail("CUDA executor: node ", i, " (", op_name(g_.node(i).op), " ", g_.node(i).name, "): ", e.what());
      }
      RPP_CUDA_CHECK(cudaEventRecord(ev[size_t(i) + 1], s));
    }
    queue_readback();
    RPP_CUDA_CHECK(cudaEventSynchronize(ev[size_t(nn)]));
    for (int i = 0; i < nn; ++i) {
      float t = 0;
      RPP_CUDA_CHECK(cudaEventElapsedTime(&t, ev[size_t(i)], ev[size_t(i) + 1]));
      ms[size_t(i)] = double(t);
    }
  } catch (...) {
    destroy();
    throw;
  }
  destroy();
  return ms;
}

void* CudaExecutor::device_tensor(int t) const { return ptr(t); }

void CudaExecutor::wait_for(void* stream) {
  DeviceGuard guard(device_);
  RPP_CUDA_CHECK(cudaEventRecord(as_event(join_in_), as_stream(stream)));
  RPP_CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream_), as_event(join_in_), 0));
}

void CudaExecutor::signal_to(void* stream) {
  DeviceGuard guard(device_);
  RPP_CUDA_CHECK(cudaEventRecord(as_event(join_out_), as_stream(stream_)));
  RPP_CUDA_CHECK(cudaStreamWaitEvent(as_stream(stream), as_event(join_out_), 0));
}

void CudaExecutor::wait_readback() {
  if (!readback_pending_) return;
  RPP_CUDA_CHECK(cudaEventSynchronize(as_event(readback_event_)));
  last_loss_ = loss_tensor_ >= 0 ? double(*h_loss_) : std::numeric_limits<double>::quiet_NaN();
  last_norm_ = has_clip_ ? *h_norm_ : 0.0;
  readback_pending_ = false;
}

double CudaExecutor::last_loss() {
  DeviceGuard guard(device_);
  wait_readback();
  return loss_tensor_ >= 0 ? last_loss_ : std::numeric_limits<double>::quiet_NaN();
}

double CudaExecutor::last_grad_norm() {
  DeviceGuard guard(device_);
  wait_readback();
  return last_norm_;
}

void CudaExecutor::synchronize() {
  DeviceGuard guard(device_);
  RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
}

void CudaExecutor::poison() {
  DeviceGuard guard(device_);
  RPP_CUDA_CHECK(cudaMemsetAsync(arena_, 0xFF, arena_bytes_, as_stream(stream_)));  // 0xFFFFFFFF is a NaN
  RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
}

// Captures launch_all() once. The pointers it bakes in never change (one arena, one persistent
// block, one workspace, one step struct), so the graph stays valid for the executor's lifetime.
void CudaExecutor::capture_graph() {
  cudaStream_t s = as_stream(stream_);
  RPP_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  try {
    launch_all();
  } catch (...) {
    cudaGraph_t partial = nullptr;
    (void)cudaStreamEndCapture(s, &partial);
    if (partial) (void)cudaGraphDestroy(partial);
    (void)cudaGetLastError();  // leave no sticky launch error behind
    throw;
  }
  cudaGraph_t graph = nullptr;
  RPP_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  graph_ = graph;
  cudaGraphExec_t exec = nullptr;
  RPP_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  graph_exec_ = exec;
}

void CudaExecutor::launch_all() {
  for (int i = 0; i < g_.num_nodes(); ++i) {
    try {
      launch(i);
      if (debug_sync_) {
        RPP_CUDA_CHECK(cudaStreamSynchronize(as_stream(stream_)));
        RPP_CUDA_CHECK(cudaGetLastError());
      }
    } catch (const Error& e) {
      const Node& n = g_.node(i);
      fail("CUDA executor: node ", i, " (", op_name(n.op), " ", n.name, "): ", e.what());
    }
  }
}

// The non-convolution nodes that touch bf16 activations (check_storage lists which can, and in
// which dtypes); false for the others, which launch() runs (the convolutions with their storage).
bool CudaExecutor::launch_bf16(int index) {
  const Node& n = g_.node(index);
  if (conv_bf16(bf16_, n)) return false;
  auto is_bf16 = [&](int t) { return t >= 0 && g_.tensor(t).dtype == DType::BF16; };
  bool touches = false;
  for (int t : n.in) touches = touches || is_bf16(t);
  for (int t : n.out) touches = touches || is_bf16(t);
  if (!touches) return false;
  cudaStream_t s = as_stream(stream_);
  void* ws = workspace_;
  auto f = [&](size_t i) { return i < n.in.size() ? fptr(n.in[i]) : nullptr; };
  auto fo = [&](size_t i) { return fptr(n.out[i]); };
  auto hin = [&](size_t i) { return static_cast<const cuda::bf16*>(ptr(n.in[i])); };
  auto hout = [&](size_t i) { return static_cast<cuda::bf16*>(ptr(n.out[i])); };
  auto sh = [&](int t) -> const Shape& { return g_.tensor(t).shape; };
  auto count_batch = [&](size_t i) {
    if (n.in.size() > i && n.in[i] >= 0) cuda::batchnorm_count_batch(static_cast<int64_t*>(ptr(n.in[i])), s);
  };
  const int64_t cnt = numel(sh(n.in[0]));
  switch (n.op) {
    case OpKind::BatchNorm: {  // x, gamma, beta, running_mean, running_var (, nbt)   y (, mean, invstd)
      const int c = int(sh(n.in[0]).back());
      if (n.bn.training) {
        cuda::batchnorm_forward_train(cnt / c, c, hin(0), f(1), f(2), hout(0), fo(1), fo(2), f(3), f(4),
                                      n.bn.momentum, n.bn.eps, ws, s);
        count_batch(5);
      } else {
        cuda::batchnorm_forward_eval(cnt / c, c, hin(0), f(1), f(2), f(3), f(4), n.bn.eps, hout(0), s);
      }
      return true;
    }
    case OpKind::BatchNormStats: {  // x, running_mean, running_var, nbt   mean, invstd
      // Eval statistics, or the epilogue sums of the producing conv, do not read x: launch().
      if (!n.bn.training || impl_->stats_src[size_t(index)] >= 0) return false;
      const int c = int(sh(n.in[0]).back());
      const int view = impl_->view_node[size_t(n.in[0])];
      if (view >= 0) {  // concat(upsample2(a), b) in place
        const Node& v = g_.node(view);
        const Shape& xs = sh(n.in[0]);
        cuda::batchnorm_stats_train_upsample_concat(
            int(xs[0]), int(xs[1]), int(xs[2]), int(sh(v.in[0])[3]), c, static_cast<const cuda::bf16*>(ptr(v.in[0])),
            static_cast<const cuda::bf16*>(ptr(v.in[1])), fo(0), fo(1), f(1), f(2), n.bn.momentum, n.bn.eps, ws, s);
      } else {
        cuda::batchnorm_stats_train(cnt / c, c, hin(0), fo(0), fo(1), f(1), f(2), n.bn.momentum, n.bn.eps, ws, s);
      }
      count_batch(3);
      return true;
    }
    case OpKind::BatchNormBwd: {  // x, dy, gamma, save_mean, save_invstd   dx, dgamma, dbeta
      const int c = int(sh(n.in[0]).back());
      const int src = impl_->stats_src[size_t(index)];
      if (src >= 0) {  // the reductions came from the backward-data kernel's epilogue
        const auto* sums = reinterpret_cast<const double*>(persistent_ + impl_->sums_off[size_t(src)]);
        cuda::batchnorm_backward_from_sums(cnt / c, c, hin(0), f(1), f(2), f(3), f(4), sums, sums + c, fo(0), fo(1),
                                           fo(2), s);
      } else {
        cuda::batchnorm_backward(cnt / c, c, hin(0), f(1), f(2), f(3), f(4), fo(0), fo(1), fo(2), ws, s);
      }
      return true;
    }
    case OpKind::BnApplySum: {  // per branch: x, gamma, beta, mean, invstd   out: the sum
      cuda::BnSumBranch br[cuda::kBnSumMaxBranches];
      const int nb = int(n.in.size() / 5);
      if (nb < 1 || nb > cuda::kBnSumMaxBranches || n.in.size() % 5 != 0)
        fail("CUDA executor: BnApplySum node ", n.name, " has ", n.in.size(), " inputs");
      for (int b = 0; b < nb; ++b)
        br[b] = {ptr(n.in[size_t(5 * b)]), f(size_t(5 * b + 1)), f(size_t(5 * b + 2)), f(size_t(5 * b + 3)),
                 f(size_t(5 * b + 4))};
      const int c = int(sh(n.out[0]).back());
      cuda::batchnorm_apply_sum(numel(sh(n.out[0])) / c, c, br, nb, cuda::Storage::Bf16, ptr(n.out[0]), s);
      return true;
    }
    case OpKind::GlobalAvgPool: {
      const Shape& xs = sh(n.in[0]);
      cuda::global_avg_pool_forward(int(xs[0]), xs[1] * xs[2], int(xs[3]), hin(0), fo(0), ws, s);
      return true;
    }
    case OpKind::ScaleChannelsBwd: {  // x (bf16), dy   ds
      const Shape& xs = sh(n.in[0]);
      cuda::scale_channels_backward_scale(int(xs[0]), xs[1] * xs[2], int(xs[3]), hin(0), f(1), fo(0), ws, s);
      return true;
    }
    case OpKind::Relu: cuda::relu_forward(cnt, hin(0), hout(0), s); return true;
    case OpKind::Add: cuda::add(cnt, hin(0), hin(1), hout(0), s); return true;
    case OpKind::Mul:
      if (is_bf16(n.out[0]))
        cuda::mul(cnt, hin(0), hin(1), hout(0), s);
      else if (is_bf16(n.in[1]))  // a gradient times a saved activation, in fp32
        cuda::mul(cnt, f(0), hin(1), fo(0), s);
      else  // (fp32 multiplication commutes exactly)
        cuda::mul(cnt, f(1), hin(0), fo(0), s);
      return true;
    case OpKind::ScaleChannels: {
      const Shape& xs = sh(n.in[0]);
      cuda::scale_channels(int(xs[0]), xs[1] * xs[2], int(xs[3]), hin(0), f(1), hout(0), s);
      return true;
    }
    case OpKind::MaxPool2: {  // x, y bf16 (, argmax U8)
      const Shape& xs = sh(n.in[0]);
      cuda::maxpool2_forward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), hin(0), hout(0),
                             n.out.size() > 1 ? static_cast<uint8_t*>(ptr(n.out[1])) : nullptr, s);
      return true;
    }
    case OpKind::Upsample2: {
      const Shape& xs = sh(n.in[0]);
      cuda::upsample2_forward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), hin(0), hout(0), s);
      return true;
    }
    case OpKind::Concat: {
      const Shape& as = sh(n.in[0]);
      const Shape& bs = sh(n.in[1]);
      cuda::concat_forward(as[0] * as[1] * as[2], int(as[3]), int(bs[3]), hin(0), hin(1), hout(0), s);
      return true;
    }
    case OpKind::UpsampleConcat: {
      const Shape& as = sh(n.in[0]);
      cuda::upsample_concat_forward(int(as[0]), int(as[1]), int(as[2]), int(as[3]), int(sh(n.in[1])[3]), hin(0),
                                    hin(1), hout(0), s);
      return true;
    }
    default: fail("CUDA executor: node ", n.name, " (", op_name(n.op), ") has no bf16 kernel");
  }
}

void CudaExecutor::launch(int index) {
  const Node& n = g_.node(index);
  if (n.view) return;  // its readers compute it (view_upsample_concats)
  cudaStream_t s = as_stream(stream_);
  cudnnHandle_t h = impl_->handle;
  void* ws = workspace_;
  auto in = [&](size_t i) { return i < n.in.size() ? fptr(n.in[i]) : nullptr; };
  auto out = [&](size_t i) { return i < n.out.size() ? fptr(n.out[i]) : nullptr; };
  auto sh = [&](int t) -> const Shape& { return g_.tensor(t).shape; };
  auto count = [&](int t) { return numel(sh(t)); };
  const auto* step = static_cast<const cuda::OptimStepDevice*>(d_step_);
  if (bf16_ && launch_bf16(index)) return;
  // The tensor-core kernels' operand type, and each activation's storage (fp32 unless bf16_).
  const cuda::ConvMath math = bf16_ ? cuda::ConvMath::Bf16 : cuda::ConvMath::Tf32;
  auto st = [&](size_t i) { return storage_of(g_.tensor(n.in[i])); };
  auto st_out = [&](size_t i) { return storage_of(g_.tensor(n.out[i])); };
  auto vin = [&](size_t i) -> const void* { return ptr(n.in[i]); };
  // The cuDNN path (cudnn_path_workspace lays out the workspace): a bf16 operand is widened into
  // the next fp32 slot of the workspace, a bf16 output computed in fp32 there and rounded once at
  // the end; fp32 tensors are used in place. `wsp` is the next free byte.
  char* wsp = static_cast<char*>(ws);
  auto is_bf16 = [&](int t) { return g_.tensor(t).dtype == DType::BF16; };
  auto half = [&](int t) { return static_cast<cuda::bf16*>(ptr(t)); };
  auto take_f32 = [&](int t) {
    float* d = reinterpret_cast<float*>(wsp);
    wsp += align_up(size_t(count(t)) * sizeof(float));
    return d;
  };
  auto widened = [&](int t) -> const float* {
    if (!is_bf16(t)) return fptr(t);
    float* d = take_f32(t);
    cuda::convert(count(t), half(t), d, s);
    return d;
  };
  auto f32_result = [&](int t) { return is_bf16(t) ? take_f32(t) : fptr(t); };
  auto store_result = [&](int t, const float* v) {
    if (is_bf16(t)) cuda::convert(count(t), v, half(t), s);
  };
  // A forward convolution's own output, where it is not y (fuse_conv_pool, fuse_conv_mul) and the
  // tensor-core kernel's epilogue does not finish the node: in y's storage, out[1] for a
  // multiplied one in training, else first in the workspace; finish_output() then pools it into
  // y (and the argmax) or multiplies it into y, as the pool or Mul node did.
  const bool tensor_core_kernel = impl_->handwritten[size_t(index)] && impl_->tensor_core[size_t(index)];
  // x as an upsample-concat view (view_upsample_concats): the tensor-core kernel reads it in place,
  // and so does the BN-ReLU staging of a fused node's cuDNN path; the other paths get it made at
  // the start of the workspace, x's tensor pointing there for this launch only.
  const Node* view = view_input(n);
  const bool view_direct = view != nullptr && view_in_place(n, tensor_core_kernel);
  const bool view_staged =
      view != nullptr && !view_direct && n.op == OpKind::BnReluConv2d && !impl_->handwritten[size_t(index)];
  struct Rebind {
    std::vector<void*>* ptrs = nullptr;
    size_t at = 0;
    void* old = nullptr;
    ~Rebind() {
      if (ptrs) (*ptrs)[at] = old;
    }
  } rebind;
  if (view != nullptr && !view_direct && !view_staged) {
    void* x = wsp;
    wsp += view_bytes(n);
    ws = wsp;
    const Shape& as = sh(view->in[0]);
    const int cb = int(sh(view->in[1])[3]);
    if (is_bf16(n.in[0]))
      cuda::upsample_concat_forward(int(as[0]), int(as[1]), int(as[2]), int(as[3]), cb, half(view->in[0]),
                                    half(view->in[1]), static_cast<cuda::bf16*>(x), s);
    else
      cuda::upsample_concat_forward(int(as[0]), int(as[1]), int(as[2]), int(as[3]), cb, fptr(view->in[0]),
                                    fptr(view->in[1]), static_cast<float*>(x), s);
    rebind.ptrs = &dptr_;
    rebind.at = size_t(n.in[0]);
    rebind.old = dptr_[rebind.at];
    dptr_[rebind.at] = x;
  }
  // The in-place call's a, b and ca.
  auto view_a = [&] { return ptr(view->in[0]); };
  auto view_b = [&] { return ptr(view->in[1]); };
  auto view_ca = [&] { return int(sh(view->in[0])[3]); };
  const bool own_out = n.conv.max_pool || n.conv.multiply;
  const bool finish_after = own_out && !tensor_core_kernel;
  const cpu::Conv2dShape& cs = n.conv.shape;
  const int64_t conv_count = own_out ? int64_t(cs.n) * cs.ho() * cs.wo() * cs.cout : 0;
  const int multiplier = multiplier_input(n);
  void* conv_out = nullptr;
  if (n.conv.multiply && n.out.size() > 1) {
    conv_out = ptr(n.out[1]);
  } else if (finish_after) {
    conv_out = wsp;
    wsp += own_conv_out_bytes(n);
  }
  uint8_t* const argmax = n.conv.max_pool && n.out.size() > 1 ? static_cast<uint8_t*>(ptr(n.out[1])) : nullptr;
  auto conv_f32 = [&]() -> float* {  // where the fp32 FMA kernel or cuDNN writes
    if (!finish_after) return f32_result(n.out[0]);
    if (!is_bf16(n.out[0])) return static_cast<float*>(conv_out);
    float* d = reinterpret_cast<float*>(wsp);
    wsp += align_up(size_t(conv_count) * sizeof(float));
    return d;
  };
  auto store_conv = [&](const float* v) {
    if (!finish_after) return store_result(n.out[0], v);
    if (is_bf16(n.out[0])) cuda::convert(conv_count, v, static_cast<cuda::bf16*>(conv_out), s);
  };
  auto finish_output = [&] {
    if (!finish_after) return;
    const bool b16 = is_bf16(n.out[0]);
    if (n.conv.max_pool && b16)
      cuda::maxpool2_forward(cs.n, cs.ho(), cs.wo(), cs.cout, static_cast<const cuda::bf16*>(conv_out),
                             half(n.out[0]), argmax, s);
    else if (n.conv.max_pool)
      cuda::maxpool2_forward(cs.n, cs.ho(), cs.wo(), cs.cout, static_cast<const float*>(conv_out), out(0), argmax, s);
    else if (b16)
      cuda::mul(conv_count, static_cast<const cuda::bf16*>(conv_out), half(multiplier), half(n.out[0]), s);
    else
      cuda::mul(conv_count, static_cast<const float*>(conv_out), fptr(multiplier), out(0), s);
  };
  // A forward convolution's residual (fuse_conv_add): the tensor-core kernel adds it in its
  // epilogue; the other paths add it after the convolution, as the add node did.
  const int residual = residual_input(n);
  const void* res = residual >= 0 ? ptr(residual) : nullptr;
  auto add_residual = [&] {
    if (residual < 0) return;
    if (is_bf16(n.out[0]))
      cuda::add(count(residual), half(n.out[0]), half(residual), half(n.out[0]), s);
    else
      cuda::add(count(residual), out(0), fptr(residual), out(0), s);
  };
  // BN-ReLU(x) of a fused node's input (in[0]) staged in fp32, from x as stored.
  auto staged_bn_relu = [&] {
    const int x = n.in[0];
    const int c = int(sh(x).back());
    float* d = take_f32(x);
    if (view_staged) {
      const Shape& xs = sh(x);
      if (is_bf16(x))
        cuda::batchnorm_apply_upsample_concat(int(xs[0]), int(xs[1]), int(xs[2]), view_ca(), c, half(view->in[0]),
                                              half(view->in[1]), in(1), in(2), in(3), in(4), /*relu=*/true, d, s);
      else
        cuda::batchnorm_apply_upsample_concat(int(xs[0]), int(xs[1]), int(xs[2]), view_ca(), c, fptr(view->in[0]),
                                              fptr(view->in[1]), in(1), in(2), in(3), in(4), /*relu=*/true, d, s);
    } else if (is_bf16(x))
      cuda::batchnorm_apply(count(x) / c, c, half(x), in(1), in(2), in(3), in(4), /*relu=*/true, d, s);
    else
      cuda::batchnorm_apply(count(x) / c, c, in(0), in(1), in(2), in(3), in(4), /*relu=*/true, d, s);
    return d;
  };
  switch (n.op) {
    case OpKind::Conv2d:  // in: x, w, b
      if (tensor_core_kernel) {
        const int64_t so = impl_->sums_off[size_t(index)];  // >= 0: a following BN takes the sums
        double* sums = so >= 0 ? reinterpret_cast<double*>(persistent_ + so) : nullptr;
        if (n.conv.max_pool)
          cuda::bn_relu_conv_tc_forward_maxpool(cs, math, st(0), vin(0), nullptr, nullptr, nullptr, nullptr, in(1),
                                                in(2), st_out(0), ptr(n.out[0]), argmax, sums,
                                                sums ? sums + cs.cout : nullptr, ws, s);
        else if (n.conv.multiply)
          cuda::bn_relu_conv_tc_forward_mul(cs, math, st(0), vin(0), nullptr, nullptr, nullptr, nullptr, in(1), in(2),
                                            st_out(0), ptr(n.out[0]), ptr(multiplier), conv_out, sums,
                                            sums ? sums + cs.cout : nullptr, ws, s);
        else if (view_direct)
          cuda::bn_relu_conv_tc_forward_upsample_concat(cs, math, st(0), view_a(), view_b(), view_ca(), nullptr,
                                                        nullptr, nullptr, nullptr, in(1), in(2), st_out(0),
                                                        ptr(n.out[0]), sums, sums ? sums + cs.cout : nullptr, ws, s);
        else
          cuda::bn_relu_conv_tc_forward(cs, math, st(0), vin(0), nullptr, nullptr, nullptr, nullptr, in(1), in(2),
                                        st_out(0), ptr(n.out[0]), res, sums, sums ? sums + cs.cout : nullptr, ws, s);
      } else if (impl_->handwritten[size_t(index)]) {
        cuda::bn_relu_conv_forward(cs, in(0), nullptr, nullptr, nullptr, nullptr, in(1), in(2), conv_f32(), s);
        finish_output();
        add_residual();
      } else {
        const float* x = widened(n.in[0]);
        float* y = conv_f32();
        impl_->node_conv[size_t(index)]->forward(h, x, in(1), in(2), y, wsp);
        store_conv(y);
        finish_output();
        add_residual();
      }
      break;
    case OpKind::BatchNorm: {
      const Shape& xs = sh(n.in[0]);
      const int c = int(xs.back());
      const int64_t cnt = numel(xs) / c;
      if (n.bn.training) {
        cuda::batchnorm_forward_train(cnt, c, in(0), in(1), in(2), out(0), out(1), out(2), in(3), in(4),
                                      n.bn.momentum, n.bn.eps, ws, s);
        if (n.in.size() > 5 && n.in[5] >= 0) cuda::batchnorm_count_batch(static_cast<int64_t*>(ptr(n.in[5])), s);
      } else {
        cuda::batchnorm_forward_eval(cnt, c, in(0), in(1), in(2), in(3), in(4), n.bn.eps, out(0), s);
      }
      break;
    }
    case OpKind::BatchNormStats: {  // in: x, running_mean, running_var, nbt   out: mean, invstd
      const int c = int(sh(n.in[0]).back());
      const int src = impl_->stats_src[size_t(index)];
      if (n.bn.training && src >= 0) {  // sums from the producing tensor-core kernel's epilogue
        const auto* sums = reinterpret_cast<const double*>(persistent_ + impl_->sums_off[size_t(src)]);
        cuda::batchnorm_stats_from_sums(count(n.in[0]) / c, c, sums, sums + c, out(0), out(1), in(1), in(2),
                                        n.bn.momentum, n.bn.eps, s);
        if (n.in.size() > 3 && n.in[3] >= 0) cuda::batchnorm_count_batch(static_cast<int64_t*>(ptr(n.in[3])), s);
      } else if (n.bn.training && impl_->view_node[size_t(n.in[0])] >= 0) {  // concat(upsample2(a), b) in place
        const Node& v = g_.node(impl_->view_node[size_t(n.in[0])]);
        const Shape& xs = sh(n.in[0]);
        cuda::batchnorm_stats_train_upsample_concat(int(xs[0]), int(xs[1]), int(xs[2]), int(sh(v.in[0])[3]), c,
                                                    fptr(v.in[0]), fptr(v.in[1]), out(0), out(1), in(1), in(2),
                                                    n.bn.momentum, n.bn.eps, ws, s);
        if (n.in.size() > 3 && n.in[3] >= 0) cuda::batchnorm_count_batch(static_cast<int64_t*>(ptr(n.in[3])), s);
      } else if (n.bn.training) {
        cuda::batchnorm_stats_train(count(n.in[0]) / c, c, in(0), out(0), out(1), in(1), in(2), n.bn.momentum,
                                    n.bn.eps, ws, s);
        if (n.in.size() > 3 && n.in[3] >= 0) cuda::batchnorm_count_batch(static_cast<int64_t*>(ptr(n.in[3])), s);
      } else {
        cuda::batchnorm_stats_eval(c, in(1), in(2), n.bn.eps, out(0), out(1), s);
      }
      break;
    }
    case OpKind::BnReluConv2d: {  // in: x, gamma, beta, mean, invstd, w, b
      if (tensor_core_kernel) {
        const int64_t so = impl_->sums_off[size_t(index)];  // >= 0: a following BN takes the sums
        double* sums = so >= 0 ? reinterpret_cast<double*>(persistent_ + so) : nullptr;
        if (n.conv.max_pool)
          cuda::bn_relu_conv_tc_forward_maxpool(cs, math, st(0), vin(0), in(1), in(2), in(3), in(4), in(5), in(6),
                                                st_out(0), ptr(n.out[0]), argmax, sums,
                                                sums ? sums + cs.cout : nullptr, ws, s);
        else if (n.conv.multiply)
          cuda::bn_relu_conv_tc_forward_mul(cs, math, st(0), vin(0), in(1), in(2), in(3), in(4), in(5), in(6),
                                            st_out(0), ptr(n.out[0]), ptr(multiplier), conv_out, sums,
                                            sums ? sums + cs.cout : nullptr, ws, s);
        else if (view_direct)
          cuda::bn_relu_conv_tc_forward_upsample_concat(cs, math, st(0), view_a(), view_b(), view_ca(), in(1), in(2),
                                                        in(3), in(4), in(5), in(6), st_out(0), ptr(n.out[0]), sums,
                                                        sums ? sums + cs.cout : nullptr, ws, s);
        else
          cuda::bn_relu_conv_tc_forward(cs, math, st(0), vin(0), in(1), in(2), in(3), in(4), in(5), in(6), st_out(0),
                                        ptr(n.out[0]), res, sums, sums ? sums + cs.cout : nullptr, ws, s);
        break;
      }
      if (impl_->handwritten[size_t(index)]) {
        cuda::bn_relu_conv_forward(cs, in(0), in(1), in(2), in(3), in(4), in(5), in(6), conv_f32(), s);
        finish_output();
        add_residual();
        break;
      }
      const float* staged = staged_bn_relu();
      float* y = conv_f32();
      impl_->node_conv[size_t(index)]->forward(h, staged, in(5), in(6), y, wsp);
      store_conv(y);
      finish_output();
      add_residual();
      break;
    }
    case OpKind::ConvBnSum: {  // in: x, then per branch w, b, gamma, beta, running_mean, running_var
      cuda::ConvBnBranch br[cuda::kConvBnSumMaxBranches];
      const int nb = conv_bn_sum_branches(n, [&](int t) { return fptr(t); }, br);
      if (impl_->handwritten[size_t(index)] && impl_->tensor_core[size_t(index)]) {
        cuda::conv_bn_sum_tc_forward(br, nb, n.bn.eps, math, st(0), vin(0), st_out(0), ptr(n.out[0]), s);
        break;
      }
      // The cuDNN path, as the unfused graph runs it: per branch the conv into the workspace, its
      // eval BN (into y for the first branch, in place after), and the add into y.
      const int64_t cnt = count(n.out[0]);
      const int c = int(sh(n.out[0]).back());
      const float* x = widened(n.in[0]);
      float* y = f32_result(n.out[0]);
      float* branch = take_f32(n.out[0]);
      for (int b = 0; b < nb; ++b) {
        impl_->conv_for(br[b].shape).forward(h, x, br[b].w_ohwi, br[b].bias, branch, wsp);
        cuda::batchnorm_forward_eval(cnt / c, c, branch, br[b].gamma, br[b].beta, br[b].running_mean,
                                     br[b].running_var, n.bn.eps, b == 0 ? y : branch, s);
        if (b > 0) cuda::add(cnt, y, branch, y, s);
      }
      store_result(n.out[0], y);
      break;
    }
    case OpKind::BnReluConv2dBwdData: {  // in: dz, w, x, gamma, beta, mean, invstd
      if (impl_->handwritten[size_t(index)] && impl_->tensor_core[size_t(index)]) {
        const int64_t so = impl_->sums_off[size_t(index)];  // >= 0: a BN backward takes the sums
        double* sums = so >= 0 ? reinterpret_cast<double*>(persistent_ + so) : nullptr;
        cuda::bn_relu_conv_tc_backward_data(n.conv.shape, math, in(0), in(1), st(2), vin(2), in(3), in(4), in(5),
                                            in(6), out(0), sums, sums ? sums + n.conv.shape.cin : nullptr, ws, s);
        break;
      }
      if (impl_->handwritten[size_t(index)] && impl_->sums_off[size_t(index)] >= 0) {  // a BN backward takes the sums
        auto* sums = reinterpret_cast<double*>(persistent_ + impl_->sums_off[size_t(index)]);
        cuda::bn_relu_conv_backward_data_with_sums(n.conv.shape, in(0), in(1), in(2), in(3), in(4), in(5), in(6),
                                                   out(0), sums, sums + n.conv.shape.cin, ws, s);
        break;
      }
      if (impl_->handwritten[size_t(index)]) {
        cuda::bn_relu_conv_backward_data(n.conv.shape, in(0), in(1), in(2), in(3), in(4), in(5), in(6), out(0), s);
        break;
      }
      const int c = int(sh(n.in[2]).back());
      impl_->node_conv[size_t(index)]->backward_data(h, in(0), in(1), out(0), ws);
      if (is_bf16(n.in[2]))
        cuda::bn_relu_mask_inplace(count(n.in[2]) / c, c, half(n.in[2]), in(3), in(4), in(5), in(6), out(0), s);
      else
        cuda::bn_relu_mask_inplace(count(n.in[2]) / c, c, in(2), in(3), in(4), in(5), in(6), out(0), s);
      break;
    }
    case OpKind::BnReluConv2dBwdFilter: {  // in: x, gamma, beta, mean, invstd, dz
      if (impl_->handwritten[size_t(index)] && impl_->tensor_core[size_t(index)]) {
        cuda::bn_relu_conv_tc_backward_filter(n.conv.shape, math, st(0), vin(0), in(1), in(2), in(3), in(4), in(5),
                                              out(0), out(1), ws, s);
        break;
      }
      if (impl_->handwritten[size_t(index)]) {
        cuda::bn_relu_conv_backward_filter(n.conv.shape, in(0), in(1), in(2), in(3), in(4), in(5), out(0),
                                           out(1), ws, s);
        break;
      }
      const float* staged = staged_bn_relu();
      impl_->node_conv[size_t(index)]->backward_filter(h, staged, in(5), out(0), out(1), wsp);
      break;
    }
    case OpKind::Relu: cuda::relu_forward(count(n.in[0]), in(0), out(0), s); break;
    case OpKind::Add: cuda::add(count(n.in[0]), in(0), in(1), out(0), s); break;
    case OpKind::Mul: cuda::mul(count(n.in[0]), in(0), in(1), out(0), s); break;
    case OpKind::ScaleChannels: {
      const Shape& xs = sh(n.in[0]);
      cuda::scale_channels(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), in(1), out(0), s);
      break;
    }
    case OpKind::GlobalAvgPool: {
      const Shape& xs = sh(n.in[0]);
      cuda::global_avg_pool_forward(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), out(0), ws, s);
      break;
    }
    case OpKind::Linear: {
      const Shape& xs = sh(n.in[0]);
      const Shape& wsh = sh(n.in[1]);  // (O, I)
      cuda::linear_forward(int(xs[0]), int(wsh[1]), int(wsh[0]), in(0), in(1), out(0), s);
      break;
    }
    case OpKind::Sigmoid: cuda::sigmoid_forward(count(n.in[0]), in(0), out(0), s); break;
    case OpKind::BnApplySum: {  // per branch: x, gamma, beta, mean, invstd   out: the sum of the BN outputs
      cuda::BnSumBranch br[cuda::kBnSumMaxBranches];
      const int nb = int(n.in.size() / 5);
      if (nb < 1 || nb > cuda::kBnSumMaxBranches || n.in.size() % 5 != 0)
        fail("CUDA executor: BnApplySum node ", n.name, " has ", n.in.size(), " inputs");
      for (int b = 0; b < nb; ++b)
        br[b] = {in(size_t(5 * b)), in(size_t(5 * b + 1)), in(size_t(5 * b + 2)), in(size_t(5 * b + 3)),
                 in(size_t(5 * b + 4))};
      const int c = int(sh(n.out[0]).back());
      cuda::batchnorm_apply_sum(count(n.out[0]) / c, c, br, nb, out(0), s);
      break;
    }
    case OpKind::SeExcite: {  // in: p, w1 (hidden, c), w2   out: s
      const Shape& w1 = sh(n.in[1]);
      cuda::se_excite_forward(int(sh(n.in[0])[0]), int(w1[1]), int(w1[0]), in(0), in(1), in(2), out(0), s);
      break;
    }
    case OpKind::SeExciteBwd: {  // in: p, w1, w2, s, ds   out: dp, dw1, dw2
      const Shape& w1 = sh(n.in[1]);
      cuda::se_excite_backward(int(sh(n.in[0])[0]), int(w1[1]), int(w1[0]), in(0), in(1), in(2), in(3), in(4), out(0),
                               out(1), out(2), ws, s);
      break;
    }
    case OpKind::MaxPool2: {  // x, y (, argmax U8)
      const Shape& xs = sh(n.in[0]);
      cuda::maxpool2_forward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), in(0), out(0),
                             n.out.size() > 1 ? static_cast<uint8_t*>(ptr(n.out[1])) : nullptr, s);
      break;
    }
    case OpKind::Upsample2: {
      const Shape& xs = sh(n.in[0]);
      cuda::upsample2_forward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), in(0), out(0), s);
      break;
    }
    case OpKind::Concat: {
      const Shape& as = sh(n.in[0]);
      const Shape& bs = sh(n.in[1]);
      cuda::concat_forward(as[0] * as[1] * as[2], int(as[3]), int(bs[3]), in(0), in(1), out(0), s);
      break;
    }
    case OpKind::UpsampleConcat: {
      const Shape& as = sh(n.in[0]);
      cuda::upsample_concat_forward(int(as[0]), int(as[1]), int(as[2]), int(as[3]), int(sh(n.in[1])[3]), in(0),
                                    in(1), out(0), s);
      break;
    }
    case OpKind::Loss: {
      const int64_t m = count(n.in[0]);
      // The loss is one device float; bce + dice accumulates the second term onto the first.
      if (n.loss.kind == LossKind::BCE || n.loss.kind == LossKind::BCEDice)
        cuda::bce_with_logits_forward(m, in(0), in(1), out(0), false, ws, s);
      if (n.loss.kind == LossKind::Dice || n.loss.kind == LossKind::BCEDice)
        cuda::dice_loss_forward(m, in(0), in(1), out(0), n.loss.kind == LossKind::BCEDice, ws, s);
      break;
    }
    case OpKind::ConvSumBwdData: {  // per branch dy, w
      cuda::ConvBwdDataBranch br[cuda::kConvSumMaxBranches];
      const int nb = conv_sum_bwd_branches(n, [&](int t) { return fptr(t); }, br);
      if (impl_->handwritten[size_t(index)] && impl_->tensor_core[size_t(index)]) {
        cuda::conv_sum_tc_backward_data(br, nb, math, out(0), s);
        break;
      }
      // The cuDNN path, as the unfused graph runs it: each branch's backward-data (into dx for the
      // first, into the workspace after) and the add into dx.
      const int64_t cnt = count(n.out[0]);
      float* branch = take_f32(n.out[0]);
      for (int b = 0; b < nb; ++b) {
        float* dx = b == 0 ? out(0) : branch;
        impl_->conv_for(br[b].shape).backward_data(h, br[b].dz, br[b].w_ohwi, dx, wsp);
        if (b > 0) cuda::add(cnt, out(0), branch, out(0), s);
      }
      break;
    }
    case OpKind::Conv2dBwdData:  // in: dy, w
      if (impl_->handwritten[size_t(index)] && impl_->tensor_core[size_t(index)])
        cuda::bn_relu_conv_tc_backward_data(n.conv.shape, math, in(0), in(1), nullptr, nullptr, nullptr, nullptr,
                                            nullptr, out(0), nullptr, nullptr, nullptr, s);
      else if (impl_->handwritten[size_t(index)])
        cuda::bn_relu_conv_backward_data(n.conv.shape, in(0), in(1), nullptr, nullptr, nullptr, nullptr, nullptr,
                                         out(0), s);
      else
        impl_->node_conv[size_t(index)]->backward_data(h, in(0), in(1), out(0), ws);
      break;
    case OpKind::Conv2dBwdFilter:  // in: x, dy
      if (impl_->handwritten[size_t(index)] && impl_->tensor_core[size_t(index)])
        cuda::bn_relu_conv_tc_backward_filter(n.conv.shape, math, st(0), vin(0), nullptr, nullptr, nullptr, nullptr,
                                              in(1), out(0), out(1), ws, s);
      else if (impl_->handwritten[size_t(index)])
        cuda::bn_relu_conv_backward_filter(n.conv.shape, in(0), nullptr, nullptr, nullptr, nullptr, in(1), out(0),
                                           out(1), ws, s);
      else
        impl_->node_conv[size_t(index)]->backward_filter(h, widened(n.in[0]), in(1), out(0), out(1), wsp);
      break;
    case OpKind::BatchNormBwd: {
      const Shape& xs = sh(n.in[0]);
      const int c = int(xs.back());
      const int src = impl_->stats_src[size_t(index)];
      if (src >= 0) {  // the reductions came from the backward-data kernel's epilogue
        const auto* sums = reinterpret_cast<const double*>(persistent_ + impl_->sums_off[size_t(src)]);
        cuda::batchnorm_backward_from_sums(numel(xs) / c, c, in(0), in(1), in(2), in(3), in(4), sums, sums + c, out(0),
                                           out(1), out(2), s);
        break;
      }
      cuda::batchnorm_backward(numel(xs) / c, c, in(0), in(1), in(2), in(3), in(4), out(0), out(1), out(2), ws, s);
      break;
    }
    case OpKind::ReluBwd: cuda::relu_backward(count(n.in[0]), in(0), in(1), out(0), s); break;
    case OpKind::SigmoidBwd: cuda::sigmoid_backward(count(n.in[0]), in(0), in(1), out(0), s); break;
    case OpKind::ScaleChannelsBwd: {
      const Shape& xs = sh(n.in[0]);
      cuda::scale_channels_backward_scale(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), in(1), out(0), ws, s);
      break;
    }
    case OpKind::GlobalAvgPoolBwd: {
      const Shape& xs = sh(n.out[0]);
      cuda::global_avg_pool_backward(int(xs[0]), xs[1] * xs[2], int(xs[3]), in(0), out(0), s);
      break;
    }
    case OpKind::LinearBwd: {
      const Shape& xs = sh(n.in[0]);
      const Shape& wsh = sh(n.in[1]);
      cuda::linear_backward(int(xs[0]), int(wsh[1]), int(wsh[0]), in(0), in(1), in(2), out(0), out(1), s);
      break;
    }
    case OpKind::MaxPool2Bwd: {  // argmax (U8), dy   dx (fp32 gradients in either precision)
      const Shape& xs = sh(n.out[0]);
      cuda::maxpool2_backward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), static_cast<const uint8_t*>(ptr(n.in[0])),
                              in(1), out(0), s);
      break;
    }
    case OpKind::Upsample2Bwd: {
      const Shape& xs = sh(n.out[0]);
      cuda::upsample2_backward(int(xs[0]), int(xs[1]), int(xs[2]), int(xs[3]), in(0), out(0), s);
      break;
    }
    case OpKind::ConcatBwd: {
      const Shape& as = sh(n.out[0]);
      const Shape& bs = sh(n.out[1]);
      cuda::concat_backward(as[0] * as[1] * as[2], int(as[3]), int(bs[3]), in(0), out(0), out(1), s);
      break;
    }
    case OpKind::UpsampleConcatBwd: {  // dy   da (low resolution), db
      const Shape& as = sh(n.out[0]);
      cuda::upsample_concat_backward(int(as[0]), int(as[1]), int(as[2]), int(as[3]), int(sh(n.out[1])[3]), in(0),
                                     out(0), out(1), s);
      break;
    }
    case OpKind::LossBwd: {
      const int64_t m = count(n.in[0]);
      // d(loss)/d(logits) for dloss = 1; bce + dice adds the Dice part onto the BCE part.
      if (n.loss.kind == LossKind::BCE || n.loss.kind == LossKind::BCEDice)
        cuda::bce_with_logits_backward(m, in(0), in(1), 1.0, out(0), false, s);
      if (n.loss.kind == LossKind::Dice || n.loss.kind == LossKind::BCEDice)
        cuda::dice_loss_backward(m, in(0), in(1), 1.0, out(0), n.loss.kind == LossKind::BCEDice, ws, s);
      break;
    }
    case OpKind::ClipGradNorm: {
      // Norm, factor and the scaling stay on the device; the norm is copied back after the run.
      if (n.in.empty()) RPP_CUDA_CHECK(cudaMemsetAsync(d_sumsq_, 0, sizeof(double), s));
      for (size_t i = 0; i < n.in.size(); ++i) cuda::sum_squares(count(n.in[i]), in(i), d_sumsq_, i > 0, ws, s);
      cuda::clip_grad_norm_factor(d_sumsq_, step, d_norm_, d_factor_, s);
      for (size_t i = 0; i < n.in.size(); ++i) cuda::scale_inplace(count(n.in[i]), in(i), d_factor_, s);
      // A non-finite loss or norm turns the updates that follow into no-ops (Executor::run).
      cuda::skip_if_nonfinite(d_sumsq_, loss_tensor_ >= 0 ? static_cast<const float*>(ptr(loss_tensor_)) : nullptr,
                              static_cast<cuda::OptimStepDevice*>(d_step_), s);
      break;
    }
    case OpKind::OptimizerUpdate: {
      const int64_t m = count(n.in[0]);
      switch (n.opt.kind) {
        case OptimizerKind::SGD: cuda::sgd_update(m, in(0), in(1), in(2), step, s); break;
        case OptimizerKind::Adam: cuda::adam_update(m, in(0), in(1), in(2), in(3), step, s); break;
        case OptimizerKind::AdamW: cuda::adamw_update(m, in(0), in(1), in(2), in(3), step, s); break;
        case OptimizerKind::Nadam: cuda::nadam_update(m, in(0), in(1), in(2), in(3), step, s); break;
      }
      break;
    }
  }
}

// ---- diagnostics ----

int CudaExecutor::num_conv_shapes() const { return int(impl_->convs.size()); }

std::string CudaExecutor::describe_convolutions() const {
  std::ostringstream os;
  for (const auto& [key, conv] : impl_->convs) {
    const cpu::Conv2dShape& s = conv->shape();
    os << "n" << s.n << " " << s.h << "x" << s.w << "x" << s.cin << " -> " << s.ho() << "x" << s.wo() << "x" << s.cout
       << " k" << s.kh << "x" << s.kw << " s" << s.stride << " p" << s.pad << " d" << s.dil << " ("
       << impl_->conv_users.at(key) << " nodes): " << conv->describe_algorithms() << ", workspace "
       << conv->workspace_bytes() << " B\n";
  }
  return os.str();
}

int cuda_executor_device_count() { return cuda::device_count(); }

std::unique_ptr<Executor> make_cuda_executor(const Graph& g, ParamStore& store, int device,
                                             const ExecOptions& options) {
  return std::make_unique<CudaExecutor>(g, store, device, options);
}

}  // namespace rpp

#endif  // RESUNETPP_HAVE_CUDA && RESUNETPP_HAVE_CUDNN
