// tests/gpu/test_conv_bn_sum_gpu.cpp — the fused ASPP kernel (kernels/cuda/conv_bn_sum.cuh): up to
// four convolution branches of one input with their eval-mode BNs, summed, against the CPU
// reference that the CPU executor runs for the ConvBnSum node (per branch cpu::conv2d_forward,
// cpu::batchnorm_forward_eval, then cpu::add into the running sum), on the host copies.
//  * shapes: both ASPP blocks of ResUNet++ at a 64x64 input (the bridge at 8x8, where dilations 12
//    and 18 leave only the centre tap of each pixel inside the image) and at 256x256 on a GPU;
//    ragged ones: cin 3 (K slices straddling branches), cout 70 (two channel tiles), pixel tiles
//    spanning several images, stride 2 with per-branch padding, one branch, 4x4 maps where most
//    slices are skipped, and 40x40 maps whose tiles start and end mid-row (partial tap bounds);
//  * TF32 and BF16 math; bf16 storage against the fp32-storage kernel, bit for bit;
//  * every output poisoned and guarded, every launch run twice with the same bits.
//
// Tolerance (random data). With s_b = |gamma_b| / sqrt(var_b + eps) per channel, A_b the
// convolution of |x| with |w_b| (double), and per output element
//   S_a = sum_b s_b A_b,   S_m = sum_b s_b (A_b + |bias_b| + |mean_b|) + |beta_b|,
// the kernel may differ from the reference by at most
//   tol = (2u + u^2) S_a + ((1.6 K + 16) 2^-23 + 2^-21) S_m,   K = branches * kh * kw * cin,
// u = 2^-11 (TF32) or 2^-8 (BF16): the operand rounding (the weights are scaled by the folded BN
// before they are rounded, one more float rounding inside the 2^-21 term, as is the fold of the
// scale and shift to float); fp32 accumulation of the kernel's K products and of the reference's
// convolutions, its BN and its adds within the (1.6 K + 16) 2^-23 term.
// Integer-valued data (eps 0, variance 1, gamma a power of two) make every operand exact in TF32
// and BF16 and every sum exact in fp32, so there the kernel must match the reference exactly: a
// missing tap, a wrong dilation or padding, or a live slice skipped shows as a wrong value.
// Also the training form's normalise-and-add (batchnorm_apply_sum), bit for bit against the unfused
// GPU kernels and the CPU.
// GPU tests skip without a device; ConvBnSumHost and BnApplySumHost run everywhere.
//   ./build/gpu_test_conv_bn_sum_gpu
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "bf16_test_util.h"
#include "conv_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/conv_bn_sum.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "runtime/error.h"

using namespace rpp;
using namespace rpp::gputest;
using cuda::ConvMath;
using cuda::Storage;

namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }

using Shapes = std::vector<cpu::Conv2dShape>;


std::string describe(const Shapes& b) {
  std::string s = std::to_string(b.size()) + " branches " + shape_str(b[0]) + ", dilations";
  for (const cpu::Conv2dShape& c : b) s += " " + std::to_string(c.dil);
  return s;
}

struct Branch {
  Floats w, bias, gamma, beta, mean, var;  // w in HWIO
};

struct Problem {
  Shapes s;
  double eps = 1e-5;
  Floats x;
  std::vector<Branch> br;
  int64_t ny() const { return int64_t(s[0].n) * s[0].ho() * s[0].wo() * s[0].cout; }
};

Problem random_problem(const Shapes& shapes) {
  Problem p;
  p.s = shapes;
  const cpu::Conv2dShape& a = shapes[0];
  p.x = normal(sz(int64_t(a.n) * a.h * a.w * a.cin), 0.2f, 1.f);
  for (size_t b = 0; b < shapes.size(); ++b) {
    Branch r;
    r.w = uniform(sz(int64_t(a.kh) * a.kw * a.cin * a.cout), -0.2f, 0.2f);
    r.bias = uniform(sz(a.cout), -0.5f, 0.5f);
    r.gamma = uniform(sz(a.cout), 0.5f, 1.5f);
    r.beta = uniform(sz(a.cout), -0.5f, 0.5f);
    r.mean = uniform(sz(a.cout), -0.3f, 0.3f);
    r.var = uniform(sz(a.cout), 0.5f, 2.f);
    p.br.push_back(std::move(r));
  }
  return p;
}

// Integer-valued data (see the file comment).
Problem exact_problem(const Shapes& shapes) {
  Problem p;
  p.s = shapes;
  p.eps = 0.0;
  const cpu::Conv2dShape& a = shapes[0];
  p.x = small_ints(sz(int64_t(a.n) * a.h * a.w * a.cin), 3);
  for (size_t b = 0; b < shapes.size(); ++b) {
    Branch r;
    r.w = small_ints(sz(int64_t(a.kh) * a.kw * a.cin * a.cout), 2);
    r.bias = small_ints(sz(a.cout), 3);
    r.gamma = small_ints(sz(a.cout), 1);
    for (float& g : r.gamma) g = std::ldexp(1.f, int(g));
    r.beta = small_ints(sz(a.cout), 1);
    for (float& v : r.beta) v += 0.5f;
    r.mean = small_ints(sz(a.cout), 1);
    r.var = Floats(sz(a.cout), 1.f);
    p.br.push_back(std::move(r));
  }
  return p;
}

struct Reference {
  Floats y;
  std::vector<double> s_a, s_m;
};

Reference reference(const Problem& p) {
  const int64_t ny = p.ny();
  const int cout = p.s[0].cout;
  const int64_t pix = ny / cout;
  Reference r;
  r.y.assign(sz(ny), 0.f);
  r.s_a.assign(sz(ny), 0.0);
  r.s_m.assign(sz(ny), 0.0);
  Floats branch(sz(ny));
  std::vector<double> abs_x(p.x.size()), mag(sz(ny));
  for (size_t i = 0; i < p.x.size(); ++i) abs_x[i] = std::fabs(double(p.x[i]));
  for (size_t b = 0; b < p.s.size(); ++b) {
    const cpu::Conv2dShape& s = p.s[b];
    const Branch& q = p.br[b];
    {
      Floats ws(cpu::conv2d_forward_workspace(s));
      cpu::conv2d_forward(s, p.x.data(), q.w.data(), q.bias.data(), branch.data(), ws.data());
    }
    float* out = b == 0 ? r.y.data() : branch.data();
    cpu::batchnorm_forward_eval(pix, cout, branch.data(), q.gamma.data(), q.beta.data(), q.mean.data(), q.var.data(),
                                p.eps, out);
    if (b > 0) cpu::add(ny, r.y.data(), branch.data(), r.y.data());
    std::vector<double> abs_w(q.w.size()), ws(cpu::conv2d_forward_workspace(s));
    for (size_t i = 0; i < q.w.size(); ++i) abs_w[i] = std::fabs(double(q.w[i]));
    cpu::conv2d_forward(s, abs_x.data(), abs_w.data(), static_cast<const double*>(nullptr), mag.data(), ws.data());
    for (int64_t e = 0; e < ny; ++e) {
      const size_t c = sz(e % cout);
      const double sc = std::fabs(double(q.gamma[c])) / std::sqrt(double(q.var[c]) + p.eps);
      r.s_a[sz(e)] += sc * mag[sz(e)];
      r.s_m[sz(e)] += sc * (mag[sz(e)] + std::fabs(double(q.bias[c])) + std::fabs(double(q.mean[c]))) +
                      std::fabs(double(q.beta[c]));
    }
  }
  return r;
}

// The device copies of a problem's operands (DevFloats cannot move: held by pointer).
struct DevProblem {
  using Buf = std::unique_ptr<DevFloats>;
  DevFloats x;
  std::vector<Buf> w, bias, gamma, beta, mean, var;
  explicit DevProblem(const Problem& p) : x(p.x) {
    auto dev = [](const Floats& h) { return std::make_unique<DevFloats>(h); };
    for (size_t b = 0; b < p.s.size(); ++b) {
      w.push_back(dev(hwio_to_ohwi(p.s[b], p.br[b].w)));
      bias.push_back(dev(p.br[b].bias));
      gamma.push_back(dev(p.br[b].gamma));
      beta.push_back(dev(p.br[b].beta));
      mean.push_back(dev(p.br[b].mean));
      var.push_back(dev(p.br[b].var));
    }
  }
  std::vector<cuda::ConvBnBranch> branches(const Problem& p) const {
    std::vector<cuda::ConvBnBranch> v;
    for (size_t b = 0; b < p.s.size(); ++b)
      v.push_back({p.s[b], w[b]->p(), bias[b]->p(), gamma[b]->p(), beta[b]->p(), mean[b]->p(), var[b]->p()});
    return v;
  }
  void expect_guards_intact() const {
    expect_guards({&x});
    for (size_t b = 0; b < w.size(); ++b)
      expect_guards({w[b].get(), bias[b].get(), gamma[b].get(), beta[b].get(), mean[b].get(), var[b].get()});
  }
};

// fp32 storage: y, run twice on a poisoned output (the same bits both times).
Floats run_kernel(const Problem& p, ConvMath math) {
  Stream st;
  const DevProblem d(p);
  const std::vector<cuda::ConvBnBranch> br = d.branches(p);
  DevFloats dy(sz(p.ny()));
  const std::vector<Floats> out = run_twice(st, {&dy}, [] {}, [&] {
    cuda::conv_bn_sum_tc_forward(br.data(), int(br.size()), p.eps, math, Storage::F32, d.x.p(), Storage::F32, dy.p(),
                                 st);
  });
  d.expect_guards_intact();
  expect_guards({&dy});
  return out[0];
}

void check_random(const Shapes& shapes) {
  const Problem p = random_problem(shapes);
  const Reference ref = reference(p);
  const int64_t k = int64_t(shapes.size()) * shapes[0].kh * shapes[0].kw * shapes[0].cin;
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(describe(shapes) + " " + math_name(math));
    const Floats got = run_kernel(p, math);
    const double u = math_unit(math), acc = (1.6 * double(k) + 16) * std::ldexp(1.0, -23) + std::ldexp(1.0, -21);
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double tol = (2 * u + u * u) * ref.s_a[i] + acc * ref.s_m[i] + 1e-30;
      const double err = std::fabs(double(got[i]) - double(ref.y[i]));
      if (!(err <= tol)) {
        ADD_FAILURE() << "element " << i << " (pixel " << i / sz(shapes[0].cout) << ", channel "
                      << i % sz(shapes[0].cout) << "): got " << got[i] << ", want " << ref.y[i] << " within " << tol;
        return;
      }
      worst = std::max(worst, err / tol);
    }
    std::printf("  %-70s %s  max |err|/tol %.3f\n", describe(shapes).c_str(), math_name(math), worst);
  }
}

void check_exact(const Shapes& shapes) {
  const Problem p = exact_problem(shapes);
  const Reference ref = reference(p);
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(describe(shapes) + " " + math_name(math) + " (exact data)");
    const Floats got = run_kernel(p, math);
    size_t bad = 0, first = 0;
    for (size_t e = 0; e < got.size(); ++e)
      if (!(got[e] == ref.y[e]) && bad++ == 0) first = e;
    EXPECT_EQ(bad, 0u) << "first at element " << first << " (pixel " << first / sz(shapes[0].cout) << ", channel "
                       << first % sz(shapes[0].cout) << "): got " << got[first] << ", want " << ref.y[first];
  }
}

std::vector<Shapes> ragged_cases() {
  return {
      aspp(1, 7, 9, 3, 5, {1, 2, 3}),       // cin 3: K = 27 per branch, slices straddle branches
      aspp(3, 5, 5, 20, 70, {1, 4}),        // cout 70: two channel tiles; one pixel tile of 3 images
      aspp(1, 12, 12, 16, 33, {2}),         // one branch (a conv and its BN)
      {conv_shape(2, 15, 15, 8, 16, 3, 2, 1, 1), conv_shape(2, 15, 15, 8, 16, 3, 2, 2, 2)},  // stride 2
      aspp(9, 4, 4, 32, 32),                // 4x4: most slices dead; the second tile is one image
      aspp(1, 40, 40, 32, 16),              // tiles start and end mid-row
  };
}

}  // namespace

// ---- host-side argument checks (no device needed) ----

TEST(ConvBnSumHost, RejectsBadArguments) {
  const Shapes ok = aspp(1, 8, 8, 16, 16);
  EXPECT_TRUE(cuda::conv_bn_sum_tc_can_run(ok.data(), 4, ConvMath::Tf32, Storage::F32, Storage::F32));
  EXPECT_TRUE(cuda::conv_bn_sum_tc_can_run(ok.data(), 4, ConvMath::Bf16, Storage::Bf16, Storage::Bf16));
  EXPECT_FALSE(cuda::conv_bn_sum_tc_can_run(ok.data(), 0, ConvMath::Tf32, Storage::F32, Storage::F32));
  const Shapes five = aspp(1, 8, 8, 16, 16, {1, 2, 3, 4, 5});
  EXPECT_FALSE(cuda::conv_bn_sum_tc_can_run(five.data(), 5, ConvMath::Tf32, Storage::F32, Storage::F32));
  EXPECT_FALSE(cuda::conv_bn_sum_tc_can_run(ok.data(), 4, ConvMath::Tf32, Storage::Bf16, Storage::F32));
  Shapes other_cin = ok;
  other_cin[2].cin = 8;
  EXPECT_FALSE(cuda::conv_bn_sum_tc_can_run(other_cin.data(), 4, ConvMath::Tf32, Storage::F32, Storage::F32));
  Shapes other_size = ok;
  other_size[1].pad = 0;  // a smaller output than the other branches
  EXPECT_FALSE(cuda::conv_bn_sum_tc_can_run(other_size.data(), 4, ConvMath::Tf32, Storage::F32, Storage::F32));

  // The launcher refuses before touching any pointer (these are not device pointers).
  float dummy[4] = {};
  std::vector<cuda::ConvBnBranch> br;
  for (const cpu::Conv2dShape& s : ok) br.push_back({s, dummy, nullptr, dummy, dummy, dummy, dummy});
  auto msg = [&](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] {
              cuda::conv_bn_sum_tc_forward(br.data(), 0, 1e-5, ConvMath::Tf32, Storage::F32, dummy, Storage::F32,
                                           dummy, nullptr);
            }).find("0 branches"),
            std::string::npos);
  EXPECT_NE(msg([&] {
              cuda::conv_bn_sum_tc_forward(br.data(), 4, -1.0, ConvMath::Tf32, Storage::F32, dummy, Storage::F32,
                                           dummy, nullptr);
            }).find("eps"),
            std::string::npos);
  br[3].running_var = nullptr;
  EXPECT_NE(msg([&] {
              cuda::conv_bn_sum_tc_forward(br.data(), 4, 1e-5, ConvMath::Tf32, Storage::F32, dummy, Storage::F32,
                                           dummy, nullptr);
            }).find("branch 3"),
            std::string::npos);
  EXPECT_NE(msg([&] {
              cuda::conv_bn_sum_tc_forward(br.data(), 4, 1e-5, ConvMath::Tf32, Storage::Bf16, dummy, Storage::F32,
                                           dummy, nullptr);
            }).find("bf16 storage needs bf16 math"),
            std::string::npos);
}

// ---- against the CPU reference ----

TEST(ConvBnSumGpu, NetworkAsppShapesAt64MatchCpu) {
  REQUIRE_GPU();
  // Under the sanitizers the emulator keeps only the bridge (the other runs in its Release build).
  for (const Shapes& s : thin_for_emulator(std::vector<Shapes>{aspp(2, 8, 8, 128, 256), aspp(1, 64, 64, 32, 16)})) {
    check_random(s);
    check_exact(s);
  }
}

TEST(ConvBnSumGpu, NetworkAsppShapesAt256MatchCpu) {
  REQUIRE_GPU();
#ifdef RPP_CUDA_EMULATOR
  if (!std::getenv("RPP_EMU_LARGE")) GTEST_SKIP() << "emulator: set RPP_EMU_LARGE=1 to run the 256x256 shapes";
  const int n = 1;
#else
  const int n = 2;
#endif
  check_random(aspp(n, 32, 32, 128, 256));
  check_random(aspp(n, 256, 256, 32, 16));
}

TEST(ConvBnSumGpu, RaggedShapesMatchCpu) {
  REQUIRE_GPU();
  for (const Shapes& s : ragged_cases()) check_random(s);
}

TEST(ConvBnSumGpu, ExactArithmeticGivesExactResults) {
  REQUIRE_GPU();
  for (const Shapes& s : ragged_cases()) check_exact(s);
}

// bf16 x must change nothing against the same values in fp32 storage; a bf16 y must be the fp32
// y rounded once to nearest even.
TEST(ConvBnSumGpu, Bf16StorageMatchesTheFp32StorageKernelBitForBit) {
  REQUIRE_GPU();
  Stream st;
  for (const Shapes& s : {aspp(2, 4, 4, 128, 256), aspp(1, 24, 24, 32, 16)}) {
    SCOPED_TRACE(describe(s));
    Problem p = random_problem(s);
    const Halves xh = to_bf16(p.x);
    p.x = widen(xh);
    const DevProblem d(p);
    const std::vector<cuda::ConvBnBranch> br = d.branches(p);
    DevHalves dxh(xh), dyh(sz(p.ny()));
    DevFloats dyf(sz(p.ny()));
    auto launch = [&](Storage xt, const void* x, Storage yt, void* y) {
      cuda::conv_bn_sum_tc_forward(br.data(), int(br.size()), p.eps, ConvMath::Bf16, xt, x, yt, y, st);
    };
    const Floats ref = run_twice(st, {&dyf}, [] {}, [&] { launch(Storage::F32, d.x.p(), Storage::F32, dyf.p()); })[0];
    const Floats yf = run_twice(st, {&dyf}, [] {}, [&] { launch(Storage::Bf16, dxh.p(), Storage::F32, dyf.p()); })[0];
    EXPECT_TRUE(same_bits(ref, yf)) << "bf16 x, fp32 y";
    const Halves want = to_bf16(ref);
    EXPECT_EQ(want, run_twice_bf16(st, dyh, [&] { launch(Storage::Bf16, dxh.p(), Storage::Bf16, dyh.p()); }))
        << "bf16 x, bf16 y";
    EXPECT_EQ(want, run_twice_bf16(st, dyh, [&] { launch(Storage::F32, d.x.p(), Storage::Bf16, dyh.p()); }))
        << "fp32 x, bf16 y";
    d.expect_guards_intact();
    expect_guards({&dxh, &dyh, &dyf});
  }
}

// ---- training: the ASPP's normalise-and-add (kernels/cuda/batchnorm.cuh, batchnorm_apply_sum) ----

// Bit for bit against the unfused GPU kernels it replaces (batchnorm_apply per branch, then add in
// branch order) and against the CPU reference (cpu::batchnorm_apply, cpu::add), which compute the
// same double expression rounded once and the same fp32 additions.
TEST(BnApplySumGpu, EqualsTheUnfusedAppliesAndAddsBitForBit) {
  REQUIRE_GPU();
  Stream st;
  struct Case {
    int64_t count;
    int c, nb;
  };
  for (const Case& k : {Case{2 * 32 * 32, 256, 4}, Case{1 * 64 * 64, 16, 4}, Case{999, 37, 3}, Case{50, 8, 2},
                        Case{7, 5, 1}}) {
    SCOPED_TRACE("count " + std::to_string(k.count) + " c " + std::to_string(k.c) + " branches " +
                 std::to_string(k.nb));
    const size_t n = size_t(k.count) * size_t(k.c);
    std::vector<Floats> x, g, b, m, is;
    std::vector<std::unique_ptr<DevFloats>> dev;
    std::vector<cuda::BnSumBranch> br;
    for (int i = 0; i < k.nb; ++i) {
      x.push_back(normal(n, 0.3f, 2.f));
      g.push_back(uniform(size_t(k.c), 0.5f, 1.5f));
      b.push_back(uniform(size_t(k.c), -0.5f, 0.5f));
      m.push_back(uniform(size_t(k.c), -0.3f, 0.3f));
      is.push_back(uniform(size_t(k.c), 0.5f, 2.f));
      for (const Floats* h : {&x.back(), &g.back(), &b.back(), &m.back(), &is.back()})
        dev.push_back(std::make_unique<DevFloats>(*h));
      const size_t o = size_t(5 * i);
      br.push_back({dev[o]->p(), dev[o + 1]->p(), dev[o + 2]->p(), dev[o + 3]->p(), dev[o + 4]->p()});
    }
    DevFloats y(n), y2(n), tmp(n);
    const Floats fused = run_twice(st, {&y}, nullptr, [&] {
      cuda::batchnorm_apply_sum(k.count, k.c, br.data(), k.nb, y.p(), st);
    })[0];
    const Floats unfused = run_twice(st, {&y2}, nullptr, [&] {
      for (int i = 0; i < k.nb; ++i) {
        const cuda::BnSumBranch& q = br[size_t(i)];
        cuda::batchnorm_apply(k.count, k.c, static_cast<const float*>(q.x), q.gamma, q.beta, q.mean, q.invstd, false,
                              i == 0 ? y2.p() : tmp.p(), st);
        if (i > 0) cuda::add(int64_t(n), y2.p(), tmp.p(), y2.p(), st);
      }
    })[0];
    EXPECT_TRUE(same_bits(fused, unfused)) << "fused and unfused GPU kernels differ";
    Floats cpu_y(n), cpu_t(n);
    for (int i = 0; i < k.nb; ++i) {
      const size_t j = size_t(i);
      cpu::batchnorm_apply(k.count, k.c, x[j].data(), g[j].data(), b[j].data(), m[j].data(), is[j].data(), false,
                           i == 0 ? cpu_y.data() : cpu_t.data());
      if (i > 0) cpu::add(int64_t(n), cpu_y.data(), cpu_t.data(), cpu_y.data());
    }
    EXPECT_TRUE(same_bits(fused, cpu_y)) << "GPU and CPU differ";
    for (const auto& d : dev) expect_guards({d.get()});
    expect_guards({&y, &y2, &tmp});
  }
}

TEST(BnApplySumHost, RejectsBadArguments) {
  float dummy[4] = {};
  cuda::BnSumBranch br[5];
  for (auto& b : br) b = {dummy, dummy, dummy, dummy, dummy};
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 8, br, 0, dummy, nullptr), Error);
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 8, br, 5, dummy, nullptr), Error);
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 1024, br, 3, dummy, nullptr), Error);  // 3072 channels in all
  br[1].invstd = nullptr;
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 8, br, 2, dummy, nullptr), Error);
}
