// tools/bench/resunetpp_bench.cpp — `resunetpp-bench`: the kernel microbenchmark and the step
// timeline of the engine. Run `resunetpp-bench --help` for the flags.
//
// What it measures
//   1. Kernels. One row per distinct convolution shape of the fused BN-ReLU-conv nodes
//      (OpKind::BnReluConv2d, runtime/fusion.h) of ResUNet++ at --size x --size, batch --batch,
//      with the names of the nodes that use it. Each row runs on seeded random data: x normal
//      (mean 0.2), HWIO weights U(+-1/sqrt(fan_in)), bias, and BN parameters with positive shifts
//      (so that a kernel padding with relu(shift) instead of 0 is caught).
//      * cuda: the fallback (cuda::batchnorm_apply with ReLU into a staging buffer, then the cuDNN
//        forward with the engine's choice of algorithm: cuDNN heuristics, deterministic, TF32 off,
//        workspace limit 1 GiB, as runtime/executor_cuda.cpp chooses them), the cuDNN forward
//        alone on the staged input, and the hand-written fused kernel
//        (kernels/cuda/bn_relu_conv.cuh) when it can run the shape.
//      * cpu: the CPU path the engine runs (cpu::batchnorm_apply with ReLU into a buffer, then
//        cpu::conv2d_forward).
//      * cuda, backward (a second table; JSON "kernels_backward"): two more rows per shape, the
//        passes of the graph ops BnReluConv2dBwdData and BnReluConv2dBwdFilter on the same x,
//        weights and BN parameters plus a normal dz (n, ho, wo, cout):
//        - backward_data: the fallback as runtime/executor_cuda.cpp runs it (CudnnConv::
//          backward_data, then cuda::bn_relu_mask_inplace), the cuDNN backward-data alone, and the
//          hand-written cuda::bn_relu_conv_backward_data (kernels/cuda/bn_relu_conv_bwd.cuh);
//        - backward_filter: the fallback (cuda::batchnorm_apply with ReLU into a staging buffer,
//          then CudnnConv::backward_filter with the bias gradient), the cuDNN backward-filter
//          alone on the staged input, and the hand-written cuda::bn_relu_conv_backward_filter
//          (dw in OHWI, db; relu(bn(x)) recomputed on load);
//        the hand-written kernels when bn_relu_conv_bwd_can_run(shape). cuDNN's algorithms are
//        chosen as for the forward.
//      * cuda, tensor cores (more paths of the forward rows): the fallback with cuDNN's TF32
//        allowed, and the hand-written tensor-core kernel (kernels/cuda/bn_relu_conv_tc.cuh) with
//        TF32 operands, its speed-up over the TF32 fallback; cuDNN's native bf16 forward after a
//        bf16 BN-ReLU (checked without the bias), when cuDNN takes the shape; the kernel with
//        BF16 operands, its speed-up over the native bf16 row, else the TF32 fallback. Shapes of
//        the attention gates also time the epilogue variants against the TF32 fallback plus the
//        unfused kernel: the 2x2 max pool (g_conv, fuse_conv_pool) and the product (gc_conv,
//        fuse_conv_mul), each checked exactly against the host's pool or product of the TF32
//        kernel's plain output.
//      * cuda, ASPP (a third table; JSON "kernels_aspp"): one row per ConvBnSum node of the
//        inference graph (the two ASPP blocks: four dilated conv branches with eval BNs, summed):
//        the fallback as the executor's cuDNN path runs it (per branch the cuDNN conv, the eval
//        BN, the add), in fp32 and with TF32 allowed, and the hand-written kernel
//        (kernels/cuda/conv_bn_sum.cuh) with TF32 and BF16 operands; x normal (mean 0.2), weights
//        U(+-1/sqrt(fan_in)), random biases and BN statistics, eps 1e-5. Then one row per
//        ConvSumBwdData node of the training graph (pass aspp_bwd_data: the branches'
//        backward-data, summed): the fallback as the executor's cuDNN path runs it (per branch the
//        cuDNN backward-data, the add), fp32 and TF32 allowed, and conv_sum_tc_backward_data
//        (kernels/cuda/bn_relu_conv_bwd_tc.cuh) with TF32 and BF16 operands; dz normal.
//   2. Timeline (unless --no-timeline): one training step of the whole network (Adam, BCE + Dice,
//      the graph the device's executor runs: unfused on the CPU, fused on CUDA) with seeded
//      parameters and inputs; per-node times aggregated by op kind, the ten slowest nodes, the
//      step time and images/s. cpu: CpuExecutor, one warm-up step, then one profiled step
//      (set_profiling). cuda: CudaExecutor, one warm-up run(), then profile_run() (eager, an event
//      after every node), then replays of the captured CUDA graph timed on the host for the step
//      time. cuda also reports the executor's device bytes and the growth of cudaMemGetInfo's used
//      memory across the executor's life (cuDNN, the CUDA graph); --tf32 allows TF32.
//   3. Inference (unless --no-inference): the inference graph at batch 1 (latency) and
//      --infer-batch (throughput), each call set_input from host memory + run + read_output to
//      host memory as the Predictor does, median of --repeats after --warmup calls (the first
//      CUDA call is eager, the second captures the graph); the logits must be finite.
//
// Verification comes before any timing; no number is reported for an output that was not checked.
//   * Reference: a naive direct convolution written here, BN-ReLU and the sum of products in
//     double, on the same host data. On large shapes it checks a subset of output pixels (every
//     output channel of each: the corners and edge midpoints of the first and last image, where
//     the padding acts, plus seeded random pixels) within a budget of multiply-adds per shape.
//   * cpu: the CPU path against the reference. cuda: the fallback against the reference, then
//     the hand-written kernel against the fallback over the whole output (its output buffer is
//     poisoned with NaN first, so an unwritten element fails).
//   * Backward references (double, on the same host data): dx at a subset of the input pixels
//     chosen as above (all cin channels of each: the sum of dz * w over the taps and output
//     pixels that read the pixel, then 0 where !(bn(x) > 0)); dw at every tap of a subset of
//     the (cout, cin) pairs (channels 0, the last and seeded others; all of dw when it fits the
//     budget), each entry the sum of relu(bn(x)) * dz over all n * ho * wo output pixels with
//     zero padding after BN-ReLU; db, the sum of dz, for every channel. The fallback's dx, dw
//     and db (outputs poisoned first) are checked against them, then the hand-written kernels'
//     against the fallback's over every element. One exception, dx against the fallback: the
//     hand-written kernel decides bn(x) > 0 in float (the forward kernel's fmaf), the fallback in
//     double, so an element where exactly one of the two is 0 and |bn(x)| in double is within
//     1e-6 of the magnitude of its terms is a ReLU-mask tie, excused and counted
//     ("mask_ties_excused"); any other disagreement fails.
//   * Error: max |got - ref| / (|ref| + rms(ref)) over the checked elements (rms over the same
//     elements), tolerance 1e-4 (fp32 with a different summation order), NaN fails. A failed
//     check marks the row FAILED: no path of that row is timed (only its errors are printed), and
//     the exit status becomes 3.
//   * Timeline: the loss of every step it runs must be finite.
//   * Test hook: RPP_BENCH_CORRUPT_ROW=N (the row number printed) adds 1 to the first output
//     element of row N's checked path (cpu: the CPU path; cuda: the hand-written kernel, else the
//     fallback) before its check, so that tests can see a failing row reported without timings.
//     RPP_BENCH_CORRUPT_ROW=N:backward_data or N:backward_filter does the same to that backward
//     row of shape N (dx[0], or dw[0]); N:aspp to ASPP row N (the TF32 kernel's y[0]); N alone
//     (or N:forward) means the forward row.
//   * Tensor-core paths (TF32, BF16) against the fp32 fallback's whole output, tolerance 5e-3 and
//     4e-2 of the same error measure: gates against gross errors, since the operands are rounded
//     (tests/gpu holds the kernels to per-element bounds). ASPP rows: the fp32 fallback against a
//     double reference of the branch sum (a subset of the pixels on large shapes), tolerance 1e-4.
//
// Timing
//   * cuda: --warmup launches, then --repeats launches, each preceded by an L2 flush
//     (cudaMemsetAsync over a buffer of twice cudaDeviceProp::l2CacheSize, outside the timed
//     interval) and bracketed by CUDA events on the bench's stream; the median is reported (min
//     and max go to the JSON). At least 20 repeats unless --repeats asks for fewer (then a
//     warning: smoke-run numbers).
//   * cpu: the same loop with std::chrono::steady_clock and no cache flush (the tensors of the
//     network's layers are far larger than the CPU caches at the default size); 5 repeats and 1
//     warm-up by default.
//   * Derived numbers: FLOP = 2 * multiply-adds (padding taps included, as Node::flops counts);
//     bytes = the minimal traffic x + w + y + bias + 4 BN vectors (fp32), the same model for
//     every path, so GB/s is an effective bandwidth (the fallback also writes and reads its
//     staging buffer, which the model does not count); % of peak is against the device's
//     bandwidth measured at start (device-to-device cudaMemcpyAsync of 2 x 512 MiB, or less when
//     memory is short, counted as read + write, median of 10); speed-up = fallback median /
//     hand-written median. Backward rows: FLOP = 2 * the same multiply-adds; bytes, the same
//     for every path of a row: backward_data dz + w + x (read for the mask) + dx + 4 BN vectors,
//     backward_filter x + dz + dw + db + 4 BN vectors (fp32; the fallback's staging buffer and the
//     split-K workspace of the hand-written backward-filter are not counted).
//
// Output: tables on stdout; with --json FILE, everything (device, build, date, settings, rows with
// their verification errors and timings: "kernels" the forward rows, "kernels_backward" (cuda) the
// backward rows, each row's "pass" saying which; the timeline with every node) written crash-safely
// (runtime/fileio.h: temp file, fsync, rename). Exit status: 0 all verified, 1 error, 2 bad
// usage, 3 a verification failed or the step's loss was not finite.
//
// The CUDA code is compiled only with CUDA and cuDNN (RESUNETPP_HAVE_CUDA, RESUNETPP_HAVE_CUDNN);
// without them --device cuda is an error naming the missing backend.
#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"
#include "model/resunetpp.h"
#include "runtime/autodiff.h"
#include "runtime/error.h"
#include "runtime/executor.h"
#include "runtime/executor_cpu.h"
#include "runtime/executor_cuda.h"
#include "runtime/fileio.h"
#include "runtime/fusion.h"
#include "runtime/json.h"
#include "runtime/param_store.h"
#include "runtime/rng.h"

#if defined(RESUNETPP_HAVE_CUDA) && defined(RESUNETPP_HAVE_CUDNN)
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/bn_relu_conv.cuh"
#include "kernels/cuda/bn_relu_conv_bwd.cuh"
#include "kernels/cuda/bn_relu_conv_bwd_tc.cuh"
#include "kernels/cuda/bn_relu_conv_tc.cuh"
#include "kernels/cuda/conv_bn_sum.cuh"
#include "kernels/cuda/cudnn/conv_cudnn.cuh"
#include "kernels/cuda/device.cuh"
#include "kernels/cuda/elementwise.cuh"
#define RPP_BENCH_CUDA 1
#endif

namespace rpp::bench {
namespace {

constexpr double kTolerance = 1e-4;          // max |got - ref| / (|ref| + rms(ref))
// The tensor-core paths against the fp32 fallback: operands rounded to TF32 (2^-11) or BF16
// (2^-8). Gross-error gates; the per-element bounds are tested in tests/gpu.
constexpr double kTf32Tolerance = 5e-3, kBf16Tolerance = 4e-2;
constexpr double kVerifyBudgetMacs = 3e8;    // multiply-adds of the double reference per shape
constexpr int kMinGpuRepeats = 20;
constexpr int kCpuDefaultRepeats = 5;

// RPP_BENCH_CORRUPT_ROW=N[:PASS] (see the header comment): whether to corrupt the checked output
// of the 0-based row `row` in `pass` ("forward", "backward_data", "backward_filter"; a bare N
// means forward).
bool corrupt(size_t row, const char* pass) {
  const char* e = std::getenv("RPP_BENCH_CORRUPT_ROW");
  if (!e || !*e) return false;
  char* end = nullptr;
  const int64_t n = std::strtoll(e, &end, 10) - 1;
  std::string want = "forward";
  if (*end == ':') {
    want = end + 1;
    if (want != "forward" && want != "backward_data" && want != "backward_filter" && want != "aspp")
      fail("RPP_BENCH_CORRUPT_ROW=", e,
           ": the pass after ':' must be forward, backward_data, backward_filter or aspp");
  }
  return n == int64_t(row) && want == pass;
}

// ---------------------------------------------------------------------------------------------
// Command line

class UsageError : public std::runtime_error {
 public:
  explicit UsageError(const std::string& m) : std::runtime_error(m) {}
};

struct Options {
  std::string device = "auto";
  int size = 256;
  int batch = 16;
  int repeats = -1;  // -1: per device (20 on cuda, 5 on cpu)
  int warmup = -1;   // -1: per device (3 on cuda, 1 on cpu)
  std::string filter;
  std::string json_path;
  std::string kernels = "default";
  bool timeline = true;
  bool inference = true;
  int infer_batch = 32;
  bool tf32 = false;
  bool bf16 = false;
  int64_t seed = 1;
  bool repeats_given = false, warmup_given = false;
};

struct FlagHelp {
  const char* name;
  const char* metavar;  // empty: takes no value
  const char* help;
};

const FlagHelp kFlags[] = {
    {"device", "DEV",
     "cpu, cuda or cuda:N (default: auto = cuda:0 when this build has CUDA and cuDNN and a GPU is "
     "visible, else cpu)"},
    {"size", "N", "input height and width, a multiple of 8 (default: 256)"},
    {"batch", "N", "batch size (default: 16)"},
    {"repeats", "N",
     "timed repeats per kernel, the median is reported (default: 20 on cuda, the minimum for "
     "numbers; 5 on cpu); fewer than 20 on cuda prints a smoke-run warning"},
    {"warmup", "N", "untimed launches before the timed ones (default: 3 on cuda, 1 on cpu)"},
    {"filter", "SUBSTR",
     "only the kernel rows whose shape text or node names contain SUBSTR (the timeline is not "
     "filtered)"},
    {"json", "FILE", "also write every result as JSON to FILE (written atomically)"},
    {"kernels", "NAME",
     "cuda timeline and inference: how the executor runs the convolution nodes: default (cudnn in fp32, "
     "handwritten with --bf16), cudnn, handwritten or auto (the kernel rows always time both)"},
    {"no-timeline", "", "skip the whole-step timeline"},
    {"no-inference", "", "skip the inference section"},
    {"infer-batch", "N",
     "inference section: the throughput batch (default: 32); batch 1 gives the latency"},
    {"tf32", "", "cuda timeline and inference: allow TF32 tensor-core convolutions (default: off, fp32)"},
    {"bf16", "",
     "cuda timeline and inference: bf16 activations, the convolution passes on the hand-written bf16 "
     "tensor-core kernels (or, with --kernels cudnn, on cuDNN with each bf16 operand staged in fp32; the "
     "timeline: bf16 training, gradients and weights fp32); the inference logits "
     "are checked against the fp32 executor's (relative L2 < 1e-2) before timing"},
    {"seed", "N", "seed of the random data, parameters and inputs (default: 1)"},
    {"help", "", "print this help"},
};

void print_help(std::ostream& os) {
  os << "usage: resunetpp-bench [options]\n\n"
        "Kernel microbenchmark and training-step timeline of resunetpp. For every distinct shape of\n"
        "the network's fused BN-ReLU-conv layers at --size/--batch it verifies each implementation\n"
        "first (cuda: the cuDNN fallback against a double-precision reference, the hand-written\n"
        "kernel against the fallback; cpu: the CPU path against the reference), then times it:\n"
        "warm-up, L2 flush between repeats (cuda), CUDA events, median of the repeats. It prints\n"
        "µs, TFLOP/s, GB/s, % of the device's measured peak bandwidth and the speed-up of the\n"
        "hand-written kernel over the fallback. On cuda, a second table does the same for the\n"
        "backward passes of every shape (backward_data: dx, ReLU mask applied; backward_filter: dw\n"
        "and db), the cuDNN fallback against a double-precision reference and the hand-written\n"
        "backward kernels against the fallback. Then the per-node times of one training step.\n"
        "Exit status: 0 verified, 1 error, 2 bad usage, 3 a verification failed.\n\noptions:\n";
  for (const FlagHelp& f : kFlags) {
    std::string left = std::string("  --") + f.name + (f.metavar[0] ? std::string(" ") + f.metavar : "");
    os << left;
    if (left.size() < 22)
      os << std::string(22 - left.size(), ' ');
    else
      os << "\n" << std::string(22, ' ');
    // Wrap the help at ~100 columns.
    std::istringstream words(f.help);
    std::string w;
    size_t col = 22;
    bool first = true;
    while (words >> w) {
      if (!first && col + 1 + w.size() > 100) {
        os << "\n" << std::string(22, ' ');
        col = 22;
        first = true;
      }
      if (!first) {
        os << ' ';
        ++col;
      }
      os << w;
      col += w.size();
      first = false;
    }
    os << "\n";
  }
}

int parse_int(const std::string& flag, const std::string& v) {
  char* end = nullptr;
  errno = 0;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end || errno || x < INT32_MIN || x > INT32_MAX)
    throw UsageError("--" + flag + " expects an integer, got '" + v + "'");
  return int(x);
}

// Returns false when --help was given (help printed).
bool parse_args(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_help(std::cout);
      return false;
    }
    if (a.rfind("--", 0) != 0 || a.size() == 2)
      throw UsageError("unexpected argument '" + a + "' (options start with --; see resunetpp-bench --help)");
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (const size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    const FlagHelp* f = nullptr;
    for (const FlagHelp& k : kFlags)
      if (name == k.name && name != "help") f = &k;
    if (!f) throw UsageError("unknown option --" + name + " (see resunetpp-bench --help)");
    if (!f->metavar[0]) {
      if (has_value) throw UsageError("--" + name + " takes no value");
    } else if (!has_value) {
      if (i + 1 >= argc) throw UsageError("--" + name + " needs a value");
      value = argv[++i];
    }
    if (name == "device") o.device = value;
    else if (name == "size") o.size = parse_int(name, value);
    else if (name == "batch") o.batch = parse_int(name, value);
    else if (name == "repeats") { o.repeats = parse_int(name, value); o.repeats_given = true; }
    else if (name == "warmup") { o.warmup = parse_int(name, value); o.warmup_given = true; }
    else if (name == "filter") o.filter = value;
    else if (name == "json") o.json_path = value;
    else if (name == "kernels") o.kernels = value;
    else if (name == "no-timeline") o.timeline = false;
    else if (name == "no-inference") o.inference = false;
    else if (name == "infer-batch") o.infer_batch = parse_int(name, value);
    else if (name == "tf32") o.tf32 = true;
    else if (name == "bf16") o.bf16 = true;
    else if (name == "seed") o.seed = parse_int(name, value);
  }
  if (o.size < 8 || o.size % 8 != 0)
    throw UsageError("--size must be a positive multiple of 8, got " + std::to_string(o.size));
  if (o.batch < 1) throw UsageError("--batch must be at least 1, got " + std::to_string(o.batch));
  if (o.repeats_given && o.repeats < 1)
    throw UsageError("--repeats must be at least 1, got " + std::to_string(o.repeats));
  if (o.warmup_given && o.warmup < 0)
    throw UsageError("--warmup must not be negative, got " + std::to_string(o.warmup));
  if (o.seed < 0) throw UsageError("--seed must not be negative");
  if (o.infer_batch < 1) throw UsageError("--infer-batch must be at least 1, got " + std::to_string(o.infer_batch));
  try {
    (void)parse_kernel_choice(o.kernels);
  } catch (const Error& e) {
    throw UsageError(std::string("--kernels: ") + e.what());
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Shapes, data, reference

using cpu::Conv2dShape;

struct ShapeRow {
  size_t id = 0;  // position among all the network's shapes (stable under --filter): row number, data seed
  Conv2dShape s;
  std::vector<std::string> nodes;
  bool pooled = false;      // some node of the shape pools its output (fuse_conv_pool: the attention gates' g_conv)
  bool multiplied = false;  // some node multiplies its output (fuse_conv_mul: the attention gates' gc_conv)
};

int64_t in_elems(const Conv2dShape& s) { return int64_t(s.n) * s.h * s.w * s.cin; }
int64_t out_elems(const Conv2dShape& s) { return int64_t(s.n) * s.ho() * s.wo() * s.cout; }
int64_t w_elems(const Conv2dShape& s) { return int64_t(s.kh) * s.kw * s.cin * s.cout; }
int64_t macs(const Conv2dShape& s) { return out_elems(s) * s.kh * s.kw * s.cin; }
int64_t model_bytes(const Conv2dShape& s) {
  return 4 * (in_elems(s) + w_elems(s) + out_elems(s) + s.cout + 4 * int64_t(s.cin));
}
size_t sz(int64_t n) { return static_cast<size_t>(n); }

std::string shape_text(const Conv2dShape& s) {
  std::ostringstream os;
  os << s.n << "x" << s.h << "x" << s.w << "x" << s.cin << " -> " << s.n << "x" << s.ho() << "x" << s.wo() << "x"
     << s.cout << ", k" << s.kh << "x" << s.kw << " s" << s.stride << " p" << s.pad << " d" << s.dil;
  return os.str();
}

// The distinct conv shapes of the fused BN-ReLU-conv nodes, in first-use order.
std::vector<ShapeRow> fused_shapes(int batch, int size) {
  ModelConfig cfg;
  cfg.fuse = true;
  const ModelGraph m = build_resunetpp(cfg, batch, size, size, /*training=*/true);
  std::vector<ShapeRow> rows;
  std::map<std::array<int, 10>, size_t> index;
  for (const Node& n : m.graph.nodes()) {
    if (n.op != OpKind::BnReluConv2d) continue;
    const Conv2dShape& s = n.conv.shape;
    const std::array<int, 10> key{s.n, s.h, s.w, s.cin, s.cout, s.kh, s.kw, s.stride, s.pad, s.dil};
    auto it = index.find(key);
    if (it == index.end()) {
      it = index.emplace(key, rows.size()).first;
      rows.push_back({rows.size(), s, {}});
    }
    rows[it->second].nodes.push_back(n.name);
    rows[it->second].pooled = rows[it->second].pooled || n.conv.max_pool;
    rows[it->second].multiplied = rows[it->second].multiplied || n.conv.multiply;
  }
  return rows;
}

struct AsppRow {
  ShapeRow row;                      // row.s: the first branch
  std::vector<Conv2dShape> branches;
  bool backward = false;             // a ConvSumBwdData node (training) rather than a ConvBnSum
};


struct HostData {
  std::vector<float> x, w, bias, gamma, beta, mean, invstd;
};

HostData make_data(const Conv2dShape& s, uint64_t seed, uint64_t row) {
  HostData d;
  Rng rng(seed, 7000 + row);
  d.x.resize(sz(in_elems(s)));
  for (float& v : d.x) v = 0.2f + rng.normal();
  const float bound = 1.f / std::sqrt(float(s.kh * s.kw * s.cin));
  d.w.resize(sz(w_elems(s)));
  for (float& v : d.w) v = rng.uniform(-bound, bound);
  d.bias.resize(sz(s.cout));
  for (float& v : d.bias) v = rng.uniform(-0.5f, 0.5f);
  d.gamma.resize(sz(s.cin));
  d.beta.resize(sz(s.cin));
  d.mean.resize(sz(s.cin));
  d.invstd.resize(sz(s.cin));
  for (int c = 0; c < s.cin; ++c) {
    d.gamma[sz(c)] = rng.uniform(0.5f, 1.5f);
    d.beta[sz(c)] = rng.uniform(0.2f, 0.8f);
    d.mean[sz(c)] = rng.uniform(-0.3f, 0.3f);
    d.invstd[sz(c)] = rng.uniform(0.5f, 2.f);
  }
  return d;
}

struct Pixel {
  int n, y, x;
};

// Output pixels to check against the double reference: all of them when that fits the budget,
// else the corners and edge midpoints of the first and last image plus seeded random pixels.
// pick_pixels_of: the same over an (n, ho, wo) pixel grid whose reference costs per_pixel
// multiply-adds a pixel; `stream` selects the random pixels' Rng stream.
std::vector<Pixel> pick_pixels_of(int n, int ho, int wo, double per_pixel, uint64_t seed, uint64_t stream) {
  const int64_t total = int64_t(n) * ho * wo;
  std::vector<Pixel> px;
  if (double(total) * per_pixel <= kVerifyBudgetMacs) {
    for (int b = 0; b < n; ++b)
      for (int y = 0; y < ho; ++y)
        for (int x = 0; x < wo; ++x) px.push_back({b, y, x});
    return px;
  }
  const int64_t want = std::max<int64_t>(32, int64_t(kVerifyBudgetMacs / per_pixel));
  std::set<std::tuple<int, int, int>> seen;
  auto add = [&](int b, int y, int x) {
    if (seen.insert({b, y, x}).second) px.push_back({b, y, x});
  };
  for (int b : {0, n - 1})
    for (int y : {0, ho / 2, ho - 1})
      for (int x : {0, wo / 2, wo - 1}) add(b, y, x);
  Rng rng(seed, stream);
  for (int64_t tries = 0; int64_t(px.size()) < want && tries < 4 * want; ++tries)
    add(int(rng.below(uint32_t(n))), int(rng.below(uint32_t(ho))), int(rng.below(uint32_t(wo))));
  return px;
}

std::vector<Pixel> pick_pixels(const Conv2dShape& s, uint64_t seed) {
  return pick_pixels_of(s.n, s.ho(), s.wo(), double(s.kh) * s.kw * s.cin * s.cout, seed, 99);
}

// Calls f(xin, tap) for every kernel tap of output pixel p that lands inside the image: xin points
// at that input pixel's cin values of x (NHWC), tap = ky * kw + kx (the HWIO weight row block).
template <class F>
void for_each_live_tap(const Conv2dShape& s, const float* x, const Pixel& p, F f) {
  for (int ky = 0; ky < s.kh; ++ky) {
    const int iy = p.y * s.stride - s.pad + ky * s.dil;
    if (iy < 0 || iy >= s.h) continue;
    for (int kx = 0; kx < s.kw; ++kx) {
      const int ix = p.x * s.stride - s.pad + kx * s.dil;
      if (ix < 0 || ix >= s.w) continue;
      f(x + ((int64_t(p.n) * s.h + iy) * s.w + ix) * s.cin, ky * s.kw + kx);
    }
  }
}

// conv(relu(bn(x))) + bias at one output pixel, every output channel, in double, directly from
// the definition (zero padding after BN-ReLU).
void reference_pixel(const Conv2dShape& s, const HostData& d, const Pixel& p, std::vector<double>& acc) {
  acc.assign(sz(s.cout), 0.0);
  for_each_live_tap(s, d.x.data(), p, [&](const float* xin, int tap) {
    for (int ci = 0; ci < s.cin; ++ci) {
      const size_t c = sz(ci);
      double a = (double(xin[ci]) - d.mean[c]) * (double(d.gamma[c]) * d.invstd[c]) + d.beta[c];
      if (!(a > 0)) continue;
      const float* wrow = d.w.data() + (int64_t(tap) * s.cin + ci) * s.cout;
      for (int co = 0; co < s.cout; ++co) acc[sz(co)] += a * double(wrow[co]);
    }
  });
  for (int co = 0; co < s.cout; ++co) acc[sz(co)] += d.bias[sz(co)];
}

struct Check {
  std::string what;       // "cpu path vs double reference"
  std::string output;     // the tensor checked: "y" (forward), "dx", "dw", "db"
  std::string basis;      // "ref": against the double reference; "fb": against the cuDNN fallback
  int64_t checked = 0;    // output elements compared
  int64_t total = 0;      // output elements
  double max_err = 0;     // max |got - ref| / (|ref| + rms)
  double tolerance = kTolerance;
  bool passed = false;
  std::string worst;      // where the largest error is
  int64_t excused = -1;   // dx against the fallback: ReLU-mask ties excused (see mask_tie); -1: n/a
};

Check check_against_reference(const std::string& what, const Conv2dShape& s, const HostData& d,
                              const std::vector<float>& y, uint64_t seed) {
  Check c;
  c.what = what;
  c.output = "y";
  c.basis = "ref";
  c.total = out_elems(s);
  const std::vector<Pixel> px = pick_pixels(s, seed);
  std::vector<double> ref(px.size() * sz(s.cout)), acc;
  for (size_t i = 0; i < px.size(); ++i) {
    reference_pixel(s, d, px[i], acc);
    std::copy(acc.begin(), acc.end(), ref.begin() + std::ptrdiff_t(i * sz(s.cout)));
  }
  double ss = 0;
  for (double r : ref) ss += r * r;
  const double rms = ref.empty() ? 0 : std::sqrt(ss / double(ref.size()));
  bool finite = true;
  for (size_t i = 0; i < px.size(); ++i) {
    const int64_t base = ((int64_t(px[i].n) * s.ho() + px[i].y) * s.wo() + px[i].x) * s.cout;
    for (int co = 0; co < s.cout; ++co) {
      const double g = y[sz(base + co)], r = ref[i * sz(s.cout) + sz(co)];
      const double e = std::isfinite(g) ? std::fabs(g - r) / (std::fabs(r) + rms) : HUGE_VAL;
      if (!std::isfinite(g)) finite = false;
      if (e > c.max_err || (!std::isfinite(e) && c.worst.empty())) {
        c.max_err = e;
        std::ostringstream os;
        os << "image " << px[i].n << " pixel (" << px[i].y << ", " << px[i].x << ") channel " << co << ": got " << g
           << ", want " << r;
        c.worst = os.str();
      }
    }
  }
  c.checked = int64_t(px.size()) * s.cout;
  c.passed = finite && c.max_err <= kTolerance && c.checked > 0;
  return c;
}

#ifdef RPP_BENCH_CUDA
// max |got(i) - ref(i)| / (|ref(i)| + rms(ref)) over i < n (rms over the same elements); a
// non-finite got fails. excuse(i, got, ref), when given, may drop a finite element from the
// error (counted in Check::excused). where(i) names element i for Check::worst.
Check compare(const std::string& what, const std::string& output, const std::string& basis, size_t n,
              const std::function<double(size_t)>& got, const std::function<double(size_t)>& ref,
              const std::function<std::string(size_t)>& where,
              const std::function<bool(size_t, double, double)>& excuse = nullptr) {
  Check c;
  c.what = what;
  c.output = output;
  c.basis = basis;
  c.checked = int64_t(n);
  if (excuse) c.excused = 0;
  double ss = 0;
  for (size_t i = 0; i < n; ++i) ss += ref(i) * ref(i);
  const double rms = n ? std::sqrt(ss / double(n)) : 0;
  bool finite = true;
  for (size_t i = 0; i < n; ++i) {
    const double g = got(i), r = ref(i);
    double e = std::isfinite(g) ? std::fabs(g - r) / (std::fabs(r) + rms) : HUGE_VAL;
    if (!std::isfinite(g)) finite = false;
    if (std::isfinite(g) && e > c.tolerance && excuse && excuse(i, g, r)) {
      ++c.excused;
      e = 0;
    }
    if (e > c.max_err || (!std::isfinite(e) && c.worst.empty())) {
      c.max_err = e;
      std::ostringstream os;
      os << where(i) << ": got " << g << ", want " << r;
      c.worst = os.str();
    }
  }
  c.passed = finite && c.max_err <= c.tolerance;
  return c;
}

Check check_full(const std::string& what, const Conv2dShape& s, const std::vector<float>& got,
                 const std::vector<float>& ref, double tolerance = kTolerance) {
  Check c = compare(
      what, "y", "fb", ref.size(), [&](size_t i) { return double(got[i]); },
      [&](size_t i) { return double(ref[i]); },
      [&](size_t i) {
        return "output pixel " + std::to_string(int64_t(i) / s.cout) + " channel " + std::to_string(int64_t(i) % s.cout);
      });
  c.total = int64_t(ref.size());
  c.tolerance = tolerance;
  c.passed = c.max_err <= tolerance;  // a non-finite element has max_err HUGE_VAL
  return c;
}


// got (n, h, w, c), the fallback's output, against want: the double reference at the pixels px,
// c values each (basis "ref"; `output` names the tensor).
Check check_pixels(const std::string& output, const std::vector<Pixel>& px, int h, int w, int c,
                   const std::vector<float>& got, const std::vector<double>& want) {
  const size_t nc = sz(c);
  auto at = [&](size_t i) {
    const Pixel& q = px[i / nc];
    return sz(((int64_t(q.n) * h + q.y) * w + q.x) * c) + i % nc;
  };
  Check ck = compare(
      "cuDNN fallback vs double reference", output, "ref", want.size(), [&](size_t i) { return double(got[at(i)]); },
      [&](size_t i) { return want[i]; },
      [&](size_t i) {
        const Pixel& q = px[i / nc];
        return "image " + std::to_string(q.n) + " pixel (" + std::to_string(q.y) + ", " + std::to_string(q.x) +
               ") channel " + std::to_string(i % nc);
      });
  ck.total = int64_t(got.size());
  return ck;
}

// ---- references of the backward rows (cuda) ----

// bn(x) of channel c in double, the expression of reference_pixel and of the fallback's
// batchnorm_apply / bn_relu_mask_inplace.
double bn_double(const HostData& d, int c, float x) {
  const size_t k = sz(c);
  return (double(x) - d.mean[k]) * (double(d.gamma[k]) * d.invstd[k]) + d.beta[k];
}

// dx at one input pixel, every input channel, in double from the definition: the sum of
// dz(n, oy, ox, co) * w(ky, kx, ci, co) over the taps and output pixels that read (p.y, p.x)
// (oy * stride - pad + ky * dil = p.y, the same for x), then 0 where !(bn(x) > 0).
// add_dx_pixel: the sum alone, added to acc (cin doubles), for weights w (HWIO).
void add_dx_pixel(const Conv2dShape& s, const std::vector<float>& w, const std::vector<float>& dz, const Pixel& p,
                  std::vector<double>& acc) {
  const int ho = s.ho(), wo = s.wo();
  for (int ky = 0; ky < s.kh; ++ky) {
    const int ty = p.y + s.pad - ky * s.dil;
    if (ty < 0 || ty % s.stride != 0 || ty / s.stride >= ho) continue;
    for (int kx = 0; kx < s.kw; ++kx) {
      const int tx = p.x + s.pad - kx * s.dil;
      if (tx < 0 || tx % s.stride != 0 || tx / s.stride >= wo) continue;
      const float* g = dz.data() + ((int64_t(p.n) * ho + ty / s.stride) * wo + tx / s.stride) * s.cout;
      const float* wt = w.data() + (int64_t(ky) * s.kw + kx) * s.cin * s.cout;  // HWIO
      for (int ci = 0; ci < s.cin; ++ci) {
        const float* wr = wt + int64_t(ci) * s.cout;
        double sum = 0;
        for (int co = 0; co < s.cout; ++co) sum += double(g[co]) * double(wr[co]);
        acc[sz(ci)] += sum;
      }
    }
  }
}

void reference_dx_pixel(const Conv2dShape& s, const HostData& d, const std::vector<float>& dz, const Pixel& p,
                        std::vector<double>& acc) {
  acc.assign(sz(s.cin), 0.0);
  add_dx_pixel(s, d.w, dz, p, acc);
  const float* xin = d.x.data() + ((int64_t(p.n) * s.h + p.y) * s.w + p.x) * s.cin;
  for (int ci = 0; ci < s.cin; ++ci)
    if (!(bn_double(d, ci, xin[ci]) > 0)) acc[sz(ci)] = 0;
}

// dx (n, h, w, cin) against reference_dx_pixel at the input pixels pick_pixels_of chooses (Rng
// stream 101), every input channel of each.
Check check_dx_against_reference(const std::string& what, const Conv2dShape& s, const HostData& d,
                                 const std::vector<float>& dz, const std::vector<float>& dx, uint64_t seed) {
  const std::vector<Pixel> px = pick_pixels_of(s.n, s.h, s.w, double(s.kh) * s.kw * s.cin * s.cout, seed, 101);
  const size_t c = sz(s.cin);
  std::vector<double> ref(px.size() * c), acc;
  for (size_t i = 0; i < px.size(); ++i) {
    reference_dx_pixel(s, d, dz, px[i], acc);
    std::copy(acc.begin(), acc.end(), ref.begin() + std::ptrdiff_t(i * c));
  }
  auto at = [&](size_t i) {
    const Pixel& p = px[i / c];
    return sz(((int64_t(p.n) * s.h + p.y) * s.w + p.x) * s.cin) + i % c;
  };
  Check ch = compare(
      what, "dx", "ref", ref.size(), [&](size_t i) { return double(dx[at(i)]); }, [&](size_t i) { return ref[i]; },
      [&](size_t i) {
        const Pixel& p = px[i / c];
        return "image " + std::to_string(p.n) + " input pixel (" + std::to_string(p.y) + ", " + std::to_string(p.x) +
               ") channel " + std::to_string(i % c);
      });
  ch.total = in_elems(s);
  return ch;
}

// A ReLU-mask tie of the hand-written backward-data against the fallback at dx element i: the
// kernel decides bn(x) > 0 with the forward kernel's float expression (fmaf), the fallback's
// bn_relu_mask_inplace in double, so the masks may disagree where bn(x) is within rounding of 0.
// A tie: exactly one of got and want is 0 and |bn(x)| in double is at most 1e-6 of the magnitude
// of its terms (|x - mean| * |gamma * invstd| + |beta|), as tests/gpu/test_bn_relu_conv_bwd_gpu.cpp
// allows. Anywhere else a mask disagreement is an error.
bool mask_tie(const HostData& d, int cin, size_t i, double got, double want) {
  if ((got == 0) == (want == 0)) return false;
  const int c = int(int64_t(i) % cin);
  const float x = d.x[i];
  const double mag = std::fabs(double(x) - d.mean[sz(c)]) * std::fabs(double(d.gamma[sz(c)]) * d.invstd[sz(c)]) +
                     std::fabs(double(d.beta[sz(c)]));
  return std::fabs(bn_double(d, c, x)) <= 1e-6 * mag;
}

// k of the c channels (all when k >= c): 0, c - 1 and seeded random others, ascending.
std::vector<int> pick_channels(int c, int k, Rng& rng) {
  std::set<int> set;
  if (k >= c) {
    for (int i = 0; i < c; ++i) set.insert(i);
  } else {
    set.insert(0);
    set.insert(c - 1);
    while (int(set.size()) < k) set.insert(int(rng.below(uint32_t(c))));
  }
  return {set.begin(), set.end()};
}

// dw on a sample: every tap (ky, kx) of the input channels ci and output channels co, in double
// from the definition, dw(co, ky, kx, ci) = the sum over all n * ho * wo output pixels of
// relu(bn(x))(n, oy * stride - pad + ky * dil, ox * stride - pad + kx * dil, ci) * dz(n, oy, ox, co),
// zero outside the input (padding after BN-ReLU). All of dw when that fits kVerifyBudgetMacs,
// else |ci| x |co| channel pairs (at least 4 x 4 where the channels allow) within the budget.
struct FilterSample {
  std::vector<int> ci, co;
  std::vector<double> dw;  // [tap = ky * kw + kx][i][j], ci[i], co[j]
};

FilterSample reference_dw_sample(const Conv2dShape& s, const HostData& d, const std::vector<float>& dz,
                                 uint64_t seed) {
  const int ho = s.ho(), wo = s.wo(), taps = s.kh * s.kw;
  const double per_pair = double(s.n) * ho * wo * taps;
  int kci = s.cin, kco = s.cout;
  if (per_pair * s.cin * s.cout > kVerifyBudgetMacs) {
    const double pairs = std::max(16.0, kVerifyBudgetMacs / per_pair);
    kci = std::min(s.cin, std::max(4, int(std::ceil(std::sqrt(pairs)))));
    kco = std::min(s.cout, std::max(4, int(pairs / kci)));
  }
  Rng rng(seed, 103);
  FilterSample f;
  f.ci = pick_channels(s.cin, kci, rng);
  f.co = pick_channels(s.cout, kco, rng);
  const size_t ni = f.ci.size(), nj = f.co.size();
  f.dw.assign(sz(taps) * ni * nj, 0.0);
  std::vector<double> a(ni), g(nj);
  for (int n = 0; n < s.n; ++n)
    for (int oy = 0; oy < ho; ++oy)
      for (int ox = 0; ox < wo; ++ox) {
        const float* dzr = dz.data() + ((int64_t(n) * ho + oy) * wo + ox) * s.cout;
        for (size_t j = 0; j < nj; ++j) g[j] = dzr[f.co[j]];
        for (int ky = 0; ky < s.kh; ++ky) {
          const int iy = oy * s.stride - s.pad + ky * s.dil;
          if (iy < 0 || iy >= s.h) continue;
          for (int kx = 0; kx < s.kw; ++kx) {
            const int ix = ox * s.stride - s.pad + kx * s.dil;
            if (ix < 0 || ix >= s.w) continue;
            const float* xr = d.x.data() + ((int64_t(n) * s.h + iy) * s.w + ix) * s.cin;
            for (size_t i = 0; i < ni; ++i) {
              const double v = bn_double(d, f.ci[i], xr[f.ci[i]]);
              a[i] = v > 0 ? v : 0.0;
            }
            double* acc = f.dw.data() + sz(ky * s.kw + kx) * ni * nj;
            for (size_t i = 0; i < ni; ++i) {
              if (a[i] == 0) continue;
              for (size_t j = 0; j < nj; ++j) acc[i * nj + j] += a[i] * g[j];
            }
          }
        }
      }
  return f;
}

// db(co) = the sum of dz over all n * ho * wo output pixels, in double.
std::vector<double> reference_db(const Conv2dShape& s, const std::vector<float>& dz) {
  std::vector<double> db(sz(s.cout), 0.0);
  for (size_t i = 0; i < dz.size(); ++i) db[i % sz(s.cout)] += dz[i];
  return db;
}

// "dw[co][ky, kx][ci]" of a flat OHWI index.
std::string dw_entry(const Conv2dShape& s, int64_t i) {
  const int ci = int(i % s.cin);
  int64_t r = i / s.cin;
  const int kx = int(r % s.kw);
  r /= s.kw;
  const int ky = int(r % s.kh), co = int(r / s.kh);
  return "dw[cout " + std::to_string(co) + "][tap " + std::to_string(ky) + ", " + std::to_string(kx) + "][cin " +
         std::to_string(ci) + "]";
}

// dw (OHWI) against reference_dw_sample (Rng stream 103), the sampled entries only.
Check check_dw_against_reference(const std::string& what, const Conv2dShape& s, const HostData& d,
                                 const std::vector<float>& dz, const std::vector<float>& dw_ohwi, uint64_t seed) {
  const FilterSample f = reference_dw_sample(s, d, dz, seed);
  const size_t ni = f.ci.size(), nj = f.co.size(), taps = sz(s.kh * s.kw);
  auto at = [&](size_t e) {  // e = (tap * ni + i) * nj + j -> the flat OHWI index of (co[j], tap, ci[i])
    const size_t j = e % nj, i = (e / nj) % ni, tap = e / (ni * nj);
    return (sz(f.co[j]) * taps + tap) * sz(s.cin) + sz(f.ci[i]);
  };
  Check c = compare(
      what, "dw", "ref", f.dw.size(), [&](size_t e) { return double(dw_ohwi[at(e)]); },
      [&](size_t e) { return f.dw[e]; }, [&](size_t e) { return dw_entry(s, int64_t(at(e))); });
  c.total = w_elems(s);
  return c;
}

// db against reference_db, every channel.
Check check_db_against_reference(const std::string& what, const Conv2dShape& s, const std::vector<float>& dz,
                                 const std::vector<float>& db) {
  const std::vector<double> ref = reference_db(s, dz);
  Check c = compare(
      what, "db", "ref", ref.size(), [&](size_t i) { return double(db[i]); }, [&](size_t i) { return ref[i]; },
      [&](size_t i) { return "db[cout " + std::to_string(i) + "]"; });
  c.total = s.cout;
  return c;
}

// The hand-written kernels' outputs against the fallback's, every element: dx (ReLU-mask ties
// excused, see mask_tie), dw (OHWI), db.
Check check_dx_full(const std::string& what, const Conv2dShape& s, const HostData& d, const std::vector<float>& got,
                    const std::vector<float>& ref) {
  Check c = compare(
      what, "dx", "fb", ref.size(), [&](size_t i) { return double(got[i]); }, [&](size_t i) { return double(ref[i]); },
      [&](size_t i) {
        return "input pixel " + std::to_string(int64_t(i) / s.cin) + " channel " + std::to_string(int64_t(i) % s.cin);
      },
      [&](size_t i, double g, double r) { return mask_tie(d, s.cin, i, g, r); });
  c.total = int64_t(ref.size());
  return c;
}

Check check_dw_full(const std::string& what, const Conv2dShape& s, const std::vector<float>& got,
                    const std::vector<float>& ref) {
  Check c = compare(
      what, "dw", "fb", ref.size(), [&](size_t i) { return double(got[i]); }, [&](size_t i) { return double(ref[i]); },
      [&](size_t i) { return dw_entry(s, int64_t(i)); });
  c.total = int64_t(ref.size());
  return c;
}

Check check_db_full(const std::string& what, const std::vector<float>& got, const std::vector<float>& ref) {
  Check c = compare(
      what, "db", "fb", ref.size(), [&](size_t i) { return double(got[i]); }, [&](size_t i) { return double(ref[i]); },
      [&](size_t i) { return "db[cout " + std::to_string(i) + "]"; });
  c.total = int64_t(ref.size());
  return c;
}
#endif

// ---------------------------------------------------------------------------------------------
// Timing results

struct Stats {
  double median_us = 0, min_us = 0, max_us = 0, mean_us = 0;
  int repeats = 0;
};

Stats stats_of(std::vector<double> us) {
  Stats st;
  if (us.empty()) return st;
  std::sort(us.begin(), us.end());
  const size_t n = us.size();
  st.median_us = n % 2 ? us[n / 2] : 0.5 * (us[n / 2 - 1] + us[n / 2]);
  st.min_us = us.front();
  st.max_us = us.back();
  double sum = 0;
  for (double v : us) sum += v;
  st.mean_us = sum / double(n);
  st.repeats = int(n);
  return st;
}

struct PathTiming {
  std::string path;  // "cpu", "fallback", "cudnn_conv", "handwritten", "fallback_tf32", "handwritten_tf32", ...
  std::string label; // as printed
  Stats st;
  int check = -1;       // index in KernelRow::checks of this path's own verification, or -1
  double speedup = 0;   // the path's baseline (fallback of the same math) / this path, 0 when none
};

struct KernelRow {
  ShapeRow shape;
  std::string pass = "forward";  // "forward", "backward_data" or "backward_filter" (cuda)
  int64_t flops = 0, bytes = 0;
  std::vector<Check> checks;
  std::vector<PathTiming> timings;
  bool failed = false;
  std::string note;        // e.g. why the hand-written kernel did not run
  std::string algorithms;  // cuDNN's choice (cuda)
  double speedup = 0;      // fallback / hand-written, 0 when not both timed
};

struct TimelineResult {
  bool ran = false;
  std::string graph;       // description of the graph that ran
  std::string executor;    // executor->describe()
  std::vector<std::string> node_names, node_ops;
  std::vector<double> node_ms;
  double profiled_ms = 0;  // sum of node times
  double wall_ms = 0;      // host wall time of the profiled step (cpu)
  Stats replay;            // cuda: CUDA-graph replays (step time), in µs
  double images_per_s = 0;
  std::vector<double> losses;
  bool loss_finite = false;
  size_t device_bytes = 0;  // cuda: what the executor holds (arena, persistent block, workspace)
  size_t device_used_delta = 0;  // cuda: cudaMemGetInfo's used memory after the runs minus before the executor
};

// Inference: set_input (host) + run + read_output (host) per call, as the Predictor does.
struct InferenceResult {
  int batch = 0;
  Stats call;               // µs per call
  double images_per_s = 0;
  bool finite = false;
  bool bf16 = false;
  double bf16_l2 = -1;  // bf16: relative L2 distance of the logits from the fp32 executor's
  size_t device_bytes = 0, device_used_delta = 0;  // cuda
};

struct Environment {
  std::string device;          // "cpu", "cuda:0"
  std::string description;
  double peak_gbs = 0;         // measured (cuda)
  int64_t l2_bytes = 0;        // cuda
  int repeats = 0, warmup = 0;
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

std::string now_utc() {
  const std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t c = line.find(':');
      if (c != std::string::npos) {
        std::string m = line.substr(c + 1);
        const size_t b = m.find_first_not_of(' ');
        return b == std::string::npos ? "" : m.substr(b);
      }
    }
  return "";
}

// ---------------------------------------------------------------------------------------------
// CPU kernels

std::vector<double> time_host(int warmup, int repeats, const std::function<void()>& run) {
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> us;
  for (int r = 0; r < repeats; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const auto t1 = std::chrono::steady_clock::now();
    us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
  }
  return us;
}

KernelRow bench_cpu_shape(const ShapeRow& row, const Options& o, const Environment& env) {
  const size_t index = row.id;
  KernelRow k;
  k.shape = row;
  const Conv2dShape& s = row.s;
  k.flops = 2 * macs(s);
  k.bytes = model_bytes(s);
  const HostData d = make_data(s, uint64_t(o.seed), index);
  std::vector<float> a(sz(in_elems(s))), y(sz(out_elems(s)), std::nanf(""));
  std::vector<float> ws(std::max<size_t>(1, cpu::conv2d_forward_workspace(s)));
  const int64_t count = int64_t(s.n) * s.h * s.w;
  auto run = [&] {
    cpu::batchnorm_apply(count, s.cin, d.x.data(), d.gamma.data(), d.beta.data(), d.mean.data(), d.invstd.data(),
                         true, a.data());
    cpu::conv2d_forward(s, a.data(), d.w.data(), d.bias.data(), y.data(), ws.data());
  };
  run();
  if (corrupt(index, "forward")) y[0] += 1.f;
  k.checks.push_back(check_against_reference("cpu path vs double reference", s, d, y, uint64_t(o.seed) + index));
  if (!k.checks.back().passed) {
    k.failed = true;
    return k;
  }
  k.timings.push_back({"cpu", "cpu path (BN-ReLU + conv)", stats_of(time_host(env.warmup, env.repeats, run))});
  return k;
}

// ---------------------------------------------------------------------------------------------
// CUDA kernels

#ifdef RPP_BENCH_CUDA

#define BENCH_CU(call)                                                                            \
  do {                                                                                            \
    const cudaError_t bench_err_ = (call);                                                        \
    if (bench_err_ != cudaSuccess) ::rpp::fail(#call, " failed: ", cudaGetErrorString(bench_err_)); \
  } while (0)

class DevMem {
 public:
  explicit DevMem(size_t bytes) : bytes_(bytes) { BENCH_CU(cudaMalloc(&p_, std::max<size_t>(bytes, 256))); }
  ~DevMem() {
    if (p_) (void)cudaFree(p_);
  }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  float* f() const { return static_cast<float*>(p_); }
  void* p() const { return p_; }
  size_t bytes() const { return bytes_; }

 private:
  void* p_ = nullptr;
  size_t bytes_;
};

std::unique_ptr<DevMem> upload(const std::vector<float>& h, cudaStream_t st) {
  auto m = std::make_unique<DevMem>(h.size() * sizeof(float));
  BENCH_CU(cudaMemcpyAsync(m->p(), h.data(), h.size() * sizeof(float), cudaMemcpyHostToDevice, st));
  BENCH_CU(cudaStreamSynchronize(st));
  return m;
}

std::vector<float> download(const DevMem& m, size_t n, cudaStream_t st) {
  std::vector<float> h(n);
  BENCH_CU(cudaMemcpyAsync(h.data(), m.p(), n * sizeof(float), cudaMemcpyDeviceToHost, st));
  BENCH_CU(cudaStreamSynchronize(st));
  return h;
}

class Events {
 public:
  explicit Events(size_t n) : ev_(n, nullptr) {
    for (cudaEvent_t& e : ev_) BENCH_CU(cudaEventCreate(&e));
  }
  ~Events() {
    for (cudaEvent_t e : ev_)
      if (e) (void)cudaEventDestroy(e);
  }
  Events(const Events&) = delete;
  Events& operator=(const Events&) = delete;
  cudaEvent_t operator[](size_t i) const { return ev_[i]; }

 private:
  std::vector<cudaEvent_t> ev_;
};

struct Gpu {
  int device = 0;
  cudaStream_t stream = nullptr;
  cudnnHandle_t handle = nullptr;
  std::unique_ptr<DevMem> flush;
  Gpu() = default;
  Gpu(const Gpu&) = delete;
  Gpu& operator=(const Gpu&) = delete;
  ~Gpu() {
    flush.reset();
    if (stream) (void)cudaStreamSynchronize(stream);
    if (handle) (void)cudnnDestroy(handle);
    if (stream) (void)cudaStreamDestroy(stream);
  }
};

// Each launch preceded by an L2 flush outside the timed interval; returns µs per launch.
std::vector<double> time_gpu(Gpu& g, int warmup, int repeats, const std::function<void()>& launch) {
  for (int i = 0; i < warmup; ++i) launch();
  Events ev(2 * sz(repeats));
  for (int r = 0; r < repeats; ++r) {
    BENCH_CU(cudaMemsetAsync(g.flush->p(), r & 0xFF, g.flush->bytes(), g.stream));
    BENCH_CU(cudaEventRecord(ev[2 * sz(r)], g.stream));
    launch();
    BENCH_CU(cudaEventRecord(ev[2 * sz(r) + 1], g.stream));
  }
  BENCH_CU(cudaStreamSynchronize(g.stream));
  BENCH_CU(cudaGetLastError());
  std::vector<double> us;
  for (int r = 0; r < repeats; ++r) {
    float ms = 0;
    BENCH_CU(cudaEventElapsedTime(&ms, ev[2 * sz(r)], ev[2 * sz(r) + 1]));
    us.push_back(double(ms) * 1e3);
  }
  return us;
}

// Device-to-device copy bandwidth (read + write), median of 10 copies after 3, in GB/s.
double measure_peak_bandwidth(Gpu& g) {
  size_t free_b = 0, total_b = 0;
  BENCH_CU(cudaMemGetInfo(&free_b, &total_b));
  size_t half = std::min<size_t>(size_t(512) << 20, free_b / 8) / 256 * 256;
  if (half < (size_t(16) << 20)) fail("too little free device memory to measure the bandwidth (", free_b, " bytes)");
  DevMem a(half), b(half);
  BENCH_CU(cudaMemsetAsync(a.p(), 1, half, g.stream));
  const Stats st = stats_of(time_gpu(g, 3, 10, [&] {
    BENCH_CU(cudaMemcpyAsync(b.p(), a.p(), half, cudaMemcpyDeviceToDevice, g.stream));
  }));
  return 2.0 * double(half) / (st.median_us * 1e-6) / 1e9;
}

std::unique_ptr<Gpu> open_gpu(int device, Environment& env) {
  const int count = cuda::device_count();
  if (count == 0) fail("--device cuda:", device, ": no usable CUDA device (", cuda::device_count_error(), ")");
  if (device < 0 || device >= count)
    fail("--device cuda:", device, ": this machine has ", count, " CUDA device(s) (cuda:0 to cuda:", count - 1, ")");
  BENCH_CU(cudaSetDevice(device));
  auto g = std::make_unique<Gpu>();
  g->device = device;
  BENCH_CU(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
  RPP_CUDNN_CHECK(cudnnCreate(&g->handle));
  RPP_CUDNN_CHECK(cudnnSetStream(g->handle, g->stream));
  cudaDeviceProp prop{};
  BENCH_CU(cudaGetDeviceProperties(&prop, device));
  env.l2_bytes = prop.l2CacheSize;
  const size_t flush = std::max<size_t>(2 * size_t(std::max(prop.l2CacheSize, 0)), size_t(1) << 20);
  g->flush = std::make_unique<DevMem>(flush);
  env.description = cuda::device_description(device);
  env.peak_gbs = measure_peak_bandwidth(*g);
  return g;
}

// Verifies one tensor-core path against the fp32 fallback's y (output poisoned first), then
// times it against `baseline` (the index of the fallback timing of the same math). False when
// the check failed (the row is then marked FAILED and nothing more of it is timed).
bool verify_and_time_tc(Gpu& g, KernelRow& k, const Conv2dShape& s, const std::string& path, const std::string& label,
                        double tolerance, DevMem& y, const std::vector<float>& ref, size_t baseline,
                        const Environment& env, const std::function<void()>& launch) {
  BENCH_CU(cudaMemsetAsync(y.p(), 0xFF, y.bytes(), g.stream));
  launch();
  BENCH_CU(cudaStreamSynchronize(g.stream));
  BENCH_CU(cudaGetLastError());
  k.checks.push_back(check_full(label + " vs fp32 fallback", s, download(y, ref.size(), g.stream), ref, tolerance));
  k.checks.back().basis = "fb_tc";  // printed with its path, not in the fp32 kernel's "fb" summary
  if (!k.checks.back().passed) {
    k.failed = true;
    return false;
  }
  PathTiming t{path, label, stats_of(time_gpu(g, env.warmup, env.repeats, launch)), int(k.checks.size()) - 1, 0.0};
  t.speedup = k.timings.at(baseline).st.median_us / t.st.median_us;
  k.timings.push_back(std::move(t));
  return true;
}

// cuDNN's own bf16 forward convolution: bf16 NHWC x and y, bf16 OHWI weights, fp32 accumulation,
// tensor-op math, the first algorithm cuDNN's heuristics rank supported (no bias). The bench's
// native baseline of the BF16 kernel; the executor's bf16 cuDNN path stages fp32 instead
// (docs/design.md, "The cuDNN path in bf16"). Throws rpp::Error when cuDNN refuses the shape.
class CudnnBf16Forward {
 public:
  CudnnBf16Forward(cudnnHandle_t h, const Conv2dShape& s) : handle_(h) {
    try {
      RPP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&x_));
      RPP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(x_, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, s.n, s.cin, s.h, s.w));
      RPP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&y_));
      RPP_CUDNN_CHECK(
          cudnnSetTensor4dDescriptor(y_, CUDNN_TENSOR_NHWC, CUDNN_DATA_BFLOAT16, s.n, s.cout, s.ho(), s.wo()));
      RPP_CUDNN_CHECK(cudnnCreateFilterDescriptor(&w_));
      RPP_CUDNN_CHECK(cudnnSetFilter4dDescriptor(w_, CUDNN_DATA_BFLOAT16, CUDNN_TENSOR_NHWC, s.cout, s.cin, s.kh, s.kw));
      RPP_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&conv_));
      RPP_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(conv_, s.pad, s.pad, s.stride, s.stride, s.dil, s.dil,
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
      RPP_CUDNN_CHECK(cudnnSetConvolutionMathType(conv_, CUDNN_TENSOR_OP_MATH));
      constexpr int kMax = 16;
      cudnnConvolutionFwdAlgoPerf_t perf[kMax];
      int returned = 0;
      RPP_CUDNN_CHECK(cudnnGetConvolutionForwardAlgorithm_v7(h, x_, w_, conv_, y_, kMax, &returned, perf));
      int pick = -1;
      for (int i = 0; i < returned && pick < 0; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS) pick = i;
      if (pick < 0) fail("cuDNN offers no bf16 forward algorithm for ", shape_text(s));
      algo_ = perf[pick].algo;
      RPP_CUDNN_CHECK(cudnnSetConvolutionMathType(conv_, perf[pick].mathType));
      RPP_CUDNN_CHECK(cudnnGetConvolutionForwardWorkspaceSize(h, x_, w_, conv_, y_, algo_, &ws_bytes_));
      ws_ = std::make_unique<DevMem>(ws_bytes_);
    } catch (...) {
      destroy();
      throw;
    }
  }
  ~CudnnBf16Forward() { destroy(); }
  CudnnBf16Forward(const CudnnBf16Forward&) = delete;
  CudnnBf16Forward& operator=(const CudnnBf16Forward&) = delete;
  void forward(const cuda::bf16* x, const cuda::bf16* w_ohwi, cuda::bf16* y) const {
    const float one = 1.f, zero = 0.f;
    RPP_CUDNN_CHECK(cudnnConvolutionForward(handle_, &one, x_, x, w_, w_ohwi, conv_, algo_, ws_->p(), ws_bytes_, &zero,
                                            y_, y));
  }

 private:
  void destroy() noexcept {
    if (conv_) (void)cudnnDestroyConvolutionDescriptor(conv_);
    if (w_) (void)cudnnDestroyFilterDescriptor(w_);
    if (y_) (void)cudnnDestroyTensorDescriptor(y_);
    if (x_) (void)cudnnDestroyTensorDescriptor(x_);
    conv_ = nullptr;
    w_ = nullptr;
    x_ = y_ = nullptr;
  }
  cudnnHandle_t handle_;
  cudnnTensorDescriptor_t x_ = nullptr, y_ = nullptr;
  cudnnFilterDescriptor_t w_ = nullptr;
  cudnnConvolutionDescriptor_t conv_ = nullptr;
  cudnnConvolutionFwdAlgo_t algo_ = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  size_t ws_bytes_ = 0;
  std::unique_ptr<DevMem> ws_;
};

// A multiplied node's shape (fuse_conv_mul): the product in the TF32 kernel's epilogue (launch(y,
// m, c)) against the TF32 fallback (into y_plain) followed by mul(); verified exactly against
// `plain` (the TF32 kernel's output) times the multiplier on the host. False when the check failed.
bool bench_tc_product(Gpu& g, KernelRow& k, const Conv2dShape& s, const Environment& env,
                      const std::vector<float>& plain, DevMem& y_plain, const std::function<void()>& fallback,
                      const std::function<void(float*, const float*, float*)>& launch) {
  const cudaStream_t st = g.stream;
  const size_t ny = plain.size();
  std::vector<float> m(ny);
  Rng rng(uint64_t(k.shape.id), 9500);
  for (float& v : m) v = rng.normal();
  const auto dm = upload(m, st);
  DevMem y(ny * sizeof(float)), c(ny * sizeof(float));
  std::vector<float> want(ny);
  for (size_t i = 0; i < ny; ++i) want[i] = plain[i] * m[i];
  BENCH_CU(cudaMemsetAsync(y.p(), 0xFF, y.bytes(), st));
  launch(y.f(), dm->f(), c.f());
  BENCH_CU(cudaStreamSynchronize(st));
  BENCH_CU(cudaGetLastError());
  std::vector<float> got = download(y, ny, st);
  if (corrupt(k.shape.id, "forward")) got[0] += 1.f;
  k.checks.push_back(check_full("hand-written TF32 + product in the epilogue vs its plain output times m", s, got,
                                want, 0.0));
  k.checks.back().basis = "fb_tc";
  if (!k.checks.back().passed) {
    k.failed = true;
    return false;
  }
  auto fallback_mul = [&] {
    fallback();
    cuda::mul(int64_t(ny), y_plain.f(), dm->f(), y.f(), st);
  };
  const size_t base = k.timings.size();
  k.timings.push_back({"fallback_tf32_mul", "cuDNN fallback, TF32, then mul",
                       stats_of(time_gpu(g, env.warmup, env.repeats, fallback_mul))});
  PathTiming t{"handwritten_tf32_mul", "hand-written TF32, product in the epilogue",
               stats_of(time_gpu(g, env.warmup, env.repeats, [&] { launch(y.f(), dm->f(), c.f()); })),
               int(k.checks.size()) - 1, 0.0};
  t.speedup = k.timings[base].st.median_us / t.st.median_us;
  k.timings.push_back(std::move(t));
  return true;
}

KernelRow bench_cuda_shape(Gpu& g, const ShapeRow& row, const Options& o, const Environment& env) {
  const size_t index = row.id;
  KernelRow k;
  k.shape = row;
  const Conv2dShape& s = row.s;
  k.flops = 2 * macs(s);
  k.bytes = model_bytes(s);
  const HostData d = make_data(s, uint64_t(o.seed), index);
  std::vector<float> w_ohwi(d.w.size());
  cuda::repack_hwio_to_ohwi_host(s.kh, s.kw, s.cin, s.cout, d.w.data(), w_ohwi.data());
  const cudaStream_t st = g.stream;
  const auto x = upload(d.x, st), w = upload(w_ohwi, st), bias = upload(d.bias, st);
  const auto gamma = upload(d.gamma, st), beta = upload(d.beta, st), mean = upload(d.mean, st),
             invstd = upload(d.invstd, st);
  const size_t ny = sz(out_elems(s));
  DevMem staged(sz(in_elems(s)) * sizeof(float)), yref(ny * sizeof(float)), yhw(ny * sizeof(float));
  cuda::CudnnConv conv(s);
  conv.choose_algorithms(g.handle, /*deterministic=*/true, /*allow_tf32=*/false, nullptr, size_t(1) << 30);
  k.algorithms = conv.describe_algorithms();
  DevMem ws(conv.forward_workspace_bytes());
  const int64_t count = int64_t(s.n) * s.h * s.w;
  auto conv_only = [&] { conv.forward(g.handle, staged.f(), w->f(), bias->f(), yref.f(), ws.p()); };
  auto fallback = [&] {
    cuda::batchnorm_apply(count, s.cin, x->f(), gamma->f(), beta->f(), mean->f(), invstd->f(), true, staged.f(), st);
    conv_only();
  };
  auto handwritten = [&] {
    cuda::bn_relu_conv_forward(s, x->f(), gamma->f(), beta->f(), mean->f(), invstd->f(), w->f(), bias->f(), yhw.f(),
                               st);
  };

  // Verify: outputs poisoned (NaN) first, so an element nobody wrote fails.
  BENCH_CU(cudaMemsetAsync(yref.p(), 0xFF, yref.bytes(), st));
  fallback();
  BENCH_CU(cudaStreamSynchronize(st));
  BENCH_CU(cudaGetLastError());
  std::vector<float> ref = download(yref, ny, st);
  const bool can_hw = cuda::bn_relu_conv_can_run(s);
  if (!can_hw && corrupt(index, "forward")) ref[0] += 1.f;
  k.checks.push_back(
      check_against_reference("cuDNN fallback vs double reference", s, d, ref, uint64_t(o.seed) + index));
  if (!k.checks.back().passed) {
    k.failed = true;
    return k;
  }
  if (can_hw) {
    BENCH_CU(cudaMemsetAsync(yhw.p(), 0xFF, yhw.bytes(), st));
    handwritten();
    BENCH_CU(cudaStreamSynchronize(st));
    BENCH_CU(cudaGetLastError());
    std::vector<float> got = download(yhw, ny, st);
    if (corrupt(index, "forward")) got[0] += 1.f;
    k.checks.push_back(check_full("hand-written vs cuDNN fallback", s, got, ref));
    if (!k.checks.back().passed) {
      k.failed = true;
      return k;
    }
  } else {
    k.note = "the hand-written kernel cannot run this shape (bn_relu_conv_can_run)";
  }

  // Time (the conv-alone row re-runs the verified fallback's second half on its staged input).
  k.timings.push_back(
      {"fallback", "cuDNN fallback (BN-ReLU + conv)", stats_of(time_gpu(g, env.warmup, env.repeats, fallback))});
  k.timings.push_back(
      {"cudnn_conv", "  cuDNN conv alone", stats_of(time_gpu(g, env.warmup, env.repeats, conv_only))});
  if (can_hw) {
    k.timings.push_back(
        {"handwritten", "hand-written fused", stats_of(time_gpu(g, env.warmup, env.repeats, handwritten))});
    k.speedup = k.timings[0].st.median_us / k.timings[2].st.median_us;
    k.timings.back().speedup = k.speedup;
  }

  // Tensor cores: the same chain with cuDNN's TF32 allowed (the baseline of the TF32 kernel), then
  // cuDNN's native bf16 convolution (the BF16 kernel's baseline when cuDNN takes the shape, else
  // the TF32 fallback is).
  if (!cuda::bn_relu_conv_tc_can_run(s, cuda::ConvMath::Tf32)) return k;
  cuda::CudnnConv conv_tf32(s);
  conv_tf32.choose_algorithms(g.handle, /*deterministic=*/true, /*allow_tf32=*/true, nullptr, size_t(1) << 30);
  DevMem ws_tf32(conv_tf32.forward_workspace_bytes());
  auto fallback_tf32 = [&] {
    cuda::batchnorm_apply(count, s.cin, x->f(), gamma->f(), beta->f(), mean->f(), invstd->f(), true, staged.f(), st);
    conv_tf32.forward(g.handle, staged.f(), w->f(), bias->f(), yhw.f(), ws_tf32.p());
  };
  const size_t base = k.timings.size();
  if (!verify_and_time_tc(g, k, s, "fallback_tf32", "cuDNN fallback, TF32 allowed", kTf32Tolerance, yhw, ref, 0, env,
                          fallback_tf32))
    return k;
  auto tc = [&](cuda::ConvMath m) {
    return [&, m] {
      cuda::bn_relu_conv_tc_forward(s, m, x->f(), gamma->f(), beta->f(), mean->f(), invstd->f(), w->f(), bias->f(),
                                    yhw.f(), nullptr, nullptr, nullptr, st);
    };
  };
  if (!verify_and_time_tc(g, k, s, "handwritten_tf32", "hand-written, TF32 tensor cores", kTf32Tolerance, yhw, ref,
                          base, env, tc(cuda::ConvMath::Tf32)))
    return k;
  // The native bf16 baseline: BN-ReLU of a bf16 x staged in bf16 (two passes) and cuDNN's bf16
  // convolution, verified against the fp32 reference without the bias (bf16 tolerance). When
  // cuDNN refuses the shape the row says so, and the BF16 kernel's speed-up stays against TF32.
  size_t base_bf16 = base;
  try {
    CudnnBf16Forward conv_bf16(g.handle, s);
    const size_t nx = sz(in_elems(s)), nw = sz(w_elems(s));
    DevMem xh(nx * 2), wh(nw * 2), stagedh(nx * 2), yh(ny * 2);
    auto* xb = static_cast<cuda::bf16*>(xh.p());
    auto* wb = static_cast<cuda::bf16*>(wh.p());
    auto* sb = static_cast<cuda::bf16*>(stagedh.p());
    auto* yb = static_cast<cuda::bf16*>(yh.p());
    cuda::convert(int64_t(nx), x->f(), xb, st);
    cuda::convert(int64_t(nw), w->f(), wb, st);
    auto cudnn_bf16 = [&] {
      cuda::batchnorm_apply(count, s.cin, xb, gamma->f(), beta->f(), mean->f(), invstd->f(), true, staged.f(), st);
      cuda::convert(int64_t(nx), staged.f(), sb, st);
      conv_bf16.forward(sb, wb, yb);
    };
    std::vector<float> ref_nobias(ref);
    for (size_t i = 0; i < ny; ++i) ref_nobias[i] -= d.bias[i % sz(s.cout)];
    BENCH_CU(cudaMemsetAsync(yh.p(), 0xFF, yh.bytes(), st));
    cudnn_bf16();
    cuda::convert(int64_t(ny), static_cast<const cuda::bf16*>(yb), yhw.f(), st);
    BENCH_CU(cudaStreamSynchronize(st));
    BENCH_CU(cudaGetLastError());
    k.checks.push_back(check_full("cuDNN bf16 (no bias) vs fp32 reference", s, download(yhw, ny, st), ref_nobias,
                                  kBf16Tolerance));
    k.checks.back().basis = "fb_tc";
    if (!k.checks.back().passed) {
      k.failed = true;
      return k;
    }
    PathTiming t{"cudnn_bf16", "cuDNN bf16 (BN-ReLU staged in bf16, no bias)",
                 stats_of(time_gpu(g, env.warmup, env.repeats, cudnn_bf16)), int(k.checks.size()) - 1, 0.0};
    t.speedup = k.timings.at(base).st.median_us / t.st.median_us;
    base_bf16 = k.timings.size();
    k.timings.push_back(std::move(t));
  } catch (const Error& e) {  // cuDNN refused the shape or the bf16 data type: no baseline row
    k.note += (k.note.empty() ? "" : "; ") + std::string("cuDNN bf16: ") + e.what();
  }
  if (!verify_and_time_tc(g, k, s, "handwritten_bf16", "hand-written, BF16 tensor cores", kBf16Tolerance, yhw, ref,
                          base_bf16, env, tc(cuda::ConvMath::Bf16)))
    return k;

  // The epilogue variants of the attention gates' shapes, against the TF32 fallback followed by the
  // unfused kernel; each verified exactly against the host's pool or product of the TF32 kernel's
  // plain output (itself verified above).
  tc(cuda::ConvMath::Tf32)();
  BENCH_CU(cudaStreamSynchronize(st));
  const std::vector<float> full = download(yhw, ny, st);
  if (row.multiplied && !bench_tc_product(g, k, s, env, full, yhw, fallback_tf32, [&](float* y, const float* m, float* c) {
        cuda::bn_relu_conv_tc_forward_mul(s, cuda::ConvMath::Tf32, cuda::Storage::F32, x->f(), gamma->f(), beta->f(),
                                          mean->f(), invstd->f(), w->f(), bias->f(), cuda::Storage::F32, y, m, c,
                                          nullptr, nullptr, nullptr, st);
      }))
    return k;
  if (!row.pooled || s.ho() % 2 || s.wo() % 2) return k;
  const size_t np = ny / 4;
  DevMem yp(np * sizeof(float)), argmax(np);
  auto* arg = static_cast<uint8_t*>(argmax.p());
  std::vector<float> want(np);
  cpu::maxpool2_forward(s.n, s.ho(), s.wo(), s.cout, full.data(), want.data());
  auto fallback_tf32_pool = [&] {
    fallback_tf32();
    cuda::maxpool2_forward(s.n, s.ho(), s.wo(), s.cout, yhw.f(), yp.f(), arg, st);
  };
  auto tc_pool = [&] {
    cuda::bn_relu_conv_tc_forward_maxpool(s, cuda::ConvMath::Tf32, cuda::Storage::F32, x->f(), gamma->f(), beta->f(),
                                          mean->f(), invstd->f(), w->f(), bias->f(), cuda::Storage::F32, yp.f(), arg,
                                          nullptr, nullptr, nullptr, st);
  };
  BENCH_CU(cudaMemsetAsync(yp.p(), 0xFF, yp.bytes(), st));
  tc_pool();
  BENCH_CU(cudaStreamSynchronize(st));
  BENCH_CU(cudaGetLastError());
  std::vector<float> got = download(yp, np, st);
  if (corrupt(index, "forward")) got[0] += 1.f;
  k.checks.push_back(check_full("hand-written TF32 + max pool in the epilogue vs the pool of its full output", s, got,
                                want, 0.0));
  k.checks.back().basis = "fb_tc";
  if (!k.checks.back().passed) {
    k.failed = true;
    return k;
  }
  const size_t pool_base = k.timings.size();
  k.timings.push_back({"fallback_tf32_pool", "cuDNN fallback, TF32, then max pool",
                       stats_of(time_gpu(g, env.warmup, env.repeats, fallback_tf32_pool))});
  PathTiming t{"handwritten_tf32_pool", "hand-written TF32, max pool in the epilogue",
               stats_of(time_gpu(g, env.warmup, env.repeats, tc_pool)), int(k.checks.size()) - 1, 0.0};
  t.speedup = k.timings[pool_base].st.median_us / t.st.median_us;
  k.timings.push_back(std::move(t));
  return k;
}

// ---- the fused ASPP (ConvBnSum, kernels/cuda/conv_bn_sum.cuh; ConvSumBwdData,
// kernels/cuda/bn_relu_conv_bwd_tc.cuh) ----

// The cuDNN convolutions of an ASPP row's branches, strict fp32 and with TF32 allowed
// (deterministic algorithms, a 1 GiB workspace limit), and the largest workspace of the pass run.
struct BranchConvs {
  std::vector<std::unique_ptr<cuda::CudnnConv>> fp32, tf32;
  size_t ws_bytes = 0;
};

BranchConvs branch_convs(Gpu& g, const std::vector<Conv2dShape>& branches, bool backward_data) {
  BranchConvs bc;
  for (const Conv2dShape& b : branches)
    for (bool tf32 : {false, true}) {
      auto c = std::make_unique<cuda::CudnnConv>(b);
      c->choose_algorithms(g.handle, /*deterministic=*/true, tf32, nullptr, size_t(1) << 30);
      bc.ws_bytes = std::max(bc.ws_bytes, backward_data ? c->backward_data_workspace_bytes()
                                                        : c->forward_workspace_bytes());
      (tf32 ? bc.tf32 : bc.fp32).push_back(std::move(c));
    }
  return bc;
}

// The RPP_BENCH_CORRUPT_ROW test hook: adds 1 to the first element of a checked output.
void corrupt_first_element(DevMem& y, cudaStream_t st) {
  float first = 0.f;
  BENCH_CU(cudaMemcpyAsync(&first, y.p(), sizeof(float), cudaMemcpyDeviceToHost, st));
  BENCH_CU(cudaStreamSynchronize(st));
  first += 1.f;
  BENCH_CU(cudaMemcpyAsync(y.p(), &first, sizeof(float), cudaMemcpyHostToDevice, st));
  BENCH_CU(cudaStreamSynchronize(st));
}

// The ConvBnSum nodes of the inference graph (the two ASPP blocks), in graph order.
std::vector<AsppRow> aspp_rows(int batch, int size) {
  ModelConfig cfg;
  cfg.fuse = true;
  const ModelGraph m = build_resunetpp(cfg, batch, size, size, /*training=*/false);
  std::vector<AsppRow> rows;
  for (const Node& n : m.graph.nodes())
    if (n.op == OpKind::ConvBnSum) rows.push_back({{rows.size(), n.conv.shape, {n.name}}, n.branches.shapes});
  return rows;
}

// The ConvSumBwdData nodes of the training graph (the two ASPP blocks' input gradients), in
// graph order.
std::vector<AsppRow> aspp_backward_rows(int batch, int size, size_t first_id) {
  ModelConfig cfg;
  cfg.fuse = true;
  ModelGraph m = build_resunetpp(cfg, batch, size, size, /*training=*/true);
  append_backward(m.graph, m.loss);
  std::vector<AsppRow> rows;
  for (const Node& n : m.graph.nodes())
    if (n.op == OpKind::ConvSumBwdData)
      rows.push_back({{first_id + rows.size(), n.conv.shape, {n.name}}, n.branches.shapes, /*backward=*/true});
  return rows;
}

struct AsppBranchData {
  std::vector<float> w, bias, gamma, beta, mean, var;  // w HWIO
};

// y at one output pixel, every channel, in double: sum over the branches of
// (conv_b(x) + bias_b - mean_b) * gamma_b / sqrt(var_b + eps) + beta_b.
void reference_aspp_pixel(const AsppRow& r, const std::vector<float>& x, const std::vector<AsppBranchData>& br,
                          double eps, const Pixel& p, std::vector<double>& acc) {
  const Conv2dShape& s0 = r.branches[0];
  acc.assign(sz(s0.cout), 0.0);
  std::vector<double> conv(sz(s0.cout));
  for (size_t b = 0; b < r.branches.size(); ++b) {
    const Conv2dShape& s = r.branches[b];
    const AsppBranchData& d = br[b];
    std::fill(conv.begin(), conv.end(), 0.0);
    for_each_live_tap(s, x.data(), p, [&](const float* xin, int tap) {
      for (int ci = 0; ci < s.cin; ++ci) {
        const float* wrow = d.w.data() + (int64_t(tap) * s.cin + ci) * s.cout;
        for (int co = 0; co < s.cout; ++co) conv[sz(co)] += double(xin[ci]) * double(wrow[co]);
      }
    });
    for (int co = 0; co < s.cout; ++co) {
      const size_t c = sz(co);
      acc[c] += (conv[c] + d.bias[c] - d.mean[c]) * (double(d.gamma[c]) / std::sqrt(double(d.var[c]) + eps)) + d.beta[c];
    }
  }
}

// One ASPP row: the fallback as the executor's cuDNN path runs a ConvBnSum node (per branch the
// cuDNN conv into a buffer, cuda::batchnorm_forward_eval, cuda::add into y), fp32 and with TF32
// allowed, and the hand-written kernel with TF32 and BF16 operands. The fp32 fallback is checked
// against the double reference (a subset of the pixels on large shapes), the others against it.
KernelRow bench_cuda_aspp(Gpu& g, const AsppRow& a, const Options& o, const Environment& env) {
  const size_t index = a.row.id;
  const int nb = int(a.branches.size());
  const double eps = 1e-5;
  KernelRow k;
  k.shape = a.row;
  k.pass = "aspp";
  const Conv2dShape& s = a.row.s;
  for (const Conv2dShape& b : a.branches) k.flops += 2 * macs(b);
  k.bytes = (in_elems(s) + out_elems(s) + int64_t(nb) * (w_elems(s) + 5 * s.cout)) * int64_t(sizeof(float));
  k.note = std::to_string(nb) + " branches, dilations";
  for (const Conv2dShape& b : a.branches) k.note += " " + std::to_string(b.dil);
  Rng rng(uint64_t(o.seed), 8000 + index);
  std::vector<float> x(sz(in_elems(s)));
  for (float& v : x) v = 0.2f + rng.normal();
  std::vector<AsppBranchData> hb(sz(nb));
  const cudaStream_t st = g.stream;
  const auto dx = upload(x, st);
  std::vector<std::unique_ptr<DevMem>> dev;  // per branch: w (OHWI), bias, gamma, beta, mean, var
  std::vector<cuda::ConvBnBranch> br;
  const float bound = 1.f / std::sqrt(float(s.kh * s.kw * s.cin));
  for (int b = 0; b < nb; ++b) {
    AsppBranchData& d = hb[sz(b)];
    d.w.resize(sz(w_elems(s)));
    for (float& v : d.w) v = rng.uniform(-bound, bound);
    for (auto* v : {&d.bias, &d.gamma, &d.beta, &d.mean, &d.var}) v->resize(sz(s.cout));
    for (int c = 0; c < s.cout; ++c) {
      d.bias[sz(c)] = rng.uniform(-0.5f, 0.5f);
      d.gamma[sz(c)] = rng.uniform(0.5f, 1.5f);
      d.beta[sz(c)] = rng.uniform(-0.3f, 0.3f);
      d.mean[sz(c)] = rng.uniform(-0.3f, 0.3f);
      d.var[sz(c)] = rng.uniform(0.5f, 2.f);
    }
    std::vector<float> w_ohwi(d.w.size());
    cuda::repack_hwio_to_ohwi_host(s.kh, s.kw, s.cin, s.cout, d.w.data(), w_ohwi.data());
    for (const std::vector<float>* h : {&w_ohwi, &d.bias, &d.gamma, &d.beta, &d.mean, &d.var})
      dev.push_back(upload(*h, st));
    const size_t o6 = sz(6 * b);
    br.push_back({a.branches[sz(b)], dev[o6]->f(), dev[o6 + 1]->f(), dev[o6 + 2]->f(), dev[o6 + 3]->f(),
                  dev[o6 + 4]->f(), dev[o6 + 5]->f()});
  }
  const size_t ny = sz(out_elems(s));
  DevMem branch(ny * sizeof(float)), yref(ny * sizeof(float)), yhw(ny * sizeof(float));
  const BranchConvs bc = branch_convs(g, a.branches, /*backward_data=*/false);
  const auto& convs = bc.fp32;
  const auto& convs_tf32 = bc.tf32;
  k.algorithms = convs[0]->describe_algorithms();
  DevMem ws(bc.ws_bytes);
  const int64_t pixels = out_elems(s) / s.cout;
  auto fallback_of = [&](const std::vector<std::unique_ptr<cuda::CudnnConv>>* cv, DevMem* y) {
    return [&, cv, y] {
      for (int b = 0; b < nb; ++b) {
        const cuda::ConvBnBranch& q = br[sz(b)];
        (*cv)[sz(b)]->forward(g.handle, dx->f(), q.w_ohwi, q.bias, branch.f(), ws.p());
        cuda::batchnorm_forward_eval(pixels, s.cout, branch.f(), q.gamma, q.beta, q.running_mean, q.running_var, eps,
                                     b == 0 ? y->f() : branch.f(), st);
        if (b > 0) cuda::add(int64_t(ny), y->f(), branch.f(), y->f(), st);
      }
    };
  };
  const auto fallback = fallback_of(&convs, &yref);
  const auto fallback_tf32 = fallback_of(&convs_tf32, &yhw);

  BENCH_CU(cudaMemsetAsync(yref.p(), 0xFF, yref.bytes(), st));
  fallback();
  BENCH_CU(cudaStreamSynchronize(st));
  BENCH_CU(cudaGetLastError());
  std::vector<float> ref = download(yref, ny, st);
  const bool can_hw =
      cuda::conv_bn_sum_tc_can_run(a.branches.data(), nb, cuda::ConvMath::Tf32, cuda::Storage::F32, cuda::Storage::F32);
  if (!can_hw && corrupt(index, "aspp")) ref[0] += 1.f;
  {  // the fp32 fallback against the double reference
    const double per_pixel = double(nb) * s.kh * s.kw * s.cin * s.cout;
    const std::vector<Pixel> px = pick_pixels_of(s.n, s.ho(), s.wo(), per_pixel, uint64_t(o.seed) + index, 98);
    std::vector<double> want(px.size() * sz(s.cout)), acc;
    for (size_t i = 0; i < px.size(); ++i) {
      reference_aspp_pixel(a, x, hb, eps, px[i], acc);
      std::copy(acc.begin(), acc.end(), want.begin() + std::ptrdiff_t(i * sz(s.cout)));
    }
    const Check ck = check_pixels("y", px, s.ho(), s.wo(), s.cout, ref, want);
    k.checks.push_back(ck);
    if (!ck.passed) {
      k.failed = true;
      return k;
    }
  }
  k.timings.push_back(
      {"fallback", "cuDNN fallback (4 x conv + BN, adds)", stats_of(time_gpu(g, env.warmup, env.repeats, fallback))});
  if (!can_hw) {
    k.note += "; the hand-written kernel cannot run these branches (conv_bn_sum_tc_can_run)";
    return k;
  }
  const size_t base = k.timings.size();
  if (!verify_and_time_tc(g, k, s, "fallback_tf32", "cuDNN fallback, TF32 allowed", kTf32Tolerance, yhw, ref, 0, env,
                          fallback_tf32))
    return k;
  for (cuda::ConvMath m : {cuda::ConvMath::Tf32, cuda::ConvMath::Bf16}) {
    const bool tf32 = m == cuda::ConvMath::Tf32;
    auto hand = [&, m, tf32] {
      cuda::conv_bn_sum_tc_forward(br.data(), nb, eps, m, cuda::Storage::F32, dx->f(), cuda::Storage::F32, yhw.f(), st);
      if (tf32 && corrupt(index, "aspp")) corrupt_first_element(yhw, st);
    };
    if (!verify_and_time_tc(g, k, s, tf32 ? "handwritten_tf32" : "handwritten_bf16",
                            tf32 ? "hand-written, TF32 tensor cores" : "hand-written, BF16 tensor cores",
                            tf32 ? kTf32Tolerance : kBf16Tolerance, yhw, ref, base, env, hand))
      return k;
  }
  return k;
}

// One ASPP backward-data row: the fallback as the executor's cuDNN path runs a ConvSumBwdData
// node (per branch the cuDNN backward-data into a buffer, cuda::add into dx), fp32 and with TF32
// allowed, and the hand-written conv_sum_tc_backward_data with TF32 and BF16 operands. dz normal
// per branch, weights U(+-1/sqrt(fan_in)). The fp32 fallback is checked against the double
// reference (a subset of the input pixels on large shapes), the others against it.
KernelRow bench_cuda_aspp_backward(Gpu& g, const AsppRow& a, const Options& o, const Environment& env) {
  const size_t index = a.row.id;
  const int nb = int(a.branches.size());
  KernelRow k;
  k.shape = a.row;
  k.pass = "aspp_bwd_data";
  const Conv2dShape& s = a.row.s;
  for (const Conv2dShape& b : a.branches) k.flops += 2 * macs(b);
  k.bytes = (int64_t(nb) * (out_elems(s) + w_elems(s)) + in_elems(s)) * int64_t(sizeof(float));
  k.note = std::to_string(nb) + " branches, dilations";
  for (const Conv2dShape& b : a.branches) k.note += " " + std::to_string(b.dil);
  Rng rng(uint64_t(o.seed), 9000 + index);
  const cudaStream_t st = g.stream;
  const float bound = 1.f / std::sqrt(float(s.kh * s.kw * s.cin));
  std::vector<std::vector<float>> dz(sz(nb)), w(sz(nb));
  std::vector<std::unique_ptr<DevMem>> dev;  // per branch: dz, w (OHWI)
  std::vector<cuda::ConvBwdDataBranch> br;
  for (int b = 0; b < nb; ++b) {
    dz[sz(b)].resize(sz(out_elems(s)));
    for (float& v : dz[sz(b)]) v = rng.normal();
    w[sz(b)].resize(sz(w_elems(s)));
    for (float& v : w[sz(b)]) v = rng.uniform(-bound, bound);
    std::vector<float> w_ohwi(w[sz(b)].size());
    cuda::repack_hwio_to_ohwi_host(s.kh, s.kw, s.cin, s.cout, w[sz(b)].data(), w_ohwi.data());
    dev.push_back(upload(dz[sz(b)], st));
    dev.push_back(upload(w_ohwi, st));
    br.push_back({a.branches[sz(b)], dev[sz(2 * b)]->f(), dev[sz(2 * b + 1)]->f()});
  }
  const size_t nx = sz(in_elems(s));
  DevMem branch(nx * sizeof(float)), dxref(nx * sizeof(float)), dxhw(nx * sizeof(float));
  const BranchConvs bc = branch_convs(g, a.branches, /*backward_data=*/true);
  const auto& convs = bc.fp32;
  const auto& convs_tf32 = bc.tf32;
  k.algorithms = convs[0]->describe_algorithms();
  DevMem ws(bc.ws_bytes);
  auto fallback_of = [&](const std::vector<std::unique_ptr<cuda::CudnnConv>>* cv, DevMem* dx) {
    return [&, cv, dx] {
      for (int b = 0; b < nb; ++b) {
        const cuda::ConvBwdDataBranch& q = br[sz(b)];
        (*cv)[sz(b)]->backward_data(g.handle, q.dz, q.w_ohwi, b == 0 ? dx->f() : branch.f(), ws.p());
        if (b > 0) cuda::add(int64_t(nx), dx->f(), branch.f(), dx->f(), st);
      }
    };
  };
  const auto fallback = fallback_of(&convs, &dxref);
  const auto fallback_tf32 = fallback_of(&convs_tf32, &dxhw);

  BENCH_CU(cudaMemsetAsync(dxref.p(), 0xFF, dxref.bytes(), st));
  fallback();
  BENCH_CU(cudaStreamSynchronize(st));
  BENCH_CU(cudaGetLastError());
  std::vector<float> ref = download(dxref, nx, st);
  const bool can_hw = cuda::conv_sum_tc_backward_data_can_run(a.branches.data(), nb, cuda::ConvMath::Tf32);
  if (!can_hw && corrupt(index, "aspp")) ref[0] += 1.f;
  {  // the fp32 fallback against the double reference
    const double per_pixel = double(nb) * s.kh * s.kw * s.cin * s.cout;
    const std::vector<Pixel> px = pick_pixels_of(s.n, s.h, s.w, per_pixel, uint64_t(o.seed) + index, 99);
    const size_t c = sz(s.cin);
    std::vector<double> want(px.size() * c), acc;
    for (size_t i = 0; i < px.size(); ++i) {
      acc.assign(c, 0.0);
      for (int b = 0; b < nb; ++b) add_dx_pixel(a.branches[sz(b)], w[sz(b)], dz[sz(b)], px[i], acc);
      std::copy(acc.begin(), acc.end(), want.begin() + std::ptrdiff_t(i * c));
    }
    const Check ck = check_pixels("dx", px, s.h, s.w, s.cin, ref, want);
    k.checks.push_back(ck);
    if (!ck.passed) {
      k.failed = true;
      return k;
    }
  }
  k.timings.push_back({"fallback", "cuDNN fallback (4 x dgrad, adds)",
                       stats_of(time_gpu(g, env.warmup, env.repeats, fallback))});
  if (!can_hw) {
    k.note += "; the hand-written kernel cannot run these branches (conv_sum_tc_backward_data_can_run)";
    return k;
  }
  Conv2dShape sd = s;  // check_full names dx's elements by pixel and channel: cin channels
  sd.cout = s.cin;
  const size_t base = k.timings.size();
  if (!verify_and_time_tc(g, k, sd, "fallback_tf32", "cuDNN fallback, TF32 allowed", kTf32Tolerance, dxhw, ref, 0,
                          env, fallback_tf32))
    return k;
  for (cuda::ConvMath m : {cuda::ConvMath::Tf32, cuda::ConvMath::Bf16}) {
    const bool tf32 = m == cuda::ConvMath::Tf32;
    auto hand = [&, m, tf32] {
      cuda::conv_sum_tc_backward_data(br.data(), nb, m, dxhw.f(), st);
      if (tf32 && corrupt(index, "aspp")) corrupt_first_element(dxhw, st);
    };
    if (!verify_and_time_tc(g, k, sd, tf32 ? "handwritten_tf32" : "handwritten_bf16",
                            tf32 ? "hand-written, TF32 tensor cores" : "hand-written, BF16 tensor cores",
                            tf32 ? kTf32Tolerance : kBf16Tolerance, dxhw, ref, base, env, hand))
      return k;
  }
  return k;
}

// The backward passes of one fused-chain shape: the data both share.
struct BwdData {
  const ShapeRow* row = nullptr;
  HostData d;
  std::vector<float> dz;  // (n, ho, wo, cout), normal
  std::unique_ptr<DevMem> x, w, gamma, beta, mean, invstd, dz_dev;
  std::unique_ptr<cuda::CudnnConv> conv;
  std::unique_ptr<DevMem> ws;  // the cuDNN passes' workspace
  bool can_hw = false;
};

int64_t bwd_data_bytes(const Conv2dShape& s) {
  return 4 * (out_elems(s) + w_elems(s) + 2 * in_elems(s) + 4 * int64_t(s.cin));
}
int64_t bwd_filter_bytes(const Conv2dShape& s) {
  return 4 * (in_elems(s) + out_elems(s) + w_elems(s) + s.cout + 4 * int64_t(s.cin));
}

// Backward-data: the fallback (cuDNN backward-data, then bn_relu_mask_inplace, as
// runtime/executor_cuda.cpp runs BnReluConv2dBwdData) against reference_dx_pixel, the
// hand-written bn_relu_conv_backward_data against the fallback over all of dx (mask ties
// excused), then both timed, and the cuDNN backward-data alone.
KernelRow bench_cuda_bwd_data(Gpu& g, BwdData& b, const Options& o, const Environment& env) {
  const size_t index = b.row->id;
  const Conv2dShape& s = b.row->s;
  KernelRow k;
  k.shape = *b.row;
  k.pass = "backward_data";
  k.flops = 2 * macs(s);
  k.bytes = bwd_data_bytes(s);
  k.algorithms = b.conv->describe_algorithms();
  const cudaStream_t st = g.stream;
  const size_t nx = sz(in_elems(s));
  const int64_t count = int64_t(s.n) * s.h * s.w;
  DevMem dx_fb(nx * sizeof(float)), dx_hw(nx * sizeof(float));
  auto conv_only = [&] { b.conv->backward_data(g.handle, b.dz_dev->f(), b.w->f(), dx_fb.f(), b.ws->p()); };
  auto fallback = [&] {
    conv_only();
    cuda::bn_relu_mask_inplace(count, s.cin, b.x->f(), b.gamma->f(), b.beta->f(), b.mean->f(), b.invstd->f(),
                               dx_fb.f(), st);
  };
  auto handwritten = [&] {
    cuda::bn_relu_conv_backward_data(s, b.dz_dev->f(), b.w->f(), b.x->f(), b.gamma->f(), b.beta->f(), b.mean->f(),
                                     b.invstd->f(), dx_hw.f(), st);
  };

  BENCH_CU(cudaMemsetAsync(dx_fb.p(), 0xFF, dx_fb.bytes(), st));
  fallback();
  BENCH_CU(cudaStreamSynchronize(st));
  BENCH_CU(cudaGetLastError());
  std::vector<float> ref = download(dx_fb, nx, st);
  if (!b.can_hw && corrupt(index, "backward_data")) ref[0] += 1.f;
  k.checks.push_back(check_dx_against_reference("cuDNN fallback dx vs double ref", s, b.d, b.dz, ref,
                                                uint64_t(o.seed) + index));
  if (!k.checks.back().passed) {
    k.failed = true;
    return k;
  }
  if (b.can_hw) {
    BENCH_CU(cudaMemsetAsync(dx_hw.p(), 0xFF, dx_hw.bytes(), st));
    handwritten();
    BENCH_CU(cudaStreamSynchronize(st));
    BENCH_CU(cudaGetLastError());
    std::vector<float> got = download(dx_hw, nx, st);
    if (corrupt(index, "backward_data")) got[0] += 1.f;
    k.checks.push_back(check_dx_full("hand-written dx vs fallback", s, b.d, got, ref));
    if (!k.checks.back().passed) {
      k.failed = true;
      return k;
    }
  } else {
    k.note = "the hand-written backward kernels cannot run this shape (bn_relu_conv_bwd_can_run)";
  }

  k.timings.push_back(
      {"fallback", "cuDNN fallback (dgrad + mask)", stats_of(time_gpu(g, env.warmup, env.repeats, fallback))});
  k.timings.push_back(
      {"cudnn_conv", "  cuDNN dgrad alone", stats_of(time_gpu(g, env.warmup, env.repeats, conv_only))});
  if (b.can_hw) {
    k.timings.push_back(
        {"handwritten", "hand-written dgrad (masked)", stats_of(time_gpu(g, env.warmup, env.repeats, handwritten))});
    k.speedup = k.timings[0].st.median_us / k.timings[2].st.median_us;
    k.timings.back().speedup = k.speedup;
  }
  return k;
}

// Backward-filter: the fallback (batchnorm_apply with ReLU into a staging buffer, then the cuDNN
// backward-filter with its bias gradient, as runtime/executor_cuda.cpp runs BnReluConv2dBwdFilter)
// against reference_dw_sample and reference_db, the hand-written bn_relu_conv_backward_filter
// against the fallback over all of dw and db, then both timed, and the cuDNN backward-filter
// alone on the staged input.
KernelRow bench_cuda_bwd_filter(Gpu& g, BwdData& b, const Options& o, const Environment& env) {
  const size_t index = b.row->id;
  const Conv2dShape& s = b.row->s;
  KernelRow k;
  k.shape = *b.row;
  k.pass = "backward_filter";
  k.flops = 2 * macs(s);
  k.bytes = bwd_filter_bytes(s);
  k.algorithms = b.conv->describe_algorithms();
  const cudaStream_t st = g.stream;
  const size_t nw = sz(w_elems(s)), nb = sz(s.cout);
  const int64_t count = int64_t(s.n) * s.h * s.w;
  DevMem staged(sz(in_elems(s)) * sizeof(float)), dw_fb(nw * sizeof(float)), db_fb(nb * sizeof(float)),
      dw_hw(nw * sizeof(float)), db_hw(nb * sizeof(float));
  const size_t hw_ws_bytes = b.can_hw ? cuda::bn_relu_conv_backward_filter_workspace_bytes(s) : 0;
  std::unique_ptr<DevMem> hw_ws = hw_ws_bytes ? std::make_unique<DevMem>(hw_ws_bytes) : nullptr;
  auto conv_only = [&] {
    b.conv->backward_filter(g.handle, staged.f(), b.dz_dev->f(), dw_fb.f(), db_fb.f(), b.ws->p());
  };
  auto fallback = [&] {
    cuda::batchnorm_apply(count, s.cin, b.x->f(), b.gamma->f(), b.beta->f(), b.mean->f(), b.invstd->f(), true,
                          staged.f(), st);
    conv_only();
  };
  auto handwritten = [&] {
    cuda::bn_relu_conv_backward_filter(s, b.x->f(), b.gamma->f(), b.beta->f(), b.mean->f(), b.invstd->f(),
                                       b.dz_dev->f(), dw_hw.f(), db_hw.f(), hw_ws ? hw_ws->p() : nullptr, st);
  };

  BENCH_CU(cudaMemsetAsync(dw_fb.p(), 0xFF, dw_fb.bytes(), st));
  BENCH_CU(cudaMemsetAsync(db_fb.p(), 0xFF, db_fb.bytes(), st));
  fallback();
  BENCH_CU(cudaStreamSynchronize(st));
  BENCH_CU(cudaGetLastError());
  std::vector<float> ref_w = download(dw_fb, nw, st), ref_b = download(db_fb, nb, st);
  if (!b.can_hw && corrupt(index, "backward_filter")) ref_w[0] += 1.f;
  k.checks.push_back(check_dw_against_reference("cuDNN fallback dw vs double ref", s, b.d, b.dz, ref_w,
                                                uint64_t(o.seed) + index));
  k.checks.push_back(check_db_against_reference("cuDNN fallback db vs double ref", s, b.dz, ref_b));
  if (!k.checks[0].passed || !k.checks[1].passed) {
    k.failed = true;
    return k;
  }
  if (b.can_hw) {
    BENCH_CU(cudaMemsetAsync(dw_hw.p(), 0xFF, dw_hw.bytes(), st));
    BENCH_CU(cudaMemsetAsync(db_hw.p(), 0xFF, db_hw.bytes(), st));
    handwritten();
    BENCH_CU(cudaStreamSynchronize(st));
    BENCH_CU(cudaGetLastError());
    std::vector<float> got_w = download(dw_hw, nw, st), got_b = download(db_hw, nb, st);
    if (corrupt(index, "backward_filter")) got_w[0] += 1.f;
    k.checks.push_back(check_dw_full("hand-written dw vs fallback", s, got_w, ref_w));
    k.checks.push_back(check_db_full("hand-written db vs fallback", got_b, ref_b));
    if (!k.checks[2].passed || !k.checks[3].passed) {
      k.failed = true;
      return k;
    }
  } else {
    k.note = "the hand-written backward kernels cannot run this shape (bn_relu_conv_bwd_can_run)";
  }

  k.timings.push_back(
      {"fallback", "cuDNN fallback (BN-ReLU + wgrad)", stats_of(time_gpu(g, env.warmup, env.repeats, fallback))});
  k.timings.push_back(
      {"cudnn_conv", "  cuDNN wgrad + db alone", stats_of(time_gpu(g, env.warmup, env.repeats, conv_only))});
  if (b.can_hw) {
    k.timings.push_back(
        {"handwritten", "hand-written wgrad (fused)", stats_of(time_gpu(g, env.warmup, env.repeats, handwritten))});
    k.speedup = k.timings[0].st.median_us / k.timings[2].st.median_us;
    k.timings.back().speedup = k.speedup;
  }
  return k;
}

// The two backward rows of one shape: the same x, weights and BN parameters as the forward row
// (make_data with the row's seed), dz normal (Rng stream 8000 + row).
std::vector<KernelRow> bench_cuda_backward(Gpu& g, const ShapeRow& row, const Options& o, const Environment& env) {
  const Conv2dShape& s = row.s;
  BwdData b;
  b.row = &row;
  b.d = make_data(s, uint64_t(o.seed), row.id);
  b.dz.resize(sz(out_elems(s)));
  Rng rng(uint64_t(o.seed), 8000 + row.id);
  for (float& v : b.dz) v = rng.normal();
  std::vector<float> w_ohwi(b.d.w.size());
  cuda::repack_hwio_to_ohwi_host(s.kh, s.kw, s.cin, s.cout, b.d.w.data(), w_ohwi.data());
  const cudaStream_t st = g.stream;
  b.x = upload(b.d.x, st);
  b.w = upload(w_ohwi, st);
  b.gamma = upload(b.d.gamma, st);
  b.beta = upload(b.d.beta, st);
  b.mean = upload(b.d.mean, st);
  b.invstd = upload(b.d.invstd, st);
  b.dz_dev = upload(b.dz, st);
  b.conv = std::make_unique<cuda::CudnnConv>(s);
  b.conv->choose_algorithms(g.handle, /*deterministic=*/true, /*allow_tf32=*/false, nullptr, size_t(1) << 30);
  b.ws = std::make_unique<DevMem>(
      std::max(b.conv->backward_data_workspace_bytes(), b.conv->backward_filter_workspace_bytes()));
  b.can_hw = cuda::bn_relu_conv_bwd_can_run(s);
  std::vector<KernelRow> rows;
  rows.push_back(bench_cuda_bwd_data(g, b, o, env));
  rows.push_back(bench_cuda_bwd_filter(g, b, o, env));
  return rows;
}

#endif  // RPP_BENCH_CUDA

// ---------------------------------------------------------------------------------------------
// Timeline

// Images uniform in [0, 1); each target a filled disk at a random place (a polyp-like mask).
void fill_inputs(const ModelGraph& m, Executor& ex, uint64_t seed) {
  Rng rng(seed, 31);
  const Shape is = m.graph.tensor(m.image).shape, ts = m.graph.tensor(m.target).shape;
  float* img = ex.input_buffer(m.image);
  for (int64_t i = 0; i < numel(is); ++i) img[i] = rng.uniform();
  float* t = ex.input_buffer(m.target);
  const int n = int(ts[0]), h = int(ts[1]), w = int(ts[2]);
  for (int b = 0; b < n; ++b) {
    const float cy = rng.uniform(0.25f, 0.75f) * float(h), cx = rng.uniform(0.25f, 0.75f) * float(w);
    const float r = rng.uniform(0.1f, 0.3f) * float(std::min(h, w));
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const float dy = float(y) + 0.5f - cy, dx = float(x) + 0.5f - cx;
        t[(int64_t(b) * h + y) * w + x] = dy * dy + dx * dx <= r * r ? 1.f : 0.f;
      }
  }
  ex.set_input(m.image, img);
  ex.set_input(m.target, t);
}

// Device memory in use (total - free), 0 without CUDA.
size_t device_used_bytes() {
#ifdef RPP_BENCH_CUDA
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) return 0;
  return total_b - free_b;
#else
  return 0;
#endif
}

InferenceResult run_inference(const Options& o, const std::string& device, const DeviceSpec& dev,
                              const Environment& env, int batch) {
  InferenceResult r;
  r.batch = batch;
  const ModelConfig cfg = config_for_device(ModelConfig{}, device);
  ModelGraph m = build_resunetpp(cfg, batch, o.size, o.size, /*training=*/false);
  ParamStore store;
  init_params(m.graph, store, uint64_t(o.seed));
  ExecOptions eo;
  eo.kernels = parse_kernel_choice(o.kernels);
  eo.allow_tf32 = o.tf32;
  Rng rng(uint64_t(o.seed), 77);
  std::vector<float> img(size_t(numel(m.graph.tensor(m.image).shape)));
  for (float& v : img) v = rng.uniform();
  std::vector<float> logits(size_t(numel(m.graph.tensor(m.logits).shape)));
  std::vector<float> ref;  // bf16: the fp32 executor's logits (it is freed before the timing)
  if (o.bf16) {
    std::unique_ptr<Executor> fp32 = make_executor(m.graph, store, device, eo);
    fp32->set_input(m.image, img.data());
    fp32->run();
    ref.resize(logits.size());
    fp32->read_output(m.logits, ref.data());
    store_activations_in_bf16(m.graph);
    eo.precision = Precision::Bf16;
    r.bf16 = true;
  }
  const size_t used0 = device_used_bytes();
  std::unique_ptr<Executor> ex = make_executor(m.graph, store, device, eo);
  auto call = [&] {
    ex->set_input(m.image, img.data());
    ex->run();
    ex->read_output(m.logits, logits.data());
  };
  const int warm = std::max(1, env.warmup);
  for (int i = 0; i < warm; ++i) call();  // the first CUDA run is eager, the second captures the graph
  if (o.bf16) {
    double se = 0, sr = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      se += (double(logits[i]) - double(ref[i])) * (double(logits[i]) - double(ref[i]));
      sr += double(ref[i]) * double(ref[i]);
    }
    r.bf16_l2 = sr > 0 ? std::sqrt(se / sr) : std::sqrt(se);
  }
  std::vector<double> us;
  for (int i = 0; i < env.repeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  }
  r.call = stats_of(us);
  r.images_per_s = double(batch) / (r.call.median_us * 1e-6);
  r.finite = true;
  for (float v : logits) r.finite = r.finite && std::isfinite(v);
#ifdef RPP_BENCH_CUDA
  if (dev.cuda) {
    r.device_bytes = static_cast<CudaExecutor*>(ex.get())->device_bytes();
    const size_t used1 = device_used_bytes();
    r.device_used_delta = used1 > used0 ? used1 - used0 : 0;
  }
#else
  (void)dev;
  (void)used0;
#endif
  return r;
}

TimelineResult run_timeline(const Options& o, const std::string& device, const DeviceSpec& dev,
                            const Environment& env) {
  TimelineResult tr;
  const ModelConfig cfg = config_for_device(ModelConfig{}, device);
  ModelGraph m = build_resunetpp(cfg, o.batch, o.size, o.size, /*training=*/true, LossKind::BCEDice);
  append_backward_and_update(m.graph, m.loss, OptimizerKind::Adam);
  if (o.bf16) store_activations_in_bf16(m.graph);  // saved activations bf16, gradients fp32
  ParamStore store;
  init_params(m.graph, store, uint64_t(o.seed));
  tr.graph = std::string("training step (adam, bce+dice), ") + (cfg.fuse ? "fused" : "unfused") + " graph as " +
             (dev.cuda ? "CUDA" : "the CPU") + " runs it, " + std::to_string(m.graph.num_nodes()) + " nodes";
  for (const Node& n : m.graph.nodes()) {
    tr.node_names.push_back(n.name);
    tr.node_ops.push_back(op_name(n.op));
  }
  cpu::OptimStep os;
  os.lr = 1e-3;
  if (!dev.cuda) {
    CpuExecutor ex(m.graph, store);
    tr.executor = ex.describe();
    fill_inputs(m, ex, uint64_t(o.seed));
    os.step = 1;
    ex.run(&os);  // warm-up
    tr.losses.push_back(ex.last_loss());
    ex.set_profiling(true);
    os.step = 2;
    const auto t0 = std::chrono::steady_clock::now();
    ex.run(&os);
    const auto t1 = std::chrono::steady_clock::now();
    tr.losses.push_back(ex.last_loss());
    tr.wall_ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    for (double s : ex.node_seconds()) tr.node_ms.push_back(s * 1e3);
    tr.images_per_s = double(o.batch) / (tr.wall_ms * 1e-3);
  } else {
#ifdef RPP_BENCH_CUDA
    ExecOptions eo;
    eo.kernels = parse_kernel_choice(o.kernels);
    eo.allow_tf32 = o.tf32;
    eo.precision = o.bf16 ? Precision::Bf16 : Precision::F32;
    const size_t used0 = device_used_bytes();
    CudaExecutor ex(m.graph, store, dev.index, eo);
    tr.executor = ex.describe() + "; convolutions: --kernels " + kernel_choice_name(eo.kernels) +
                  (o.tf32 ? " (TF32 allowed)" : "");
    tr.device_bytes = ex.device_bytes();
    fill_inputs(m, ex, uint64_t(o.seed));
    os.step = 1;
    ex.run(&os);  // warm-up (eager)
    tr.losses.push_back(ex.last_loss());
    os.step = 2;
    tr.node_ms = ex.profile_run(&os);
    tr.losses.push_back(ex.last_loss());
    os.step = 3;
    ex.run(&os);  // captures the CUDA graph (when the executor uses graphs)
    tr.losses.push_back(ex.last_loss());
    std::vector<double> us;
    for (int r = 0; r < env.repeats; ++r) {
      os.step = 4 + r;
      const auto t0 = std::chrono::steady_clock::now();
      ex.run(&os);
      tr.losses.push_back(ex.last_loss());  // the step's one synchronisation, as in training
      const auto t1 = std::chrono::steady_clock::now();
      us.push_back(std::chrono::duration<double, std::micro>(t1 - t0).count());
    }
    tr.replay = stats_of(us);
    tr.images_per_s = double(o.batch) / (tr.replay.median_us * 1e-6);
    const size_t used1 = device_used_bytes();
    tr.device_used_delta = used1 > used0 ? used1 - used0 : 0;
#else
    (void)env;
    fail("--device ", device, ": this resunetpp-bench was built without CUDA/cuDNN");
#endif
  }
  for (double v : tr.node_ms) tr.profiled_ms += v;
  tr.loss_finite = !tr.losses.empty();
  for (double l : tr.losses) tr.loss_finite = tr.loss_finite && std::isfinite(l);
  tr.ran = true;
  return tr;
}

struct OpTotal {
  std::string op;
  int count = 0;
  double ms = 0;
};

std::vector<OpTotal> by_op(const TimelineResult& tr) {
  std::map<std::string, OpTotal> m;
  for (size_t i = 0; i < tr.node_ms.size(); ++i) {
    OpTotal& t = m[tr.node_ops[i]];
    t.op = tr.node_ops[i];
    t.count++;
    t.ms += tr.node_ms[i];
  }
  std::vector<OpTotal> v;
  for (auto& [k, t] : m) v.push_back(t);
  std::stable_sort(v.begin(), v.end(), [](const OpTotal& a, const OpTotal& b) { return a.ms > b.ms; });
  return v;
}

std::vector<size_t> top_nodes(const TimelineResult& tr, size_t k) {
  std::vector<size_t> idx(tr.node_ms.size());
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
  std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return tr.node_ms[a] > tr.node_ms[b]; });
  if (idx.size() > k) idx.resize(k);
  return idx;
}

// ---------------------------------------------------------------------------------------------
// Reporting

double tflops(const KernelRow& k, const Stats& st) { return double(k.flops) / (st.median_us * 1e-6) / 1e12; }
double gbs(const KernelRow& k, const Stats& st) { return double(k.bytes) / (st.median_us * 1e-6) / 1e9; }

std::string pad(const std::string& s, size_t w) { return s.size() >= w ? s : s + std::string(w - s.size(), ' '); }
std::string lpad(const std::string& s, size_t w) { return s.size() >= w ? s : std::string(w - s.size(), ' ') + s; }

std::string check_text(const Check& c) {
  std::string t = c.passed ? "ok " : "FAILED ";
  t += fmt("%.1e", c.max_err);
  return t;
}

// The checks of one basis ("ref" or "fb") of a row together: "ok 1.2e-06 ref", the largest
// error; FAILED when one of them failed.
std::string checks_text(const KernelRow& k, const std::string& basis) {
  bool passed = true;
  double worst = 0;
  for (const Check& c : k.checks)
    if (c.basis == basis) {
      passed = passed && c.passed;
      worst = std::max(worst, c.max_err);
    }
  return (passed ? "ok " : "FAILED ") + fmt("%.1e", worst) + " " + basis;
}

// One table of kernel rows: the forward rows (with the nodes of every shape after it), or the
// backward rows of cuda (a pass column, backward_data / backward_filter).
void print_kernels(const std::vector<KernelRow>& rows, const Environment& env, bool cuda, bool backward = false,
                   bool aspp = false) {
  std::cout << "\n  #  " << pad("shape (NxHxWxC -> NxHoxWoxCout, kernel s p d)", 48) << (backward ? pad("pass", 17) : "")
            << pad("path", 33) << pad("verified (max err)", 20) << lpad("median µs", 11)
            << lpad(cuda ? "TFLOP/s" : "GFLOP/s", 10) << lpad("GB/s", 9);
  if (cuda) std::cout << lpad("% peak", 8) << lpad("speed-up", 10);
  std::cout << "\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const KernelRow& k = rows[i];
    const std::string head = lpad(std::to_string(k.shape.id + 1), 3) + "  " + pad(shape_text(k.shape.s), 48) +
                             (backward ? pad(k.pass, 17) : "");
    const std::string blank(head.size(), ' ');
    if (k.failed) {
      for (size_t c = 0; c < k.checks.size(); ++c) {
        const Check& ch = k.checks[c];
        std::cout << (c == 0 ? head : blank) << pad(ch.what, 33) << pad(check_text(ch), 20)
                  << (ch.passed ? "" : "  no timing: " + ch.worst) << "\n";
      }
      continue;
    }
    for (size_t t = 0; t < k.timings.size(); ++t) {
      const PathTiming& p = k.timings[t];
      std::string ver;
      if (p.check >= 0) ver = check_text(k.checks[sz(p.check)]) + " fb";
      else if (p.path == "cpu" || p.path == "fallback") ver = checks_text(k, "ref");
      else if (p.path == "handwritten") ver = checks_text(k, "fb");
      else ver = "(fallback's)";
      std::cout << (t == 0 ? head : blank) << pad(p.label, 33) << pad(ver, 20) << lpad(fmt("%.1f", p.st.median_us), 11)
                << lpad(fmt(cuda ? "%.3f" : "%.2f", cuda ? tflops(k, p.st) : tflops(k, p.st) * 1e3), 10)
                << lpad(fmt("%.1f", gbs(k, p.st)), 9);
      if (cuda) {
        std::cout << lpad(env.peak_gbs > 0 ? fmt("%.1f%%", 100.0 * gbs(k, p.st) / env.peak_gbs) : "-", 8);
        if (p.speedup > 0) std::cout << lpad(fmt("%.2fx", p.speedup), 10);
      }
      std::cout << "\n";
    }
    for (const Check& c : k.checks)
      if (c.excused > 0)
        std::cout << blank << "(" << c.what << ": " << c.excused << " ReLU-mask tie" << (c.excused == 1 ? "" : "s")
                  << " excused, |bn(x)| <= 1e-6 of its terms)\n";
    if (!k.note.empty()) std::cout << blank << "(" << k.note << ")\n";
  }
  if (aspp) {
    std::cout << "  verified: max |got - ref| / (|ref| + rms(ref)); ref: the fp32 fallback against the double "
                 "reference (a subset of the output pixels on large shapes, every channel), tolerance "
              << fmt("%.0e", kTolerance) << "; fb: against the fp32 fallback's whole output, tolerance "
              << fmt("%.0e", kTf32Tolerance) << " (TF32) and " << fmt("%.0e", kBf16Tolerance)
              << " (BF16); speed-up: over the fallback with TF32 allowed; flops 2 x multiply-adds of the branches; "
                 "bytes: aspp x + y + the branches' weights and BN vectors, aspp_bwd_data the branches' dz and "
                 "weights + dx (fp32)\n";
    for (const KernelRow& k : rows) std::cout << lpad(std::to_string(k.shape.id + 1), 5) << "  " << k.shape.nodes[0] << "\n";
    return;
  }
  if (backward) {
    std::cout << "  verified: max |got - ref| / (|ref| + rms(ref)), tolerance " << fmt("%.0e", kTolerance)
              << "; ref: the fallback against the double-precision reference (dx: a subset of the input pixels "
                 "on large shapes, every channel; dw: every tap of a subset of the (cout, cin) pairs on large "
                 "shapes; db: all); fb: the hand-written kernel against the fallback's whole dx, or dw and db; "
                 "flops 2 x multiply-adds; bytes: dgrad dz + w + x + dx + 4 BN vectors, wgrad x + dz + dw + db "
                 "+ 4 BN vectors (fp32)\n";
    return;
  }
  std::cout << "\n  nodes per shape:\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    std::cout << lpad(std::to_string(rows[i].shape.id + 1), 5) << "  ";
    for (size_t j = 0; j < rows[i].shape.nodes.size(); ++j) std::cout << (j ? ", " : "") << rows[i].shape.nodes[j];
    std::cout << "\n";
  }
  std::cout << "  verified: max |got - ref| / (|ref| + rms(ref)), tolerance " << fmt("%.0e", kTolerance)
            << "; ref: against the double-precision reference (on large shapes a subset of the output pixels, "
               "every channel)"
            << (cuda ? "; fb: against the cuDNN fallback's whole output" : "") << "\n";
}

void print_timeline(const TimelineResult& tr, const Options& o, bool cuda) {
  std::cout << "\n== timeline: one " << tr.graph << ", batch " << o.batch << ", " << o.size << "x" << o.size
            << " ==\n  executor: " << tr.executor << "\n";
  const double total = tr.profiled_ms;
  if (cuda) {
    std::cout << "  profiled step (eager, an event after every node): " << fmt("%.3f", total) << " ms\n"
              << "  step time (run() + loss read-back, median of " << tr.replay.repeats
              << "): " << fmt("%.3f", tr.replay.median_us * 1e-3) << " ms, " << fmt("%.1f", tr.images_per_s)
              << " images/s\n"
              << "  device memory: executor holds " << fmt("%.1f", double(tr.device_bytes) / 1048576.0)
              << " MiB; in use grew by " << fmt("%.1f", double(tr.device_used_delta) / 1048576.0)
              << " MiB (cudaMemGetInfo, includes cuDNN and the CUDA graph)\n";
  } else {
    std::cout << "  profiled step: " << fmt("%.1f", tr.wall_ms) << " ms wall (" << fmt("%.1f", total)
              << " ms in nodes), " << fmt("%.2f", tr.images_per_s) << " images/s\n";
  }
  std::cout << "  losses:";
  for (double l : tr.losses) std::cout << " " << fmt("%.5f", l);
  std::cout << (tr.loss_finite ? "  (finite)" : "  NOT FINITE") << "\n\n";
  std::cout << "  " << pad("op", 28) << lpad("count", 7) << lpad("total ms", 12) << lpad("% of step", 11) << "\n";
  for (const OpTotal& t : by_op(tr))
    std::cout << "  " << pad(t.op, 28) << lpad(std::to_string(t.count), 7) << lpad(fmt("%.3f", t.ms), 12)
              << lpad(fmt("%.1f", total > 0 ? 100.0 * t.ms / total : 0.0), 11) << "\n";
  std::cout << "\n  top 10 nodes:\n  " << pad("node", 34) << pad("op", 28) << lpad("ms", 10) << lpad("%", 7) << "\n";
  for (size_t i : top_nodes(tr, 10))
    std::cout << "  " << pad(tr.node_names[i], 34) << pad(tr.node_ops[i], 28) << lpad(fmt("%.3f", tr.node_ms[i]), 10)
              << lpad(fmt("%.1f", total > 0 ? 100.0 * tr.node_ms[i] / total : 0.0), 7) << "\n";
}

json::Value stats_json(const Stats& st) {
  json::Value v = json::Value::object();
  v.set("median_us", st.median_us).set("min_us", st.min_us).set("max_us", st.max_us).set("mean_us", st.mean_us);
  v.set("repeats", st.repeats);
  return v;
}

json::Value report_json(const Options& o, const Environment& env, bool cuda, const std::vector<KernelRow>& rows,
                        const std::vector<KernelRow>& brows, const std::vector<KernelRow>& arows, size_t total_shapes, const TimelineResult& tr, const std::vector<InferenceResult>& inf,
                        int failures) {
  json::Value root = json::Value::object();
  root.set("tool", "resunetpp-bench");
#ifdef RESUNETPP_VERSION
  root.set("version", RESUNETPP_VERSION);
#endif
#ifdef RESUNETPP_BUILD_TYPE
  root.set("build_type", RESUNETPP_BUILD_TYPE);
#endif
  root.set("date", now_utc());
  json::Value dev = json::Value::object();
  dev.set("name", env.device).set("description", env.description);
  if (cuda) {
    dev.set("peak_bandwidth_gb_per_s", env.peak_gbs);
    dev.set("peak_bandwidth_method", "device-to-device cudaMemcpyAsync, read + write, median of 10");
    dev.set("l2_cache_bytes", env.l2_bytes);
  } else {
    dev.set("threads", cpu::num_threads());
  }
  root.set("device", dev);
  json::Value set = json::Value::object();
  set.set("size", o.size).set("batch", o.batch).set("repeats", env.repeats).set("warmup", env.warmup);
  set.set("filter", o.filter).set("seed", o.seed).set("timeline", o.timeline).set("kernels", o.kernels);
  set.set("inference", o.inference).set("infer_batch", o.infer_batch).set("tf32", o.tf32).set("bf16", o.bf16);
  set.set("tolerance", kTolerance).set("verify_budget_macs", kVerifyBudgetMacs);
  set.set("l2_flush", cuda).set("timer", cuda ? "cuda events" : "steady_clock");
  root.set("settings", set);

  auto row_json = [&](const KernelRow& k) {
    const Conv2dShape& s = k.shape.s;
    json::Value r = json::Value::object();
    r.set("index", int64_t(k.shape.id + 1)).set("pass", k.pass);
    json::Value sh = json::Value::object();
    sh.set("n", s.n).set("h", s.h).set("w", s.w).set("cin", s.cin).set("cout", s.cout).set("kh", s.kh).set("kw", s.kw);
    sh.set("stride", s.stride).set("pad", s.pad).set("dil", s.dil).set("ho", s.ho()).set("wo", s.wo());
    r.set("shape", sh).set("shape_text", shape_text(s));
    json::Value nodes = json::Value::array();
    for (const std::string& n : k.shape.nodes) nodes.push_back(n);
    r.set("nodes", nodes).set("flops", k.flops).set("bytes", k.bytes);
    r.set("status", k.failed ? "FAILED" : "ok");
    if (!k.note.empty()) r.set("note", k.note);
    if (!k.algorithms.empty()) r.set("cudnn_algorithms", k.algorithms);
    json::Value checks = json::Value::array();
    for (const Check& c : k.checks) {
      json::Value cj = json::Value::object();
      cj.set("what", c.what).set("checked_outputs", c.checked).set("total_outputs", c.total);
      cj.set("max_error", c.max_err).set("tolerance", c.tolerance).set("passed", c.passed).set("worst", c.worst);
      cj.set("output", c.output).set("basis", c.basis == "ref" ? "double reference" : "cuDNN fallback");
      if (c.excused >= 0) cj.set("mask_ties_excused", c.excused);
      checks.push_back(cj);
    }
    r.set("verification", checks);
    json::Value ts = json::Value::array();
    for (const PathTiming& p : k.timings) {
      json::Value t = stats_json(p.st);
      t.set("path", p.path).set("label", p.label);
      t.set("tflop_per_s", tflops(k, p.st)).set("gflop_per_s", tflops(k, p.st) * 1e3).set("gb_per_s", gbs(k, p.st));
      if (cuda && env.peak_gbs > 0) t.set("percent_of_peak_bandwidth", 100.0 * gbs(k, p.st) / env.peak_gbs);
      if (p.speedup > 0) t.set("speedup_over_baseline", p.speedup);
      ts.push_back(t);
    }
    r.set("timings", ts);
    if (k.speedup > 0) r.set("speedup_handwritten_over_fallback", k.speedup);
    return r;
  };
  json::Value ks = json::Value::array();
  for (const KernelRow& k : rows) ks.push_back(row_json(k));
  root.set("kernels", ks);
  if (cuda) {
    json::Value bs = json::Value::array();
    for (const KernelRow& k : brows) bs.push_back(row_json(k));
    root.set("kernels_backward", bs);
    json::Value as = json::Value::array();
    for (const KernelRow& k : arows) as.push_back(row_json(k));
    root.set("kernels_aspp", as);
  }
  root.set("kernel_shapes_total", int64_t(total_shapes));

  if (tr.ran) {
    json::Value t = json::Value::object();
    t.set("graph", tr.graph).set("executor", tr.executor).set("nodes", int64_t(tr.node_ms.size()));
    t.set("profiled_step_ms", tr.profiled_ms);
    if (cuda) {
      json::Value rep = stats_json(tr.replay);
      rep.set("what", "run() + last_loss() per step, host wall clock (CUDA-graph replay when used)");
      t.set("step", rep);
      t.set("device_bytes_held", int64_t(tr.device_bytes)).set("device_used_delta_bytes", int64_t(tr.device_used_delta));
    } else {
      t.set("step_wall_ms", tr.wall_ms);
    }
    t.set("images_per_s", tr.images_per_s);
    json::Value losses = json::Value::array();
    for (double l : tr.losses) losses.push_back(l);
    t.set("losses", losses).set("loss_finite", tr.loss_finite);
    json::Value ops = json::Value::array();
    for (const OpTotal& x : by_op(tr)) {
      json::Value oj = json::Value::object();
      oj.set("op", x.op).set("count", x.count).set("ms", x.ms);
      oj.set("percent", tr.profiled_ms > 0 ? 100.0 * x.ms / tr.profiled_ms : 0.0);
      ops.push_back(oj);
    }
    t.set("by_op", ops);
    json::Value top = json::Value::array();
    for (size_t i : top_nodes(tr, 10)) {
      json::Value nj = json::Value::object();
      nj.set("index", int64_t(i)).set("name", tr.node_names[i]).set("op", tr.node_ops[i]).set("ms", tr.node_ms[i]);
      nj.set("percent", tr.profiled_ms > 0 ? 100.0 * tr.node_ms[i] / tr.profiled_ms : 0.0);
      top.push_back(nj);
    }
    t.set("top_nodes", top);
    json::Value all = json::Value::array();
    for (size_t i = 0; i < tr.node_ms.size(); ++i) {
      json::Value nj = json::Value::object();
      nj.set("name", tr.node_names[i]).set("op", tr.node_ops[i]).set("ms", tr.node_ms[i]);
      all.push_back(nj);
    }
    t.set("per_node", all);
    root.set("timeline", t);
  }
  if (!inf.empty()) {
    json::Value arr = json::Value::array();
    for (const InferenceResult& r : inf) {
      json::Value j = stats_json(r.call);
      j.set("batch", r.batch).set("images_per_s", r.images_per_s).set("latency_ms", r.call.median_us * 1e-3);
      j.set("logits_finite", r.finite);
      j.set("precision", r.bf16 ? "bf16" : (o.tf32 ? "tf32" : "fp32"));
      if (r.bf16) j.set("bf16_logits_rel_l2_vs_fp32", r.bf16_l2);
      j.set("what", "set_input (host) + run + read_output (host) per call, host wall clock");
      if (cuda) j.set("device_bytes_held", int64_t(r.device_bytes)).set("device_used_delta_bytes", int64_t(r.device_used_delta));
      arr.push_back(j);
    }
    root.set("inference", arr);
  }
  root.set("failures", failures);
  root.set("passed", failures == 0);
  return root;
}

int run(int argc, char** argv) {
  Options o;
  if (!parse_args(argc, argv, o)) return 0;
  const std::string device = resolve_device(o.device);
  DeviceSpec dev;
  try {
    dev = parse_device(device);
  } catch (const Error& e) {
    throw UsageError(std::string("--device: ") + e.what());
  }
  const bool cuda = dev.cuda;
  if (o.bf16 && !cuda) throw UsageError("--bf16 needs a CUDA device (the CPU backend runs fp32 only)");
#ifndef RPP_BENCH_CUDA
  if (cuda) fail("--device ", device, ": this resunetpp-bench was built without CUDA/cuDNN; use --device cpu");
#endif
  Environment env;
  env.device = cuda ? "cuda:" + std::to_string(dev.index) : "cpu";
  env.repeats = o.repeats > 0 ? o.repeats : (cuda ? kMinGpuRepeats : kCpuDefaultRepeats);
  env.warmup = o.warmup >= 0 ? o.warmup : (cuda ? 3 : 1);

  std::vector<ShapeRow> shapes = fused_shapes(o.batch, o.size);
  const size_t total_shapes = shapes.size();
  int fused_nodes = 0;
  for (const ShapeRow& r : shapes) fused_nodes += int(r.nodes.size());
  // cuda: the fused ASPP blocks of the inference graph and their backward-data sums in the training
  // graph (a third table).
  std::vector<AsppRow> aspp;
#ifdef RPP_BENCH_CUDA
  if (cuda) {
    aspp = aspp_rows(o.batch, o.size);
    std::vector<AsppRow> back = aspp_backward_rows(o.batch, o.size, aspp.size());
    aspp.insert(aspp.end(), back.begin(), back.end());
  }
#endif
  if (!o.filter.empty()) {
    auto hit = [&](const ShapeRow& r) {
      bool h = shape_text(r.s).find(o.filter) != std::string::npos;
      for (const std::string& n : r.nodes) h = h || n.find(o.filter) != std::string::npos;
      return h;
    };
    std::vector<ShapeRow> kept;
    for (const ShapeRow& r : shapes)
      if (hit(r)) kept.push_back(r);
    std::vector<AsppRow> kept_aspp;
    for (const AsppRow& a : aspp)
      if (hit(a.row)) kept_aspp.push_back(a);
    if (kept.empty() && kept_aspp.empty())
      throw UsageError("--filter '" + o.filter + "' matches none of the " + std::to_string(total_shapes) +
                       " kernel shapes (their shape texts and node names)" +
                       (aspp.empty() ? std::string() : " nor the ASPP blocks"));
    shapes = std::move(kept);
    aspp = std::move(kept_aspp);
  }

#ifdef RPP_BENCH_CUDA
  std::unique_ptr<Gpu> gpu;
  if (cuda) gpu = open_gpu(dev.index, env);
#endif
  if (!cuda) {
    const std::string model = cpu_model();
    env.description = "cpu, " + std::to_string(cpu::num_threads()) + " threads" + (model.empty() ? "" : ", " + model);
  }

  std::cout << "resunetpp-bench  " << now_utc() << "  build "
#ifdef RESUNETPP_BUILD_TYPE
            << RESUNETPP_BUILD_TYPE
#else
            << "?"
#endif
            << "\ndevice: " << env.device << " (" << env.description << ")\n";
  if (cuda)
    std::cout << "measured peak bandwidth: " << fmt("%.1f", env.peak_gbs)
              << " GB/s (device-to-device copy, read + write); L2 " << env.l2_bytes << " bytes, flushed ("
              << 2 * env.l2_bytes << "-byte memset) before every timed repeat\n";
  const int warn_below = cuda ? kMinGpuRepeats : kCpuDefaultRepeats;
  if (env.repeats < warn_below)
    std::cout << "warning: median of " << env.repeats << " repeats (fewer than " << warn_below
              << "): smoke-run numbers, not measurements\n";

  std::cout << "\n== kernels: fused BN-ReLU-conv forward, " << shapes.size() << " of " << total_shapes
            << " distinct shapes (" << fused_nodes << " nodes), batch " << o.batch << ", " << o.size << "x" << o.size
            << ", median of " << env.repeats << " after " << env.warmup << " warm-up"
            << (cuda ? ", CUDA events, L2 flushed" : ", steady_clock") << " ==\n";
  std::vector<KernelRow> rows;
  for (size_t i = 0; i < shapes.size(); ++i) {
#ifdef RPP_BENCH_CUDA
    if (cuda) {
      rows.push_back(bench_cuda_shape(*gpu, shapes[i], o, env));
      continue;
    }
#endif
    rows.push_back(bench_cpu_shape(shapes[i], o, env));
  }
  int failures = 0;
  for (const KernelRow& k : rows) failures += k.failed;
  print_kernels(rows, env, cuda);

  // cuda: the backward passes of the same shapes (backward-data and backward-filter rows).
  std::vector<KernelRow> brows;
#ifdef RPP_BENCH_CUDA
  if (cuda) {
    std::cout << "\n== kernels: fused BN-ReLU-conv backward (backward_data: dx = dgrad(dz, w) masked where "
                 "!(bn(x) > 0); backward_filter: dw = wgrad(relu(bn(x)), dz) and db), "
              << shapes.size() << " shapes, the same data, dz normal, median of " << env.repeats << " after "
              << env.warmup << " warm-up, CUDA events, L2 flushed ==\n";
    for (size_t i = 0; i < shapes.size(); ++i)
      for (KernelRow& k : bench_cuda_backward(*gpu, shapes[i], o, env)) brows.push_back(std::move(k));
    for (const KernelRow& k : brows) failures += k.failed;
    print_kernels(brows, env, cuda, /*backward=*/true);
  }
  std::vector<KernelRow> arows;
  if (cuda && !aspp.empty()) {
    std::cout << "\n== kernels: the fused ASPP (inference, ConvBnSum: the dilated conv branches and their eval BNs, "
                 "summed; training, ConvSumBwdData: the branches' backward-data, summed), "
              << aspp.size() << " row" << (aspp.size() == 1 ? "" : "s") << ", median of " << env.repeats
              << " after " << env.warmup << " warm-up, CUDA events, L2 flushed ==\n";
    for (const AsppRow& a : aspp)
      arows.push_back(a.backward ? bench_cuda_aspp_backward(*gpu, a, o, env) : bench_cuda_aspp(*gpu, a, o, env));
    for (const KernelRow& k : arows) failures += k.failed;
    print_kernels(arows, env, cuda, /*backward=*/true, /*aspp=*/true);
  }
#else
  const std::vector<KernelRow> arows;
#endif

  TimelineResult tr;
  if (o.timeline) {
#ifdef RPP_BENCH_CUDA
    gpu.reset();  // the executor brings its own stream, handle and memory
#endif
    tr = run_timeline(o, device, dev, env);
    print_timeline(tr, o, cuda);
    if (!tr.loss_finite) ++failures;
  }

  std::vector<InferenceResult> inf;
  if (o.inference) {
#ifdef RPP_BENCH_CUDA
    gpu.reset();
#endif
    std::cout << "\n== inference: set_input + run + read_output per call, median of " << env.repeats << ", "
              << o.size << "x" << o.size
              << (cuda ? (o.bf16 ? ", bf16 activations" : o.tf32 ? ", TF32" : ", fp32 (TF32 off)") : "") << " ==\n";
    for (int b : {1, o.infer_batch}) {
      inf.push_back(run_inference(o, device, dev, env, b));
      const InferenceResult& r = inf.back();
      std::cout << "  batch " << lpad(std::to_string(b), 3) << ": " << fmt("%.3f", r.call.median_us * 1e-3)
                << " ms per call, " << fmt("%.1f", r.images_per_s) << " images/s"
                << (cuda ? ", executor holds " + fmt("%.1f", double(r.device_bytes) / 1048576.0) + " MiB" : "")
                << (r.bf16 ? ", logits " + fmt("%.2e", r.bf16_l2) + " from fp32 (relative L2)" : "")
                << (r.finite ? "" : "  LOGITS NOT FINITE")
                << (r.bf16 && !(r.bf16_l2 < 1e-2) ? "  FAILED: bf16 logits too far from fp32" : "") << "\n";
      if (!r.finite || (r.bf16 && !(r.bf16_l2 < 1e-2))) ++failures;
      if (o.infer_batch == 1) break;
    }
  }

  if (!o.json_path.empty()) {
    write_file_atomic(o.json_path,
                      json::dump(report_json(o, env, cuda, rows, brows, arows, total_shapes, tr, inf, failures), 2) + "\n");
    std::cout << "\nwrote " << o.json_path << "\n";
  }
  if (failures) {
    std::cout << "\nFAILED: " << failures << (failures == 1 ? " check" : " checks")
              << " did not pass (rows marked FAILED have no timing)\n";
    return 3;
  }
  std::cout << "\nall " << rows.size() + brows.size() + arows.size() << " kernel rows verified" << (o.timeline ? ", step loss finite" : "") << "\n";
  return 0;
}

}  // namespace
}  // namespace rpp::bench

int main(int argc, char** argv) {
  try {
    return rpp::bench::run(argc, argv);
  } catch (const rpp::bench::UsageError& e) {
    std::cerr << "resunetpp-bench: error: " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "resunetpp-bench: error: " << e.what() << "\n";
    return 1;
  }
}
