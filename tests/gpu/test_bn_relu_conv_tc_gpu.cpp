// tests/gpu/test_bn_relu_conv_tc_gpu.cpp — the tensor-core fused BN-ReLU-conv forward with
// epilogue statistics (kernels/cuda/bn_relu_conv_tc.cuh), TF32 and BF16, against the CPU
// reference: cpu::batchnorm_apply with ReLU, then cpu::conv2d_forward, on the host copies (HWIO
// weights; the device gets them in OHWI).
//  * shapes: every BN-ReLU-conv chain of ResUNet++ at 64x64 and at 256x256 (batch 2; the CPU
//    emulator runs a subset of the latter), plus ragged ones: cin 3, odd channel counts, pixel
//    counts leaving partial 128-pixel tiles, K not a multiple of the 32-deep slice, stride 2,
//    dilations 3, 6, 12 and 18 at small images, 1x1 kernels, cout 1;
//  * positive BN shifts (a kernel padding with relu(shift) instead of 0 fails), the plain-conv
//    mode (null BN arguments), NaN propagation;
//  * outputs and workspace poisoned before each run, two runs give the same bits (statistics
//    included), guard bytes intact.
//
// Tolerance (random data). Per output element, from the reference operands: with a_k the
// reference BN-ReLU values, w_k the weights, amag_k = |x - mean| * |gamma * invstd| + |beta|
// (|x| for a plain conv) and
//   S_a = sum_k |a_k| |w_k| + |bias|,   S_m = sum_k amag_k |w_k| + |bias|   (double, exact enough),
// the kernel's y may differ from the fp32 reference y by at most
//   tol = (2u + u^2) S_a + (1.6 K + 8) 2^-23 S_m,
// u = 2^-11 (TF32: 10 explicit mantissa bits, round to nearest) or 2^-8 (BF16: 7 bits):
//   - operand rounding: |a^ w^ - a w| <= (2u + u^2) |a| |w| (the products of rounded operands are
//     exact in fp32 and on the tensor cores);
//   - the kernel's float BN (fmaf of a rounded difference with a rounded scale) against the
//     reference's double BN rounded once: |a~ - a| <= 2^-22 amag (ReLU cannot enlarge it);
//   - fp32 accumulation of K products by the tensor cores (internal order and truncation not
//     documented: allow K * 2^-23 of the magnitudes), the reference's own fp32 GEMM (K * 2^-24),
//     the bias addition (2^-24): together under (1.6 K + 8) 2^-23 S_m with the slack for (1 + u)^2.
// This worst-case bound cannot see an error as small as one missing product among thousands, so
// ExactArithmetic... runs integer-valued data instead: every operand is exact in TF32 and BF16 and
// every partial sum exact in fp32 (and in double for the statistics), so that any correct kernel
// matches the reference exactly, whatever its summation order, and any wrong term shows.
// Nor does the bound tell truncated operands from rounded ones (both stay within it); rounding to
// nearest is unbiased, truncation toward zero scales every product by about 1 - 1.4u on average.
// So, on outputs of at least 4096 elements, the least-squares slope of the error on the reference,
// sum (y - ref) ref / sum ref^2, must stay below 0.4u in magnitude. Correctly rounded operands
// leave it near 0 (the rounding errors of a weight or an activation are shared by many outputs,
// so it is noisier than independent errors would make it: at most 0.12u over these shapes and
// ten seeds on the emulator); the tensor cores' fp32 accumulation (truncating, by published
// measurements) could add about (K / 8) 2^-24, under u / 20 for the network's largest K;
// truncated operands (toward zero) give -1.3u to -1.5u.
// Statistics: against double sums of the reference y, within the sum of the elements' bounds
// (sum: sum tol; sum of squares: sum tol * (2 |y| + tol)) plus 2 M 2^-53 of the magnitudes for the
// two summation orders; against double sums of the kernel's own y within 2 (M + 16) 2^-53 of the
// magnitudes (the same values, only the order of the double additions differs).
// GPU tests skip without a device; TcHost runs everywhere (argument checks); TcEmulator (CPU
// emulator builds only) checks the emulator's own TF32/BF16 rounding and mma_sync.
//   ./build/gpu_test_bn_relu_conv_tc_gpu
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "conv_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/bn_relu_conv_tc.cuh"
#include "model/resunetpp.h"
#include "runtime/error.h"

#ifdef RPP_CUDA_EMULATOR
#include <mma.h>  // tests/emu/mma.h
#endif

using namespace rpp;
using namespace rpp::gputest;
using cuda::ConvMath;

namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }


int64_t pixels(const cpu::Conv2dShape& s) { return int64_t(s.n) * s.ho() * s.wo(); }

struct Problem {
  cpu::Conv2dShape s;
  bool bn = true;
  Floats x, w, bias, gamma, beta, mean, invstd;  // w in HWIO
};

// Random data: positive BN shifts, mixed-sign inputs and weights.
Problem random_problem(const cpu::Conv2dShape& s, bool bn) {
  Problem p;
  p.s = s;
  p.bn = bn;
  p.x = normal(sz(int64_t(s.n) * s.h * s.w * s.cin), 0.2f, 1.f);
  p.w = uniform(sz(int64_t(s.kh) * s.kw * s.cin * s.cout), -0.2f, 0.2f);
  p.bias = uniform(sz(s.cout), -0.5f, 0.5f);
  p.gamma = uniform(sz(s.cin), 0.5f, 1.5f);
  p.beta = uniform(sz(s.cin), 0.2f, 0.8f);
  p.mean = uniform(sz(s.cin), -0.3f, 0.3f);
  p.invstd = uniform(sz(s.cin), 0.5f, 2.f);
  return p;
}

// Integer-valued data (see the file comment): x in [-3, 3], mean in [-1, 1], gamma in {1/2, 1, 2},
// invstd 1, beta in {-1/2, 1/2, 3/2}: BN-ReLU values are multiples of 1/2 below 10 in magnitude;
// weights in [-2, 2], bias in [-3, 3].
Problem exact_problem(const cpu::Conv2dShape& s, bool bn) {
  Problem p;
  p.s = s;
  p.bn = bn;
  p.x = small_ints(sz(int64_t(s.n) * s.h * s.w * s.cin), 3);
  p.w = small_ints(sz(int64_t(s.kh) * s.kw * s.cin * s.cout), 2);
  p.bias = small_ints(sz(s.cout), 3);
  p.gamma = small_ints(sz(s.cin), 1);
  for (float& g : p.gamma) g = std::ldexp(1.f, int(g));
  p.beta = small_ints(sz(s.cin), 1);
  for (float& b : p.beta) b += 0.5f;
  p.mean = small_ints(sz(s.cin), 1);
  p.invstd = Floats(sz(s.cin), 1.f);
  return p;
}

struct Reference {
  Floats y;                       // the fp32 CPU reference
  std::vector<double> s_a, s_m;   // per output element, see the file comment
};

Reference reference(const Problem& p) {
  const cpu::Conv2dShape& s = p.s;
  const int64_t nx = int64_t(s.n) * s.h * s.w * s.cin;
  const int64_t ny = pixels(s) * s.cout;
  Floats a(sz(nx));
  if (p.bn)
    cpu::batchnorm_apply(int64_t(s.n) * s.h * s.w, s.cin, p.x.data(), p.gamma.data(), p.beta.data(), p.mean.data(),
                         p.invstd.data(), true, a.data());
  else
    a = p.x;
  Reference r;
  r.y.resize(sz(ny));
  {
    Floats ws(cpu::conv2d_forward_workspace(s));
    cpu::conv2d_forward(s, a.data(), p.w.data(), p.bias.data(), r.y.data(), ws.data());
  }
  std::vector<double> abs_a(sz(nx)), amag(sz(nx)), abs_w(p.w.size()), abs_b(p.bias.size());
  for (int64_t i = 0; i < nx; ++i) {
    const int c = int(i % s.cin);
    abs_a[sz(i)] = std::fabs(double(a[sz(i)]));
    amag[sz(i)] = p.bn ? std::fabs(double(p.x[sz(i)]) - p.mean[sz(c)]) * std::fabs(double(p.gamma[sz(c)]) * p.invstd[sz(c)]) +
                             std::fabs(double(p.beta[sz(c)]))
                       : std::fabs(double(p.x[sz(i)]));
  }
  for (size_t i = 0; i < p.w.size(); ++i) abs_w[i] = std::fabs(double(p.w[i]));
  for (size_t i = 0; i < p.bias.size(); ++i) abs_b[i] = std::fabs(double(p.bias[i]));
  std::vector<double> ws(cpu::conv2d_forward_workspace(s));
  r.s_a.resize(sz(ny));
  r.s_m.resize(sz(ny));
  cpu::conv2d_forward(s, abs_a.data(), abs_w.data(), abs_b.data(), r.s_a.data(), ws.data());
  cpu::conv2d_forward(s, amag.data(), abs_w.data(), abs_b.data(), r.s_m.data(), ws.data());
  return r;
}

std::vector<double> as_doubles(const Floats& f) {
  std::vector<double> d(f.size() / 2);
  std::memcpy(d.data(), f.data(), d.size() * sizeof(double));
  return d;
}

struct KernelRun {
  Floats y;
  std::vector<double> sum, sumsq;
};

// Runs the kernel twice (poisoned outputs and workspace, same bits) with both statistics
// requested, unless `stats` is false (then null statistics pointers and a null workspace).
KernelRun run_kernel(const Problem& p, ConvMath math, bool stats = true) {
  const cpu::Conv2dShape& s = p.s;
  Stream st;
  DevFloats dx(p.x), dw(hwio_to_ohwi(s, p.w)), db(p.bias), dg(p.gamma), dbeta(p.beta), dm(p.mean), di(p.invstd);
  DevFloats dy(sz(pixels(s) * s.cout)), dsum(sz(2 * s.cout)), dsq(sz(2 * s.cout));  // doubles in float pairs
  DevBuf ws(cuda::bn_relu_conv_tc_workspace_bytes(s));
  const auto out = run_twice(st, {&dy, &dsum, &dsq}, [&] { ws.poison(); }, [&] {
    cuda::bn_relu_conv_tc_forward(s, math, dx.p(), p.bn ? dg.p() : nullptr, p.bn ? dbeta.p() : nullptr,
                                  p.bn ? dm.p() : nullptr, p.bn ? di.p() : nullptr, dw.p(), db.p(), dy.p(),
                                  stats ? reinterpret_cast<double*>(dsum.p()) : nullptr,
                                  stats ? reinterpret_cast<double*>(dsq.p()) : nullptr, stats ? ws.data() : nullptr,
                                  st);
  });
  expect_guards({&dx, &dw, &db, &dg, &dbeta, &dm, &di, &dy, &dsum, &dsq, &ws});
  return {out[0], as_doubles(out[1]), as_doubles(out[2])};
}

// Largest |got - ref| / tol over the elements (see the file comment); fails on the first element
// outside its bound.
double expect_within_bound(const Problem& p, const Reference& ref, const KernelRun& got, ConvMath math,
                           std::vector<double>* tol_out) {
  const double u = math_unit(math);
  const int64_t k = int64_t(p.s.kh) * p.s.kw * p.s.cin;
  const double acc = (1.6 * double(k) + 8) * std::ldexp(1.0, -23);
  double worst = 0;
  tol_out->resize(ref.y.size());
  for (size_t i = 0; i < ref.y.size(); ++i) {
    const double tol = (2 * u + u * u) * ref.s_a[i] + acc * ref.s_m[i] + 1e-30;
    (*tol_out)[i] = tol;
    const double err = std::fabs(double(got.y[i]) - double(ref.y[i]));
    if (!(err <= tol)) {
      ADD_FAILURE() << math_name(math) << ": element " << i << " (pixel " << i / sz(p.s.cout) << ", channel "
                    << i % sz(p.s.cout) << "): got " << got.y[i] << ", want " << ref.y[i] << " within " << tol;
      return std::numeric_limits<double>::infinity();
    }
    worst = std::max(worst, err / tol);
  }
  return worst;
}

// The statistics against the reference (within the elements' bounds) and against the kernel's own y.
void expect_statistics(const Problem& p, const Reference& ref, const KernelRun& got, const std::vector<double>& tol) {
  const int cout = p.s.cout;
  const int64_t m = pixels(p.s);
  const double eps = 2 * double(m + 16) * std::ldexp(1.0, -53);
  for (int c = 0; c < cout; ++c) {
    double rs = 0, rss = 0, ts = 0, tss = 0, mag = 0, magsq = 0;   // reference sums and their bounds
    double ks = 0, kss = 0, kmag = 0, kmagsq = 0;                  // sums of the kernel's own y
    for (int64_t i = 0; i < m; ++i) {
      const size_t e = sz(i * cout + c);
      const double r = ref.y[e], t = tol[e], g = got.y[e];
      rs += r;
      rss += r * r;
      ts += t;
      tss += t * (2 * std::fabs(r) + t);
      mag += std::fabs(r) + t;
      magsq += (std::fabs(r) + t) * (std::fabs(r) + t);
      ks += g;
      kss += g * g;
      kmag += std::fabs(g);
      kmagsq += g * g;
    }
    const double s = got.sum[sz(c)], ss = got.sumsq[sz(c)];
    EXPECT_LE(std::fabs(s - rs), ts + 2 * eps * mag) << "channel " << c << " sum " << s << " vs reference " << rs;
    EXPECT_LE(std::fabs(ss - rss), tss + 2 * eps * magsq)
        << "channel " << c << " sum of squares " << ss << " vs reference " << rss;
    EXPECT_LE(std::fabs(s - ks), eps * kmag) << "channel " << c << " sum " << s << " vs the kernel's y " << ks;
    EXPECT_LE(std::fabs(ss - kss), eps * kmagsq)
        << "channel " << c << " sum of squares " << ss << " vs the kernel's y " << kss;
  }
}

// Both maths on one problem: bounds, statistics; prints the worst error-to-bound ratio.
void check_random(const Problem& p, double* worst_tf32 = nullptr, double* worst_bf16 = nullptr) {
  const Reference ref = reference(p);
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(shape_str(p.s) + (p.bn ? " BN-ReLU " : " plain ") + math_name(math));
    const KernelRun got = run_kernel(p, math);
    std::vector<double> tol;
    const double worst = expect_within_bound(p, ref, got, math, &tol);
    expect_statistics(p, ref, got, tol);
    double num = 0, den = 0;
    for (size_t i = 0; i < ref.y.size(); ++i) {
      num += (double(got.y[i]) - ref.y[i]) * ref.y[i];
      den += double(ref.y[i]) * ref.y[i];
    }
    const double slope = den > 0 ? num / den : 0, u = math_unit(math);
    if (ref.y.size() >= 4096) {
      EXPECT_LT(std::fabs(slope), 0.4 * u) << "systematic relative error (truncated rather than rounded operands?)";
    }
    std::printf("  %-40s %-7s %s  max |err|/tol %.3f  slope/u %+.4f%s\n", shape_str(p.s).c_str(),
                p.bn ? "BN-ReLU" : "plain", math_name(math), worst, slope / u, ref.y.size() >= 4096 ? "" : " (unchecked)");
    double* w = math == ConvMath::Tf32 ? worst_tf32 : worst_bf16;
    if (w) *w = std::max(*w, worst);
  }
}

// Integer-valued data: y and the statistics equal the reference exactly.
void check_exact(const Problem& p) {
  const Reference ref = reference(p);
  const int cout = p.s.cout;
  std::vector<double> rs(sz(cout), 0.0), rss(sz(cout), 0.0);
  for (size_t e = 0; e < ref.y.size(); ++e) {
    rs[e % sz(cout)] += ref.y[e];
    rss[e % sz(cout)] += double(ref.y[e]) * ref.y[e];
  }
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(shape_str(p.s) + (p.bn ? " BN-ReLU " : " plain ") + math_name(math) + " (exact data)");
    const KernelRun got = run_kernel(p, math);
    size_t bad = 0, first = 0;
    for (size_t e = 0; e < ref.y.size(); ++e)
      if (!(got.y[e] == ref.y[e]) && bad++ == 0) first = e;
    EXPECT_EQ(bad, 0u) << "first at element " << first << ": got " << got.y[first] << ", want " << ref.y[first];
    for (int c = 0; c < cout; ++c) {
      EXPECT_EQ(got.sum[sz(c)], rs[sz(c)]) << "channel " << c;
      EXPECT_EQ(got.sumsq[sz(c)], rss[sz(c)]) << "channel " << c;
    }
  }
}

const cpu::Conv2dShape kRagged[] = {
    conv_shape(1, 7, 9, 3, 5, 3, 1, 1, 1),       // cin 3 (the stem), 63 pixels: one partial tile, K = 27
    conv_shape(2, 11, 13, 3, 16, 3, 2, 1, 1),    // cin 3, stride 2
    conv_shape(3, 13, 11, 70, 65, 3, 2, 1, 1),   // odd channels, stride 2, cout just past 64
    conv_shape(2, 17, 17, 33, 129, 3, 1, 3, 3),  // dilation 3, 578 pixels
    conv_shape(1, 20, 20, 16, 24, 3, 1, 6, 6),   // dilation 6
    conv_shape(1, 26, 26, 8, 40, 3, 1, 12, 12),  // dilation 12
    conv_shape(1, 37, 37, 5, 33, 3, 1, 18, 18),  // dilation 18, odd cin, cout 33 (a 64-wide tile, half empty)
    conv_shape(2, 10, 10, 24, 40, 1, 1, 0, 1),   // 1x1
    conv_shape(1, 9, 9, 16, 8, 3, 1, 0, 1),      // no padding
    conv_shape(1, 6, 6, 321, 31, 3, 1, 1, 1),    // K = 2889, a partial last slice; narrow tile
    conv_shape(2, 5, 7, 7, 1, 3, 1, 1, 1),       // cout 1
    conv_shape(1, 16, 16, 64, 96, 1, 2, 0, 1),   // 1x1 stride 2, cout 96 (a half-empty second tile)
};

}  // namespace

// ---- host-side argument checks (no device needed) ----

TEST(TcHost, RejectsBadArguments) {
  const cpu::Conv2dShape ok = conv_shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  EXPECT_TRUE(cuda::bn_relu_conv_tc_can_run(ok, ConvMath::Tf32));
  EXPECT_TRUE(cuda::bn_relu_conv_tc_can_run(ok, ConvMath::Bf16));
  EXPECT_TRUE(cuda::bn_relu_conv_tc_can_run(conv_shape(1, 8, 8, 3, 1, 3, 1, 1, 1), ConvMath::Tf32));
  EXPECT_TRUE(cuda::bn_relu_conv_tc_can_run(conv_shape(1, 8, 8, 4096, 16, 3, 1, 1, 1), ConvMath::Bf16));  // any cin
  EXPECT_FALSE(cuda::bn_relu_conv_tc_can_run(ok, static_cast<ConvMath>(7)));
  EXPECT_FALSE(cuda::bn_relu_conv_tc_can_run(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1), ConvMath::Tf32));  // empty output
  EXPECT_FALSE(cuda::bn_relu_conv_tc_can_run(conv_shape(1, 8, 8, 0, 16, 3, 1, 1, 1), ConvMath::Tf32));
  EXPECT_FALSE(cuda::bn_relu_conv_tc_can_run(conv_shape(1, 8, 8, 16, 16, 3, 0, 1, 1), ConvMath::Tf32));

  // Two doubles (sum, sum of squares) per 128-pixel tile and output channel.
  EXPECT_EQ(cuda::bn_relu_conv_tc_workspace_bytes(ok), 2u * 1u * 16u * sizeof(double));
  EXPECT_EQ(cuda::bn_relu_conv_tc_workspace_bytes(conv_shape(2, 64, 64, 16, 32, 3, 1, 1, 1)), 2u * 64u * 32u * 8u);
  EXPECT_EQ(cuda::bn_relu_conv_tc_workspace_bytes(conv_shape(3, 13, 11, 70, 65, 3, 2, 1, 1)), 2u * 1u * 65u * 8u);
  EXPECT_EQ(cuda::bn_relu_conv_tc_workspace_bytes(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1)), 0u);

  float f = 0;
  alignas(16) double ws[4] = {0, 0, 0, 0};
  double st = 0;
  const auto fwd = [&](const cpu::Conv2dShape& s, ConvMath m, const float* x, const float* g, double* sum,
                       double* sumsq, void* w) {
    cuda::bn_relu_conv_tc_forward(s, m, x, g, g ? &f : nullptr, g ? &f : nullptr, g ? &f : nullptr, &f, nullptr, &f,
                                  sum, sumsq, w, nullptr);
  };
  EXPECT_THROW(fwd(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1), ConvMath::Tf32, &f, nullptr, nullptr, nullptr, nullptr), Error);
  EXPECT_THROW(fwd(ok, static_cast<ConvMath>(7), &f, nullptr, nullptr, nullptr, nullptr), Error);
  EXPECT_THROW(fwd(ok, ConvMath::Tf32, nullptr, nullptr, nullptr, nullptr, nullptr), Error);  // null x
  EXPECT_THROW(cuda::bn_relu_conv_tc_forward(ok, ConvMath::Tf32, &f, nullptr, nullptr, nullptr, nullptr, nullptr,
                                             nullptr, &f, nullptr, nullptr, nullptr, nullptr),
               Error);  // null weights
  EXPECT_THROW(cuda::bn_relu_conv_tc_forward(ok, ConvMath::Tf32, &f, nullptr, nullptr, nullptr, nullptr, &f, nullptr,
                                             nullptr, nullptr, nullptr, nullptr, nullptr),
               Error);  // null y
  // Some BN arguments but not all.
  EXPECT_THROW(cuda::bn_relu_conv_tc_forward(ok, ConvMath::Bf16, &f, &f, nullptr, nullptr, nullptr, &f, nullptr, &f,
                                             nullptr, nullptr, nullptr, nullptr),
               Error);
  // Statistics without a workspace, or with a misaligned one.
  EXPECT_THROW(fwd(ok, ConvMath::Tf32, &f, &f, &st, nullptr, nullptr), Error);
  EXPECT_THROW(fwd(ok, ConvMath::Tf32, &f, &f, nullptr, &st, nullptr), Error);
  EXPECT_THROW(fwd(ok, ConvMath::Tf32, &f, &f, &st, &st, reinterpret_cast<char*>(ws) + 8), Error);
}

// ---- the emulator's own arithmetic (tests/emu/mma.h, tests/emu/cuda_bf16.h) ----

#ifdef RPP_CUDA_EMULATOR
namespace {
float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
}  // namespace

TEST(TcEmulator, Tf32RoundsToNearestTiesAway) {
  using nvcuda::wmma::__float_to_tf32;
  const float one = 1.f, ulp = std::ldexp(1.f, -10), half = std::ldexp(1.f, -11);
  EXPECT_EQ(__float_to_tf32(one + half), one + ulp);                      // tie: away from zero
  EXPECT_EQ(__float_to_tf32(-(one + half)), -(one + ulp));
  EXPECT_EQ(__float_to_tf32(one + 3 * half), one + 2 * ulp);              // tie with an odd neighbour: away
  EXPECT_EQ(__float_to_tf32(std::nextafter(one + half, 0.f)), one);       // below the tie
  EXPECT_EQ(__float_to_tf32(one + ulp), one + ulp);                       // representable: unchanged
  EXPECT_EQ(__float_to_tf32(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
  EXPECT_EQ(__float_to_tf32(-std::numeric_limits<float>::infinity()), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(__float_to_tf32(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isnan(__float_to_tf32(bits_to_float(0x7f800001u))));  // a NaN with low payload bits only
}

TEST(TcEmulator, Bf16RoundsToNearestEven) {
  const auto rt = [](float v) { return __bfloat162float(__float2bfloat16(v)); };
  const float one = 1.f, ulp = std::ldexp(1.f, -7), half = std::ldexp(1.f, -8);
  EXPECT_EQ(rt(one + half), one);                     // tie: to the even neighbour (down)
  EXPECT_EQ(rt(one + 3 * half), one + 2 * ulp);       // tie: to the even neighbour (up)
  EXPECT_EQ(rt(-(one + 3 * half)), -(one + 2 * ulp));
  EXPECT_EQ(rt(std::nextafter(one + half, 2.f)), one + ulp);
  EXPECT_EQ(rt(std::numeric_limits<float>::max()), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(rt(bits_to_float(0x7f800001u))));
  EXPECT_TRUE(std::isnan(rt(-std::numeric_limits<float>::quiet_NaN())));
}

// mma_sync on a 16x16x8 TF32 tile with unconverted operands, lane by lane as the 32 threads of a
// warp would call it: the union of the lanes' stores is the product of the TF32-rounded operands
// (exact here: the rounded operands are multiples of 2^-14 below 4, b small integers, so that
// every fp32 partial sum is exact and the lanes' results can be compared for equality).
TEST(TcEmulator, MmaSyncComputesTheRoundedProduct) {
  namespace wmma = nvcuda::wmma;
  alignas(32) float a[16 * 8], b[8 * 16], c[16 * 16], d[16 * 16];
  const float frac = std::ldexp(1.f, -11) + std::ldexp(1.f, -14);  // 1 + frac rounds to 1 + 2^-10 in TF32
  for (int i = 0; i < 16 * 8; ++i) {
    a[i] = float(i % 5) - 2.f + (i % 3 == 0 ? frac : 0.f);
    b[i] = float(i % 7) - 3.f;
  }
  for (int i = 0; i < 256; ++i) c[i] = float(i % 11);
  std::fill(d, d + 256, std::numeric_limits<float>::quiet_NaN());
  const dim3 saved_dim = rpp_emu::g_block_dim;
  rpp_emu::g_block_dim = dim3(32);
  for (unsigned lane = 0; lane < 32; ++lane) {
    rpp_emu::g_thread.x = lane;
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::col_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc;
    wmma::load_matrix_sync(fa, a, 8);   // a: 16 x 8 row-major
    wmma::load_matrix_sync(fb, b, 8);   // b: 8 x 16 column-major, element (k, n) at b[n * 8 + k]
    wmma::load_matrix_sync(acc, c, 16, wmma::mem_row_major);
    wmma::mma_sync(acc, fa, fb, acc);
    wmma::store_matrix_sync(d, acc, 16, wmma::mem_col_major);  // d transposed
  }
  rpp_emu::g_thread.x = 0;
  rpp_emu::g_block_dim = saved_dim;
  for (int r = 0; r < 16; ++r)
    for (int n = 0; n < 16; ++n) {
      double want = c[r * 16 + n];
      for (int k = 0; k < 8; ++k)
        want += double(wmma::__float_to_tf32(a[r * 8 + k])) * double(b[n * 8 + k]);
      EXPECT_EQ(double(d[n * 16 + r]), want) << r << "," << n;
    }
}
#endif

// ---- the kernel ----

TEST(TcGpu, NetworkShapesAt64MatchCpu) {
  REQUIRE_GPU();
  const std::vector<cpu::Conv2dShape> shapes = thin_for_emulator(fused_chain_shapes(64));
  ASSERT_FALSE(shapes.empty());
  double w32 = 0, w16 = 0;
  for (const cpu::Conv2dShape& s : shapes) check_random(random_problem(s, true), &w32, &w16);
  std::printf("  worst |err|/tol over the 64x64 shapes: tf32 %.3f, bf16 %.3f\n", w32, w16);
}

TEST(TcGpu, NetworkShapesAt256MatchCpu) {
  REQUIRE_GPU();
  std::vector<cpu::Conv2dShape> shapes = fused_chain_shapes(256);
  ASSERT_FALSE(shapes.empty());
#ifdef RPP_CUDA_EMULATOR
  // Minutes even so (10 under CI's sanitizers): on the emulator only when asked.
  if (!std::getenv("RPP_EMU_LARGE")) GTEST_SKIP() << "emulator: set RPP_EMU_LARGE=1 to run the 256x256 shapes";
  // The emulator runs the shapes of at most 8192 pixels (the deeper half: every channel count and
  // the largest K of the network; the rest are minutes each there, on the same code paths).
  shapes.erase(std::remove_if(shapes.begin(), shapes.end(), [](const cpu::Conv2dShape& s) { return pixels(s) > 8192; }),
               shapes.end());
#endif
  double w32 = 0, w16 = 0;
  for (const cpu::Conv2dShape& s : shapes) check_random(random_problem(s, true), &w32, &w16);
  std::printf("  worst |err|/tol over the 256x256 shapes run: tf32 %.3f, bf16 %.3f\n", w32, w16);
}

TEST(TcGpu, RaggedShapesAndPlainConvMatchCpu) {
  REQUIRE_GPU();
  double w32 = 0, w16 = 0;
  for (const cpu::Conv2dShape& s : kRagged) {
    check_random(random_problem(s, true), &w32, &w16);
    check_random(random_problem(s, false), &w32, &w16);
  }
  std::printf("  worst |err|/tol over the ragged shapes: tf32 %.3f, bf16 %.3f\n", w32, w16);
}

TEST(TcGpu, ExactArithmeticGivesExactResults) {
  REQUIRE_GPU();
  for (const cpu::Conv2dShape& s : thin_for_emulator(fused_chain_shapes(64))) check_exact(exact_problem(s, true));
  for (const cpu::Conv2dShape& s : kRagged) {
    check_exact(exact_problem(s, true));
    check_exact(exact_problem(s, false));
  }
}

// Each statistic on its own, or none (null workspace): y keeps its bits, the requested statistic
// its value.
TEST(TcGpu, StatisticsAreOptional) {
  REQUIRE_GPU();
  const Problem p = random_problem(conv_shape(2, 12, 12, 20, 48, 3, 1, 1, 1), true);
  const cpu::Conv2dShape& s = p.s;
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(math_name(math));
    const KernelRun full = run_kernel(p, math, true);
    const KernelRun none = run_kernel(p, math, false);
    EXPECT_TRUE(same_bits(full.y, none.y));
    Stream st;
    DevFloats dx(p.x), dw(hwio_to_ohwi(s, p.w)), db(p.bias), dg(p.gamma), dbeta(p.beta), dm(p.mean), di(p.invstd);
    DevFloats dy(sz(pixels(s) * s.cout)), dstat(sz(2 * s.cout));
    DevBuf ws(cuda::bn_relu_conv_tc_workspace_bytes(s));
    for (int which = 0; which < 2; ++which) {
      dy.poison();
      dstat.poison();
      ws.poison();
      double* stat = reinterpret_cast<double*>(dstat.p());
      cuda::bn_relu_conv_tc_forward(s, math, dx.p(), dg.p(), dbeta.p(), dm.p(), di.p(), dw.p(), db.p(), dy.p(),
                                    which == 0 ? stat : nullptr, which == 1 ? stat : nullptr, ws.data(), st);
      st.sync();
      EXPECT_TRUE(same_bits(dy.get(), full.y)) << "statistic " << which;
      const std::vector<double> got = as_doubles(dstat.get());
      const std::vector<double>& want = which == 0 ? full.sum : full.sumsq;
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(double)), 0) << "statistic " << which;
    }
    expect_guards({&dy, &dstat, &ws});
  }
}

TEST(TcGpu, NaNPropagatesThroughBnRelu) {
  REQUIRE_GPU();
  const cpu::Conv2dShape s = conv_shape(1, 4, 4, 8, 8, 3, 1, 1, 1);
  Floats x = normal(sz(4 * 4 * 8));
  x[5 * 8 + 3] = std::numeric_limits<float>::quiet_NaN();  // pixel (1, 1), channel 3
  const Floats w = uniform(sz(9 * 8 * 8), -0.2f, 0.2f);
  const Floats ones(8, 1.f), zeros(8, 0.f);
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(math_name(math));
    Stream st;
    DevFloats dx(x), dw(hwio_to_ohwi(s, w)), dg(ones), dbeta(zeros), dm(zeros), di(ones), dy(sz(4 * 4 * 8));
    DevFloats dsum(Floats(16, 0.f)), dsq(Floats(16, 0.f));  // zeros: the NaN must come from the kernel
    DevBuf ws(cuda::bn_relu_conv_tc_workspace_bytes(s));
    cuda::bn_relu_conv_tc_forward(s, math, dx.p(), dg.p(), dbeta.p(), dm.p(), di.p(), dw.p(), nullptr, dy.p(),
                                  reinterpret_cast<double*>(dsum.p()), reinterpret_cast<double*>(dsq.p()), ws.data(),
                                  st);
    st.sync();
    const Floats y = dy.get();
    // Every output whose 3x3 window covers pixel (1, 1) is NaN, the others finite; so is every
    // channel's sum and sum of squares.
    for (int oy = 0; oy < 4; ++oy)
      for (int ox = 0; ox < 4; ++ox) {
        const bool covers = std::abs(oy - 1) <= 1 && std::abs(ox - 1) <= 1;
        for (int c = 0; c < 8; ++c) {
          const float v = y[sz((oy * 4 + ox) * 8 + c)];
          EXPECT_EQ(std::isnan(v), covers) << oy << "," << ox << "," << c;
          if (!covers) {
            EXPECT_TRUE(std::isfinite(v)) << oy << "," << ox << "," << c;
          }
        }
      }
    for (double v : as_doubles(dsum.get())) EXPECT_TRUE(std::isnan(v));
    for (double v : as_doubles(dsq.get())) EXPECT_TRUE(std::isnan(v));
  }
}
