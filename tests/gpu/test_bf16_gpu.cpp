// tests/gpu/test_bf16_gpu.cpp — the bf16-storage versions of the inference kernels (bf16
// activations, fp32 arithmetic; kernels/cuda/storage.cuh) against their specification:
//  * elementwise, pooling, upsampling, concat, per-channel scale and eval BatchNorm: the CPU
//    reference (kernels/cpu/ops.h) run in fp32 on the widened bf16 inputs, its result rounded to
//    bf16 (nearest even) — bit for bit, because each GPU thread does the same fp32 operations and
//    rounds once; the global average pool (fp32 output) within 1e-6 relative;
//  * the tensor-core convolution with bf16 input and/or output: bit for bit against the same
//    kernel with fp32 storage on the same (bf16-representable) input, itself tested against the
//    CPU by test_bn_relu_conv_tc_gpu — a bf16 x must change nothing, a bf16 y must be the fp32 y
//    rounded to nearest even, and the epilogue statistics must be those of the stored values.
// Every output is poisoned first and guarded; every launch runs twice and must repeat its bits.
// The bf16 reference conversions here are written from the format's definition (the upper 16
// bits of a float, round to nearest even), independently of CUDA's.
//   ./build/gpu_test_bf16_gpu
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

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
