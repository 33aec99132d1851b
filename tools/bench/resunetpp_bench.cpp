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
//   * Error: max |got - ref| / (|ref| + rms(ref)) over the checked elements (rms over the same
//     elements), tolerance 1e-4 (fp32 with a different summation order), NaN fails. A failed
//     check marks the row FAILED: no path of that row is timed (only its errors are printed), and
//     the exit status becomes 3.
//   * Timeline: the loss of every step it runs must be finite.
//   * Test hook: RPP_BENCH_CORRUPT_ROW=N (the row number printed) adds 1 to the first output
//     element of row N's checked path (cpu: the CPU path; cuda: the hand-written kernel, else the
//     fallback) before its check, so that tests can see a failing row reported without timings.
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
//     hand-written median.
//
// Output: tables on stdout; with --json FILE, everything (device, build, date, settings, rows with
// their verification errors and timings, the timeline with every node) written crash-safely
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
#include "runtime/json.h"
#include "runtime/param_store.h"
#include "runtime/rng.h"

#if defined(RESUNETPP_HAVE_CUDA) && defined(RESUNETPP_HAVE_CUDNN)
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/bn_relu_conv.cuh"
#include "kernels/cuda/cudnn/conv_cudnn.cuh"
#include "kernels/cuda/device.cuh"
#define RPP_BENCH_CUDA 1
#endif

namespace rpp::bench {
namespace {

constexpr double kTolerance = 1e-4;          // max |got - ref| / (|ref| + rms(ref))
constexpr double kVerifyBudgetMacs = 3e8;    // multiply-adds of the double reference per shape
constexpr int kMinGpuRepeats = 20;
constexpr int kCpuDefaultRepeats = 5;

// RPP_BENCH_CORRUPT_ROW (see the header comment): the 0-based row to corrupt, or -1.
int64_t corrupt_row() {
  const char* e = std::getenv("RPP_BENCH_CORRUPT_ROW");
  return e && *e ? std::strtoll(e, nullptr, 10) - 1 : -1;
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
  std::string kernels = "cudnn";
  bool timeline = true;
  bool inference = true;
  int infer_batch = 32;
  bool tf32 = false;
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
     "cuda timeline: how the executor runs the fused nodes: cudnn, handwritten or auto "
     "(default: cudnn, the executor's default; the kernel rows always time both)"},
    {"no-timeline", "", "skip the whole-step timeline"},
    {"no-inference", "", "skip the inference section"},
    {"infer-batch", "N",
     "inference section: the throughput batch (default: 32); batch 1 gives the latency"},
    {"tf32", "", "cuda timeline and inference: allow TF32 tensor-core convolutions (default: off, fp32)"},
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
        "hand-written kernel over the fallback; then the per-node times of one training step.\n"
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
  }
  return rows;
}

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
std::vector<Pixel> pick_pixels(const Conv2dShape& s, uint64_t seed) {
  const int ho = s.ho(), wo = s.wo();
  const int64_t total = int64_t(s.n) * ho * wo;
  const double per_pixel = double(s.kh) * s.kw * s.cin * s.cout;
  std::vector<Pixel> px;
  if (double(total) * per_pixel <= kVerifyBudgetMacs) {
    for (int n = 0; n < s.n; ++n)
      for (int y = 0; y < ho; ++y)
        for (int x = 0; x < wo; ++x) px.push_back({n, y, x});
    return px;
  }
  const int64_t want = std::max<int64_t>(32, int64_t(kVerifyBudgetMacs / per_pixel));
  std::set<std::tuple<int, int, int>> seen;
  auto add = [&](int n, int y, int x) {
    if (seen.insert({n, y, x}).second) px.push_back({n, y, x});
  };
  for (int n : {0, s.n - 1})
    for (int y : {0, ho / 2, ho - 1})
      for (int x : {0, wo / 2, wo - 1}) add(n, y, x);
  Rng rng(seed, 99);
  for (int64_t tries = 0; int64_t(px.size()) < want && tries < 4 * want; ++tries)
    add(int(rng.below(uint32_t(s.n))), int(rng.below(uint32_t(ho))), int(rng.below(uint32_t(wo))));
  return px;
}

// conv(relu(bn(x))) + bias at one output pixel, every output channel, in double, directly from
// the definition (zero padding after BN-ReLU).
void reference_pixel(const Conv2dShape& s, const HostData& d, const Pixel& p, std::vector<double>& acc) {
  acc.assign(sz(s.cout), 0.0);
  for (int ky = 0; ky < s.kh; ++ky) {
    const int iy = p.y * s.stride - s.pad + ky * s.dil;
    if (iy < 0 || iy >= s.h) continue;
    for (int kx = 0; kx < s.kw; ++kx) {
      const int ix = p.x * s.stride - s.pad + kx * s.dil;
      if (ix < 0 || ix >= s.w) continue;
      const float* xin = d.x.data() + ((int64_t(p.n) * s.h + iy) * s.w + ix) * s.cin;
      for (int ci = 0; ci < s.cin; ++ci) {
        const size_t c = sz(ci);
        double a = (double(xin[ci]) - d.mean[c]) * (double(d.gamma[c]) * d.invstd[c]) + d.beta[c];
        if (!(a > 0)) continue;
        const float* wrow = d.w.data() + ((int64_t(ky) * s.kw + kx) * s.cin + ci) * s.cout;
        for (int co = 0; co < s.cout; ++co) acc[sz(co)] += a * double(wrow[co]);
      }
    }
  }
  for (int co = 0; co < s.cout; ++co) acc[sz(co)] += d.bias[sz(co)];
}

struct Check {
  std::string what;       // "cpu path vs double reference"
  int64_t checked = 0;    // output elements compared
  int64_t total = 0;      // output elements
  double max_err = 0;     // max |got - ref| / (|ref| + rms)
  bool passed = false;
  std::string worst;      // where the largest error is
};

Check check_against_reference(const std::string& what, const Conv2dShape& s, const HostData& d,
                              const std::vector<float>& y, uint64_t seed) {
  Check c;
  c.what = what;
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
Check check_full(const std::string& what, const Conv2dShape& s, const std::vector<float>& got,
                 const std::vector<float>& ref) {
  Check c;
  c.what = what;
  c.total = c.checked = int64_t(ref.size());
  double ss = 0;
  for (float v : ref) ss += double(v) * v;
  const double rms = ref.empty() ? 0 : std::sqrt(ss / double(ref.size()));
  bool finite = true;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    const double e = std::isfinite(g) ? std::fabs(g - r) / (std::fabs(r) + rms) : HUGE_VAL;
    if (!std::isfinite(g)) finite = false;
    if (e > c.max_err || (!std::isfinite(e) && c.worst.empty())) {
      c.max_err = e;
      const int64_t co = int64_t(i) % s.cout, pix = int64_t(i) / s.cout;
      std::ostringstream os;
      os << "output pixel " << pix << " channel " << co << ": got " << g << ", want " << r;
      c.worst = os.str();
    }
  }
  c.passed = finite && c.max_err <= kTolerance;
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
  std::string path;  // "cpu", "fallback", "cudnn_conv", "handwritten"
  std::string label; // as printed
  Stats st;
};

struct KernelRow {
  ShapeRow shape;
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
  if (int64_t(index) == corrupt_row()) y[0] += 1.f;
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
  if (!can_hw && int64_t(index) == corrupt_row()) ref[0] += 1.f;
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
    if (int64_t(index) == corrupt_row()) got[0] += 1.f;
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
  }
  return k;
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
  const size_t used0 = device_used_bytes();
  std::unique_ptr<Executor> ex = make_executor(m.graph, store, device, eo);
  Rng rng(uint64_t(o.seed), 77);
  std::vector<float> img(size_t(numel(m.graph.tensor(m.image).shape)));
  for (float& v : img) v = rng.uniform();
  std::vector<float> logits(size_t(numel(m.graph.tensor(m.logits).shape)));
  auto call = [&] {
    ex->set_input(m.image, img.data());
    ex->run();
    ex->read_output(m.logits, logits.data());
  };
  const int warm = std::max(1, env.warmup);
  for (int i = 0; i < warm; ++i) call();  // the first CUDA run is eager, the second captures the graph
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
    const size_t used0 = device_used_bytes();
    CudaExecutor ex(m.graph, store, dev.index, eo);
    tr.executor = ex.describe() + "; fused nodes: " + kernel_choice_name(eo.kernels) + (o.tf32 ? "; TF32" : "; fp32");
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

void print_kernels(const std::vector<KernelRow>& rows, const Environment& env, bool cuda) {
  std::cout << "\n  #  " << pad("shape (NxHxWxC -> NxHoxWoxCout, kernel s p d)", 48) << pad("path", 33)
            << pad("verified (max err)", 20) << lpad("median µs", 11) << lpad(cuda ? "TFLOP/s" : "GFLOP/s", 10)
            << lpad("GB/s", 9);
  if (cuda) std::cout << lpad("% peak", 8) << lpad("speed-up", 10);
  std::cout << "\n";
  for (size_t i = 0; i < rows.size(); ++i) {
    const KernelRow& k = rows[i];
    const std::string head = lpad(std::to_string(k.shape.id + 1), 3) + "  " + pad(shape_text(k.shape.s), 48);
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
      if (p.path == "cpu" || p.path == "fallback") ver = check_text(k.checks[0]) + " ref";
      else if (p.path == "handwritten") ver = check_text(k.checks[1]) + " fb";
      else ver = "(fallback's)";
      std::cout << (t == 0 ? head : blank) << pad(p.label, 33) << pad(ver, 20) << lpad(fmt("%.1f", p.st.median_us), 11)
                << lpad(fmt(cuda ? "%.3f" : "%.2f", cuda ? tflops(k, p.st) : tflops(k, p.st) * 1e3), 10)
                << lpad(fmt("%.1f", gbs(k, p.st)), 9);
      if (cuda) {
        std::cout << lpad(env.peak_gbs > 0 ? fmt("%.1f%%", 100.0 * gbs(k, p.st) / env.peak_gbs) : "-", 8);
        if (p.path == "handwritten") std::cout << lpad(fmt("%.2fx", k.speedup), 10);
      }
      std::cout << "\n";
    }
    if (!k.note.empty()) std::cout << blank << "(" << k.note << ")\n";
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
                        size_t total_shapes, const TimelineResult& tr, const std::vector<InferenceResult>& inf,
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
  set.set("inference", o.inference).set("infer_batch", o.infer_batch).set("tf32", o.tf32);
  set.set("tolerance", kTolerance).set("verify_budget_macs", kVerifyBudgetMacs);
  set.set("l2_flush", cuda).set("timer", cuda ? "cuda events" : "steady_clock");
  root.set("settings", set);

  json::Value ks = json::Value::array();
  for (size_t i = 0; i < rows.size(); ++i) {
    const KernelRow& k = rows[i];
    const Conv2dShape& s = k.shape.s;
    json::Value r = json::Value::object();
    r.set("index", int64_t(k.shape.id + 1));
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
      cj.set("max_error", c.max_err).set("tolerance", kTolerance).set("passed", c.passed).set("worst", c.worst);
      checks.push_back(cj);
    }
    r.set("verification", checks);
    json::Value ts = json::Value::array();
    for (const PathTiming& p : k.timings) {
      json::Value t = stats_json(p.st);
      t.set("path", p.path).set("label", p.label);
      t.set("tflop_per_s", tflops(k, p.st)).set("gflop_per_s", tflops(k, p.st) * 1e3).set("gb_per_s", gbs(k, p.st));
      if (cuda && env.peak_gbs > 0) t.set("percent_of_peak_bandwidth", 100.0 * gbs(k, p.st) / env.peak_gbs);
      ts.push_back(t);
    }
    r.set("timings", ts);
    if (k.speedup > 0) r.set("speedup_handwritten_over_fallback", k.speedup);
    ks.push_back(r);
  }
  root.set("kernels", ks);
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
  if (!o.filter.empty()) {
    std::vector<ShapeRow> kept;
    for (const ShapeRow& r : shapes) {
      bool hit = shape_text(r.s).find(o.filter) != std::string::npos;
      for (const std::string& n : r.nodes) hit = hit || n.find(o.filter) != std::string::npos;
      if (hit) kept.push_back(r);
    }
    if (kept.empty())
      throw UsageError("--filter '" + o.filter + "' matches none of the " + std::to_string(total_shapes) +
                       " kernel shapes (their shape texts and node names)");
    shapes = std::move(kept);
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
              << o.size << "x" << o.size << (cuda ? (o.tf32 ? ", TF32" : ", fp32 (TF32 off)") : "") << " ==\n";
    for (int b : {1, o.infer_batch}) {
      inf.push_back(run_inference(o, device, dev, env, b));
      const InferenceResult& r = inf.back();
      std::cout << "  batch " << lpad(std::to_string(b), 3) << ": " << fmt("%.3f", r.call.median_us * 1e-3)
                << " ms per call, " << fmt("%.1f", r.images_per_s) << " images/s"
                << (cuda ? ", executor holds " + fmt("%.1f", double(r.device_bytes) / 1048576.0) + " MiB" : "")
                << (r.finite ? "" : "  LOGITS NOT FINITE") << "\n";
      if (!r.finite) ++failures;
      if (o.infer_batch == 1) break;
    }
  }

  if (!o.json_path.empty()) {
    write_file_atomic(o.json_path,
                      json::dump(report_json(o, env, cuda, rows, total_shapes, tr, inf, failures), 2) + "\n");
    std::cout << "\nwrote " << o.json_path << "\n";
  }
  if (failures) {
    std::cout << "\nFAILED: " << failures << (failures == 1 ? " check" : " checks")
              << " did not pass (rows marked FAILED have no timing)\n";
    return 3;
  }
  std::cout << "\nall " << rows.size() << " kernel rows verified" << (o.timeline ? ", step loss finite" : "") << "\n";
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
