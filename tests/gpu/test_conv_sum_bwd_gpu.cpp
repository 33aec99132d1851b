// tests/gpu/test_conv_sum_bwd_gpu.cpp — the ASPP's fused backward-data
// (kernels/cuda/bn_relu_conv_bwd_tc.cuh, conv_sum_tc_backward_data): the input gradient of up to
// four convolutions of one input that differ in padding and dilation, summed in one launch, TF32
// and BF16, against the CPU reference in double on the float inputs (cpu::conv2d_backward_data per
// branch, summed).
//  * shapes: both ASPP blocks of ResUNet++ at a 64x64 input (the bridge at 8x8, where dilations 12
//    and 18 reach only the centre tap) and at 256x256 on a GPU; ragged ones: cin 3 and cin 70
//    (partial and two channel tiles), cout 5 and 70 (partial K slices), pixel tiles spanning
//    several images, stride 2 with a different padding per branch (parity classes whose live taps
//    differ per branch), one branch, 4x4 maps where most taps are dead for every tile, and 40x40
//    maps whose tiles start and end mid-row (per-tile tap ranges);
//  * every output poisoned and guarded, every launch run twice with the same bits.
//
// Tolerance (random data), per element, with S = sum over the branches and live terms of
// |dz| |w| (double) and K = branches * kh * kw * cout:
//   tol = (2u + u^2) S + (1.6 K + 8) 2^-23 S,   u = 2^-11 (TF32) or 2^-8 (BF16):
// the operand rounding (products of rounded operands are exact in fp32) and the fp32 accumulation
// of at most K products in one chain, as the single-convolution suite
// (test_bn_relu_conv_bwd_tc_gpu.cpp) derives it.
// That bound cannot see one missing product among thousands, so integer-valued data (every operand
// exact in TF32 and BF16, every partial sum exact in fp32) must match the reference exactly: a
// wrong tap, dilation or padding, or a live tap skipped, shows as a wrong value.
// GPU tests skip without a device; ConvSumBwdHost runs everywhere.
//   ./build/gpu_test_conv_sum_bwd_gpu
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "conv_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cuda/bn_relu_conv_bwd_tc.cuh"
#include "runtime/error.h"

using namespace rpp;
using namespace rpp::gputest;
using cuda::ConvMath;

namespace {

size_t sz(int64_t n) { return static_cast<size_t>(n); }

using Shapes = std::vector<cpu::Conv2dShape>;


std::string describe(const Shapes& b) {
  std::string s = std::to_string(b.size()) + " branches " + shape_str(b[0]) + ", pad/dilation";
  for (const cpu::Conv2dShape& c : b) s += " " + std::to_string(c.pad) + "/" + std::to_string(c.dil);
  return s;
}

struct Problem {
  Shapes s;
  std::vector<Floats> dz, w;  // per branch; w in HWIO
  int64_t nx() const { return int64_t(s[0].n) * s[0].h * s[0].w * s[0].cin; }
  int64_t nz() const { return int64_t(s[0].n) * s[0].ho() * s[0].wo() * s[0].cout; }
};

Problem make_problem(const Shapes& shapes, bool exact) {
  Problem p;
  p.s = shapes;
  const cpu::Conv2dShape& a = shapes[0];
  const size_t nw = sz(int64_t(a.kh) * a.kw * a.cin * a.cout);
  for (size_t b = 0; b < shapes.size(); ++b) {
    p.dz.push_back(exact ? small_ints(sz(p.nz()), 3) : normal(sz(p.nz()), 0.f, 1.f));
    p.w.push_back(exact ? small_ints(nw, 2) : uniform(nw, -0.2f, 0.2f));
  }
  return p;
}

struct Reference {
  std::vector<double> dx, mag;  // the exact sum and S of the file comment
};

Reference reference(const Problem& p) {
  Reference r;
  r.dx.assign(sz(p.nx()), 0.0);
  r.mag.assign(sz(p.nx()), 0.0);
  std::vector<double> one(sz(p.nx()));
  for (size_t b = 0; b < p.s.size(); ++b) {
    const cpu::Conv2dShape& s = p.s[b];
    std::vector<double> ws(cpu::conv2d_backward_data_workspace(s));
    for (int pass = 0; pass < 2; ++pass) {  // the values, then their magnitudes
      std::vector<double> dz(p.dz[b].begin(), p.dz[b].end()), w(p.w[b].begin(), p.w[b].end());
      if (pass == 1) {
        for (double& v : dz) v = std::fabs(v);
        for (double& v : w) v = std::fabs(v);
      }
      cpu::conv2d_backward_data(s, dz.data(), w.data(), one.data(), ws.data());
      std::vector<double>& acc = pass == 0 ? r.dx : r.mag;
      for (size_t i = 0; i < one.size(); ++i) acc[i] += one[i];
    }
  }
  return r;
}

// dx, run twice on a poisoned output (the same bits both times).
Floats run_kernel(const Problem& p, ConvMath math) {
  Stream st;
  std::vector<std::unique_ptr<DevFloats>> dz, w;
  std::vector<cuda::ConvBwdDataBranch> br;
  for (size_t b = 0; b < p.s.size(); ++b) {
    dz.push_back(std::make_unique<DevFloats>(p.dz[b]));
    w.push_back(std::make_unique<DevFloats>(hwio_to_ohwi(p.s[b], p.w[b])));
    br.push_back({p.s[b], dz.back()->p(), w.back()->p()});
  }
  DevFloats dx(sz(p.nx()));
  const std::vector<Floats> out = run_twice(st, {&dx}, [] {}, [&] {
    cuda::conv_sum_tc_backward_data(br.data(), int(br.size()), math, dx.p(), st);
  });
  for (size_t b = 0; b < dz.size(); ++b) expect_guards({dz[b].get(), w[b].get()});
  expect_guards({&dx});
  return out[0];
}

void check_random(const Shapes& shapes) {
  const Problem p = make_problem(shapes, false);
  const Reference ref = reference(p);
  const int64_t k = int64_t(shapes.size()) * shapes[0].kh * shapes[0].kw * shapes[0].cout;
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(describe(shapes) + " " + math_name(math));
    const Floats got = run_kernel(p, math);
    const double u = math_unit(math), rel = 2 * u + u * u + (1.6 * double(k) + 8) * std::ldexp(1.0, -23);
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double tol = rel * ref.mag[i] + 1e-30;
      const double err = std::fabs(double(got[i]) - ref.dx[i]);
      if (!(err <= tol)) {
        ADD_FAILURE() << "element " << i << " (pixel " << i / sz(shapes[0].cin) << ", channel "
                      << i % sz(shapes[0].cin) << "): got " << got[i] << ", want " << ref.dx[i] << " within " << tol;
        return;
      }
      worst = std::max(worst, err / tol);
    }
    std::printf("  %-78s %s  max |err|/tol %.3f\n", describe(shapes).c_str(), math_name(math), worst);
  }
}

void check_exact(const Shapes& shapes) {
  const Problem p = make_problem(shapes, true);
  const Reference ref = reference(p);
  for (ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
    SCOPED_TRACE(describe(shapes) + " " + math_name(math) + " (exact data)");
    const Floats got = run_kernel(p, math);
    size_t bad = 0, first = 0;
    for (size_t e = 0; e < got.size(); ++e)
      if (!(double(got[e]) == ref.dx[e]) && bad++ == 0) first = e;
    EXPECT_EQ(bad, 0u) << "first at element " << first << " (pixel " << first / sz(shapes[0].cin) << ", channel "
                       << first % sz(shapes[0].cin) << "): got " << got[first] << ", want " << ref.dx[first];
  }
}

std::vector<Shapes> ragged_cases() {
  return {
      aspp(1, 7, 9, 3, 5, {1, 2, 3}),  // cin 3, cout 5: partial channel tile and K slices
      aspp(3, 5, 5, 70, 70, {1, 4}),   // cin 70: two channel tiles; cout 70; one pixel tile of 3 images
      aspp(1, 12, 12, 16, 33, {2}),    // one branch (a plain backward-data)
      // stride 2, per-branch padding: each parity class has its own live taps per branch
      {conv_shape(2, 15, 15, 8, 16, 3, 2, 1, 1), conv_shape(2, 15, 15, 8, 16, 3, 2, 2, 2),
       conv_shape(2, 15, 15, 8, 16, 3, 2, 3, 3)},
      aspp(9, 4, 4, 32, 32),    // 4x4: most taps dead; the second tile is one image
      aspp(1, 40, 40, 32, 16),  // tiles start and end mid-row
  };
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

// ---- host-side argument checks (no device needed) ----

TEST(ConvSumBwdHost, RejectsBadArguments) {
  const Shapes ok = aspp(1, 8, 8, 16, 16);
  EXPECT_TRUE(cuda::conv_sum_tc_backward_data_can_run(ok.data(), 4, ConvMath::Tf32));
  EXPECT_TRUE(cuda::conv_sum_tc_backward_data_can_run(ok.data(), 4, ConvMath::Bf16));
  EXPECT_FALSE(cuda::conv_sum_tc_backward_data_can_run(ok.data(), 0, ConvMath::Tf32));
  EXPECT_FALSE(cuda::conv_sum_tc_backward_data_can_run(nullptr, 1, ConvMath::Tf32));
  EXPECT_FALSE(cuda::conv_sum_tc_backward_data_can_run(ok.data(), 4, static_cast<ConvMath>(99)));
  const Shapes five = aspp(1, 8, 8, 16, 16, {1, 2, 3, 4, 5});
  EXPECT_FALSE(cuda::conv_sum_tc_backward_data_can_run(five.data(), 5, ConvMath::Tf32));
  Shapes other_cout = ok;
  other_cout[2].cout = 8;
  EXPECT_FALSE(cuda::conv_sum_tc_backward_data_can_run(other_cout.data(), 4, ConvMath::Tf32));
  Shapes other_size = ok;
  other_size[1].pad = 0;  // a smaller output than the other branches
  EXPECT_FALSE(cuda::conv_sum_tc_backward_data_can_run(other_size.data(), 4, ConvMath::Tf32));

  // The launcher refuses before touching any pointer (these are not device pointers).
  float dummy[4] = {};
  std::vector<cuda::ConvBwdDataBranch> br;
  for (const cpu::Conv2dShape& s : ok) br.push_back({s, dummy, dummy});
  EXPECT_NE(error_of([&] { cuda::conv_sum_tc_backward_data(br.data(), 0, ConvMath::Tf32, dummy, nullptr); })
                .find("0 branches"),
            std::string::npos);
  std::vector<cuda::ConvBwdDataBranch> bad = br;
  bad[2].shape.cout = 8;
  EXPECT_NE(error_of([&] { cuda::conv_sum_tc_backward_data(bad.data(), 4, ConvMath::Tf32, dummy, nullptr); })
                .find("differ in more than padding and dilation"),
            std::string::npos);
  bad = br;
  bad[3].dz = nullptr;
  EXPECT_NE(error_of([&] { cuda::conv_sum_tc_backward_data(bad.data(), 4, ConvMath::Tf32, dummy, nullptr); })
                .find("dz"),
            std::string::npos);
  EXPECT_NE(error_of([&] { cuda::conv_sum_tc_backward_data(br.data(), 4, ConvMath::Tf32, nullptr, nullptr); })
                .find("dx"),
            std::string::npos);
}

// ---- against the CPU reference ----

TEST(ConvSumBwdGpu, NetworkAsppShapesAt64MatchCpu) {
  REQUIRE_GPU();
  for (const Shapes& s : thin_for_emulator(std::vector<Shapes>{aspp(2, 8, 8, 128, 256), aspp(1, 64, 64, 32, 16)})) {
    check_random(s);
    check_exact(s);
  }
}

TEST(ConvSumBwdGpu, NetworkAsppShapesAt256MatchCpu) {
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

TEST(ConvSumBwdGpu, RaggedShapesMatchCpu) {
  REQUIRE_GPU();
  for (const Shapes& s : ragged_cases()) check_random(s);
}

TEST(ConvSumBwdGpu, ExactArithmeticGivesExactResults) {
  REQUIRE_GPU();
  for (const Shapes& s : ragged_cases()) check_exact(s);
}
