// tests/gpu/test_bf16_train_ops_gpu.cpp — the kernels of bf16 mixed-precision training that read
// bf16 activations (kernels/cuda/batchnorm.cuh, elementwise.cuh; storage.cuh): training BatchNorm
// (forward, statistics only, backward, backward from sums), the ASPP's normalise-and-add, the mixed
// fp32 x bf16 product, the per-channel scale's backward and the max pool's backward.
//
// The specification of each bf16 overload is its fp32 overload run on the widened input (itself
// tested against the CPU reference by test_ops_gpu and test_conv_bn_sum_gpu):
//  * every fp32 output (statistics, running statistics, gradients) has exactly its bits;
//  * every bf16 output is its fp32 output rounded to bf16, nearest even (batchnorm.cuh: the
//    per-element double is rounded to fp32 first, then to bf16).
// The bf16 data are random normal values rounded to bf16 (NaN-free), on ragged channel counts, row
// counts that are no multiple of the kernels' block sizes and ResUNet++-like shapes. Every output
// is poisoned first and guarded; every launch runs twice and must repeat its bits.
//   ./build/gpu_test_bf16_train_ops_gpu (the CPU emulator: ./build/emu_test_bf16_train_ops_gpu)
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "bf16_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/elementwise.cuh"
#include "runtime/error.h"

namespace rpp {
namespace {

using cuda::bf16;
using cuda::Storage;
using namespace gputest;

void expect_same_floats(const Floats& want, const Floats& got, const std::string& what) {
  ASSERT_EQ(want.size(), got.size()) << what;
  int bad = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    uint32_t a, b;
    std::memcpy(&a, &want[i], 4);
    std::memcpy(&b, &got[i], 4);
    if (a == b) continue;
    if (++bad <= 5)
      ADD_FAILURE() << what << ": element " << i << " is " << got[i] << " (0x" << std::hex << b << "), expected "
                    << want[i] << " (0x" << a << ")" << std::dec;
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " of " << want.size() << " elements differ";
}

// Runs `launch` twice: before each run the bf16 output (if any) and the fp32 outputs are poisoned
// and `reset` (if any) runs; the second run must repeat the first's bits. Returns the first run's.
struct MixedOut {
  Halves h;
  std::vector<Floats> f;
};
MixedOut run_twice_mixed(const Stream& st, DevHalves* yh, std::initializer_list<DevFloats*> outs,
                         const std::function<void()>& reset, const std::function<void()>& launch) {
  MixedOut first;
  for (int run = 0; run < 2; ++run) {
    if (yh) yh->poison();
    for (DevFloats* o : outs) o->poison();
    if (reset) reset();
    launch();
    st.sync();
    MixedOut got;
    if (yh) got.h = yh->get();
    for (DevFloats* o : outs) got.f.push_back(o->get());
    if (run == 0) {
      first = std::move(got);
    } else {
      EXPECT_EQ(first.h, got.h) << "the bf16 output differs between two identical runs";
      for (size_t k = 0; k < got.f.size(); ++k)
        EXPECT_TRUE(same_bits(first.f[k], got.f[k])) << "fp32 output #" << k << " differs between two identical runs";
    }
  }
  return first;
}

struct BnCase {
  int64_t count;
  int c;
};

// ResUNet++-like layers (2 images of 32x32 with 256 channels, 64x64 with 32), ragged channel counts
// (3, 257, 33: partial channel tiles; 1) and row counts that are no multiple of a group's rows.
std::vector<BnCase> bn_cases() {
  return {{2 * 32 * 32, 256}, {2 * 64 * 64, 32}, {1000, 3}, {777, 64}, {301, 257}, {4099, 33}, {2, 1}, {5, 2048}};
}

std::string bn_str(const BnCase& k) { return "count " + std::to_string(k.count) + " c " + std::to_string(k.c); }

// The per-channel inputs of a training BatchNorm.
struct BnParams {
  Floats gamma, beta, rmean, rvar;
  explicit BnParams(int c)
      : gamma(uniform(size_t(c), 0.5f, 1.5f)),
        beta(normal(size_t(c), 0.f, 0.5f)),
        rmean(normal(size_t(c), 0.f, 0.3f)),
        rvar(uniform(size_t(c), 0.5f, 2.f)) {}
};

TEST(Bf16TrainBatchNorm, ForwardTrainIsTheFp32KernelOnTheWidenedX) {
  REQUIRE_GPU();
  Stream st;
  for (const BnCase& k : bn_cases()) {
    SCOPED_TRACE(bn_str(k));
    const size_t n = size_t(k.count) * size_t(k.c);
    const Halves xh = to_bf16(normal(n, 0.7f, 2.f));  // off-centre: the mean matters
    const BnParams p(k.c);
    DevHalves dxh(xh), dyh(n);
    DevFloats dxf(widen(xh)), dyf(n), dg(p.gamma), db(p.beta), rm(size_t(k.c)), rv(size_t(k.c));
    DevFloats sm(size_t(k.c)), si(size_t(k.c));
    DevBuf ws(cuda::batchnorm_workspace_bytes(k.count, k.c));
    auto reset = [&] {
      rm.set(p.rmean);
      rv.set(p.rvar);
      ws.poison();
    };
    const double momentum = 0.1, eps = 1e-5;
    const MixedOut ref = run_twice_mixed(st, nullptr, {&dyf, &sm, &si, &rm, &rv}, reset, [&] {
      cuda::batchnorm_forward_train(k.count, k.c, dxf.p(), dg.p(), db.p(), dyf.p(), sm.p(), si.p(), rm.p(), rv.p(),
                                    momentum, eps, ws.data(), st);
    });
    const MixedOut got = run_twice_mixed(st, &dyh, {&sm, &si, &rm, &rv}, reset, [&] {
      cuda::batchnorm_forward_train(k.count, k.c, dxh.p(), dg.p(), db.p(), dyh.p(), sm.p(), si.p(), rm.p(), rv.p(),
                                    momentum, eps, ws.data(), st);
    });
    expect_same_halves(to_bf16(ref.f[0]), got.h, "y");
    expect_same_floats(ref.f[1], got.f[0], "save_mean");
    expect_same_floats(ref.f[2], got.f[1], "save_invstd");
    expect_same_floats(ref.f[3], got.f[2], "running_mean");
    expect_same_floats(ref.f[4], got.f[3], "running_var");
    EXPECT_FALSE(same_bits(ref.f[3], p.rmean)) << "the running mean was not updated";

    // Without running statistics: the same y and saved statistics.
    const MixedOut bare = run_twice_mixed(st, &dyh, {&sm, &si}, [&] { ws.poison(); }, [&] {
      cuda::batchnorm_forward_train(k.count, k.c, dxh.p(), dg.p(), db.p(), dyh.p(), sm.p(), si.p(), nullptr, nullptr,
                                    momentum, eps, ws.data(), st);
    });
    expect_same_halves(got.h, bare.h, "y without running statistics");
    expect_same_floats(got.f[0], bare.f[0], "save_mean without running statistics");
    expect_same_floats(got.f[1], bare.f[1], "save_invstd without running statistics");
    expect_guards({&dxh, &dyh, &dxf, &dyf, &dg, &db, &rm, &rv, &sm, &si, &ws});
  }
}

TEST(Bf16TrainBatchNorm, StatsTrainIsTheFp32KernelOnTheWidenedX) {
  REQUIRE_GPU();
  Stream st;
  for (const BnCase& k : bn_cases()) {
    SCOPED_TRACE(bn_str(k));
    const size_t n = size_t(k.count) * size_t(k.c);
    const Halves xh = to_bf16(normal(n, -0.4f, 1.5f));
    const BnParams p(k.c);
    DevHalves dxh(xh);
    DevFloats dxf(widen(xh)), rm(size_t(k.c)), rv(size_t(k.c)), sm(size_t(k.c)), si(size_t(k.c));
    DevBuf ws(cuda::batchnorm_workspace_bytes(k.count, k.c));
    auto reset = [&] {
      rm.set(p.rmean);
      rv.set(p.rvar);
      ws.poison();
    };
    const double momentum = 0.25, eps = 1e-3;
    const MixedOut ref = run_twice_mixed(st, nullptr, {&sm, &si, &rm, &rv}, reset, [&] {
      cuda::batchnorm_stats_train(k.count, k.c, dxf.p(), sm.p(), si.p(), rm.p(), rv.p(), momentum, eps, ws.data(), st);
    });
    const MixedOut got = run_twice_mixed(st, nullptr, {&sm, &si, &rm, &rv}, reset, [&] {
      cuda::batchnorm_stats_train(k.count, k.c, dxh.p(), sm.p(), si.p(), rm.p(), rv.p(), momentum, eps, ws.data(), st);
    });
    const char* names[] = {"save_mean", "save_invstd", "running_mean", "running_var"};
    for (size_t j = 0; j < 4; ++j) expect_same_floats(ref.f[j], got.f[j], names[j]);
    expect_guards({&dxh, &dxf, &rm, &rv, &sm, &si, &ws});
  }
}

// Saved statistics near those of x (as the forward leaves them), so that x - mean is small and the
// three terms of dx nearly cancel, where a wrong x shows most.
struct BwdInputs {
  Halves xh;
  Floats dy, gamma, mean, invstd;
  explicit BwdInputs(const BnCase& k)
      : xh(to_bf16(normal(size_t(k.count) * size_t(k.c), 0.5f, 1.f))),
        dy(normal(size_t(k.count) * size_t(k.c), 0.f, 0.1f)),
        gamma(uniform(size_t(k.c), 0.5f, 1.5f)),
        mean(uniform(size_t(k.c), 0.4f, 0.6f)),
        invstd(uniform(size_t(k.c), 0.8f, 1.25f)) {}
};

TEST(Bf16TrainBatchNorm, BackwardIsTheFp32KernelOnTheWidenedX) {
  REQUIRE_GPU();
  Stream st;
  for (const BnCase& k : bn_cases()) {
    SCOPED_TRACE(bn_str(k));
    const size_t n = size_t(k.count) * size_t(k.c);
    const BwdInputs in(k);
    DevHalves dxh(in.xh);
    DevFloats dxf(widen(in.xh)), ddy(in.dy), dg(in.gamma), dm(in.mean), di(in.invstd);
    DevFloats dx(n), dgamma(size_t(k.c)), dbeta(size_t(k.c));
    DevBuf ws(cuda::batchnorm_workspace_bytes(k.count, k.c));
    auto reset = [&] { ws.poison(); };
    const MixedOut ref = run_twice_mixed(st, nullptr, {&dx, &dgamma, &dbeta}, reset, [&] {
      cuda::batchnorm_backward(k.count, k.c, dxf.p(), ddy.p(), dg.p(), dm.p(), di.p(), dx.p(), dgamma.p(), dbeta.p(),
                               ws.data(), st);
    });
    const MixedOut got = run_twice_mixed(st, nullptr, {&dx, &dgamma, &dbeta}, reset, [&] {
      cuda::batchnorm_backward(k.count, k.c, dxh.p(), ddy.p(), dg.p(), dm.p(), di.p(), dx.p(), dgamma.p(), dbeta.p(),
                               ws.data(), st);
    });
    expect_same_floats(ref.f[0], got.f[0], "dx");
    expect_same_floats(ref.f[1], got.f[1], "dgamma");
    expect_same_floats(ref.f[2], got.f[2], "dbeta");
    expect_guards({&dxh, &dxf, &ddy, &dg, &dm, &di, &dx, &dgamma, &dbeta, &ws});
  }
}

// The cuDNN path of a bf16 graph stages BN-ReLU(x) of a bf16 x in fp32 (batchnorm_apply) and
// masks a fused backward-data's gradient with the ReLU decision on it (bn_relu_mask_inplace).
TEST(Bf16TrainBatchNorm, ApplyAndMaskOfABf16XAreTheFp32KernelsOnTheWidenedX) {
  REQUIRE_GPU();
  Stream st;
  size_t zeroed = 0, total = 0;  // over all cases: the mask must decide both ways
  for (const BnCase& k : bn_cases()) {
    SCOPED_TRACE(bn_str(k));
    const size_t n = size_t(k.count) * size_t(k.c);
    const BwdInputs in(k);
    DevHalves dxh(in.xh);
    DevFloats dxf(widen(in.xh)), dg(in.gamma), db(normal(size_t(k.c), 0.f, 0.5f)), dm(in.mean), di(in.invstd);
    DevFloats y(n), dy(n);
    for (const bool relu : {false, true}) {
      const Floats ref = run_twice(st, {&y}, nullptr, [&] {
        cuda::batchnorm_apply(k.count, k.c, dxf.p(), dg.p(), db.p(), dm.p(), di.p(), relu, y.p(), st);
      })[0];
      const Floats got = run_twice(st, {&y}, nullptr, [&] {
        cuda::batchnorm_apply(k.count, k.c, dxh.p(), dg.p(), db.p(), dm.p(), di.p(), relu, y.p(), st);
      })[0];
      expect_same_floats(ref, got, relu ? "BN-ReLU" : "BN");
    }
    const Floats ref = run_twice(st, {&dy}, [&] { dy.set(in.dy); }, [&] {
      cuda::bn_relu_mask_inplace(k.count, k.c, dxf.p(), dg.p(), db.p(), dm.p(), di.p(), dy.p(), st);
    })[0];
    const Floats got = run_twice(st, {&dy}, [&] { dy.set(in.dy); }, [&] {
      cuda::bn_relu_mask_inplace(k.count, k.c, dxh.p(), dg.p(), db.p(), dm.p(), di.p(), dy.p(), st);
    })[0];
    expect_same_floats(ref, got, "masked dy");
    for (size_t i = 0; i < n; ++i) zeroed += got[i] == 0.f && in.dy[i] != 0.f;
    total += n;
    expect_guards({&dxh, &dxf, &dg, &db, &dm, &di, &y, &dy});
  }
  EXPECT_GT(zeroed, total / 10) << "the mask zeroed almost nothing";
  EXPECT_LT(zeroed, total - total / 10) << "the mask zeroed almost everything";
}

TEST(Bf16TrainBatchNorm, BackwardFromSumsIsTheFp32KernelOnTheWidenedX) {
  REQUIRE_GPU();
  Stream st;
  for (const BnCase& k : bn_cases()) {
    SCOPED_TRACE(bn_str(k));
    const size_t n = size_t(k.count) * size_t(k.c);
    const BwdInputs in(k);
    // Sums of the size a producer would give (count values of dy ~ 0.1).
    std::vector<double> sums(2 * size_t(k.c));
    const Floats r = normal(sums.size(), 0.f, 1.f);
    for (size_t j = 0; j < sums.size(); ++j) sums[j] = double(r[j]) * 0.1 * double(k.count);
    DevBuf dsums(sums.size() * sizeof(double));
    dsums.upload(sums.data(), sums.size() * sizeof(double));
    const double* sdy = static_cast<const double*>(dsums.data());
    const double* sdyx = sdy + k.c;
    DevHalves dxh(in.xh);
    DevFloats dxf(widen(in.xh)), ddy(in.dy), dg(in.gamma), dm(in.mean), di(in.invstd);
    DevFloats dx(n), dgamma(size_t(k.c)), dbeta(size_t(k.c));
    const MixedOut ref = run_twice_mixed(st, nullptr, {&dx, &dgamma, &dbeta}, nullptr, [&] {
      cuda::batchnorm_backward_from_sums(k.count, k.c, dxf.p(), ddy.p(), dg.p(), dm.p(), di.p(), sdy, sdyx, dx.p(),
                                         dgamma.p(), dbeta.p(), st);
    });
    const MixedOut got = run_twice_mixed(st, nullptr, {&dx, &dgamma, &dbeta}, nullptr, [&] {
      cuda::batchnorm_backward_from_sums(k.count, k.c, dxh.p(), ddy.p(), dg.p(), dm.p(), di.p(), sdy, sdyx, dx.p(),
                                         dgamma.p(), dbeta.p(), st);
    });
    expect_same_floats(ref.f[0], got.f[0], "dx");
    expect_same_floats(ref.f[1], got.f[1], "dgamma");
    expect_same_floats(ref.f[2], got.f[2], "dbeta");
    // dx written over dy: the same bits.
    const MixedOut inplace = run_twice_mixed(st, nullptr, {&dgamma, &dbeta}, [&] { ddy.set(in.dy); }, [&] {
      cuda::batchnorm_backward_from_sums(k.count, k.c, dxh.p(), ddy.p(), dg.p(), dm.p(), di.p(), sdy, sdyx, ddy.p(),
                                         dgamma.p(), dbeta.p(), st);
    });
    expect_same_floats(ref.f[0], ddy.get(), "dx written over dy");
    expect_same_floats(ref.f[1], inplace.f[0], "dgamma (in place)");
    expect_same_floats(ref.f[2], inplace.f[1], "dbeta (in place)");
    expect_guards({&dsums, &dxh, &dxf, &ddy, &dg, &dm, &di, &dx, &dgamma, &dbeta});
  }
}

// ---- the ASPP's normalise-and-add with bf16 storage ----

TEST(Bf16TrainBatchNorm, ApplySumRoundsTheFp32SumOnce) {
  REQUIRE_GPU();
  Stream st;
  struct Case {
    int64_t count;
    int c, nb;
  };
  for (const Case& k : {Case{2 * 32 * 32, 256, 4}, Case{1 * 64 * 64, 32, 4}, Case{999, 37, 3}, Case{50, 8, 2},
                        Case{7, 5, 1}, Case{33, 512, 4}, Case{301, 257, 2}}) {
    SCOPED_TRACE("count " + std::to_string(k.count) + " c " + std::to_string(k.c) + " branches " +
                 std::to_string(k.nb));
    const size_t n = size_t(k.count) * size_t(k.c);
    std::vector<std::unique_ptr<DevFloats>> dev;
    std::vector<std::unique_ptr<DevHalves>> devh;
    std::vector<cuda::BnSumBranch> brf, brh;
    for (int i = 0; i < k.nb; ++i) {
      const Halves xh = to_bf16(normal(n, 0.3f, 2.f));
      for (const Floats& h : {widen(xh), uniform(size_t(k.c), 0.5f, 1.5f), uniform(size_t(k.c), -0.5f, 0.5f),
                              uniform(size_t(k.c), -0.3f, 0.3f), uniform(size_t(k.c), 0.5f, 2.f)})
        dev.push_back(std::make_unique<DevFloats>(h));
      devh.push_back(std::make_unique<DevHalves>(xh));
      const size_t o = size_t(5 * i);
      brf.push_back({dev[o]->p(), dev[o + 1]->p(), dev[o + 2]->p(), dev[o + 3]->p(), dev[o + 4]->p()});
      brh.push_back(brf.back());
      brh.back().x = devh.back()->p();
    }
    DevFloats yf(n), yf2(n);
    DevHalves yh(n);
    const Floats ref = run_twice(st, {&yf}, nullptr, [&] {
      cuda::batchnorm_apply_sum(k.count, k.c, brf.data(), k.nb, yf.p(), st);
    })[0];
    // The storage-taking form with fp32 storage is the float* form.
    const Floats f32 = run_twice(st, {&yf2}, nullptr, [&] {
      cuda::batchnorm_apply_sum(k.count, k.c, brf.data(), k.nb, Storage::F32, yf2.p(), st);
    })[0];
    expect_same_floats(ref, f32, "Storage::F32 form");
    const Halves got = run_twice_bf16(st, yh, [&] {
      cuda::batchnorm_apply_sum(k.count, k.c, brh.data(), k.nb, Storage::Bf16, yh.p(), st);
    });
    expect_same_halves(to_bf16(ref), got, "bf16 y");
    for (const auto& d : dev) expect_guards({d.get()});
    for (const auto& d : devh) expect_guards({d.get()});
    expect_guards({&yf, &yf2, &yh});
  }
}

TEST(Bf16TrainHost, ApplySumBf16RejectsBadArguments) {
  uint16_t dummy[4] = {};
  float fdummy[4] = {};
  cuda::BnSumBranch br[5];
  for (auto& b : br) b = {dummy, fdummy, fdummy, fdummy, fdummy};
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 8, br, 0, Storage::Bf16, dummy, nullptr), Error);
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 8, br, 5, Storage::Bf16, dummy, nullptr), Error);
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 1024, br, 3, Storage::Bf16, dummy, nullptr), Error);
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 8, br, 2, Storage::Bf16, nullptr, nullptr), Error);
  br[1].x = nullptr;
  EXPECT_THROW(cuda::batchnorm_apply_sum(4, 8, br, 2, Storage::Bf16, dummy, nullptr), Error);
  EXPECT_THROW(cuda::batchnorm_forward_train(1, 8, static_cast<const bf16*>(nullptr), nullptr, nullptr,
                                             static_cast<bf16*>(nullptr), nullptr, nullptr, nullptr, nullptr, 0.1,
                                             1e-5, nullptr, nullptr),
               Error);  // count 1: no batch statistics
}

// ---- elementwise: the mixed product, the per-channel scale's and the max pool's backward ----

struct Nhwc {
  int n, h, w, c;
  int64_t count() const { return int64_t(n) * h * w * c; }
  std::string str() const {
    return std::to_string(n) + "x" + std::to_string(h) + "x" + std::to_string(w) + "x" + std::to_string(c);
  }
};

// Layer-like sizes, ragged channel counts (3, 33, 257) and a single window.
std::vector<Nhwc> nhwc_sizes() {
  return {{2, 16, 16, 16}, {2, 8, 8, 64}, {1, 4, 6, 3}, {3, 2, 2, 33}, {1, 2, 2, 1}, {2, 10, 6, 257}, {2, 32, 32, 32}};
}

TEST(Bf16TrainElementwise, MixedMulIsTheFp32MulOnTheWidenedB) {
  REQUIRE_GPU();
  Stream st;
  for (const int64_t n : {int64_t(1), int64_t(255), int64_t(257), int64_t(1000), int64_t(2 * 32 * 32 * 64 + 3)}) {
    SCOPED_TRACE("n " + std::to_string(n));
    const size_t m = size_t(n);
    const Floats a = normal(m, 0.f, 0.01f);  // a gradient: full fp32 precision
    const Halves b = random_bf16(m, 2.f);
    const Floats bw = widen(b);
    DevFloats da(a), dbf(bw), y(m);
    DevHalves dbh(b);
    const Floats ref = run_twice(st, {&y}, nullptr, [&] { cuda::mul(n, da.p(), dbf.p(), y.p(), st); })[0];
    const Floats got = run_twice(st, {&y}, nullptr, [&] { cuda::mul(n, da.p(), dbh.p(), y.p(), st); })[0];
    expect_same_floats(ref, got, "mul");
    Floats cpu_y(m);
    cpu::mul(n, a.data(), bw.data(), cpu_y.data());
    expect_same_floats(cpu_y, got, "mul against the CPU");
    // y written over a.
    const Floats inplace =
        run_twice(st, {&da}, [&] { da.set(a); }, [&] { cuda::mul(n, da.p(), dbh.p(), da.p(), st); })[0];
    expect_same_floats(ref, inplace, "mul written over a");
    expect_guards({&da, &dbf, &dbh, &y});
  }
}

TEST(Bf16TrainElementwise, ScaleChannelsBackwardScaleIsTheFp32KernelOnTheWidenedX) {
  REQUIRE_GPU();
  Stream st;
  std::vector<Nhwc> sizes = nhwc_sizes();
  sizes.push_back({2, 25, 40, 32});  // hw = 1000: no multiple of a group's rows
  sizes.push_back({1, 3, 1, 5});
  for (const Nhwc& z : sizes) {
    SCOPED_TRACE(z.str());
    const int64_t hw = int64_t(z.h) * z.w;
    const size_t n = size_t(z.count());
    const Halves xh = random_bf16(n, 1.5f);
    const Floats dy = normal(n, 0.f, 0.1f);
    DevHalves dxh(xh);
    DevFloats dxf(widen(xh)), ddy(dy), ds(size_t(z.n) * size_t(z.c));
    DevBuf ws(cuda::scale_channels_workspace_bytes(z.n, hw, z.c));
    auto reset = [&] { ws.poison(); };
    const Floats ref = run_twice(st, {&ds}, reset, [&] {
      cuda::scale_channels_backward_scale(z.n, hw, z.c, dxf.p(), ddy.p(), ds.p(), ws.data(), st);
    })[0];
    const Floats got = run_twice(st, {&ds}, reset, [&] {
      cuda::scale_channels_backward_scale(z.n, hw, z.c, dxh.p(), ddy.p(), ds.p(), ws.data(), st);
    })[0];
    expect_same_floats(ref, got, "ds");
    expect_guards({&dxh, &dxf, &ddy, &ds, &ws});
  }
}

TEST(Bf16TrainElementwise, MaxPoolArgmaxDecidesOnTheBf16Values) {
  REQUIRE_GPU();
  Stream st;
  for (const Nhwc& z : nhwc_sizes()) {
    // Random values, and small integers: many ties within a window, where the first maximum wins.
    for (const bool ties : {false, true}) {
      SCOPED_TRACE(z.str() + (ties ? " (ties)" : ""));
      const size_t n = size_t(z.count());
      const Halves xh = ties ? to_bf16(small_ints(n, 2)) : random_bf16(n);
      const Floats xw = widen(xh);
      const Floats dy = normal(n / 4, 0.f, 1.f);
      DevHalves dxh(xh), dyh(n / 4);
      DevFloats dxf(xw), dyf(n / 4), ddy(dy), dx(n);
      DevBytes argf(n / 4), argh(n / 4);
      // The fp32 forward on the widened values and the bf16 forward choose the same windows.
      run_twice(st, {&dyf}, [&] { argf.poison(); },
                [&] { cuda::maxpool2_forward(z.n, z.h, z.w, z.c, dxf.p(), dyf.p(), argf.p(), st); });
      run_twice_bf16(st, dyh, [&] { cuda::maxpool2_forward(z.n, z.h, z.w, z.c, dxh.p(), dyh.p(), argh.p(), st); });
      EXPECT_TRUE(argf.get() == argh.get()) << "argmax of the bf16 and of the widened values";
      const Floats got = run_twice(st, {&dx}, nullptr, [&] {
        cuda::maxpool2_backward(z.n, z.h, z.w, z.c, argh.p(), ddy.p(), dx.p(), st);
      })[0];
      Floats cpu_y(n / 4), cpu_dx(n);
      std::vector<uint8_t> cpu_arg(n / 4);
      cpu::maxpool2_forward(z.n, z.h, z.w, z.c, xw.data(), cpu_y.data(), cpu_arg.data());
      EXPECT_TRUE(argh.get() == cpu_arg) << "argmax against the CPU";
      cpu::maxpool2_backward(z.n, z.h, z.w, z.c, cpu_arg.data(), dy.data(), cpu_dx.data());
      expect_same_floats(cpu_dx, got, "dx against the CPU");
      expect_guards({&dxh, &dyh, &dxf, &dyf, &ddy, &dx, &argf, &argh});
    }
  }
}

}  // namespace
}  // namespace rpp
