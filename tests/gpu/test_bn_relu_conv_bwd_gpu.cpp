// tests/gpu/test_bn_relu_conv_bwd_gpu.cpp — the hand-written fused BN-ReLU-conv backward passes
// (kernels/cuda/bn_relu_conv_bwd.cuh) against the CPU reference, on host copies (HWIO weights;
// the device gets and returns them in OHWI):
//  * backward-data: cpu::conv2d_backward_data, then the ReLU mask of bn(x). The kernel evaluates
//    bn(x) with the forward kernel's float expression; the spec, cpu::bn_relu_mask_inplace,
//    in double. The expected dx uses the float mask, and every element where the two masks
//    disagree must have a double bn(x) within rounding of 0 (so the two only differ by rounding);
//  * backward-filter: cpu::batchnorm_apply(relu) then cpu::conv2d_backward_filter (dw and db),
//    the latter in double (on the float inputs): its K, n*ho*wo, is long;
//  * shapes: every BN-ReLU-conv chain that the fusion pass finds in ResUNet++ at 64x64 (batch 2)
//    and at 256x256 (batch 2; batch 1 on the CPU emulator, which is slow), plus ragged ones
//    (channel and pixel counts that leave partial tiles and partial K slices, stride 2 and 3,
//    dilation 3 with pad 3, 1x1 kernels, dilations 6/12/18 on images where most taps fall outside);
//  * positive BN shifts, so that a kernel padding with relu(shift) instead of 0 would fail;
//  * the plain-conv mode (null BN arguments), db null, NaN in x (the mask zeroes dx there; the
//    NaN reaches exactly the dw entries whose tap reads that pixel);
//  * tolerance, fp32 on CUDA cores: every element within 1e-4 * (|ref| + rms(ref));
//  * outputs and workspace poisoned before each run, run twice (same bits: the backward-filter
//    is deterministic), guard bytes checked.
// GPU tests skip without a device; BnReluConvBwdHost runs everywhere (argument checks).
//   ./build/gpu_test_bn_relu_conv_bwd_gpu
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/bn_relu_conv_bwd.cuh"
#include "model/resunetpp.h"
#include "runtime/error.h"

using namespace rpp;
using namespace rpp::gputest;

namespace {

constexpr double kRtol = 1e-4;

size_t sz(int64_t n) { return static_cast<size_t>(n); }

std::string str(const cpu::Conv2dShape& s) {
  return "n" + std::to_string(s.n) + " " + std::to_string(s.h) + "x" + std::to_string(s.w) + "x" +
         std::to_string(s.cin) + " -> " + std::to_string(s.cout) + " k" + std::to_string(s.kh) + "x" +
         std::to_string(s.kw) + " s" + std::to_string(s.stride) + " p" + std::to_string(s.pad) + " d" +
         std::to_string(s.dil);
}

// The conv shapes of the network's fused chains at this input size (batch n).
std::vector<cpu::Conv2dShape> fused_shapes(int size, int n) {
  ModelConfig cfg;
  cfg.fuse = true;
  const ModelGraph m = build_resunetpp(cfg, n, size, size, true);
  std::vector<cpu::Conv2dShape> out;
  std::set<std::tuple<int, int, int, int, int, int, int, int, int>> seen;
  for (const Node& nd : m.graph.nodes()) {
    if (nd.op != OpKind::BnReluConv2d) continue;
    const cpu::Conv2dShape& s = nd.conv.shape;
    if (seen.insert({s.h, s.w, s.cin, s.cout, s.kh, s.kw, s.stride, s.pad, s.dil}).second) out.push_back(s);
  }
  return out;
}

cpu::Conv2dShape shape(int n, int h, int w, int cin, int cout, int k, int stride, int pad, int dil) {
  cpu::Conv2dShape s;
  s.n = n; s.h = h; s.w = w; s.cin = cin; s.cout = cout; s.kh = k; s.kw = k;
  s.stride = stride; s.pad = pad; s.dil = dil;
  return s;
}

cpu::Conv2dShape rect(int n, int h, int w, int cin, int cout, int kh, int kw, int stride, int pad, int dil) {
  cpu::Conv2dShape s = shape(n, h, w, cin, cout, kh, stride, pad, dil);
  s.kw = kw;
  return s;
}

int64_t in_count(const cpu::Conv2dShape& s) { return int64_t(s.n) * s.h * s.w * s.cin; }
int64_t out_count(const cpu::Conv2dShape& s) { return int64_t(s.n) * s.ho() * s.wo() * s.cout; }
int64_t w_count(const cpu::Conv2dShape& s) { return int64_t(s.kh) * s.kw * s.cin * s.cout; }

// HWIO (kh, kw, cin, cout) -> OHWI (cout, kh, kw, cin).
Floats to_ohwi(const cpu::Conv2dShape& s, const Floats& hwio) {
  Floats o(hwio.size());
  for (int y = 0; y < s.kh; ++y)
    for (int x = 0; x < s.kw; ++x)
      for (int ci = 0; ci < s.cin; ++ci)
        for (int co = 0; co < s.cout; ++co)
          o[sz(((int64_t(co) * s.kh + y) * s.kw + x) * s.cin + ci)] =
              hwio[sz(((int64_t(y) * s.kw + x) * s.cin + ci) * s.cout + co)];
  return o;
}

// Largest |got - ref| / (|ref| + rms(ref)) seen by the checks of the current test, per output
// (printed, then reset, at the end of each test).
struct MaxErr {
  double dx = 0, dw = 0, db = 0;
} g_max_err;

void print_max_err() {
  std::printf("[ max err  ] |got - ref| / (|ref| + rms(ref)): dx %.3g, dw %.3g, db %.3g\n", g_max_err.dx,
              g_max_err.dw, g_max_err.db);
  g_max_err = MaxErr{};
}

::testing::AssertionResult close(const Floats& got, const Floats& ref, double* worst) {
  if (got.size() != ref.size()) return ::testing::AssertionFailure() << "size " << got.size() << " vs " << ref.size();
  double ss = 0;
  for (float v : ref) ss += double(v) * v;
  const double rms = ref.empty() ? 0 : std::sqrt(ss / double(ref.size()));
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    const double err = std::fabs(g - r), scale = std::fabs(r) + rms;
    if (!std::isfinite(g) || err > kRtol * scale)
      return ::testing::AssertionFailure() << "element " << i << ": got " << g << ", want " << r << " (rms " << rms
                                           << ")";
    if (scale > 0) *worst = std::max(*worst, err / scale);
  }
  return ::testing::AssertionSuccess();
}

struct BnParams {
  Floats gamma, beta, mean, invstd;
};

// Positive shifts (beta 0.2 .. 0.8): relu(bn(0)) is not 0 for most channels.
BnParams random_bn(int c) {
  BnParams p;
  p.gamma = uniform(sz(c), 0.5f, 1.5f);
  p.beta = uniform(sz(c), 0.2f, 0.8f);
  p.mean = uniform(sz(c), -0.3f, 0.3f);
  p.invstd = uniform(sz(c), 0.5f, 2.f);
  return p;
}

// The kernels' bn(x): the forward kernel's float expression.
float bn_float(float x, const BnParams& p, int c) {
  return std::fmaf(x - p.mean[sz(c)], float(double(p.gamma[sz(c)]) * double(p.invstd[sz(c)])), p.beta[sz(c)]);
}

// The CPU's bn(x) (batchnorm_apply, before rounding to float).
double bn_double(float x, const BnParams& p, int c) {
  return (double(x) - double(p.mean[sz(c)])) * (double(p.gamma[sz(c)]) * double(p.invstd[sz(c)])) +
         double(p.beta[sz(c)]);
}

struct DevBn {
  DevFloats gamma, beta, mean, invstd;
  explicit DevBn(const BnParams& p) : gamma(p.gamma), beta(p.beta), mean(p.mean), invstd(p.invstd) {}
};

// ---- Backward-data ----

void check_data(const cpu::Conv2dShape& s, bool bn) {
  SCOPED_TRACE(str(s) + (bn ? " backward-data with BN-ReLU mask" : " backward-data plain"));
  const Floats x = normal(sz(in_count(s)), 0.2f, 1.f);
  const Floats dz = normal(sz(out_count(s)));
  const Floats w = uniform(sz(w_count(s)), -0.2f, 0.2f);
  const BnParams p = random_bn(s.cin);

  Floats ref(sz(in_count(s)));
  Floats ws(cpu::conv2d_backward_data_workspace(s));
  cpu::conv2d_backward_data(s, dz.data(), w.data(), ref.data(), ws.data());
  if (bn) {
    // The specification's mask (double bn) and the kernel's (float bn): where they disagree, the
    // double value must be within a few roundings of 0.
    Floats spec = ref;
    cpu::bn_relu_mask_inplace(int64_t(s.n) * s.h * s.w, s.cin, x.data(), p.gamma.data(), p.beta.data(),
                              p.mean.data(), p.invstd.data(), spec.data());
    int64_t disagree = 0;
    for (int64_t i = 0; i < in_count(s); ++i) {
      const int c = int(i % s.cin);
      const bool pass = bn_float(x[sz(i)], p, c) > 0.f;
      if (!pass) ref[sz(i)] = 0.f;
      if (ref[sz(i)] != spec[sz(i)]) {
        ++disagree;
        const double v = bn_double(x[sz(i)], p, c);
        const double mag = std::fabs(double(x[sz(i)]) - p.mean[sz(c)]) * p.gamma[sz(c)] * p.invstd[sz(c)] +
                           std::fabs(double(p.beta[sz(c)]));
        EXPECT_LE(std::fabs(v), 1e-6 * mag) << "masks disagree away from 0 at element " << i;
      }
    }
    EXPECT_LE(disagree, 4) << "float and double masks disagree too often";
  }

  Stream st;
  DevFloats d_dz(dz), d_w(to_ohwi(s, w)), d_x(x), d_dx(sz(in_count(s)));
  DevBn d_bn(p);
  const auto out = run_twice(st, {&d_dx}, nullptr, [&] {
    if (bn)
      cuda::bn_relu_conv_backward_data(s, d_dz.p(), d_w.p(), d_x.p(), d_bn.gamma.p(), d_bn.beta.p(), d_bn.mean.p(),
                                       d_bn.invstd.p(), d_dx.p(), st);
    else
      cuda::bn_relu_conv_backward_data(s, d_dz.p(), d_w.p(), nullptr, nullptr, nullptr, nullptr, nullptr, d_dx.p(),
                                       st);
  });
  EXPECT_TRUE(close(out[0], ref, &g_max_err.dx));
  expect_guards({&d_dz, &d_w, &d_x, &d_dx, &d_bn.gamma, &d_bn.beta, &d_bn.mean, &d_bn.invstd});
}

// ---- Backward-filter ----

// An optional device workspace (null when the shape needs none).
std::unique_ptr<DevBuf> workspace_for(const cpu::Conv2dShape& s) {
  const size_t bytes = cuda::bn_relu_conv_backward_filter_workspace_bytes(s);
  return bytes ? std::make_unique<DevBuf>(bytes) : nullptr;
}

// also_without_db: a third run with db null must give the same dw bits.
void check_filter(const cpu::Conv2dShape& s, bool bn, bool also_without_db = false) {
  SCOPED_TRACE(str(s) + (bn ? " backward-filter with BN-ReLU" : " backward-filter plain"));
  const Floats x = normal(sz(in_count(s)), 0.2f, 1.f);
  const Floats dz = normal(sz(out_count(s)));
  const BnParams p = random_bn(s.cin);

  Floats a = x;
  if (bn)
    cpu::batchnorm_apply(int64_t(s.n) * s.h * s.w, s.cin, x.data(), p.gamma.data(), p.beta.data(), p.mean.data(),
                         p.invstd.data(), true, a.data());
  // The reference runs in double on the float inputs (a rounded to float, as the kernel sees it):
  // K = n*ho*wo reaches 131072 here, and the float reference's own rounding (up to ~2e-5 of the
  // tolerance scale, measured) would eat into the margin that the kernel's error is checked with.
  const std::vector<double> a_d(a.begin(), a.end()), dz_d(dz.begin(), dz.end());
  std::vector<double> ref_wd(sz(w_count(s))), ref_bd(sz(s.cout)), ws(cpu::conv2d_backward_filter_workspace(s));
  cpu::conv2d_backward_filter(s, a_d.data(), dz_d.data(), ref_wd.data(), ref_bd.data(), ws.data());
  const Floats ref_w(ref_wd.begin(), ref_wd.end()), ref_b(ref_bd.begin(), ref_bd.end());

  Stream st;
  DevFloats d_x(x), d_dz(dz), d_dw(sz(w_count(s))), d_db(sz(s.cout));
  DevBn d_bn(p);
  const std::unique_ptr<DevBuf> d_ws = workspace_for(s);
  void* wsp = d_ws ? d_ws->data() : nullptr;
  auto launch = [&](float* db) {
    if (bn)
      cuda::bn_relu_conv_backward_filter(s, d_x.p(), d_bn.gamma.p(), d_bn.beta.p(), d_bn.mean.p(), d_bn.invstd.p(),
                                         d_dz.p(), d_dw.p(), db, wsp, st);
    else
      cuda::bn_relu_conv_backward_filter(s, d_x.p(), nullptr, nullptr, nullptr, nullptr, d_dz.p(), d_dw.p(), db, wsp,
                                         st);
  };
  const auto poison_ws = [&] {
    if (d_ws) d_ws->poison();
  };
  const auto out = run_twice(st, {&d_dw, &d_db}, poison_ws, [&] { launch(d_db.p()); });
  EXPECT_TRUE(close(out[0], to_ohwi(s, ref_w), &g_max_err.dw));
  EXPECT_TRUE(close(out[1], ref_b, &g_max_err.db));
  if (also_without_db) {
    d_dw.poison();
    d_db.poison();
    poison_ws();
    launch(nullptr);
    st.sync();
    EXPECT_TRUE(same_bits(d_dw.get(), out[0])) << "dw differs when db is null";
    const Floats db_after = d_db.get();
    for (float v : db_after) ASSERT_TRUE(std::isnan(v)) << "db written although null was passed";
  }
  expect_guards({&d_x, &d_dz, &d_dw, &d_db, &d_bn.gamma, &d_bn.beta, &d_bn.mean, &d_bn.invstd});
  if (d_ws) expect_guards({d_ws.get()});
}

void check_both(const cpu::Conv2dShape& s, bool bn, bool also_without_db = false) {
  check_data(s, bn);
  check_filter(s, bn, also_without_db);
}

}  // namespace

TEST(BnReluConvBwdHost, RejectsBadArguments) {
  const cpu::Conv2dShape ok = shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_can_run(ok));
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_can_run(shape(1, 8, 8, 4096, 16, 3, 1, 1, 1)));  // no per-channel table limit
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(shape(1, 2, 2, 16, 16, 5, 1, 0, 1)));   // empty output
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(shape(1, 8, 8, 16, 16, 3, 0, 1, 1)));   // stride 0
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(shape(1, 8, 8, 16, 16, 3, 1, -1, 1)));  // negative pad
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(shape(1, 8, 8, 0, 16, 3, 1, 1, 1)));    // no channel
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(shape(1, 300, 300, 1, 1, 1, 256, 0, 1)));  // stride > 255
  EXPECT_EQ(cuda::bn_relu_conv_backward_filter_workspace_bytes(shape(1, 2, 2, 16, 16, 5, 1, 0, 1)), 0u);

  float dummy[4] = {};
  float* f = dummy;
  const cpu::Conv2dShape empty = shape(1, 2, 2, 16, 16, 5, 1, 0, 1);
  // Backward-data: unsupported shape, null required pointers, some BN arguments but not all, BN
  // without x.
  EXPECT_THROW(cuda::bn_relu_conv_backward_data(empty, f, f, f, f, f, f, f, f, nullptr), Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_data(ok, nullptr, f, nullptr, nullptr, nullptr, nullptr, nullptr, f,
                                                nullptr),
               Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_data(ok, f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, f,
                                                nullptr),
               Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_data(ok, f, f, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr,
                                                nullptr),
               Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_data(ok, f, f, f, f, nullptr, f, f, f, nullptr), Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_data(ok, f, f, nullptr, f, f, f, f, f, nullptr), Error);

  // Backward-filter: the same, plus the workspace (null or misaligned where one is needed).
  EXPECT_THROW(cuda::bn_relu_conv_backward_filter(empty, f, f, f, f, f, f, f, f, nullptr, nullptr), Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_filter(ok, nullptr, nullptr, nullptr, nullptr, nullptr, f, f, f, nullptr,
                                                  nullptr),
               Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_filter(ok, f, nullptr, nullptr, nullptr, nullptr, nullptr, f, f, nullptr,
                                                  nullptr),
               Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_filter(ok, f, nullptr, nullptr, nullptr, nullptr, f, nullptr, f, nullptr,
                                                  nullptr),
               Error);
  EXPECT_THROW(cuda::bn_relu_conv_backward_filter(ok, f, f, f, nullptr, f, f, f, f, nullptr, nullptr), Error);
  const cpu::Conv2dShape split = shape(2, 64, 64, 16, 16, 3, 1, 1, 1);  // few tiles, many pixels: split
  const size_t need = cuda::bn_relu_conv_backward_filter_workspace_bytes(split);
  ASSERT_GT(need, 0u);
  EXPECT_EQ(need % 16, 0u);
  EXPECT_EQ(need, cuda::bn_relu_conv_backward_filter_workspace_bytes(split));  // a function of the shape
  EXPECT_THROW(cuda::bn_relu_conv_backward_filter(split, f, nullptr, nullptr, nullptr, nullptr, f, f, f, nullptr,
                                                  nullptr),
               Error);
  alignas(16) static unsigned char bytes[64];
  EXPECT_THROW(cuda::bn_relu_conv_backward_filter(split, f, nullptr, nullptr, nullptr, nullptr, f, f, f, bytes + 4,
                                                  nullptr),
               Error);
}

TEST(BnReluConvBwdGpu, NetworkShapesAt64MatchCpu) {
  REQUIRE_GPU();
  const std::vector<cpu::Conv2dShape> shapes = fused_shapes(64, 2);
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) check_both(s, true);
  print_max_err();
}

TEST(BnReluConvBwdGpu, NetworkShapesAt256MatchCpu) {
  REQUIRE_GPU();
#ifdef RPP_CUDA_EMULATOR
  // The CPU emulator is slow (about 35 s in Release at batch 1, many minutes under the sanitizers
  // of CI): same code paths as the 64x64 shapes, so it runs them only when asked.
  if (!std::getenv("RPP_EMU_LARGE")) GTEST_SKIP() << "emulator: set RPP_EMU_LARGE=1 to run the 256x256 shapes";
  const int batch = 1;
#else
  const int batch = 2;
#endif
  const std::vector<cpu::Conv2dShape> shapes = fused_shapes(256, batch);
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) check_both(s, true);
  print_max_err();
}

TEST(BnReluConvBwdGpu, RaggedShapesAndPlainConvMatchCpu) {
  REQUIRE_GPU();
  const cpu::Conv2dShape ragged[] = {
      shape(1, 7, 9, 5, 3, 3, 1, 1, 1),       // everything smaller than a tile
      shape(3, 13, 11, 70, 65, 3, 2, 1, 1),   // stride 2, odd sizes, partial tiles in M, N and K
      shape(2, 17, 17, 33, 129, 3, 1, 3, 3),  // dilation 3 with pad 3
      shape(2, 10, 10, 24, 40, 1, 1, 0, 1),   // 1x1
      shape(1, 9, 9, 16, 8, 3, 1, 0, 1),      // no padding
      shape(2, 12, 10, 20, 17, 1, 2, 0, 1),   // 1x1 stride 2: pixels no output reaches
      shape(1, 16, 14, 19, 23, 3, 2, 2, 2),   // stride 2 with dilation 2: a parity class with no tap
      shape(1, 11, 13, 9, 21, 5, 3, 2, 2),    // stride 3: taps in steps of 3
      shape(2, 23, 19, 67, 18, 3, 1, 1, 1),   // cout not a multiple of 16
      shape(1, 40, 40, 3, 70, 3, 1, 1, 1),    // cin 3 (stem): many pixels, one column tile
      shape(2, 1, 9, 8, 8, 1, 2, 0, 1),       // h < stride: an empty parity class
      rect(2, 9, 7, 12, 20, 3, 1, 2, 1, 2),   // 3x1 kernel, stride 2, dilation 2, pad 1
  };
  for (const cpu::Conv2dShape& s : ragged) {
    check_both(s, true, true);
    check_both(s, false);
  }
  print_max_err();
}

TEST(BnReluConvBwdGpu, LargeDilationsOnSmallImagesMatchCpu) {
  REQUIRE_GPU();
  // ASPP-like: 3x3 with pad = dilation, on images where most (or all but the centre) taps fall
  // outside; and without padding, where few pixels reach the output.
  const cpu::Conv2dShape shapes[] = {
      shape(2, 8, 8, 40, 24, 3, 1, 6, 6),     shape(2, 8, 8, 24, 40, 3, 1, 12, 12),
      shape(2, 16, 16, 32, 32, 3, 1, 18, 18), shape(1, 4, 4, 16, 16, 3, 1, 18, 18),
      shape(1, 20, 20, 8, 8, 3, 1, 0, 6),     shape(2, 14, 13, 8, 12, 3, 2, 6, 6),
  };
  for (const cpu::Conv2dShape& s : shapes) {
    check_both(s, true);
    check_both(s, false);
  }
  print_max_err();
}

TEST(BnReluConvBwdGpu, NaNInXFollowsTheMaskRule) {
  REQUIRE_GPU();
  // 3x3, stride 2, pad 1 on 5x6: NaN at pixel (0, 0) channel 3 and at pixel (2, 3) channel 5.
  const cpu::Conv2dShape s = shape(1, 5, 6, 8, 8, 3, 2, 1, 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Floats x = normal(sz(in_count(s)), 0.2f, 1.f);
  const int nan_pix[2][3] = {{0, 0, 3}, {2, 3, 5}};  // (y, x, channel)
  for (const auto& q : nan_pix) x[sz((q[0] * s.w + q[1]) * s.cin + q[2])] = nan;
  const Floats dz = normal(sz(out_count(s)));
  const Floats w = uniform(sz(w_count(s)), -0.2f, 0.2f);
  const BnParams p = random_bn(s.cin);
  Stream st;
  DevFloats d_x(x), d_dz(dz), d_w(to_ohwi(s, w)), d_dx(sz(in_count(s))), d_dw(sz(w_count(s))), d_db(sz(s.cout));
  DevBn d_bn(p);
  const std::unique_ptr<DevBuf> d_ws = workspace_for(s);

  // Backward-data: the NaN elements are masked (bn(NaN) is not > 0): dx is 0 there, finite
  // everywhere, and matches the reference.
  cuda::bn_relu_conv_backward_data(s, d_dz.p(), d_w.p(), d_x.p(), d_bn.gamma.p(), d_bn.beta.p(), d_bn.mean.p(),
                                   d_bn.invstd.p(), d_dx.p(), st);
  st.sync();
  const Floats dx = d_dx.get();
  for (const auto& q : nan_pix) EXPECT_EQ(dx[sz((q[0] * s.w + q[1]) * s.cin + q[2])], 0.f);
  for (size_t i = 0; i < dx.size(); ++i) ASSERT_TRUE(std::isfinite(dx[i])) << "dx element " << i;

  // Backward-filter: relu(bn(NaN)) is NaN (it propagates, as in the forward), so dw is NaN for
  // every output channel at exactly the (tap, channel) entries through which some output pixel
  // reads a NaN pixel; everything else, and db, is finite.
  cuda::bn_relu_conv_backward_filter(s, d_x.p(), d_bn.gamma.p(), d_bn.beta.p(), d_bn.mean.p(), d_bn.invstd.p(),
                                     d_dz.p(), d_dw.p(), d_db.p(), d_ws ? d_ws->data() : nullptr, st);
  st.sync();
  const Floats dw = d_dw.get(), db = d_db.get();
  int nan_taps = 0;
  for (int co = 0; co < s.cout; ++co)
    for (int ky = 0; ky < s.kh; ++ky)
      for (int kx = 0; kx < s.kw; ++kx)
        for (int ci = 0; ci < s.cin; ++ci) {
          bool reads_nan = false;
          for (const auto& q : nan_pix) {
            if (q[2] != ci) continue;
            for (int oy = 0; oy < s.ho(); ++oy)
              for (int ox = 0; ox < s.wo(); ++ox)
                if (oy * s.stride - s.pad + ky * s.dil == q[0] && ox * s.stride - s.pad + kx * s.dil == q[1])
                  reads_nan = true;
          }
          nan_taps += reads_nan && co == 0;
          const float v = dw[sz(((int64_t(co) * s.kh + ky) * s.kw + kx) * s.cin + ci)];
          EXPECT_EQ(std::isnan(v), reads_nan) << "co " << co << " tap " << ky << "," << kx << " ci " << ci;
        }
  EXPECT_EQ(nan_taps, 1 + 2);  // (0, 0): tap (1, 1) only; (2, 3): taps (1, 0) and (1, 2)
  for (float v : db) EXPECT_TRUE(std::isfinite(v));
}
