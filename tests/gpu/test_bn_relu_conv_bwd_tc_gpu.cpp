// tests/gpu/test_bn_relu_conv_bwd_tc_gpu.cpp — the tensor-core fused BN-ReLU-conv backward passes
// (kernels/cuda/bn_relu_conv_bwd_tc.cuh), TF32 and BF16, against the CPU reference on host copies
// (HWIO weights; the device gets and returns them in OHWI):
//  * backward-data: cpu::conv2d_backward_data in double (on the float inputs), then the ReLU mask
//    with the kernels' float bn(x) (the fp32 kernel's suite shows that this mask and the
//    specification's double one, cpu::bn_relu_mask_inplace, differ only within rounding of 0; the
//    tensor-core kernel must reproduce the float mask exactly: masked elements are +0 exactly);
//  * backward-filter: cpu::batchnorm_apply(relu) (the specification's a), then
//    cpu::conv2d_backward_filter in double on the float values (dw and db);
//  * shapes: every BN-ReLU-conv chain of ResUNet++ at 64x64 (batch 2) and at 256x256 (batch 2 on
//    a GPU; batch 1 on the emulator, only with RPP_EMU_LARGE=1), TF32, BF16 on every third; plus
//    small ragged ones, both maths: stride 2 and 3 (parity
//    classes of unequal size, an empty one, one with no live tap), dilations 3, 6, 12, 18 on small
//    images, 1x1 and 3x1 kernels, cin 3, odd channel counts (cout not a multiple of 16, partial K
//    slices and partial tiles everywhere), the narrow (<= 32 channels) and wide tiles, shapes with
//    and without split-K;
//  * positive BN shifts (a kernel padding with relu(shift) instead of 0 fails), the plain-conv
//    mode (null BN arguments), db null, NaN (the same NaN pattern as the fp32 kernels);
//  * outputs and workspaces poisoned (NaN) before each run, two runs give the same bits, guard
//    bytes intact.
// Under the emulator's sanitizer build (CI; emulator_thins_shapes(), RPP_EMU_LARGE=1 restores the
// full set) the suite stays under a minute: every other 64x64 network shape (thin_for_emulator),
// each run once (the emulator is deterministic by construction; the ragged shapes still run
// twice), BF16 on the first network shape and every other ragged one, and the exact-arithmetic
// cases on two network shapes and one math per small shape.
//
// Tolerance (random data), per element, from the reference operands. With a product sum
// r = sum_k p_k q_k (backward-data: p = dz, q = w over the live taps and output channels, K <=
// kh*kw*cout terms; backward-filter: p = dz, q = a = relu(bn(x)) over the pixels), the kernel may
// differ from the exact r by at most
//   tol = (2u + u^2) S_a + (1.6 K_acc + 8) 2^-23 S_m,
//   S_a = sum_k |p_k| |q_k|,  S_m = sum_k |p_k| qmag_k  (double),
// u = 2^-11 (TF32) or 2^-8 (BF16), qmag = |x - mean| |gamma invstd| + |beta| for a BN'd a (else |q|):
//   - operand rounding: |p^ q^ - p q| <= (2u + u^2) |p| |q| (products of rounded operands are
//     exact in fp32, on the tensor cores and on the emulator);
//   - backward-filter's float BN against the reference's double BN rounded once:
//     |a~ - a| <= 2^-22 qmag (ReLU cannot enlarge it), inside the 8 2^-23 S_m;
//   - fp32 accumulation: backward-data adds K_acc = K products in one chain (the tensor cores'
//     internal order and truncation are undocumented: allow 2^-23 of the magnitudes per
//     addition); backward-filter adds a split's chunk of pixels in one chain, then the splits'
//     partials in split order: K_acc = chunk + splits, from the plan documented in the header
//     (replicated here; the workspace formula ties it to the kernel); the final rounding to float
//     and the slack for (1 + u)^2 fit in the factor 1.6 and the + 8.
//   db (fp32 sums of the unrounded dz): |db - ref| <= (K_acc + 8) 2^-23 sum |dz|.
// The worst-case bound cannot see one missing product among thousands, nor truncated operands
// instead of rounded ones, so:
//   - ExactArithmetic... runs integer-valued data (every operand exact in TF32 and BF16, every
//     partial sum exact in fp32 and double): any correct kernel matches the reference exactly,
//     whatever its summation order, and any wrong or missing term shows;
//   - on outputs of at least 4096 unmasked elements, the least-squares slope of the error on the
//     reference, sum (got - ref) ref / sum ref^2, must stay below 0.4u in magnitude (rounding to
//     nearest is unbiased; truncated operands scale every product by about 1 - 1.4u);
//   - DbIsNotRounded: dz with 14 significant bits, sums exact in fp32 for any order: db must be
//     exact (a db taken from TF32- or BF16-rounded dz is not).
// BN sums of backward-data (sum_dy, sum_dy_xhat): against double sums taken on the host from the
// kernel's own dx and x (the same terms, only the order differs): within 2 (M + 16) 2^-53 of the
// terms' magnitudes (M = n*h*w), plus the final scaling's rounding; and against the reference
// dx's sums within the elements' tolerances summed (times |xhat|). dx has the same bits with and
// without the sums, and each sum can be asked for alone.
// GPU tests skip without a device; BwdTcHost runs everywhere (argument checks, workspace
// formulas).
//   ./build/gpu_test_bn_relu_conv_bwd_tc_gpu
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bf16_test_util.h"
#include "conv_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/bn_relu_conv_bwd.cuh"
#include "kernels/cuda/bn_relu_conv_bwd_tc.cuh"
#include "model/resunetpp.h"
#include "runtime/error.h"

using namespace rpp;
using namespace rpp::gputest;
using cuda::ConvMath;

namespace {

using Doubles = std::vector<double>;

size_t sz(int64_t n) { return static_cast<size_t>(n); }


cpu::Conv2dShape rect(int n, int h, int w, int cin, int cout, int kh, int kw, int stride, int pad, int dil) {
  cpu::Conv2dShape s = conv_shape(n, h, w, cin, cout, kh, stride, pad, dil);
  s.kw = kw;
  return s;
}

int64_t pixels_in(const cpu::Conv2dShape& s) { return int64_t(s.n) * s.h * s.w; }
int64_t pixels_out(const cpu::Conv2dShape& s) { return int64_t(s.n) * s.ho() * s.wo(); }
int64_t in_count(const cpu::Conv2dShape& s) { return pixels_in(s) * s.cin; }
int64_t out_count(const cpu::Conv2dShape& s) { return pixels_out(s) * s.cout; }
int64_t w_count(const cpu::Conv2dShape& s) { return int64_t(s.kh) * s.kw * s.cin * s.cout; }

// The backward-filter plan of the header: pixels per split and the number of splits.
struct Plan {
  int64_t chunk;
  int64_t splits;
};
Plan filter_plan(const cpu::Conv2dShape& s) {
  const auto cdiv = [](int64_t a, int64_t b) { return (a + b - 1) / b; };
  const int64_t p = pixels_out(s), bm = s.cout <= 32 ? 32 : 64;
  const int64_t tiles = cdiv(s.cout, bm) * cdiv(int64_t(s.kh) * s.kw * s.cin, 128);
  int64_t splits = std::min(cdiv(512, tiles), cdiv(p, 512));
  splits = std::max<int64_t>(splits, 1);
  const int64_t chunk = cdiv(cdiv(p, splits), 32) * 32;
  return {chunk, cdiv(p, chunk)};
}

// HWIO (kh, kw, cin, cout) -> OHWI (cout, kh, kw, cin), for double vectors.
Doubles hwio_to_ohwi_d(const cpu::Conv2dShape& s, const Doubles& hwio) {
  Doubles o(hwio.size());
  for (int y = 0; y < s.kh; ++y)
    for (int x = 0; x < s.kw; ++x)
      for (int ci = 0; ci < s.cin; ++ci)
        for (int co = 0; co < s.cout; ++co)
          o[sz(((int64_t(co) * s.kh + y) * s.kw + x) * s.cin + ci)] =
              hwio[sz(((int64_t(y) * s.kw + x) * s.cin + ci) * s.cout + co)];
  return o;
}

Doubles to_d(const Floats& f) { return Doubles(f.begin(), f.end()); }
Doubles abs_d(const Floats& f) {
  Doubles d(f.size());
  for (size_t i = 0; i < f.size(); ++i) d[i] = std::fabs(double(f[i]));
  return d;
}

// The emulator under the sanitizers (CI) is slow: there the suites run fewer network shapes and
// BF16 cases, and run the network shapes' kernels once rather than twice (the emulator is
// deterministic by construction; the ragged shapes still run twice everywhere).
bool light() { return emulator_thins_shapes(); }

// run_twice (gpu_test_util.h), or with twice false a single run on fresh poison.
std::vector<Floats> run_poisoned(const Stream& st, std::initializer_list<DevFloats*> outs,
                                 const std::function<void()>& reset, const std::function<void()>& launch, bool twice) {
  if (twice) return run_twice(st, outs, reset, launch);
  for (DevFloats* o : outs) o->poison();
  if (reset) reset();
  launch();
  st.sync();
  std::vector<Floats> got;
  for (DevFloats* o : outs) got.push_back(o->get());
  return got;
}

// c doubles of device memory as a DevFloats of 2 c floats (poisoned and compared by run_twice).
double* dptr(const DevFloats& b) { return reinterpret_cast<double*>(b.p()); }
Doubles as_doubles(const Floats& f) {
  Doubles d(f.size() / 2);
  std::memcpy(d.data(), f.data(), d.size() * sizeof(double));
  return d;
}

// Integer-friendly BN: gamma in {1/2, 1, 2}, invstd 1, mean in {-1, 0, 1}, beta in {-1/2, 1/2,
// 3/2}: with integer x in [-3, 3], bn(x) and relu(bn(x)) are exact multiples of 1/2 below 10.
BnParams exact_bn(int c) {
  BnParams p;
  p.gamma = small_ints(sz(c), 1);
  for (float& g : p.gamma) g = std::ldexp(1.f, int(g));
  p.beta = small_ints(sz(c), 1);
  for (float& b : p.beta) b += 0.5f;
  p.mean = small_ints(sz(c), 1);
  p.invstd = Floats(sz(c), 1.f);
  return p;
}

struct DevBn {
  DevFloats gamma, beta, mean, invstd;
  explicit DevBn(const BnParams& p) : gamma(p.gamma), beta(p.beta), mean(p.mean), invstd(p.invstd) {}
};

// Largest error-to-tolerance ratios and |slope| / u seen by the current test (printed at its end).
struct Worst {
  double dx = 0, dw = 0, db = 0, sums_self = 0, sums_ref = 0, slope_dx = 0, slope_dw = 0;
} g_worst;

void print_worst(const char* what) {
  std::printf("[ worst    ] %s: |err|/tol dx %.3g, dw %.3g, db %.3g; sums vs own dx %.3g, vs reference %.3g; "
              "|slope|/u dx %.3g, dw %.3g\n",
              what, g_worst.dx, g_worst.dw, g_worst.db, g_worst.sums_self, g_worst.sums_ref, g_worst.slope_dx,
              g_worst.slope_dw);
  g_worst = Worst{};
}

// Least-squares slope of got - ref on ref over the elements with keep[i]; checked (|slope| <
// 0.4u) when at least 4096 elements count. Returns |slope| / u.
double check_slope(const Floats& got, const Doubles& ref, const std::vector<char>& keep, double u, const char* what) {
  double num = 0, den = 0;
  size_t count = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!keep.empty() && !keep[i]) continue;
    num += (double(got[i]) - ref[i]) * ref[i];
    den += ref[i] * ref[i];
    ++count;
  }
  const double slope = den > 0 ? num / den : 0;
  if (count >= 4096) {
    EXPECT_LT(std::fabs(slope), 0.4 * u) << what << ": systematic relative error (truncated operands?)";
    return std::fabs(slope) / u;
  }
  return 0;
}

// ================================================================================================
// Backward-data
// ================================================================================================

struct DataProblem {
  cpu::Conv2dShape s;
  bool bn = true;
  Floats x, dz, w;  // w in HWIO
  BnParams p;
};

DataProblem random_data_problem(const cpu::Conv2dShape& s, bool bn) {
  DataProblem d;
  d.s = s;
  d.bn = bn;
  d.x = normal(sz(in_count(s)), 0.2f, 1.f);
  d.dz = normal(sz(out_count(s)));
  d.w = uniform(sz(w_count(s)), -0.2f, 0.2f);
  d.p = random_bn(s.cin);
  return d;
}

DataProblem exact_data(const cpu::Conv2dShape& s, bool bn) {
  DataProblem d;
  d.s = s;
  d.bn = bn;
  d.x = small_ints(sz(in_count(s)), 3);
  d.dz = small_ints(sz(out_count(s)), 3);
  d.w = small_ints(sz(w_count(s)), 2);
  d.p = exact_bn(s.cin);
  return d;
}

struct DataRef {
  Doubles dx;               // exact conv backward-data, masked with the float mask
  Doubles mag;              // S = conv backward-data of |dz| and |w|
  std::vector<char> pass;   // the float mask: bn(x) > 0 (all 1 for a plain conv)
};

DataRef data_reference(const DataProblem& d) {
  const cpu::Conv2dShape& s = d.s;
  DataRef r;
  r.dx.resize(sz(in_count(s)));
  r.mag.resize(sz(in_count(s)));
  Doubles ws(cpu::conv2d_backward_data_workspace(s));
  cpu::conv2d_backward_data(s, to_d(d.dz).data(), to_d(d.w).data(), r.dx.data(), ws.data());
  cpu::conv2d_backward_data(s, abs_d(d.dz).data(), abs_d(d.w).data(), r.mag.data(), ws.data());
  r.pass.assign(sz(in_count(s)), 1);
  if (d.bn)
    for (int64_t i = 0; i < in_count(s); ++i)
      if (!(bn_float(d.x[sz(i)], d.p, int(i % s.cin)) > 0.f)) {
        r.pass[sz(i)] = 0;
        r.dx[sz(i)] = 0.0;
      }
  return r;
}

struct DataRun {
  Floats dx;
  Doubles sum_dy, sum_dy_xhat;  // empty without the sums
};

// Runs backward-data twice (poisoned outputs and workspace, the same bits; once unless `twice`),
// with both BN sums when `sums`.
DataRun run_data(const DataProblem& d, ConvMath math, bool sums, bool twice = true) {
  const cpu::Conv2dShape& s = d.s;
  Stream st;
  DevFloats d_dz(d.dz), d_w(hwio_to_ohwi(s, d.w)), d_x(d.x), d_dx(sz(in_count(s)));
  DevFloats d_sdy(2 * sz(s.cin)), d_sdyx(2 * sz(s.cin));
  DevBn bn(d.p);
  DevBuf ws(cuda::bn_relu_conv_tc_backward_data_workspace_bytes(s));
  const auto out = run_poisoned(st, {&d_dx, &d_sdy, &d_sdyx}, [&] { ws.poison(); }, [&] {
    cuda::bn_relu_conv_tc_backward_data(s, math, d_dz.p(), d_w.p(), d.bn ? d_x.p() : nullptr,
                                        d.bn ? bn.gamma.p() : nullptr, d.bn ? bn.beta.p() : nullptr,
                                        d.bn ? bn.mean.p() : nullptr, d.bn ? bn.invstd.p() : nullptr, d_dx.p(),
                                        sums ? dptr(d_sdy) : nullptr, sums ? dptr(d_sdyx) : nullptr,
                                        sums ? ws.data() : nullptr, st);
  }, twice);
  expect_guards({&d_dz, &d_w, &d_x, &d_dx, &d_sdy, &d_sdyx, &bn.gamma, &bn.beta, &bn.mean, &bn.invstd, &ws});
  DataRun r;
  r.dx = out[0];
  if (sums) {
    r.sum_dy = as_doubles(out[1]);
    r.sum_dy_xhat = as_doubles(out[2]);
  } else {
    for (float v : out[1]) EXPECT_TRUE(std::isnan(v)) << "sum_dy written although null";
  }
  return r;
}

// The per-element tolerance of the file comment.
double data_tol(const DataProblem& d, const DataRef& r, size_t i, ConvMath math) {
  const double u = math_unit(math), k = double(d.s.kh) * d.s.kw * d.s.cout;
  return (2 * u + u * u) * r.mag[i] + (1.6 * k + 8) * std::ldexp(1.0, -23) * r.mag[i] + 1e-300;
}

// dx: masked elements exactly +0, the others within the tolerance (exact: equal).
void expect_dx(const DataProblem& d, const DataRef& r, const Floats& dx, ConvMath math, bool exact) {
  for (size_t i = 0; i < r.dx.size(); ++i) {
    if (!r.pass[i]) {
      ASSERT_TRUE(dx[i] == 0.f && !std::signbit(dx[i])) << "masked element " << i << " is " << dx[i];
      continue;
    }
    const double err = std::fabs(double(dx[i]) - r.dx[i]);
    const double tol = exact ? 0.0 : data_tol(d, r, i, math);
    ASSERT_TRUE(err <= tol) << "dx element " << i << " (pixel " << i / sz(d.s.cin) << ", channel "
                            << i % sz(d.s.cin) << "): got " << dx[i] << ", want " << r.dx[i] << " within " << tol;
    if (tol > 0) g_worst.dx = std::max(g_worst.dx, err / tol);
  }
}

// The BN sums: against double sums of the kernel's own dx (order only), and against the
// reference's sums within the elements' tolerances (exact data: equal).
void expect_sums(const DataProblem& d, const DataRef& r, const DataRun& got, ConvMath math, bool exact) {
  const cpu::Conv2dShape& s = d.s;
  const int c = s.cin;
  const int64_t m = pixels_in(s);
  const double eps = 2 * double(m + 16) * std::ldexp(1.0, -53);
  Doubles own_dy(sz(c), 0.0), own_dyx(sz(c), 0.0), mag_dy(sz(c), 0.0), mag_dyx(sz(c), 0.0);
  Doubles ref_dy(sz(c), 0.0), ref_dyx(sz(c), 0.0), tol_dy(sz(c), 0.0), tol_dyx(sz(c), 0.0);
  for (int64_t i = 0; i < in_count(s); ++i) {
    const int ch = int(i % c);
    const double xm = double(d.x[sz(i)]) - double(d.p.mean[sz(ch)]);
    const double g = got.dx[sz(i)], t = g * xm;
    own_dy[sz(ch)] += g;
    own_dyx[sz(ch)] += t;
    mag_dy[sz(ch)] += std::fabs(g);
    mag_dyx[sz(ch)] += std::fabs(t);
    ref_dy[sz(ch)] += r.dx[sz(i)];
    ref_dyx[sz(ch)] += r.dx[sz(i)] * xm;
    const double tol = (exact || !r.pass[sz(i)]) ? 0.0 : data_tol(d, r, sz(i), math);
    tol_dy[sz(ch)] += tol;
    tol_dyx[sz(ch)] += tol * std::fabs(xm);
  }
  for (int ch = 0; ch < c; ++ch) {
    SCOPED_TRACE("channel " + std::to_string(ch));
    const double inv = d.p.invstd[sz(ch)];
    const double sdy = got.sum_dy[sz(ch)], sdyx = got.sum_dy_xhat[sz(ch)];
    // Own dx: the same terms in another order (and one rounding of the scaling by invstd).
    const double t_self_dy = eps * mag_dy[sz(ch)];
    const double t_self_dyx = eps * mag_dyx[sz(ch)] * inv + std::ldexp(1.0, -52) * std::fabs(own_dyx[sz(ch)] * inv);
    const double e1 = std::fabs(sdy - own_dy[sz(ch)]), e2 = std::fabs(sdyx - own_dyx[sz(ch)] * inv);
    EXPECT_LE(e1, t_self_dy) << "sum_dy " << sdy << " vs the host's sum of the kernel's dx " << own_dy[sz(ch)];
    EXPECT_LE(e2, t_self_dyx) << "sum_dy_xhat " << sdyx << " vs the host's " << own_dyx[sz(ch)] * inv;
    if (t_self_dy > 0) g_worst.sums_self = std::max(g_worst.sums_self, e1 / t_self_dy);
    if (t_self_dyx > 0) g_worst.sums_self = std::max(g_worst.sums_self, e2 / t_self_dyx);
    // The reference.
    if (exact) {
      EXPECT_EQ(sdy, ref_dy[sz(ch)]);
      EXPECT_EQ(sdyx, ref_dyx[sz(ch)] * inv);
    } else {
      const double t_dy = tol_dy[sz(ch)] + t_self_dy, t_dyx = (tol_dyx[sz(ch)] + eps * mag_dyx[sz(ch)]) * inv +
                                                               std::ldexp(1.0, -52) * std::fabs(ref_dyx[sz(ch)] * inv);
      const double e3 = std::fabs(sdy - ref_dy[sz(ch)]), e4 = std::fabs(sdyx - ref_dyx[sz(ch)] * inv);
      EXPECT_LE(e3, t_dy) << "sum_dy " << sdy << " vs the reference " << ref_dy[sz(ch)];
      EXPECT_LE(e4, t_dyx) << "sum_dy_xhat " << sdyx << " vs the reference " << ref_dyx[sz(ch)] * inv;
      if (t_dy > 0) g_worst.sums_ref = std::max(g_worst.sums_ref, e3 / t_dy);
      if (t_dyx > 0) g_worst.sums_ref = std::max(g_worst.sums_ref, e4 / t_dyx);
    }
  }
}

// One problem, one math: dx, with the sums when BN'd (SumsAreOptional checks that dx has the same
// bits without them).
void check_data(const DataProblem& d, ConvMath math, bool exact = false, bool twice = true) {
  SCOPED_TRACE(shape_str(d.s) + (d.bn ? " backward-data BN-ReLU " : " backward-data plain ") + math_name(math) +
               (exact ? " (exact data)" : ""));
  const DataRef r = data_reference(d);
  const DataRun got = run_data(d, math, d.bn, twice);
  expect_dx(d, r, got.dx, math, exact);
  if (!exact) g_worst.slope_dx = std::max(g_worst.slope_dx, check_slope(got.dx, r.dx, r.pass, math_unit(math), "dx"));
  if (d.bn) expect_sums(d, r, got, math, exact);
}

// ================================================================================================
// Backward-filter
// ================================================================================================

struct FilterProblem {
  cpu::Conv2dShape s;
  bool bn = true;
  Floats x, dz;
  BnParams p;
};

FilterProblem random_filter(const cpu::Conv2dShape& s, bool bn) {
  FilterProblem f;
  f.s = s;
  f.bn = bn;
  f.x = normal(sz(in_count(s)), 0.2f, 1.f);
  f.dz = normal(sz(out_count(s)));
  f.p = random_bn(s.cin);
  return f;
}

FilterProblem exact_filter(const cpu::Conv2dShape& s, bool bn) {
  FilterProblem f;
  f.s = s;
  f.bn = bn;
  f.x = small_ints(sz(in_count(s)), 3);
  f.dz = small_ints(sz(out_count(s)), 3);
  f.p = exact_bn(s.cin);
  return f;
}

struct FilterRef {
  Doubles dw, db;      // OHWI; exact sums of the float operands
  Doubles tol_w, tol_b;
};

// tol: false for exact data (zero tolerances).
FilterRef filter_reference(const FilterProblem& f, ConvMath math, bool tol) {
  const cpu::Conv2dShape& s = f.s;
  const int64_t nx = in_count(s);
  Floats a(sz(nx));
  if (f.bn)
    cpu::batchnorm_apply(pixels_in(s), s.cin, f.x.data(), f.p.gamma.data(), f.p.beta.data(), f.p.mean.data(),
                         f.p.invstd.data(), true, a.data());
  else
    a = f.x;
  FilterRef r;
  Doubles dw(sz(w_count(s))), ws(cpu::conv2d_backward_filter_workspace(s));
  r.db.resize(sz(s.cout));
  const Doubles dz_d = to_d(f.dz), abs_dz = abs_d(f.dz);
  cpu::conv2d_backward_filter(s, to_d(a).data(), dz_d.data(), dw.data(), r.db.data(), ws.data());
  r.dw = hwio_to_ohwi_d(s, dw);
  r.tol_w.assign(r.dw.size(), 0.0);
  r.tol_b.assign(r.db.size(), 0.0);
  if (!tol) return r;
  Doubles amag(sz(nx));
  for (int64_t i = 0; i < nx; ++i) {
    const int c = int(i % s.cin);
    amag[sz(i)] = f.bn ? std::fabs(double(f.x[sz(i)]) - f.p.mean[sz(c)]) *
                                 std::fabs(double(f.p.gamma[sz(c)]) * f.p.invstd[sz(c)]) +
                             std::fabs(double(f.p.beta[sz(c)]))
                       : std::fabs(double(f.x[sz(i)]));
  }
  Doubles s_a(sz(w_count(s))), s_m(sz(w_count(s))), sum_abs_dz(sz(s.cout));
  cpu::conv2d_backward_filter(s, abs_d(a).data(), abs_dz.data(), s_a.data(), sum_abs_dz.data(), ws.data());
  cpu::conv2d_backward_filter(s, amag.data(), abs_dz.data(), s_m.data(), sum_abs_dz.data(), ws.data());
  s_a = hwio_to_ohwi_d(s, s_a);
  s_m = hwio_to_ohwi_d(s, s_m);
  const Plan plan = filter_plan(s);
  const double u = math_unit(math), kacc = double(std::min(plan.chunk, pixels_out(s)) + plan.splits);
  const double acc = (1.6 * kacc + 8) * std::ldexp(1.0, -23);
  for (size_t i = 0; i < r.dw.size(); ++i) r.tol_w[i] = (2 * u + u * u) * s_a[i] + acc * s_m[i] + 1e-300;
  for (size_t c = 0; c < r.db.size(); ++c) r.tol_b[c] = (kacc + 8) * std::ldexp(1.0, -23) * sum_abs_dz[c] + 1e-300;
  return r;
}

struct FilterRun {
  Floats dw, db;
};

// Runs backward-filter twice (poisoned outputs and workspace, the same bits; once unless
// `twice`); with also_without_db a further run with db null must give the same dw bits and leave
// db alone.
FilterRun run_filter(const FilterProblem& f, ConvMath math, bool also_without_db = false, bool twice = true) {
  const cpu::Conv2dShape& s = f.s;
  Stream st;
  DevFloats d_x(f.x), d_dz(f.dz), d_dw(sz(w_count(s))), d_db(sz(s.cout));
  DevBn bn(f.p);
  const size_t ws_bytes = cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(s);
  std::unique_ptr<DevBuf> ws = ws_bytes ? std::make_unique<DevBuf>(ws_bytes) : nullptr;
  const auto launch = [&](float* db) {
    cuda::bn_relu_conv_tc_backward_filter(s, math, d_x.p(), f.bn ? bn.gamma.p() : nullptr,
                                          f.bn ? bn.beta.p() : nullptr, f.bn ? bn.mean.p() : nullptr,
                                          f.bn ? bn.invstd.p() : nullptr, d_dz.p(), d_dw.p(), db,
                                          ws ? ws->data() : nullptr, st);
  };
  const auto poison_ws = [&] {
    if (ws) ws->poison();
  };
  const auto out = run_poisoned(st, {&d_dw, &d_db}, poison_ws, [&] { launch(d_db.p()); }, twice);
  if (also_without_db) {
    d_dw.poison();
    d_db.poison();
    poison_ws();
    launch(nullptr);
    st.sync();
    EXPECT_TRUE(same_bits(d_dw.get(), out[0])) << "dw differs when db is null";
    for (float v : d_db.get()) EXPECT_TRUE(std::isnan(v)) << "db written although null";
  }
  expect_guards({&d_x, &d_dz, &d_dw, &d_db, &bn.gamma, &bn.beta, &bn.mean, &bn.invstd});
  if (ws) expect_guards({ws.get()});
  return {out[0], out[1]};
}

void expect_within(const Floats& got, const Doubles& ref, const Doubles& tol, double* worst, const char* what) {
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs(double(got[i]) - ref[i]);
    ASSERT_TRUE(err <= tol[i]) << what << " element " << i << ": got " << got[i] << ", want " << ref[i]
                               << " within " << tol[i];
    if (tol[i] > 1e-290) *worst = std::max(*worst, err / tol[i]);
  }
}

void check_filter(const FilterProblem& f, ConvMath math, bool exact = false, bool also_without_db = false,
                  bool twice = true) {
  SCOPED_TRACE(shape_str(f.s) + (f.bn ? " backward-filter BN-ReLU " : " backward-filter plain ") + math_name(math) +
               (exact ? " (exact data)" : ""));
  const FilterRef r = filter_reference(f, math, !exact);
  const FilterRun got = run_filter(f, math, also_without_db, twice);
  expect_within(got.dw, r.dw, r.tol_w, &g_worst.dw, "dw");
  expect_within(got.db, r.db, r.tol_b, &g_worst.db, "db");
  if (!exact) g_worst.slope_dw = std::max(g_worst.slope_dw, check_slope(got.dw, r.dw, {}, math_unit(math), "dw"));
}

// ================================================================================================
// Shapes
// ================================================================================================

// Small shapes with partial tiles in M, N and K, stride 2 and 3, dilations, 1x1 and 3x1 kernels,
// cin 3, channel counts that are not multiples of 16, narrow and wide tiles.
std::vector<cpu::Conv2dShape> ragged_shapes() {
  return {
      conv_shape(1, 7, 9, 5, 3, 3, 1, 1, 1),       // everything smaller than a tile
      conv_shape(2, 11, 13, 3, 16, 3, 2, 1, 1),    // cin 3 (stem), stride 2
      conv_shape(3, 13, 11, 70, 65, 3, 2, 1, 1),   // stride 2, odd sizes, wide tiles partly empty
      conv_shape(2, 17, 17, 33, 40, 3, 1, 3, 3),   // dilation 3 with pad 3, cin just past 32
      conv_shape(2, 10, 10, 24, 40, 1, 1, 0, 1),   // 1x1
      conv_shape(2, 12, 10, 20, 17, 1, 2, 0, 1),   // 1x1 stride 2: pixels no output reaches
      conv_shape(1, 16, 14, 19, 23, 3, 2, 2, 2),   // stride 2 with dilation 2: a class with no live tap
      conv_shape(1, 11, 13, 9, 21, 5, 3, 2, 2),    // stride 3: taps in steps of 3, classes of 3 sizes
      conv_shape(2, 23, 19, 67, 18, 3, 1, 1, 1),   // cout 18: a partial K slice in backward-data
      conv_shape(2, 1, 9, 8, 8, 1, 2, 0, 1),       // h < stride: an empty parity class
      rect(2, 9, 7, 12, 20, 3, 1, 2, 1, 2),        // 3x1 kernel, stride 2, dilation 2, pad 1
      conv_shape(1, 24, 24, 8, 12, 3, 1, 1, 1),    // 576 pixels: split-K with a short last split
  };
}

// ASPP-like: 3x3 with pad = dilation on images where most (or all but the centre) taps fall outside.
std::vector<cpu::Conv2dShape> dilated_shapes() {
  return {
      conv_shape(2, 8, 8, 40, 24, 3, 1, 6, 6),
      conv_shape(1, 8, 8, 24, 36, 3, 1, 12, 12),
      conv_shape(1, 10, 10, 16, 16, 3, 1, 18, 18),
      conv_shape(1, 20, 20, 8, 8, 3, 1, 0, 6),    // no padding: few pixels reach the output
      conv_shape(1, 14, 13, 8, 12, 3, 2, 6, 6),   // stride 2 with dilation 6
  };
}

// bf16 storage of x (bf16 training): the bf16-x passes must equal the fp32-x passes on the
// widened x, bit for bit (dx, both sums, dw, db), since a bf16 x is widened exactly where it is
// loaded. x is drawn in bf16, so the two runs see the same values; a kernel that rounded or
// misread the bf16 x differently (a wrong element size, a truncating conversion) would differ.
}  // namespace

// ================================================================================================
// Host-side checks (no device needed)
// ================================================================================================

TEST(BwdTcHost, CanRunAndWorkspaceFormulas) {
  const cpu::Conv2dShape ok = conv_shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_tc_can_run(ok, ConvMath::Tf32));
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_tc_can_run(ok, ConvMath::Bf16));
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 8, 8, 3, 1, 3, 1, 1, 1), ConvMath::Tf32));
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 8, 8, 4096, 16, 3, 1, 1, 1), ConvMath::Tf32));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(ok, static_cast<ConvMath>(7)));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1), ConvMath::Tf32));  // empty
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 8, 8, 0, 16, 3, 1, 1, 1), ConvMath::Tf32));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 8, 8, 16, 0, 3, 1, 1, 1), ConvMath::Tf32));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 8, 8, 16, 16, 3, 0, 1, 1), ConvMath::Tf32));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 8, 8, 16, 16, 3, 1, -1, 1), ConvMath::Tf32));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 300, 300, 1, 1, 1, 256, 0, 1), ConvMath::Tf32));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(conv_shape(1, 8, 8, 1 << 27, 16, 3, 1, 1, 1), ConvMath::Tf32));

  // Backward-data sums: 2 doubles per 128-pixel tile of each parity class and input channel.
  for (const cpu::Conv2dShape& s : {conv_shape(2, 64, 64, 16, 16, 3, 1, 1, 1), conv_shape(3, 13, 11, 70, 65, 3, 2, 1, 1),
                                    conv_shape(2, 1, 9, 8, 8, 1, 2, 0, 1), conv_shape(1, 11, 13, 9, 21, 5, 3, 2, 2)}) {
    SCOPED_TRACE(shape_str(s));
    const int64_t q = s.stride;
    const int64_t tiles = q * q * ((int64_t(s.n) * ((s.h + q - 1) / q) * ((s.w + q - 1) / q) + 127) / 128);
    const size_t bytes = size_t(2 * tiles * s.cin) * sizeof(double);
    EXPECT_EQ(cuda::bn_relu_conv_tc_backward_data_workspace_bytes(s), (bytes + 255) / 256 * 256);
  }
  EXPECT_EQ(cuda::bn_relu_conv_tc_backward_data_workspace_bytes(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1)), 0u);

  // Backward-filter: the plan of the header (the test's bounds use it).
  std::vector<cpu::Conv2dShape> shapes = fused_chain_shapes(64);
  for (const cpu::Conv2dShape& s : fused_chain_shapes(256)) shapes.push_back(s);
  for (const cpu::Conv2dShape& s : ragged_shapes()) shapes.push_back(s);
  bool some_split = false, some_single = false;
  for (const cpu::Conv2dShape& s : shapes) {
    SCOPED_TRACE(shape_str(s));
    const Plan p = filter_plan(s);
    ASSERT_GE(p.splits, 1);
    EXPECT_EQ(p.chunk % 32, 0);
    EXPECT_LT((p.splits - 1) * p.chunk, pixels_out(s));
    EXPECT_GE(p.splits * p.chunk, pixels_out(s));
    const size_t per_split = size_t(s.cout) * (size_t(s.kh) * s.kw * s.cin + 1) * sizeof(float);
    const size_t want = p.splits > 1 ? (size_t(p.splits) * per_split + 255) / 256 * 256 : 0;
    EXPECT_EQ(cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(s), want) << "splits " << p.splits;
    some_split |= p.splits > 1;
    some_single |= p.splits == 1;
  }
  EXPECT_TRUE(some_split && some_single);
  EXPECT_EQ(cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1)), 0u);
}

TEST(BwdTcHost, RejectsBadArguments) {
  const cpu::Conv2dShape ok = conv_shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  const cpu::Conv2dShape empty = conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1);
  const ConvMath tf = ConvMath::Tf32, bad_math = static_cast<ConvMath>(7);
  float dummy[4] = {};
  float* f = dummy;
  double dd[2] = {};
  double* d = dd;
  alignas(256) static unsigned char ws[8192];
  ASSERT_LE(cuda::bn_relu_conv_tc_backward_data_workspace_bytes(ok), sizeof(ws));
  using cuda::bn_relu_conv_tc_backward_data;
  using cuda::bn_relu_conv_tc_backward_filter;

  // Backward-data: shape, math, null required pointers, some BN arguments but not all, BN without
  // x, sums without BN, sums without a workspace or with a misaligned one.
  EXPECT_THROW(bn_relu_conv_tc_backward_data(empty, tf, f, f, f, f, f, f, f, f, nullptr, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, bad_math, f, f, f, f, f, f, f, f, nullptr, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, nullptr, f, nullptr, nullptr, nullptr, nullptr, nullptr, f,
                                             nullptr, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, f,
                                             nullptr, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, f, f, f, nullptr, f, f, f, nullptr, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, f, nullptr, f, f, f, f, f, nullptr, nullptr, nullptr, nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, f, nullptr, nullptr, nullptr, nullptr, nullptr, f, d, nullptr,
                                             ws, nullptr),
               Error);  // sums need BN
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, f, f, f, f, f, f, f, d, d, nullptr, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, f, f, f, f, f, f, f, nullptr, d, nullptr, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_data(ok, tf, f, f, f, f, f, f, f, f, d, d, ws + 8, nullptr), Error);

  // Backward-filter: the same, plus the workspace (null or misaligned where one is needed).
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(empty, tf, f, f, f, f, f, f, f, f, nullptr, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(ok, bad_math, f, f, f, f, f, f, f, f, nullptr, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(ok, tf, nullptr, nullptr, nullptr, nullptr, nullptr, f, f, f, nullptr,
                                               nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(ok, tf, f, nullptr, nullptr, nullptr, nullptr, nullptr, f, f, nullptr,
                                               nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(ok, tf, f, nullptr, nullptr, nullptr, nullptr, f, nullptr, f, nullptr,
                                               nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(ok, tf, f, f, f, nullptr, f, f, f, f, nullptr, nullptr), Error);
  const cpu::Conv2dShape split = conv_shape(2, 64, 64, 16, 16, 3, 1, 1, 1);
  const size_t need = cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(split);
  ASSERT_GT(need, 0u);
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(split, tf, f, nullptr, nullptr, nullptr, nullptr, f, f, f, nullptr,
                                               nullptr),
               Error);
  EXPECT_THROW(bn_relu_conv_tc_backward_filter(split, tf, f, nullptr, nullptr, nullptr, nullptr, f, f, f, ws + 4,
                                               nullptr),
               Error);
}

// ================================================================================================
// The kernels
// ================================================================================================

TEST(BwdTcGpu, NetworkShapesAt64MatchCpu) {
  REQUIRE_GPU();
  const std::vector<cpu::Conv2dShape> shapes = thin_for_emulator(fused_chain_shapes(64, 2));
  ASSERT_FALSE(shapes.empty());
  const bool twice = !light();
  for (const cpu::Conv2dShape& s : shapes) {
    check_data(random_data_problem(s, true), ConvMath::Tf32, false, twice);
    check_filter(random_filter(s, true), ConvMath::Tf32, false, false, twice);
  }
  print_worst("64x64 network shapes, tf32");
  // BF16: every third shape (the same code with the other fragment types; the first one only
  // under the sanitizers, the ragged shapes run both maths).
  for (size_t i = 0; i < shapes.size(); i += light() ? shapes.size() : 3) {
    check_data(random_data_problem(shapes[i], true), ConvMath::Bf16, false, twice);
    check_filter(random_filter(shapes[i], true), ConvMath::Bf16, false, false, twice);
  }
  print_worst("64x64 network shapes, bf16");
}

TEST(BwdTcGpu, NetworkShapesAt256MatchCpu) {
  REQUIRE_GPU();
  std::string skip;
  const std::vector<cpu::Conv2dShape> shapes = large_network_shapes(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) {
    check_data(random_data_problem(s, true), ConvMath::Tf32);
    check_filter(random_filter(s, true), ConvMath::Tf32);
  }
  print_worst("256x256 network shapes, tf32");
}

TEST(BwdTcGpu, RaggedShapesAndPlainConvMatchCpu) {
  REQUIRE_GPU();
  const std::vector<cpu::Conv2dShape> shapes = ragged_shapes();
  for (size_t i = 0; i < shapes.size(); ++i) {
    const cpu::Conv2dShape& s = shapes[i];
    for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
      if (math == ConvMath::Bf16 && light() && i % 2) continue;  // sanitizers: BF16 on every other shape
      check_data(random_data_problem(s, true), math);
      check_data(random_data_problem(s, false), math);
      check_filter(random_filter(s, true), math, false, /*also_without_db=*/math == ConvMath::Tf32);
      check_filter(random_filter(s, false), math);
    }
  }
  print_worst("ragged shapes, tf32 and bf16");
}

TEST(BwdTcGpu, LargeDilationsOnSmallImagesMatchCpu) {
  REQUIRE_GPU();
  for (const cpu::Conv2dShape& s : dilated_shapes()) {
    check_data(random_data_problem(s, true), ConvMath::Tf32);
    check_data(random_data_problem(s, false), ConvMath::Tf32);
    check_filter(random_filter(s, true), ConvMath::Tf32);
    check_filter(random_filter(s, false), ConvMath::Tf32);
  }
  print_worst("dilated shapes, tf32");
}

TEST(BwdTcGpu, ExactArithmeticGivesExactResults) {
  REQUIRE_GPU();
  // Network shapes: every other one, the maths alternating (under the sanitizers: the first
  // two, once each).
  const std::vector<cpu::Conv2dShape> net = fused_chain_shapes(64, 2);
  const bool twice = !light();
  for (size_t i = 0, k = 0; i < net.size() && !(light() && k == 2); i += 2, ++k) {
    const ConvMath math = k % 2 ? ConvMath::Bf16 : ConvMath::Tf32;
    check_data(exact_data(net[i], true), math, true, twice);
    check_filter(exact_filter(net[i], true), math, true, false, twice);
  }
  std::vector<cpu::Conv2dShape> small = ragged_shapes();
  for (const cpu::Conv2dShape& s : dilated_shapes()) small.push_back(s);
  for (size_t i = 0; i < small.size(); ++i) {
    for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
      if (light() && (i + (math == ConvMath::Bf16)) % 2) continue;  // sanitizers: one math per shape
      check_data(exact_data(small[i], true), math, true);
      check_data(exact_data(small[i], false), math, true);
      check_filter(exact_filter(small[i], true), math, true);
      check_filter(exact_filter(small[i], false), math, true);
    }
  }
}

// db from the unrounded dz: dz = k + j 2^-12 (k, j in [-3, 3]) needs 14 significant bits, which
// TF32 (11) and BF16 (8) drop; with at most 2^10 pixels every partial sum of db is a multiple of
// 2^-12 below 2^12, exact in fp32 in any order.
TEST(BwdTcGpu, DbIsNotRounded) {
  REQUIRE_GPU();
  for (const cpu::Conv2dShape& s : {conv_shape(1, 24, 24, 8, 12, 3, 1, 1, 1), conv_shape(2, 16, 16, 8, 40, 3, 1, 1, 1)}) {
    ASSERT_LE(pixels_out(s), 1024);
    FilterProblem f = random_filter(s, true);
    const Floats k = small_ints(f.dz.size(), 3), j = small_ints(f.dz.size(), 3);
    for (size_t i = 0; i < f.dz.size(); ++i) f.dz[i] = k[i] + std::ldexp(j[i], -12);
    for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
      SCOPED_TRACE(shape_str(s) + " " + math_name(math));
      const FilterRef r = filter_reference(f, math, true);
      const FilterRun got = run_filter(f, math);
      for (int c = 0; c < s.cout; ++c) EXPECT_EQ(double(got.db[sz(c)]), r.db[sz(c)]) << "channel " << c;
      expect_within(got.dw, r.dw, r.tol_w, &g_worst.dw, "dw");
    }
  }
  g_worst = Worst{};
}

// Each BN sum on its own, or none (null workspace): dx keeps its bits, the requested sum its value.
TEST(BwdTcGpu, SumsAreOptional) {
  REQUIRE_GPU();
  const DataProblem d = random_data_problem(conv_shape(2, 12, 12, 20, 48, 3, 1, 1, 1), true);
  const cpu::Conv2dShape& s = d.s;
  const DataRun full = run_data(d, ConvMath::Tf32, true);
  Stream st;
  DevFloats d_dz(d.dz), d_w(hwio_to_ohwi(s, d.w)), d_x(d.x), d_dx(sz(in_count(s))), d_a(2 * sz(s.cin));
  DevBn bn(d.p);
  DevBuf ws(cuda::bn_relu_conv_tc_backward_data_workspace_bytes(s));
  for (int which = 0; which < 3; ++which) {
    d_dx.poison();
    d_a.poison();
    ws.poison();
    cuda::bn_relu_conv_tc_backward_data(s, ConvMath::Tf32, d_dz.p(), d_w.p(), d_x.p(), bn.gamma.p(), bn.beta.p(),
                                        bn.mean.p(), bn.invstd.p(), d_dx.p(), which == 0 ? dptr(d_a) : nullptr,
                                        which == 1 ? dptr(d_a) : nullptr, which < 2 ? ws.data() : nullptr, st);
    st.sync();
    EXPECT_TRUE(same_bits(d_dx.get(), full.dx)) << "sum " << which;
    if (which == 2) continue;
    const Doubles got = as_doubles(d_a.get());
    const Doubles& want = which == 0 ? full.sum_dy : full.sum_dy_xhat;
    EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(double)), 0) << "sum " << which;
  }
  expect_guards({&d_dz, &d_w, &d_x, &d_dx, &d_a, &ws});
}

// NaN in x, and separately in dz: every output (dx, the sums, dw, db) has NaN exactly where the
// fp32 kernels (bn_relu_conv_bwd.cuh) put NaN, and is finite elsewhere.
TEST(BwdTcGpu, NaNFollowsTheFp32Kernels) {
  REQUIRE_GPU();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const cpu::Conv2dShape s = conv_shape(1, 5, 6, 8, 8, 3, 2, 1, 1);
  const auto dbl = [](const Floats& f) {  // device doubles as floats (NaN stays NaN)
    Floats out;
    for (double v : as_doubles(f)) out.push_back(float(v));
    return out;
  };
  for (int where = 0; where < 2; ++where) {
    SCOPED_TRACE(where == 0 ? "NaN in x" : "NaN in dz");
    Floats x = normal(sz(in_count(s)), 0.2f, 1.f), dz = normal(sz(out_count(s)));
    const Floats w = uniform(sz(w_count(s)), -0.2f, 0.2f);
    if (where == 0) {
      x[sz((0 * s.w + 0) * s.cin + 3)] = nan;  // pixel (0, 0) channel 3
      x[sz((2 * s.w + 3) * s.cin + 5)] = nan;  // pixel (2, 3) channel 5
    } else {
      dz[sz((1 * s.wo() + 1) * s.cout + 2)] = nan;  // output pixel (1, 1) channel 2
    }
    const BnParams p = random_bn(s.cin);
    Stream st;
    DevFloats d_x(x), d_dz(dz), d_w(hwio_to_ohwi(s, w));
    DevBn bn(p);
    DevFloats dx32(sz(in_count(s))), dw32(sz(w_count(s))), db32(sz(s.cout)), sdy32(2 * sz(s.cin)),
        sdyx32(2 * sz(s.cin));
    DevFloats dxtc(sz(in_count(s))), dwtc(sz(w_count(s))), dbtc(sz(s.cout)), sdytc(2 * sz(s.cin)),
        sdyxtc(2 * sz(s.cin));
    DevBuf ws32(cuda::bn_relu_conv_backward_data_sums_workspace_bytes(s));
    DevBuf wstc(cuda::bn_relu_conv_tc_backward_data_workspace_bytes(s));
    const size_t fw32 = cuda::bn_relu_conv_backward_filter_workspace_bytes(s);
    const size_t fwtc = cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(s);
    DevBuf wsf32(fw32 ? fw32 : 16), wsftc(fwtc ? fwtc : 16);
    cuda::bn_relu_conv_backward_data_with_sums(s, d_dz.p(), d_w.p(), d_x.p(), bn.gamma.p(), bn.beta.p(), bn.mean.p(),
                                               bn.invstd.p(), dx32.p(), dptr(sdy32), dptr(sdyx32), ws32.data(), st);
    cuda::bn_relu_conv_backward_filter(s, d_x.p(), bn.gamma.p(), bn.beta.p(), bn.mean.p(), bn.invstd.p(), d_dz.p(),
                                       dw32.p(), db32.p(), fw32 ? wsf32.data() : nullptr, st);
    for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
      SCOPED_TRACE(math_name(math));
      for (DevFloats* o : {&dxtc, &dwtc, &dbtc, &sdytc, &sdyxtc}) o->poison();
      cuda::bn_relu_conv_tc_backward_data(s, math, d_dz.p(), d_w.p(), d_x.p(), bn.gamma.p(), bn.beta.p(),
                                          bn.mean.p(), bn.invstd.p(), dxtc.p(), dptr(sdytc), dptr(sdyxtc),
                                          wstc.data(), st);
      cuda::bn_relu_conv_tc_backward_filter(s, math, d_x.p(), bn.gamma.p(), bn.beta.p(), bn.mean.p(),
                                            bn.invstd.p(), d_dz.p(), dwtc.p(), dbtc.p(),
                                            fwtc ? wsftc.data() : nullptr, st);
      st.sync();
      const auto same_nans = [](const Floats& a, const Floats& b, const char* what) {
        ASSERT_EQ(a.size(), b.size());
        for (size_t i = 0; i < a.size(); ++i) {
          ASSERT_EQ(std::isnan(a[i]), std::isnan(b[i])) << what << " element " << i << ": " << a[i] << " vs fp32 "
                                                        << b[i];
          if (!std::isnan(a[i])) {
            ASSERT_TRUE(std::isfinite(a[i])) << what << " element " << i;
          }
        }
      };
      same_nans(dxtc.get(), dx32.get(), "dx");
      same_nans(dwtc.get(), dw32.get(), "dw");
      same_nans(dbtc.get(), db32.get(), "db");
      same_nans(dbl(sdytc.get()), dbl(sdy32.get()), "sum_dy");
      same_nans(dbl(sdyxtc.get()), dbl(sdyx32.get()), "sum_dy_xhat");
    }
    // The patterns themselves (so that the comparison above is not vacuous).
    const auto count_nan = [](const Floats& f) {
      return int(std::count_if(f.begin(), f.end(), [](float v) { return std::isnan(v); }));
    };
    if (where == 0) {
      EXPECT_EQ(count_nan(dx32.get()), 0);                  // masked
      EXPECT_EQ(count_nan(dw32.get()), 3 * s.cout);         // (0,0): tap (1,1); (2,3): taps (1,0), (1,2)
      EXPECT_EQ(count_nan(db32.get()), 0);
      EXPECT_EQ(count_nan(dbl(sdyx32.get())), 2);           // channels 3 and 5
    } else {
      EXPECT_GT(count_nan(dx32.get()), 0);
      EXPECT_EQ(count_nan(dw32.get()), s.kh * s.kw * s.cin);  // output channel 2's row
      EXPECT_EQ(count_nan(db32.get()), 1);
    }
    expect_guards({&d_x, &d_dz, &d_w, &dxtc, &dwtc, &dbtc, &sdytc, &sdyxtc, &wstc, &wsftc});
  }
}

TEST(BwdTcGpu, Bf16StoredInputEqualsWidenedInputBitForBit) {
  REQUIRE_GPU();
  std::vector<cpu::Conv2dShape> shapes = {
      rect(2, 16, 16, 32, 32, 3, 3, 1, 1, 1),   // an encoder conv
      rect(2, 16, 16, 16, 32, 3, 3, 2, 1, 1),   // stride 2 (the residual blocks' first conv)
      rect(1, 8, 8, 64, 48, 3, 3, 1, 6, 6),     // dilated (ASPP), ragged cout
      rect(2, 9, 7, 37, 20, 1, 1, 1, 0, 1),     // 1x1, ragged everything, narrow filter tile
  };
  if (light()) shapes.resize(2);
  for (const cpu::Conv2dShape& s : shapes) {
    SCOPED_TRACE(shape_str(s));
    const Halves xh = random_bf16(sz(in_count(s)));
    DataProblem d = random_data_problem(s, true);
    d.x = widen(xh);
    const DataRun want = run_data(d, ConvMath::Bf16, true, false);

    Stream st;
    DevHalves d_xh(xh);
    DevFloats d_dz(d.dz), d_w(hwio_to_ohwi(s, d.w)), d_dx(sz(in_count(s)));
    DevFloats d_sdy(2 * sz(s.cin)), d_sdyx(2 * sz(s.cin));
    DevBn bn(d.p);
    DevBuf ws(cuda::bn_relu_conv_tc_backward_data_workspace_bytes(s));
    const auto out = run_poisoned(st, {&d_dx, &d_sdy, &d_sdyx}, [&] { ws.poison(); }, [&] {
      cuda::bn_relu_conv_tc_backward_data(s, ConvMath::Bf16, d_dz.p(), d_w.p(), cuda::Storage::Bf16, d_xh.p(),
                                          bn.gamma.p(), bn.beta.p(), bn.mean.p(), bn.invstd.p(), d_dx.p(),
                                          dptr(d_sdy), dptr(d_sdyx), ws.data(), st);
    }, !light());
    expect_guards({&d_xh, &d_dz, &d_w, &d_dx, &d_sdy, &d_sdyx, &ws});
    EXPECT_TRUE(same_bits(out[0], want.dx)) << "dx";
    EXPECT_EQ(as_doubles(out[1]), want.sum_dy) << "sum_dy";
    EXPECT_EQ(as_doubles(out[2]), want.sum_dy_xhat) << "sum_dy_xhat";

    for (bool with_bn : {true, false}) {
      FilterProblem f = random_filter(s, with_bn);
      f.x = d.x;
      const FilterRun fw = run_filter(f, ConvMath::Bf16, false, false);
      DevFloats d_dz2(f.dz), d_dw(sz(w_count(s))), d_db(sz(s.cout));
      DevBn bn2(f.p);
      const size_t ws_bytes = cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(s);
      std::unique_ptr<DevBuf> wsf = ws_bytes ? std::make_unique<DevBuf>(ws_bytes) : nullptr;
      const auto fo = run_poisoned(st, {&d_dw, &d_db}, [&] {
        if (wsf) wsf->poison();
      }, [&] {
        cuda::bn_relu_conv_tc_backward_filter(s, ConvMath::Bf16, cuda::Storage::Bf16, d_xh.p(),
                                              with_bn ? bn2.gamma.p() : nullptr, with_bn ? bn2.beta.p() : nullptr,
                                              with_bn ? bn2.mean.p() : nullptr, with_bn ? bn2.invstd.p() : nullptr,
                                              d_dz2.p(), d_dw.p(), d_db.p(), wsf ? wsf->data() : nullptr, st);
      }, !light());
      expect_guards({&d_xh, &d_dz2, &d_dw, &d_db});
      EXPECT_TRUE(same_bits(fo[0], fw.dw)) << (with_bn ? "dw (BN-ReLU)" : "dw (plain)");
      EXPECT_TRUE(same_bits(fo[1], fw.db)) << (with_bn ? "db (BN-ReLU)" : "db (plain)");
    }
  }
  // A bf16 x needs bf16 operands.
  const cpu::Conv2dShape s = shapes[0];
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_tc_can_run(s, ConvMath::Bf16, cuda::Storage::Bf16));
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_tc_can_run(s, ConvMath::Tf32, cuda::Storage::Bf16));
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_tc_can_run(s, ConvMath::Tf32, cuda::Storage::F32));
  Stream st;
  DevHalves xh(sz(in_count(s)));
  DevFloats dz(sz(out_count(s))), dw(sz(w_count(s)));
  const size_t ws_bytes = cuda::bn_relu_conv_tc_backward_filter_workspace_bytes(s);
  std::unique_ptr<DevBuf> wsf = ws_bytes ? std::make_unique<DevBuf>(ws_bytes) : nullptr;
  EXPECT_THROW(cuda::bn_relu_conv_tc_backward_filter(s, ConvMath::Tf32, cuda::Storage::Bf16, xh.p(), nullptr,
                                                     nullptr, nullptr, nullptr, dz.p(), dw.p(), nullptr,
                                                     wsf ? wsf->data() : nullptr, st),
               Error);
}
