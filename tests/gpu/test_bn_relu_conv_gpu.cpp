// tests/gpu/test_bn_relu_conv_gpu.cpp — the hand-written fused BN-ReLU-conv forward
// (kernels/cuda/bn_relu_conv.cuh) against the CPU reference: cpu::batchnorm_apply with ReLU,
// then cpu::conv2d_forward, on the host copies (HWIO weights; the device gets them in OHWI).
//  * shapes: every BN-ReLU-conv chain that the fusion pass finds in ResUNet++ at 64x64 and at
//    256x256 (batch 2), plus ragged ones (channel counts and pixel counts that leave partial
//    64x64 tiles, stride 2, dilation 3, a 1x1 kernel);
//  * positive BN shifts, so that a kernel padding with relu(shift) instead of 0 would fail;
//  * the plain-conv mode (null BN arguments) and NaN propagation through BN-ReLU;
//  * tolerance, fp32 on CUDA cores: every element within 1e-4 * (|ref| + rms(ref));
//  * outputs poisoned before each run, run twice (same bits), guard bytes checked.
// GPU tests skip without a device; BnReluConvHost runs everywhere (argument checks).
//   ./build/gpu_test_bn_relu_conv_gpu
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "conv_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/bn_relu_conv.cuh"
#include "model/resunetpp.h"
#include "runtime/error.h"

using namespace rpp;
using namespace rpp::gputest;

namespace {

constexpr double kRtol = 1e-4;

size_t sz(int64_t n) { return static_cast<size_t>(n); }

::testing::AssertionResult close(const Floats& got, const Floats& ref) {
  double ss = 0;
  for (float v : ref) ss += double(v) * v;
  const double rms = ref.empty() ? 0 : std::sqrt(ss / double(ref.size()));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    if (!std::isfinite(g) || std::fabs(g - r) > kRtol * (std::fabs(r) + rms))
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", want " << r << " (rms " << rms
                                           << ")";
  }
  return ::testing::AssertionSuccess();
}

void check(const cpu::Conv2dShape& s, bool bn) {
  SCOPED_TRACE(shape_str(s) + (bn ? " with BN-ReLU" : " plain"));
  const int64_t nx = int64_t(s.n) * s.h * s.w * s.cin;
  const int64_t ny = int64_t(s.n) * s.ho() * s.wo() * s.cout;
  const Floats x = normal(sz(nx), 0.2f, 1.f);
  const Floats w = uniform(sz(int64_t(s.kh) * s.kw * s.cin * s.cout), -0.2f, 0.2f);
  const Floats b = uniform(sz(s.cout), -0.5f, 0.5f);
  const Floats gamma = uniform(sz(s.cin), 0.5f, 1.5f), beta = uniform(sz(s.cin), 0.2f, 0.8f);
  const Floats mean = uniform(sz(s.cin), -0.3f, 0.3f), invstd = uniform(sz(s.cin), 0.5f, 2.f);

  Floats a(sz(nx)), ref(sz(ny));
  if (bn)
    cpu::batchnorm_apply(int64_t(s.n) * s.h * s.w, s.cin, x.data(), gamma.data(), beta.data(), mean.data(),
                         invstd.data(), true, a.data());
  else
    a = x;
  Floats ws(cpu::conv2d_forward_workspace(s));
  cpu::conv2d_forward(s, a.data(), w.data(), b.data(), ref.data(), ws.data());

  Stream st;
  DevFloats dx(x), dw(hwio_to_ohwi(s, w)), db(b), dg(gamma), dbeta(beta), dm(mean), di(invstd), dy(sz(ny));
  const auto out = run_twice(st, {&dy}, nullptr, [&] {
    if (bn)
      cuda::bn_relu_conv_forward(s, dx.p(), dg.p(), dbeta.p(), dm.p(), di.p(), dw.p(), db.p(), dy.p(), st);
    else
      cuda::bn_relu_conv_forward(s, dx.p(), nullptr, nullptr, nullptr, nullptr, dw.p(), db.p(), dy.p(), st);
  });
  EXPECT_TRUE(close(out[0], ref));
  expect_guards({&dx, &dw, &db, &dg, &dbeta, &dm, &di, &dy});
}

}  // namespace

TEST(BnReluConvHost, RejectsBadArguments) {
  const cpu::Conv2dShape ok = conv_shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  EXPECT_TRUE(cuda::bn_relu_conv_can_run(ok));
  EXPECT_FALSE(cuda::bn_relu_conv_can_run(conv_shape(1, 8, 8, 4096, 16, 3, 1, 1, 1)));
  EXPECT_FALSE(cuda::bn_relu_conv_can_run(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1)));  // empty output
  float dummy = 0;
  EXPECT_THROW(cuda::bn_relu_conv_forward(conv_shape(1, 8, 8, 4096, 16, 3, 1, 1, 1), &dummy, nullptr, nullptr, nullptr,
                                          nullptr, &dummy, nullptr, &dummy, nullptr),
               Error);
  EXPECT_THROW(cuda::bn_relu_conv_forward(ok, nullptr, nullptr, nullptr, nullptr, nullptr, &dummy, nullptr, &dummy,
                                          nullptr),
               Error);
  // Some BN arguments but not all.
  EXPECT_THROW(cuda::bn_relu_conv_forward(ok, &dummy, &dummy, nullptr, nullptr, nullptr, &dummy, nullptr, &dummy,
                                          nullptr),
               Error);
}

TEST(BnReluConvGpu, NetworkShapesAt64MatchCpu) {
  REQUIRE_GPU();
  const std::vector<cpu::Conv2dShape> shapes = fused_chain_shapes(64);
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) check(s, true);
}

TEST(BnReluConvGpu, NetworkShapesAt256MatchCpu) {
  REQUIRE_GPU();
#ifdef RPP_CUDA_EMULATOR
  GTEST_SKIP() << "the CPU emulator runs the 64x64 shapes only (same code paths; these take minutes there)";
#endif
  for (const cpu::Conv2dShape& s : fused_chain_shapes(256)) check(s, true);
}

TEST(BnReluConvGpu, RaggedShapesAndPlainConvMatchCpu) {
  REQUIRE_GPU();
  const cpu::Conv2dShape ragged[] = {
      conv_shape(1, 7, 9, 5, 3, 3, 1, 1, 1),    conv_shape(3, 13, 11, 70, 65, 3, 2, 1, 1),
      conv_shape(2, 17, 17, 33, 129, 3, 1, 3, 3), conv_shape(2, 10, 10, 24, 40, 1, 1, 0, 1),
      conv_shape(1, 9, 9, 16, 8, 3, 1, 0, 1)};
  for (const cpu::Conv2dShape& s : ragged) {
    check(s, true);
    check(s, false);
  }
}

TEST(BnReluConvGpu, NaNPropagatesThroughBnRelu) {
  REQUIRE_GPU();
  const cpu::Conv2dShape s = conv_shape(1, 4, 4, 8, 8, 3, 1, 1, 1);
  Floats x = normal(sz(4 * 4 * 8));
  x[5 * 8 + 3] = std::numeric_limits<float>::quiet_NaN();  // pixel (1, 1), channel 3
  const Floats w = uniform(sz(9 * 8 * 8), -0.2f, 0.2f);
  const Floats ones(8, 1.f), zeros(8, 0.f);
  Stream st;
  DevFloats dx(x), dw(hwio_to_ohwi(s, w)), dg(ones), dbeta(zeros), dm(zeros), di(ones), dy(sz(4 * 4 * 8));
  dy.poison();
  cuda::bn_relu_conv_forward(s, dx.p(), dg.p(), dbeta.p(), dm.p(), di.p(), dw.p(), nullptr, dy.p(), st);
  st.sync();
  const Floats y = dy.get();
  // Every output whose 3x3 window covers pixel (1, 1) is NaN; the others are finite.
  for (int oy = 0; oy < 4; ++oy)
    for (int ox = 0; ox < 4; ++ox) {
      const bool covers = std::abs(oy - 1) <= 1 && std::abs(ox - 1) <= 1;
      for (int c = 0; c < 8; ++c)
        EXPECT_EQ(std::isnan(y[sz((oy * 4 + ox) * 8 + c)]), covers) << oy << "," << ox << "," << c;
    }
}
