// tests/gpu/test_se_gpu.cpp — the fused squeeze-and-excitation MLP (kernels/cuda/se.cuh), forward
// and backward:
//  * bit for bit against the unfused GPU kernels it replaces, run in the graph's order
//    (linear_forward, relu_forward, linear_forward, sigmoid_forward; sigmoid_backward,
//    linear_backward, relu_backward, linear_backward), which test_ops_gpu checks against the CPU;
//  * against the CPU reference (the same sequence of kernels/cpu/ops.h) within 2e-6 relative to
//    each output's magnitude: double accumulation in another order, and expf;
//  * every SE shape of ResUNet++ (C 16 to 256, hidden C/8) at batch 1, 2 and 16, plus ragged
//    sizes (hidden 1, C not a multiple of 32, hidden above 32, batch 0);
//  * outputs and workspace poisoned, guard bytes, every launch twice with the same bits.
// GPU tests skip without a device; SeHost runs everywhere.
//   ./build/gpu_test_se_gpu
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/elementwise.cuh"
#include "kernels/cuda/se.cuh"
#include "runtime/error.h"

using namespace rpp;
using namespace rpp::gputest;

namespace {

struct Case {
  int n, c, hidden;
};

std::string str(const Case& k) {
  return "n " + std::to_string(k.n) + " c " + std::to_string(k.c) + " hidden " + std::to_string(k.hidden);
}

std::vector<Case> cases() {
  std::vector<Case> v;
  for (int n : {1, 2, 16})
    for (int c : {16, 32, 64, 128, 256}) v.push_back({n, c, c / 8});
  v.push_back({3, 24, 1});
  v.push_back({5, 33, 3});
  v.push_back({2, 600, 75});
  v.push_back({0, 32, 4});
  return v;
}

struct Data {
  Floats p, w1, w2, ds;
};

Data make(const Case& k) {
  Data d;
  d.p = normal(size_t(k.n) * k.c, 0.1f, 1.f);
  d.w1 = uniform(size_t(k.hidden) * k.c, -0.5f, 0.5f);
  d.w2 = uniform(size_t(k.c) * k.hidden, -0.5f, 0.5f);
  d.ds = normal(size_t(k.n) * k.c);
  return d;
}

struct Grads {
  Floats s, dp, dw1, dw2;
};

// The CPU reference: the unfused graph's kernels in its order.
Grads cpu_reference(const Case& k, const Data& d) {
  Grads g;
  const size_t nc = size_t(k.n) * k.c, nh = size_t(k.n) * k.hidden;
  Floats r(nh), da(nc), dr(nh);
  g.s.resize(nc);
  g.dp.resize(nc);
  g.dw1.resize(d.w1.size());
  g.dw2.resize(d.w2.size());
  cpu::linear_forward(k.n, k.c, k.hidden, d.p.data(), d.w1.data(), r.data());
  cpu::relu_forward(int64_t(nh), r.data(), r.data());
  cpu::linear_forward(k.n, k.hidden, k.c, r.data(), d.w2.data(), g.s.data());
  cpu::sigmoid_forward(int64_t(nc), g.s.data(), g.s.data());
  cpu::sigmoid_backward(int64_t(nc), g.s.data(), d.ds.data(), da.data());
  cpu::linear_backward(k.n, k.hidden, k.c, r.data(), d.w2.data(), da.data(), dr.data(), g.dw2.data());
  cpu::relu_backward(int64_t(nh), r.data(), dr.data(), dr.data());
  cpu::linear_backward(k.n, k.c, k.hidden, d.p.data(), d.w1.data(), dr.data(), g.dp.data(), g.dw1.data());
  return g;
}

// Each element finite and within 2e-6 of max |ref|: the same double sums in another order, each
// rounded once to float, and expf against std::exp.
void expect_close(const Floats& got, const Floats& ref, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size()) << what;
  double mag = 0;
  for (float v : ref) mag = std::max(mag, double(std::fabs(v)));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_TRUE(std::isfinite(got[i])) << what << " element " << i;
    ASSERT_LE(std::fabs(double(got[i]) - double(ref[i])), 2e-6 * mag + 1e-30)
        << what << " element " << i << ": got " << got[i] << ", want " << ref[i];
  }
}

}  // namespace

TEST(SeHost, RejectsBadArguments) {
  float dummy[4] = {};
  auto msg = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([&] { cuda::se_excite_forward(1, 0, 1, dummy, dummy, dummy, dummy, nullptr); }).find("bad sizes"),
            std::string::npos);
  EXPECT_NE(msg([&] { cuda::se_excite_forward(1, 6000, 200, dummy, dummy, dummy, dummy, nullptr); }).find("6144"),
            std::string::npos);
  EXPECT_NE(msg([&] { cuda::se_excite_forward(1, 8, 1, dummy, nullptr, dummy, dummy, nullptr); }).find("w1"),
            std::string::npos);
  EXPECT_NE(msg([&] {
              cuda::se_excite_backward(2, 8, 1, dummy, dummy, dummy, dummy, dummy, dummy, dummy, dummy, nullptr,
                                       nullptr);
            }).find("workspace"),
            std::string::npos);
  EXPECT_EQ(cuda::se_excite_backward_workspace_bytes(2, 8, 1), size_t(2 * (8 + 2)) * sizeof(float));
  EXPECT_EQ(cuda::se_excite_backward_workspace_bytes(0, 8, 1), 0u);
}

TEST(SeGpu, FusedEqualsTheUnfusedKernelsAndFollowsTheCpu) {
  REQUIRE_GPU();
  Stream st;
  for (const Case& k : cases()) {
    SCOPED_TRACE(str(k));
    const Data d = make(k);
    const size_t nc = size_t(k.n) * k.c, nh = size_t(k.n) * k.hidden;
    const size_t one = 1;  // zero-sized device buffers are allocated with one element
    DevFloats p(d.p.empty() ? Floats(one) : d.p), w1(d.w1), w2(d.w2), ds(d.ds.empty() ? Floats(one) : d.ds);
    DevFloats s(std::max(nc, one)), dp(std::max(nc, one)), dw1(d.w1.size()), dw2(d.w2.size());
    DevBuf ws(std::max<size_t>(cuda::se_excite_backward_workspace_bytes(k.n, k.c, k.hidden), 16));
    // Fused.
    const std::vector<Floats> fused = run_twice(st, {&s, &dp, &dw1, &dw2}, [&] { ws.poison(); }, [&] {
      cuda::se_excite_forward(k.n, k.c, k.hidden, p.p(), w1.p(), w2.p(), s.p(), st);
      cuda::se_excite_backward(k.n, k.c, k.hidden, p.p(), w1.p(), w2.p(), s.p(), ds.p(), dp.p(), dw1.p(), dw2.p(),
                               ws.data(), st);
    });
    // Unfused, the graph's order.
    DevFloats r(std::max(nh, one)), s2(std::max(nc, one)), da(std::max(nc, one)), dr(std::max(nh, one)),
        dp2(std::max(nc, one)), dw1b(d.w1.size()), dw2b(d.w2.size());
    const std::vector<Floats> unfused = run_twice(st, {&s2, &dp2, &dw1b, &dw2b}, nullptr, [&] {
      if (k.n > 0) {
        cuda::linear_forward(k.n, k.c, k.hidden, p.p(), w1.p(), r.p(), st);
        cuda::relu_forward(int64_t(nh), r.p(), r.p(), st);
        cuda::linear_forward(k.n, k.hidden, k.c, r.p(), w2.p(), s2.p(), st);
        cuda::sigmoid_forward(int64_t(nc), s2.p(), s2.p(), st);
        cuda::sigmoid_backward(int64_t(nc), s2.p(), ds.p(), da.p(), st);
      }
      cuda::linear_backward(k.n, k.hidden, k.c, r.p(), w2.p(), da.p(), dr.p(), dw2b.p(), st);
      if (k.n > 0) cuda::relu_backward(int64_t(nh), r.p(), dr.p(), dr.p(), st);
      cuda::linear_backward(k.n, k.c, k.hidden, p.p(), w1.p(), dr.p(), dp2.p(), dw1b.p(), st);
    });
    const char* names[] = {"s", "dp", "dw1", "dw2"};
    for (size_t i = 0; i < 4; ++i) {
      const size_t used = i < 2 ? nc : fused[i].size();
      const Floats a(fused[i].begin(), fused[i].begin() + std::ptrdiff_t(used)),
          b(unfused[i].begin(), unfused[i].begin() + std::ptrdiff_t(used));
      EXPECT_TRUE(same_bits(a, b)) << names[i] << ": fused and unfused GPU kernels differ";
    }
    const Grads ref = cpu_reference(k, d);
    expect_close(Floats(fused[0].begin(), fused[0].begin() + std::ptrdiff_t(nc)), ref.s, "s");
    expect_close(Floats(fused[1].begin(), fused[1].begin() + std::ptrdiff_t(nc)), ref.dp, "dp");
    expect_close(fused[2], ref.dw1, "dw1");
    expect_close(fused[3], ref.dw2, "dw2");
    expect_guards({&p, &w1, &w2, &ds, &s, &dp, &dw1, &dw2, &ws});
  }
}
