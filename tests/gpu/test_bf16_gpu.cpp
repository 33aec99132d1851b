// tests/gpu/test_bf16_gpu.cpp — the bf16-storage versions of the inference kernels (bf16
// activations, fp32 arithmetic; kernels/cuda/storage.cuh) against their specification:
//  * elementwise, pooling, upsampling, concat, per-channel scale and eval BatchNorm: the CPU
//    reference (kernels/cpu/ops.h) run in fp32 on the widened bf16 inputs, its result rounded to
//    bf16 (nearest even) — bit for bit, because each GPU thread does the same fp32 operations and
//    rounds once; the global average pool (fp32 output) within 1e-6 relative;
//  * the tensor-core convolution with bf16 input and/or output: bit for bit against the same
//    kernel with fp32 storage on the same (bf16-representable) input, itself tested against the
//    CPU by test_bn_relu_conv_tc_gpu — a bf16 x must change nothing, a bf16 y must be the fp32 y
//    rounded to nearest even, and the epilogue statistics must be those of the stored values;
//  * the readers of an upsample-concat view (the tensor-core forward and the BN statistics reading
//    concat(upsample2(a), b) in place): bit for bit against the same kernels on the stored
//    concatenation, in fp32 and bf16 storage.
// Every output is poisoned first and guarded; every launch runs twice and must repeat its bits.
// The bf16 reference conversions here are written from the format's definition (the upper 16
// bits of a float, round to nearest even), independently of CUDA's.
//   ./build/gpu_test_bf16_gpu
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "bf16_test_util.h"
#include "conv_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/bn_relu_conv_tc.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "runtime/error.h"

namespace rpp {
namespace {

using cuda::bf16;
using cuda::ConvMath;
using cuda::Storage;
using namespace gputest;

struct Nhwc {
  int n, h, w, c;
  int64_t count() const { return int64_t(n) * h * w * c; }
};

// Layer-like sizes (ResUNet++ channel counts), odd channel counts and a single element.
std::vector<Nhwc> sizes() { return {{2, 16, 16, 16}, {2, 8, 8, 64}, {1, 4, 6, 3}, {3, 2, 2, 33}, {1, 2, 2, 1}}; }

TEST(Bf16Ops, UnaryAndBinaryOpsRoundTheFp32ResultOnce) {
  REQUIRE_GPU();
  Stream st;
  for (const Nhwc& z : sizes()) {
    const size_t n = size_t(z.count());
    Halves a = random_bf16(n), b = random_bf16(n, 3.f);
    a[0] = to_bf16_bits(std::numeric_limits<float>::quiet_NaN());  // NaN propagates through ReLU
    const Floats af = widen(a), bf = widen(b);
    DevHalves da(a), db(b), dy(n);
    Floats want(n);
    const std::string at = " at " + std::to_string(z.n) + "x" + std::to_string(z.h) + "x" + std::to_string(z.w) +
                           "x" + std::to_string(z.c);

    cpu::relu_forward(int64_t(n), af.data(), want.data());
    expect_same_halves(to_bf16(want), run_twice_bf16(st, dy, [&] { cuda::relu_forward(int64_t(n), da.p(), dy.p(), st); }),
                       "relu" + at);
    cpu::add(int64_t(n), af.data(), bf.data(), want.data());
    expect_same_halves(to_bf16(want), run_twice_bf16(st, dy, [&] { cuda::add(int64_t(n), da.p(), db.p(), dy.p(), st); }),
                       "add" + at);
    cpu::mul(int64_t(n), af.data(), bf.data(), want.data());
    expect_same_halves(to_bf16(want), run_twice_bf16(st, dy, [&] { cuda::mul(int64_t(n), da.p(), db.p(), dy.p(), st); }),
                       "mul" + at);

    const Floats s = normal(size_t(z.n) * z.c);  // per-(image, channel) scales stay fp32
    DevFloats ds(s);
    const int64_t hw = int64_t(z.h) * z.w;
    cpu::scale_channels(z.n, hw, z.c, af.data(), s.data(), want.data());
    expect_same_halves(
        to_bf16(want),
        run_twice_bf16(st, dy, [&] { cuda::scale_channels(z.n, hw, z.c, da.p(), ds.p(), dy.p(), st); }),
        "scale_channels" + at);
    expect_guards({&da, &db, &dy, &ds});
  }
}

// The storage conversions of the cuDNN path in a bf16 graph: widening is exact, narrowing rounds
// to nearest even (ties, the largest finite floats overflow to infinity, NaN stays NaN).
TEST(Bf16Ops, ConvertWidensExactlyAndRoundsToNearestEven) {
  REQUIRE_GPU();
  Stream st;
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  Floats special = {0.f, -0.f, 1.f, -2.5f, inf, -inf, nan, std::numeric_limits<float>::max(),
                    -std::numeric_limits<float>::max(), std::numeric_limits<float>::denorm_min(), 1e-40f,
                    1.f + 0x1p-8f,          // a tie between 1 and 1 + 2^-7: to 1 (even)
                    1.f + 3 * 0x1p-8f,      // a tie between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6 (even)
                    1.f + 0x1p-8f + 0x1p-20f,  // just above the tie: up
                    -(1.f + 0x1p-8f)};
  for (const int64_t n : {int64_t(1), int64_t(15), int64_t(1000), int64_t(2 * 32 * 32 * 64 + 5)}) {
    SCOPED_TRACE("n " + std::to_string(n));
    Floats x = normal(size_t(n), 0.f, 3.f);
    for (size_t i = 0; i < special.size() && i < x.size(); ++i) x[i] = special[i];
    // Narrowing.
    DevFloats dx(x);
    DevHalves dh{size_t(n)};
    const Halves got = run_twice_bf16(st, dh, [&] { cuda::convert(n, dx.p(), dh.p(), st); });
    const Halves want = to_bf16(x);
    int bad = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      const bool same = std::isnan(x[i]) ? std::isnan(from_bf16_bits(got[i])) : got[i] == want[i];
      if (!same && ++bad <= 5)
        ADD_FAILURE() << "narrowing element " << i << " (" << x[i] << "): got 0x" << std::hex << got[i]
                      << ", expected 0x" << want[i] << std::dec;
    }
    EXPECT_EQ(bad, 0);
    if (n >= 14) {
      EXPECT_EQ(from_bf16_bits(got[7]), inf) << "FLT_MAX must overflow to infinity";
      EXPECT_EQ(from_bf16_bits(got[11]), 1.f);
      EXPECT_EQ(from_bf16_bits(got[12]), 1.f + 0x1p-6f);
      EXPECT_EQ(from_bf16_bits(got[13]), 1.f + 0x1p-7f);
    }
    // Widening the stored values gives them back exactly.
    DevFloats dw{size_t(n)};
    const Floats back = run_twice(st, {&dw}, nullptr, [&] { cuda::convert(n, dh.p(), dw.p(), st); })[0];
    const Floats exact = widen(got);
    EXPECT_TRUE(same_bits(exact, back)) << "widening is not exact";
    expect_guards({&dx, &dh, &dw});
  }
}

TEST(Bf16Ops, PoolUpsampleAndConcatMoveStoredValues) {
  REQUIRE_GPU();
  Stream st;
  for (const Nhwc& z : sizes()) {
    const std::string at = " at " + std::to_string(z.n) + "x" + std::to_string(z.h) + "x" + std::to_string(z.w) +
                           "x" + std::to_string(z.c);
    const Halves x = random_bf16(size_t(z.count()));
    const Floats xf = widen(x);
    DevHalves dx(x);
    // y = op(x) with m outputs, against the CPU's op on the widened input.
    auto check = [&](const char* name, size_t m, const std::function<void(float*)>& cpu_op,
                     const std::function<void(bf16*)>& gpu_op) {
      Floats want(m);
      DevHalves dy(m);
      cpu_op(want.data());
      expect_same_halves(to_bf16(want), run_twice_bf16(st, dy, [&] { gpu_op(dy.p()); }), name + at);
      expect_guards({&dy});
    };
    if (z.h % 2 == 0 && z.w % 2 == 0)
      check("maxpool2", size_t(z.count() / 4),
            [&](float* y) { cpu::maxpool2_forward(z.n, z.h, z.w, z.c, xf.data(), y); },
            [&](bf16* y) { cuda::maxpool2_forward(z.n, z.h, z.w, z.c, dx.p(), y, nullptr, st); });
    check("upsample2", size_t(z.count() * 4),
          [&](float* y) { cpu::upsample2_forward(z.n, z.h, z.w, z.c, xf.data(), y); },
          [&](bf16* y) { cuda::upsample2_forward(z.n, z.h, z.w, z.c, dx.p(), y, st); });
    {  // upsample and concat in one pass: b is x's upsample, so that no other buffer is needed
      const size_t nup = size_t(z.count() * 4);
      Floats up(nup);
      cpu::upsample2_forward(z.n, z.h, z.w, z.c, xf.data(), up.data());
      DevHalves dup(to_bf16(up));
      check("upsample_concat", 2 * nup,
            [&](float* y) { cpu::concat_forward(int64_t(nup / size_t(z.c)), z.c, z.c, up.data(), up.data(), y); },
            [&](bf16* y) { cuda::upsample_concat_forward(z.n, z.h, z.w, z.c, z.c, dx.p(), dup.p(), y, st); });
    }
    const int cb = z.c + 5;
    const int64_t rows = int64_t(z.n) * z.h * z.w;
    const Halves b = random_bf16(size_t(rows * cb));
    const Floats bfl = widen(b);
    DevHalves db(b);
    check("concat", size_t(rows * (z.c + cb)),
          [&](float* y) { cpu::concat_forward(rows, z.c, cb, xf.data(), bfl.data(), y); },
          [&](bf16* y) { cuda::concat_forward(rows, z.c, cb, dx.p(), db.p(), y, st); });
    expect_guards({&db});
    expect_guards({&dx});
  }
}

TEST(Bf16Ops, GlobalAvgPoolOfBf16InputIsFp32) {
  REQUIRE_GPU();
  Stream st;
  for (const Nhwc& z : sizes()) {
    const int64_t hw = int64_t(z.h) * z.w;
    const Halves x = random_bf16(size_t(z.count()));
    const Floats xf = widen(x);
    Floats want(size_t(z.n) * z.c);
    cpu::global_avg_pool_forward(z.n, hw, z.c, xf.data(), want.data());
    DevHalves dx(x);
    DevFloats dy(want.size());
    DevBuf ws(cuda::global_avg_pool_workspace_bytes(z.n, hw, z.c));
    const Floats got = run_twice(st, {&dy}, [&] { ws.poison(); }, [&] {
      cuda::global_avg_pool_forward(z.n, hw, z.c, dx.p(), dy.p(), ws.data(), st);
    })[0];
    for (size_t i = 0; i < want.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 1e-6 * (1.0 + std::fabs(want[i]))) << "channel " << i;
    expect_guards({&dx, &dy, &ws});
  }
}

TEST(Bf16Ops, EvalBatchNormRoundsTheFp32ResultOnce) {
  REQUIRE_GPU();
  Stream st;
  for (const Nhwc& z : sizes()) {
    const int64_t count = int64_t(z.n) * z.h * z.w;
    const Halves x = random_bf16(size_t(z.count()), 2.f);
    const Floats xf = widen(x);
    const Floats gamma = uniform(size_t(z.c), 0.5f, 1.5f), beta = normal(size_t(z.c));
    const Floats rmean = normal(size_t(z.c), 0.f, 0.5f), rvar = uniform(size_t(z.c), 0.2f, 3.f);
    Floats want(size_t(z.count()));
    cpu::batchnorm_forward_eval(count, z.c, xf.data(), gamma.data(), beta.data(), rmean.data(), rvar.data(), 1e-5,
                                want.data());
    DevHalves dx(x), dy(size_t(z.count()));
    DevFloats dg(gamma), db(beta), dm(rmean), dv(rvar);
    expect_same_halves(to_bf16(want), run_twice_bf16(st, dy, [&] {
                         cuda::batchnorm_forward_eval(count, z.c, dx.p(), dg.p(), db.p(), dm.p(), dv.p(), 1e-5, dy.p(),
                                                      st);
                       }),
                       "batchnorm_forward_eval");
    expect_guards({&dx, &dy, &dg, &db, &dm, &dv});
  }
}

// ---- the tensor-core convolution with bf16 storage ----

struct ConvCase {
  cpu::Conv2dShape s;
  bool bn;
};

std::vector<ConvCase> conv_cases() {
  std::vector<ConvCase> v;
  for (const cpu::Conv2dShape& s : thin_for_emulator(fused_chain_shapes(32, 2))) v.push_back({s, true});
  v.push_back({conv_shape(2, 32, 32, 3, 16, 3, 1, 1, 1), false});    // the stem: image in
  v.push_back({conv_shape(2, 32, 32, 16, 1, 1, 1, 0, 1), false});    // the output conv: logits out
  v.push_back({conv_shape(1, 9, 7, 20, 40, 3, 2, 1, 1), true});      // ragged tiles, stride 2
  v.push_back({conv_shape(1, 12, 12, 32, 16, 3, 1, 6, 6), false});   // a dilated ASPP branch
  return v;
}

// A case's host data: bf16 x (and its widened form), HWIO weights, bias, BN parameters.
struct ConvData {
  std::string what;
  size_t nx, ny;
  Halves xh;
  Floats xf, w, bias;
  BnParams bn;
  explicit ConvData(const ConvCase& c)
      : what(shape_str(c.s) + (c.bn ? " (bn-relu)" : " (plain)")),
        nx(size_t(c.s.n) * c.s.h * c.s.w * c.s.cin),
        ny(size_t(c.s.n) * c.s.ho() * c.s.wo() * c.s.cout),
        xh(random_bf16(nx)),
        xf(widen(xh)),
        w(normal(size_t(c.s.kh) * c.s.kw * c.s.cin * c.s.cout, 0.f, 0.2f)),
        bias(normal(size_t(c.s.cout))),
        bn(random_bn(c.s.cin)) {}
};

// A case's operands on the device (x in fp32 and bf16, OHWI weights, bias, BN parameters), the
// epilogue statistics' outputs (cout doubles each) and the tensor-core kernel's workspace.
struct DevConv {
  DevFloats xf, w, bias, gamma, beta, mean, invstd;
  DevHalves xh;
  DevFloats sum_buf, sumsq_buf;  // doubles as float pairs
  DevBuf ws;
  bool bn;
  DevConv(const ConvCase& c, const ConvData& d)
      : xf(d.xf), w(hwio_to_ohwi(c.s, d.w)), bias(d.bias), gamma(d.bn.gamma), beta(d.bn.beta), mean(d.bn.mean),
        invstd(d.bn.invstd), xh(d.xh), sum_buf(2 * size_t(c.s.cout)), sumsq_buf(2 * size_t(c.s.cout)),
        ws(cuda::bn_relu_conv_tc_workspace_bytes(c.s)), bn(c.bn) {}
  // The BN arguments: null for a plain convolution.
  const float* g() const { return bn ? gamma.p() : nullptr; }
  const float* be() const { return bn ? beta.p() : nullptr; }
  const float* me() const { return bn ? mean.p() : nullptr; }
  const float* iv() const { return bn ? invstd.p() : nullptr; }
  double* sum() const { return reinterpret_cast<double*>(sum_buf.p()); }
  double* sumsq() const { return reinterpret_cast<double*>(sumsq_buf.p()); }
  void expect_guards() const {
    gputest::expect_guards({&xf, &w, &bias, &gamma, &beta, &mean, &invstd, &xh, &sum_buf, &sumsq_buf, &ws});
  }
};

// The epilogue statistics (cout doubles each, on the device) against host double sums of the
// stored values y (n * ho * wo * cout).
void expect_stats_of(const DevBuf& dsum, const DevBuf& dsq, const Floats& y, int cout, const std::string& what) {
  const size_t nc = size_t(cout);
  std::vector<double> want_sum(nc, 0.0), want_sq(nc, 0.0), gs(nc, 0.0), gq(nc, 0.0);
  for (size_t i = 0; i < y.size(); ++i) {
    want_sum[i % size_t(cout)] += double(y[i]);
    want_sq[i % size_t(cout)] += double(y[i]) * double(y[i]);
  }
  CU(cudaMemcpy(gs.data(), dsum.data(), gs.size() * sizeof(double), cudaMemcpyDeviceToHost));
  CU(cudaMemcpy(gq.data(), dsq.data(), gq.size() * sizeof(double), cudaMemcpyDeviceToHost));
  for (int co = 0; co < cout; ++co) {
    const double tol = 1e-12 * double(y.size() / size_t(cout)) * (1.0 + want_sq[size_t(co)]);
    EXPECT_NEAR(gs[size_t(co)], want_sum[size_t(co)], tol) << what << ": sum, channel " << co;
    EXPECT_NEAR(gq[size_t(co)], want_sq[size_t(co)], tol) << what << ": sum of squares, channel " << co;
  }
}

TEST(Bf16Conv, Bf16StorageMatchesTheFp32StorageKernelBitForBit) {
  REQUIRE_GPU();
  Stream st;
  for (const ConvCase& c : conv_cases()) {
    const cpu::Conv2dShape& s = c.s;
    const ConvData data(c);
    const std::string& what = data.what;
    const size_t ny = data.ny;
    DevConv d(c, data);
    DevHalves dyh(ny);
    DevFloats dyf(ny);

    // The reference: fp32 in, fp32 out, bf16 math (the tested path).
    const std::vector<Floats> ref = run_twice(
        st, {&dyf, &d.sum_buf, &d.sumsq_buf}, [&] { d.ws.poison(); },
        [&] {
          cuda::bn_relu_conv_tc_forward(s, ConvMath::Bf16, d.xf.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(), d.bias.p(),
                                        dyf.p(), d.sum(), d.sumsq(), d.ws.data(), st);
        });
    ASSERT_TRUE(cuda::bn_relu_conv_tc_can_run(s, ConvMath::Bf16, Storage::Bf16, Storage::Bf16)) << what;

    // bf16 x, fp32 y: the same bits as the reference.
    const std::vector<Floats> yf = run_twice(
        st, {&dyf, &d.sum_buf, &d.sumsq_buf}, [&] { d.ws.poison(); },
        [&] {
          cuda::bn_relu_conv_tc_forward(s, ConvMath::Bf16, Storage::Bf16, d.xh.p(), d.g(), d.be(), d.me(), d.iv(),
                                        d.w.p(), d.bias.p(), Storage::F32, dyf.p(), d.sum(), d.sumsq(), d.ws.data(),
                                        st);
        });
    EXPECT_TRUE(same_bits(ref[0], yf[0])) << what << ": bf16 x, fp32 y";
    EXPECT_TRUE(same_bits(ref[1], yf[1]) && same_bits(ref[2], yf[2])) << what << ": statistics, bf16 x, fp32 y";

    // bf16 y (from a bf16 or an fp32 x): the reference rounded once; statistics of the stored values.
    const Halves want = to_bf16(ref[0]);
    for (const bool x_bf16 : {true, false}) {
      const std::string io = x_bf16 ? ": bf16 x, bf16 y" : ": fp32 x, bf16 y";
      Halves got;
      for (int run = 0; run < 2; ++run) {
        dyh.poison();
        d.sum_buf.poison();
        d.sumsq_buf.poison();
        d.ws.poison();
        cuda::bn_relu_conv_tc_forward(s, ConvMath::Bf16, x_bf16 ? Storage::Bf16 : Storage::F32,
                                      x_bf16 ? static_cast<const void*>(d.xh.p()) : d.xf.p(), d.g(), d.be(), d.me(),
                                      d.iv(), d.w.p(), d.bias.p(), Storage::Bf16, dyh.p(), d.sum(), d.sumsq(),
                                      d.ws.data(), st);
        st.sync();
        const Halves y = dyh.get();
        if (run == 1) {
          EXPECT_EQ(got, y) << what << io << ": two identical launches differ";
        }
        got = y;
      }
      expect_same_halves(want, got, what + io);
      expect_stats_of(d.sum_buf, d.sumsq_buf, widen(want), s.cout, what + io);
    }
    d.expect_guards();
    expect_guards({&dyh, &dyf});
  }
}

// A residual (fuse_conv_add): with fp32 storage y is the plain launch's y plus the residual in
// fp32, bit for bit (TF32 and BF16 math); with bf16 storage (x, y, residual) it is the fp32-storage
// launch on the widened values, rounded once. The statistics are those of the stored sum.
TEST(Bf16Conv, ResidualIsAddedBeforeTheOneRounding) {
  REQUIRE_GPU();
  Stream st;
  for (const ConvCase& c : thin_for_emulator(conv_cases())) {  // half of them under ASan
    const cpu::Conv2dShape& s = c.s;
    const ConvData data(c);
    const std::string& what = data.what;
    const size_t ny = data.ny;
    const Halves rh = random_bf16(ny, 2.f);
    const Floats rf = widen(rh);
    DevConv d(c, data);
    DevFloats drf(rf), dy0(ny), dy1(ny);
    DevHalves drh(rh), dyh(ny);
    for (const ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
      const std::string how = math == ConvMath::Tf32 ? ", TF32" : ", BF16";
      const Floats y0 = run_twice(st, {&dy0}, nullptr, [&] {
        cuda::bn_relu_conv_tc_forward(s, math, d.xf.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(), d.bias.p(), dy0.p(),
                                      nullptr, nullptr, nullptr, st);
      })[0];
      const std::vector<Floats> y1 = run_twice(
          st, {&dy1, &d.sum_buf, &d.sumsq_buf}, [&] { d.ws.poison(); },
          [&] {
            cuda::bn_relu_conv_tc_forward(s, math, Storage::F32, d.xf.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                          d.bias.p(), Storage::F32, dy1.p(), drf.p(), d.sum(), d.sumsq(), d.ws.data(),
                                          st);
          });
      Floats want(ny);
      for (size_t i = 0; i < ny; ++i) want[i] = y0[i] + rf[i];  // what add() after the conv gives
      EXPECT_TRUE(same_bits(want, y1[0])) << what << how << ": fp32 storage, y + residual";
      expect_stats_of(d.sum_buf, d.sumsq_buf, y1[0], s.cout, what + how + ", fp32 storage");
      if (math != ConvMath::Bf16) continue;
      const Halves yh = run_twice_bf16(st, dyh, [&] {
        cuda::bn_relu_conv_tc_forward(s, math, Storage::Bf16, d.xh.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                      d.bias.p(), Storage::Bf16, dyh.p(), drh.p(), d.sum(), d.sumsq(), d.ws.data(), st);
      });
      expect_same_halves(to_bf16(y1[0]), yh, what + how + ": bf16 storage");
      expect_stats_of(d.sum_buf, d.sumsq_buf, widen(yh), s.cout, what + how + ", bf16 storage");
    }
    d.expect_guards();
    expect_guards({&drf, &drh, &dyh, &dy0, &dy1});
  }
  // The residual may not be y itself.
  const cpu::Conv2dShape s = conv_shape(1, 4, 4, 8, 8, 3, 1, 1, 1);
  DevFloats x(size_t(4 * 4 * 8)), w(size_t(9 * 8 * 8)), y(size_t(4 * 4 * 8));
  EXPECT_THROW(cuda::bn_relu_conv_tc_forward(s, ConvMath::Tf32, Storage::F32, x.p(), nullptr, nullptr, nullptr, nullptr,
                                             w.p(), nullptr, Storage::F32, y.p(), y.p(), nullptr, nullptr, nullptr, st),
               Error);
}

// A multiplier (fuse_conv_mul): y is the plain launch's stored output times the multiplier, one
// rounding after the fp32 product, bit for bit (fp32 storage with TF32 and BF16 math, bf16
// storage with BF16 math), and conv_out holds that stored output. The statistics are of y.
TEST(Bf16Conv, MultiplierMultipliesTheStoredOutput) {
  REQUIRE_GPU();
  Stream st;
  for (const ConvCase& c : thin_for_emulator(conv_cases())) {  // half of them under ASan
    const cpu::Conv2dShape& s = c.s;
    const ConvData data(c);
    const std::string& what = data.what;
    const size_t ny = data.ny;
    const Halves mh = random_bf16(ny, 2.f);
    const Floats mf = widen(mh);
    DevConv d(c, data);
    DevFloats dmf(mf), dy0(ny), dy1(ny), dc(ny);
    DevHalves dmh(mh), dy0h(ny), dyh(ny), dch(ny);
    for (const ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
      const std::string how = what + (math == ConvMath::Tf32 ? ", TF32" : ", BF16");
      const Floats y0 = run_twice(st, {&dy0}, nullptr, [&] {
        cuda::bn_relu_conv_tc_forward(s, math, d.xf.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(), d.bias.p(), dy0.p(),
                                      nullptr, nullptr, nullptr, st);
      })[0];
      const std::vector<Floats> got = run_twice(st, {&dy1, &dc, &d.sum_buf, &d.sumsq_buf}, [&] { d.ws.poison(); }, [&] {
        cuda::bn_relu_conv_tc_forward_mul(s, math, Storage::F32, d.xf.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                          d.bias.p(), Storage::F32, dy1.p(), dmf.p(), dc.p(), d.sum(), d.sumsq(),
                                          d.ws.data(), st);
      });
      Floats want(ny);
      for (size_t i = 0; i < ny; ++i) want[i] = y0[i] * mf[i];  // what mul() after the conv gives
      EXPECT_TRUE(same_bits(want, got[0])) << how << ": fp32 storage, y * multiplier";
      EXPECT_TRUE(same_bits(y0, got[1])) << how << ": fp32 storage, the convolution's output";
      expect_stats_of(d.sum_buf, d.sumsq_buf, got[0], s.cout, how + ", fp32 storage");
      if (math != ConvMath::Bf16) continue;
      const Floats y0h = widen(run_twice_bf16(st, dy0h, [&] {
        cuda::bn_relu_conv_tc_forward(s, math, Storage::Bf16, d.xh.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                      d.bias.p(), Storage::Bf16, dy0h.p(), nullptr, nullptr, nullptr, st);
      }));
      Floats want_h(ny);
      for (size_t i = 0; i < ny; ++i) want_h[i] = y0h[i] * mf[i];
      dch.poison();
      const Halves yh = run_twice_bf16(st, dyh, [&] {
        cuda::bn_relu_conv_tc_forward_mul(s, math, Storage::Bf16, d.xh.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                          d.bias.p(), Storage::Bf16, dyh.p(), dmh.p(), dch.p(), d.sum(), d.sumsq(),
                                          d.ws.data(), st);
      });
      expect_same_halves(to_bf16(want_h), yh, how + ": bf16 storage, y * multiplier");
      expect_same_halves(to_bf16(y0h), dch.get(), how + ": bf16 storage, the convolution's output");
      expect_stats_of(d.sum_buf, d.sumsq_buf, widen(yh), s.cout, how + ", bf16 storage");
    }
    d.expect_guards();
    expect_guards({&dmf, &dy0, &dy1, &dc, &dmh, &dy0h, &dyh, &dch});
  }
  // A multiplier is required, and the convolution's output may not alias y.
  const cpu::Conv2dShape s = conv_shape(1, 4, 4, 8, 8, 3, 1, 1, 1);
  DevFloats x(size_t(4 * 4 * 8)), w(size_t(9 * 8 * 8)), y(size_t(4 * 4 * 8)), m(size_t(4 * 4 * 8));
  for (const auto& bad : {std::pair<const float*, float*>{nullptr, nullptr}, {m.p(), y.p()}})
    EXPECT_THROW(cuda::bn_relu_conv_tc_forward_mul(s, ConvMath::Tf32, Storage::F32, x.p(), nullptr, nullptr, nullptr,
                                                   nullptr, w.p(), nullptr, Storage::F32, y.p(), bad.first, bad.second,
                                                   nullptr, nullptr, nullptr, st),
                 Error);
}

// The 2x2 max pool in the epilogue (fuse_conv_pool): y and argmax are the CPU's pool (with its
// window indices) of the plain launch's stored output, bit for bit: fp32 storage with TF32 and
// BF16 math, bf16 storage (x and y) with BF16 math. The statistics are those of the pooled y.
// Besides the network's shapes: windows of one tile in three images, and 2x2 outputs.
TEST(Bf16Conv, MaxPoolInTheEpilogueIsThePoolOfTheStoredOutput) {
  REQUIRE_GPU();
  Stream st;
  std::vector<ConvCase> cases = conv_cases();
  cases.push_back({conv_shape(3, 6, 10, 8, 20, 3, 1, 1, 1), true});
  cases.push_back({conv_shape(2, 4, 4, 5, 70, 3, 2, 1, 1), false});
  int checked = 0;
  for (const ConvCase& c : thin_for_emulator(cases)) {  // half of them under ASan
    const cpu::Conv2dShape& s = c.s;
    if (s.ho() % 2 || s.wo() % 2) continue;
    ++checked;
    const ConvData data(c);
    const std::string& what = data.what;
    const size_t ny = data.ny, np = ny / 4;
    DevConv d(c, data);
    DevHalves dyh(ny), dph(np);
    DevFloats dy(ny), dp(np);
    DevBytes darg(np);
    // The CPU's pool of a stored output: values and window indices.
    auto cpu_pool = [&](const Floats& y, std::vector<uint8_t>& arg) {
      Floats p(np);
      arg.assign(np, 0xFF);
      cpu::maxpool2_forward(s.n, s.ho(), s.wo(), s.cout, y.data(), p.data(), arg.data());
      return p;
    };
    for (const ConvMath math : {ConvMath::Tf32, ConvMath::Bf16}) {
      const std::string how = what + (math == ConvMath::Tf32 ? ", TF32" : ", BF16");
      const Floats y = run_twice(st, {&dy}, nullptr, [&] {
        cuda::bn_relu_conv_tc_forward(s, math, d.xf.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(), d.bias.p(), dy.p(),
                                      nullptr, nullptr, nullptr, st);
      })[0];
      std::vector<uint8_t> want_arg;
      const Floats want = cpu_pool(y, want_arg);
      const std::vector<Floats> got = run_twice(
          st, {&dp, &d.sum_buf, &d.sumsq_buf}, [&] { d.ws.poison(), darg.poison(); },
          [&] {
            cuda::bn_relu_conv_tc_forward_maxpool(s, math, Storage::F32, d.xf.p(), d.g(), d.be(), d.me(), d.iv(),
                                                  d.w.p(), d.bias.p(), Storage::F32, dp.p(), darg.p(), d.sum(),
                                                  d.sumsq(), d.ws.data(), st);
          });
      EXPECT_TRUE(same_bits(want, got[0])) << how << ": fp32 storage, pooled y";
      EXPECT_TRUE(darg.get() == want_arg) << how << ": fp32 storage, argmax";
      expect_stats_of(d.sum_buf, d.sumsq_buf, got[0], s.cout, how + ", fp32 storage");
      if (math != ConvMath::Bf16) continue;
      const Floats yh = widen(run_twice_bf16(st, dyh, [&] {
        cuda::bn_relu_conv_tc_forward(s, math, Storage::Bf16, d.xh.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                      d.bias.p(), Storage::Bf16, dyh.p(), nullptr, nullptr, nullptr, st);
      }));
      const Floats want_h = cpu_pool(yh, want_arg);
      darg.poison();
      const Halves ph = run_twice_bf16(st, dph, [&] {
        cuda::bn_relu_conv_tc_forward_maxpool(s, math, Storage::Bf16, d.xh.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                              d.bias.p(), Storage::Bf16, dph.p(), darg.p(), d.sum(), d.sumsq(),
                                              d.ws.data(), st);
      });
      expect_same_halves(to_bf16(want_h), ph, how + ": bf16 storage, pooled y");
      EXPECT_TRUE(darg.get() == want_arg) << how << ": bf16 storage, argmax";
      expect_stats_of(d.sum_buf, d.sumsq_buf, widen(ph), s.cout, how + ", bf16 storage");
    }
    d.expect_guards();
    expect_guards({&dyh, &dph, &dy, &dp, &darg});
  }
  EXPECT_GE(checked, emulator_thins_shapes() ? 2 : 4);
  // An odd output size is refused before anything is launched.
  const cpu::Conv2dShape odd = conv_shape(1, 5, 6, 8, 8, 3, 1, 1, 1);
  DevFloats x(size_t(5 * 6 * 8)), w(size_t(9 * 8 * 8)), y(size_t(2 * 3 * 8));
  EXPECT_THROW(cuda::bn_relu_conv_tc_forward_maxpool(odd, ConvMath::Tf32, Storage::F32, x.p(), nullptr, nullptr,
                                                     nullptr, nullptr, w.p(), nullptr, Storage::F32, y.p(), nullptr,
                                                     nullptr, nullptr, nullptr, st),
               Error);
}

// ---- concat(upsample2(a), b) read in place (view_upsample_concats) ----

// An upsample-concat view: a (n, h/2, w/2, ca) and b (n, h, w, cb), bf16-representable values.
struct UpcatData {
  int n, h, w, ca, cb;
  Halves ah, bh;
  UpcatData(int n_, int h_, int w_, int ca_, int cb_)
      : n(n_),
        h(h_),
        w(w_),
        ca(ca_),
        cb(cb_),
        ah(random_bf16(size_t(n_) * (h_ / 2) * (w_ / 2) * ca_)),
        bh(random_bf16(size_t(n_) * h_ * w_ * cb_)) {}
  // The stored concatenation, written here from its definition: channel c < ca of a at (y/2, x/2),
  // else channel c - ca of b.
  Halves stored() const {
    const int c = ca + cb;
    Halves x(size_t(n) * h * w * c);
    for (int i = 0; i < n; ++i)
      for (int y = 0; y < h; ++y)
        for (int xx = 0; xx < w; ++xx)
          for (int ch = 0; ch < c; ++ch) {
            const size_t at = ((size_t(i) * h + y) * w + xx) * c + ch;
            x[at] = ch < ca ? ah[((size_t(i) * (h / 2) + y / 2) * (w / 2) + xx / 2) * ca + ch]
                            : bh[((size_t(i) * h + y) * w + xx) * cb + (ch - ca)];
          }
    return x;
  }
};

// The tensor-core forward reading concat(upsample2(a), b) in place gives the bits of the same
// launch on the stored concatenation, y and epilogue statistics: fp32 storage with TF32 math,
// bf16 storage with BF16 math, BN-ReLU and plain. Shapes: the decoders' first convolutions (3x3
// and the 1x1 shortcut) at a 32x32 input, a 64-channel tile (cout > 32), tiles spanning images,
// ca and cb of 1 and odd, stride 2.
TEST(Bf16Conv, UpsampleConcatInputIsReadInPlace) {
  REQUIRE_GPU();
  Stream st;
  struct Case {
    cpu::Conv2dShape s;
    int ca;
    bool bn;
  };
  std::vector<Case> cases = {
      {conv_shape(2, 32, 32, 48, 32, 3, 1, 1, 1), 32, true},   // d3.r1.c1.2 at 32x32 (filters / 2)
      {conv_shape(2, 32, 32, 48, 32, 1, 1, 0, 1), 32, false},  // d3.r1.c2.0
      {conv_shape(2, 16, 16, 80, 64, 3, 1, 1, 1), 64, true},   // d2-like, a 64-channel tile
      {conv_shape(3, 6, 10, 7, 5, 3, 1, 1, 1), 3, true},       // 180 pixels: tiles span images
      {conv_shape(2, 4, 6, 2, 9, 3, 1, 1, 1), 1, false},       // ca = cb = 1
      {conv_shape(1, 8, 12, 6, 9, 3, 2, 1, 1), 4, true},       // stride 2
  };
  cases = thin_for_emulator(cases);
  for (const Case& c : cases) {
    const cpu::Conv2dShape& s = c.s;
    const UpcatData u(s.n, s.h, s.w, c.ca, s.cin - c.ca);
    const ConvData data(ConvCase{s, c.bn});  // its x is replaced by the stored concatenation
    const std::string what = shape_str(s) + " ca " + std::to_string(c.ca) + (c.bn ? " (bn-relu)" : " (plain)");
    const Halves xh = u.stored();
    const Floats xf = widen(xh), af = widen(u.ah), bf = widen(u.bh);
    DevConv d(ConvCase{s, c.bn}, data);
    DevFloats dxf(xf), daf(af), dbf(bf), dy0(data.ny), dy1(data.ny), s0(2 * size_t(s.cout)), q0(2 * size_t(s.cout));
    DevHalves dxh(xh), dah(u.ah), dbh(u.bh), dyh0(data.ny), dyh1(data.ny);
    auto sums = [](const DevFloats& b) { return reinterpret_cast<double*>(b.p()); };
    // fp32 storage, TF32 math: the stored tensor, then in place.
    const std::vector<Floats> want = run_twice(
        st, {&dy0, &s0, &q0}, [&] { d.ws.poison(); },
        [&] {
          cuda::bn_relu_conv_tc_forward(s, ConvMath::Tf32, Storage::F32, dxf.p(), d.g(), d.be(), d.me(), d.iv(),
                                        d.w.p(), d.bias.p(), Storage::F32, dy0.p(), nullptr, sums(s0), sums(q0),
                                        d.ws.data(), st);
        });
    const std::vector<Floats> got = run_twice(
        st, {&dy1, &d.sum_buf, &d.sumsq_buf}, [&] { d.ws.poison(); },
        [&] {
          cuda::bn_relu_conv_tc_forward_upsample_concat(s, ConvMath::Tf32, Storage::F32, daf.p(), dbf.p(), c.ca, d.g(),
                                                        d.be(), d.me(), d.iv(), d.w.p(), d.bias.p(), Storage::F32,
                                                        dy1.p(), d.sum(), d.sumsq(), d.ws.data(), st);
        });
    EXPECT_TRUE(same_bits(want[0], got[0])) << what << ", TF32: y";
    EXPECT_TRUE(same_bits(want[1], got[1]) && same_bits(want[2], got[2])) << what << ", TF32: statistics";
    // bf16 storage, BF16 math.
    const Halves yh = run_twice_bf16(st, dyh0, [&] {
      cuda::bn_relu_conv_tc_forward(s, ConvMath::Bf16, Storage::Bf16, dxh.p(), d.g(), d.be(), d.me(), d.iv(), d.w.p(),
                                    d.bias.p(), Storage::Bf16, dyh0.p(), nullptr, sums(s0), sums(q0), d.ws.data(), st);
    });
    const Floats s_want = s0.get(), q_want = q0.get();
    const Halves yh_in_place = run_twice_bf16(st, dyh1, [&] {
      cuda::bn_relu_conv_tc_forward_upsample_concat(s, ConvMath::Bf16, Storage::Bf16, dah.p(), dbh.p(), c.ca, d.g(),
                                                    d.be(), d.me(), d.iv(), d.w.p(), d.bias.p(), Storage::Bf16,
                                                    dyh1.p(), d.sum(), d.sumsq(), d.ws.data(), st);
    });
    expect_same_halves(yh, yh_in_place, what + ", BF16: y");
    EXPECT_TRUE(same_bits(s_want, d.sum_buf.get()) && same_bits(q_want, d.sumsq_buf.get()))
        << what << ", BF16: statistics";
    d.expect_guards();
    expect_guards({&dxf, &daf, &dbf, &dy0, &dy1, &s0, &q0, &dxh, &dah, &dbh, &dyh0, &dyh1});
  }
  // Refused: ca out of range, an odd size, bf16 math on fp32 storage, mixed storage, no b.
  const cpu::Conv2dShape s = conv_shape(1, 4, 4, 8, 8, 3, 1, 1, 1), odd = conv_shape(1, 5, 4, 8, 8, 3, 1, 1, 1);
  DevFloats a(size_t(2 * 2 * 4)), b(size_t(4 * 4 * 4)), w(size_t(9 * 8 * 8)), y(size_t(4 * 4 * 8));
  struct Bad {
    const cpu::Conv2dShape& s;
    ConvMath math;
    Storage out;
    const float* b;
    int ca;
  };
  for (const Bad& bad :
       {Bad{s, ConvMath::Tf32, Storage::F32, b.p(), 8}, Bad{s, ConvMath::Tf32, Storage::F32, b.p(), 0},
        Bad{odd, ConvMath::Tf32, Storage::F32, b.p(), 4}, Bad{s, ConvMath::Bf16, Storage::F32, b.p(), 4},
        Bad{s, ConvMath::Bf16, Storage::Bf16, b.p(), 4}, Bad{s, ConvMath::Tf32, Storage::F32, nullptr, 4}})
    EXPECT_THROW(cuda::bn_relu_conv_tc_forward_upsample_concat(bad.s, bad.math, Storage::F32, a.p(), bad.b, bad.ca,
                                                               nullptr, nullptr, nullptr, nullptr, w.p(), nullptr,
                                                               bad.out, y.p(), nullptr, nullptr, nullptr, st),
                 Error);
}

// The BN batch statistics of concat(upsample2(a), b) read in place, and the BN(-ReLU) applied from
// them: the bits of batchnorm_stats_train (mean, invstd and the running update) and
// batchnorm_apply on the stored concatenation, fp32 and bf16 storage.
TEST(Bf16Ops, BatchNormOfAnUpsampleConcatIsThatOfTheStoredTensor) {
  REQUIRE_GPU();
  Stream st;
  struct Case {
    int n, h, w, ca, cb;
  };
  for (const Case& c : {Case{2, 32, 32, 32, 16}, Case{2, 16, 16, 64, 32}, Case{3, 6, 10, 3, 4}, Case{1, 2, 2, 1, 1},
                        Case{2, 4, 8, 40, 1}}) {
    const UpcatData u(c.n, c.h, c.w, c.ca, c.cb);
    const int ch = c.ca + c.cb;
    const int64_t count = int64_t(c.n) * c.h * c.w;
    const std::string what = "n " + std::to_string(c.n) + " " + std::to_string(c.h) + "x" + std::to_string(c.w) +
                             " ca " + std::to_string(c.ca) + " cb " + std::to_string(c.cb);
    const Halves xh = u.stored();
    DevFloats dxf(widen(xh)), daf(widen(u.ah)), dbf(widen(u.bh));
    DevHalves dxh(xh), dah(u.ah), dbh(u.bh);
    const Floats rm0 = normal(size_t(ch)), rv0 = uniform(size_t(ch), 0.5f, 2.f);
    DevFloats mean(static_cast<size_t>(ch)), invstd(static_cast<size_t>(ch)), rm(rm0), rv(rv0);
    DevBuf ws(cuda::batchnorm_workspace_bytes(count, ch));
    DevFloats gamma(normal(static_cast<size_t>(ch), 1.f, 0.5f)), beta(normal(static_cast<size_t>(ch))),
        y(size_t(count) * static_cast<size_t>(ch));
    auto reset = [&] {
      rm.set(rm0);
      rv.set(rv0);
      ws.poison();
    };
    for (const bool half : {false, true}) {
      const std::string how = what + (half ? ", bf16" : ", fp32");
      const std::vector<Floats> want = run_twice(st, {&mean, &invstd}, reset, [&] {
        if (half)
          cuda::batchnorm_stats_train(count, ch, dxh.p(), mean.p(), invstd.p(), rm.p(), rv.p(), 0.1, 1e-5, ws.data(),
                                      st);
        else
          cuda::batchnorm_stats_train(count, ch, dxf.p(), mean.p(), invstd.p(), rm.p(), rv.p(), 0.1, 1e-5, ws.data(),
                                      st);
      });
      const Floats rm_want = rm.get(), rv_want = rv.get();
      const std::vector<Floats> got = run_twice(st, {&mean, &invstd}, reset, [&] {
        if (half)
          cuda::batchnorm_stats_train_upsample_concat(c.n, c.h, c.w, c.ca, ch, dah.p(), dbh.p(), mean.p(), invstd.p(),
                                                      rm.p(), rv.p(), 0.1, 1e-5, ws.data(), st);
        else
          cuda::batchnorm_stats_train_upsample_concat(c.n, c.h, c.w, c.ca, ch, daf.p(), dbf.p(), mean.p(), invstd.p(),
                                                      rm.p(), rv.p(), 0.1, 1e-5, ws.data(), st);
      });
      EXPECT_TRUE(same_bits(want[0], got[0]) && same_bits(want[1], got[1])) << how << ": mean and invstd";
      EXPECT_TRUE(same_bits(rm_want, rm.get()) && same_bits(rv_want, rv.get())) << how << ": running statistics";
      // BN(-ReLU) applied from these statistics (the cuDNN path's staging): the same bits too.
      for (const bool relu : {false, true}) {
        const Floats y_want = run_twice(st, {&y}, nullptr, [&] {
          if (half)
            cuda::batchnorm_apply(count, ch, dxh.p(), gamma.p(), beta.p(), mean.p(), invstd.p(), relu, y.p(), st);
          else
            cuda::batchnorm_apply(count, ch, dxf.p(), gamma.p(), beta.p(), mean.p(), invstd.p(), relu, y.p(), st);
        })[0];
        const Floats y_got = run_twice(st, {&y}, nullptr, [&] {
          if (half)
            cuda::batchnorm_apply_upsample_concat(c.n, c.h, c.w, c.ca, ch, dah.p(), dbh.p(), gamma.p(), beta.p(),
                                                  mean.p(), invstd.p(), relu, y.p(), st);
          else
            cuda::batchnorm_apply_upsample_concat(c.n, c.h, c.w, c.ca, ch, daf.p(), dbf.p(), gamma.p(), beta.p(),
                                                  mean.p(), invstd.p(), relu, y.p(), st);
        })[0];
        EXPECT_TRUE(same_bits(y_want, y_got)) << how << (relu ? ": BN-ReLU applied" : ": BN applied");
      }
    }
    expect_guards({&dxf, &daf, &dbf, &dxh, &dah, &dbh, &mean, &invstd, &rm, &rv, &ws, &gamma, &beta, &y});
  }
  // Refused: an odd size, ca out of range.
  DevFloats a(16), b(64), m(8), v(8), y(128);
  DevBuf ws(cuda::batchnorm_workspace_bytes(64, 8));
  for (const auto& bad :
       {std::array<int, 4>{5, 4, 4, 4}, std::array<int, 4>{4, 4, 0, 8}, std::array<int, 4>{4, 4, 8, 8}}) {
    EXPECT_THROW(cuda::batchnorm_stats_train_upsample_concat(1, bad[0], bad[1], bad[2], bad[3], a.p(), b.p(), m.p(),
                                                             v.p(), nullptr, nullptr, 0.1, 1e-5, ws.data(), st),
                 Error);
    EXPECT_THROW(cuda::batchnorm_apply_upsample_concat(1, bad[0], bad[1], bad[2], bad[3], a.p(), b.p(), m.p(), v.p(),
                                                       m.p(), v.p(), true, y.p(), st),
                 Error);
  }
}

TEST(Bf16Host, TensorCoreKernelRefusesBf16StorageWithTf32Math) {
  // Host-side checks: they fail before anything reaches a device.
  const cpu::Conv2dShape s = conv_shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  EXPECT_TRUE(cuda::bn_relu_conv_tc_can_run(s, ConvMath::Bf16, Storage::Bf16, Storage::F32));
  EXPECT_TRUE(cuda::bn_relu_conv_tc_can_run(s, ConvMath::Tf32, Storage::F32, Storage::F32));
  EXPECT_FALSE(cuda::bn_relu_conv_tc_can_run(s, ConvMath::Tf32, Storage::Bf16, Storage::F32));
  EXPECT_FALSE(cuda::bn_relu_conv_tc_can_run(s, ConvMath::Tf32, Storage::F32, Storage::Bf16));
  float f = 0.f;
  try {
    cuda::bn_relu_conv_tc_forward(s, ConvMath::Tf32, Storage::Bf16, &f, nullptr, nullptr, nullptr, nullptr, &f,
                                  nullptr, Storage::F32, &f, nullptr, nullptr, nullptr, nullptr);
    FAIL() << "TF32 math with bf16 storage was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16 storage needs bf16 math"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace rpp
