// tests/gpu/test_conv_gpu.cpp — the cuDNN fallback convolution (kernels/cuda/cudnn/conv_cudnn)
// against the CPU reference (kernels/cpu/conv2d.h): forward (+ bias), backward-data and
// backward-filter (+ bias gradient), and the HWIO <-> OHWI weight repacks.
//  * shapes: every convolution of ResUNet++ at 64x64, batch 2 (stem, ResBlocks with their
//    stride-2 3x3 and 1x1 convs, both ASPP blocks with dilation 1/6/12/18, attention gates,
//    decoders, the output conv), plus small odd ones: non-square kernels, stride 3, dilation 2/3,
//    no padding with a ragged last window, 1x1x1, channel counts that leave ragged tiles, and
//    enough rows for several bias-gradient groups;
//  * the CPU reference runs on the host copies with HWIO weights; the GPU side repacks them to
//    OHWI with the device kernel and repacks dw back;
//  * tolerances, fp32 with TF32 disabled (CUDNN_FMA_MATH): every element within
//    1e-4 * (|ref| + rms(ref)) of the reference (summation order differs from the CPU's);
//    small-integer data with GEMM-family algorithms: equal to the reference exactly (every
//    partial sum is an integer below 2^24); TF32 allowed: 1e-2 * (|ref| + rms(ref));
//  * deterministic algorithms: every pass runs twice on fresh poison and must repeat its bits;
//  * outputs and workspaces poisoned with NaN before each run, guard bytes around every device
//    buffer checked afterwards; NaN or infinity in an output always fails.
// The GPU tests skip (GTEST_SKIP) without a CUDA device. The ConvCudnnHost tests run everywhere:
// the repack index map, the host-side shape checks, and cuDNN's own output-size computation for
// every shape (descriptor calls need no device).
//   ./build/gpu_test_conv_gpu   (RPP_GPU_TEST_SEED=<n> changes the data)
#include <gtest/gtest.h>

#include "kernels/cuda/device.cuh"

#if defined(RESUNETPP_HAVE_CUDNN)

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <iomanip>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "kernels/cuda/cudnn/conv_cudnn.cuh"
#include "runtime/error.h"
#include "runtime/rng.h"

#include "gpu_test_util.h"

namespace cpu = rpp::cpu;
namespace gpu = rpp::cuda;

namespace {

using namespace rpp::gputest;

constexpr double kFp32Rtol = 1e-4;  // fp32, TF32 off: summation order differs from the CPU's
constexpr double kTf32Rtol = 1e-2;  // TF32 tensor cores: 10-bit mantissa products
constexpr size_t kWsLimit = size_t(256) << 20;       // heuristic choice: cuDNN workspace cap
constexpr size_t kFindWsBytes = size_t(64) << 20;    // cudnnFind*Ex: the workspace it may use

// A cuDNN handle bound to a stream.
class Handle {
 public:
  explicit Handle(cudaStream_t stream) {
    RPP_CUDNN_CHECK(cudnnCreate(&h_));
    RPP_CUDNN_CHECK(cudnnSetStream(h_, stream));
  }
  ~Handle() { cudnnDestroy(h_); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  operator cudnnHandle_t() const { return h_; }

 private:
  cudnnHandle_t h_ = nullptr;
};

// ---- comparisons ----

// rtol > 0: |got - ref| <= rtol * (|ref| + rms(ref)) everywhere; rtol == 0: got == ref as values
// (so -0 == +0). A non-finite value in `got` always fails.
::testing::AssertionResult close(const Floats& got, const Floats& ref, double rtol) {
  if (got.size() != ref.size())
    return ::testing::AssertionFailure() << "size " << got.size() << " vs " << ref.size();
  double ss = 0;
  for (float r : ref) ss += double(r) * double(r);
  const double rms = ref.empty() ? 0.0 : std::sqrt(ss / double(ref.size()));
  size_t bad = 0;
  double worst = 0;
  std::ostringstream msg;
  msg << std::setprecision(9);
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got[i], r = ref[i];
    bool ok = std::isfinite(g);
    if (ok && rtol == 0) {
      ok = g == r;
    } else if (ok) {
      const double lim = rtol * (std::fabs(r) + rms);
      ok = std::fabs(g - r) <= lim;
      if (lim > 0) worst = std::max(worst, std::fabs(g - r) / lim);
    }
    if (!ok && ++bad <= 6) msg << "\n  [" << i << "] got " << g << ", want " << r;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << bad << " of " << ref.size() << " values off (rtol "
                                       << rtol << ", rms " << rms << ", worst/limit " << worst
                                       << ")" << msg.str();
}

// ---- shapes ----

struct ConvCase {
  std::string name;
  cpu::Conv2dShape s;
  std::string str() const {
    std::ostringstream o;
    o << name << " (n " << s.n << ", " << s.h << "x" << s.w << "x" << s.cin << " -> " << s.ho()
      << "x" << s.wo() << "x" << s.cout << ", kernel " << s.kh << "x" << s.kw << ", stride "
      << s.stride << ", pad " << s.pad << ", dilation " << s.dil << ")";
    return o.str();
  }
};

cpu::Conv2dShape conv(int n, int h, int w, int cin, int cout, int kh, int kw, int stride, int pad,
                      int dil) {
  cpu::Conv2dShape s;
  s.n = n;
  s.h = h;
  s.w = w;
  s.cin = cin;
  s.cout = cout;
  s.kh = kh;
  s.kw = kw;
  s.stride = stride;
  s.pad = pad;
  s.dil = dil;
  return s;
}

// Every distinct convolution of ResUNet++ at 64x64, batch 2 (layer names as in the checkpoint).
std::vector<ConvCase> resunet_cases() {
  const int n = 2;
  const auto k3 = [n](int size, int cin, int cout, int stride = 1, int dil = 1) {
    return conv(n, size, size, cin, cout, 3, 3, stride, dil, dil);
  };
  const auto k1 = [n](int size, int cin, int cout, int stride = 1) {
    return conv(n, size, size, cin, cout, 1, 1, stride, 0, 1);
  };
  std::vector<ConvCase> v = {
      {"c1.c1.0", k3(64, 3, 16)},
      {"c1.c1.3", k3(64, 16, 16)},
      {"c1.c2.0", k1(64, 3, 16)},
      {"c2.c1.2 (stride 2)", k3(64, 16, 32, 2)},
      {"c2.c1.5 / d3.r1.c1.5", k3(32, 32, 32)},
      {"c2.c2.0 (1x1 stride 2)", k1(64, 16, 32, 2)},
      {"c3.c1.2 (stride 2)", k3(32, 32, 64, 2)},
      {"c3.c1.5", k3(16, 64, 64)},
      {"c3.c2.0 (1x1 stride 2)", k1(32, 32, 64, 2)},
      {"c4.c1.2 (stride 2)", k3(16, 64, 128, 2)},
      {"c4.c1.5", k3(8, 128, 128)},
      {"c4.c2.0 (1x1 stride 2)", k1(16, 64, 128, 2)},
      {"b1.c1.0 (dilation 1)", k3(8, 128, 256, 1, 1)},
      {"b1.c2.0 (dilation 6)", k3(8, 128, 256, 1, 6)},
      {"b1.c3.0 (dilation 12)", k3(8, 128, 256, 1, 12)},
      {"b1.c4.0 (dilation 18)", k3(8, 128, 256, 1, 18)},
      {"b1.c5", k1(8, 256, 256)},
      {"d1.a1.g_conv.2", k3(16, 64, 256)},
      {"d1.a1.x_conv.2 / gc_conv.2", k3(8, 256, 256)},
      {"d1.r1.c1.2", k3(16, 320, 128)},
      {"d1.r1.c1.5 / d2.a1.x_conv.2 / gc_conv.2", k3(16, 128, 128)},
      {"d1.r1.c2.0", k1(16, 320, 128)},
      {"d2.a1.g_conv.2", k3(32, 32, 128)},
      {"d2.r1.c1.2", k3(32, 160, 64)},
      {"d2.r1.c1.5 / d3.a1.x_conv.2 / gc_conv.2", k3(32, 64, 64)},
      {"d2.r1.c2.0", k1(32, 160, 64)},
      {"d3.a1.g_conv.2", k3(64, 16, 64)},
      {"d3.r1.c1.2", k3(64, 80, 32)},
      {"d3.r1.c1.5", k3(64, 32, 32)},
      {"d3.r1.c2.0", k1(64, 80, 32)},
      {"aspp.c1.0 (dilation 1)", k3(64, 32, 16, 1, 1)},
      {"aspp.c2.0 (dilation 6)", k3(64, 32, 16, 1, 6)},
      {"aspp.c3.0 (dilation 12)", k3(64, 32, 16, 1, 12)},
      {"aspp.c4.0 (dilation 18)", k3(64, 32, 16, 1, 18)},
      {"aspp.c5", k1(64, 16, 16)},
      {"output", k1(64, 16, 1)},
  };
  return v;
}

std::vector<ConvCase> odd_cases() {
  return {
      {"3x3 tiny", conv(1, 5, 7, 3, 5, 3, 3, 1, 1, 1)},
      {"3x3 stride 2, odd sizes", conv(3, 9, 11, 7, 13, 3, 3, 2, 1, 1)},
      {"3x1 kernel, no pad", conv(1, 4, 6, 2, 3, 3, 1, 1, 0, 1)},
      {"1x3 kernel, pad 1", conv(2, 5, 4, 3, 2, 1, 3, 1, 1, 1)},
      {"1x1x1", conv(1, 1, 1, 1, 1, 1, 1, 1, 0, 1)},
      {"stride 3, pad 2, dilation 2", conv(2, 13, 13, 5, 6, 3, 3, 3, 2, 2)},
      {"5x5 stride 2", conv(1, 10, 12, 3, 4, 5, 5, 2, 2, 1)},
      {"no pad, ragged last window", conv(1, 8, 9, 3, 2, 3, 3, 2, 0, 1)},
      {"dilation 3, 33 -> 40 channels", conv(2, 7, 7, 33, 40, 3, 3, 1, 3, 3)},
      {"1x1, 70 outputs", conv(1, 3, 3, 1, 70, 1, 1, 1, 0, 1)},
      {"many rows, 3 outputs", conv(4, 50, 50, 6, 3, 1, 1, 1, 0, 1)},
  };
}

// ---- one case on both backends ----

struct ConvData {
  Floats x, w_hwio, bias, dy;
};

struct ConvOut {
  Floats y, dx, dw_hwio, dbias;
};

ConvData make_data(const cpu::Conv2dShape& s, bool integers) {
  const size_t nx = size_t(s.n) * s.h * s.w * s.cin;
  const size_t ny = size_t(s.n) * s.ho() * s.wo() * s.cout;
  const size_t nw = size_t(s.kh) * s.kw * s.cin * s.cout;
  if (integers)
    return {small_ints(nx, 2), small_ints(nw, 2), small_ints(size_t(s.cout), 3), small_ints(ny, 2)};
  const float bound = 1.f / std::sqrt(float(s.kh * s.kw * s.cin));  // PyTorch's init range
  return {normal(nx), uniform(nw, -bound, bound), uniform(size_t(s.cout), -bound, bound),
          normal(ny)};
}

ConvOut cpu_reference(const cpu::Conv2dShape& s, const ConvData& d) {
  const size_t ws_elems = std::max({cpu::conv2d_forward_workspace(s),
                                    cpu::conv2d_backward_data_workspace(s),
                                    cpu::conv2d_backward_filter_workspace(s), size_t(1)});
  Floats ws(ws_elems);
  ConvOut o;
  o.y.resize(d.dy.size());
  o.dx.resize(d.x.size());
  o.dw_hwio.resize(d.w_hwio.size());
  o.dbias.resize(d.bias.size());
  cpu::conv2d_forward(s, d.x.data(), d.w_hwio.data(), d.bias.data(), o.y.data(), ws.data());
  cpu::conv2d_backward_data(s, d.dy.data(), d.w_hwio.data(), o.dx.data(), ws.data());
  cpu::conv2d_backward_filter(s, d.x.data(), d.dy.data(), o.dw_hwio.data(), o.dbias.data(),
                              ws.data());
  return o;
}

struct Mode {
  bool deterministic = true;
  bool allow_tf32 = false;
  bool find = false;  // cudnnFind*Ex instead of the heuristics
  gpu::CudnnAlgoFamily family = gpu::CudnnAlgoFamily::Any;
};

// All three passes on the GPU (each run twice when deterministic), the weights repacked on the
// device both ways; checks the guards. Prints the algorithms chosen.
ConvOut gpu_run(const ConvCase& c, const ConvData& d, const Mode& mode) {
  const cpu::Conv2dShape& s = c.s;
  Stream st;
  Handle handle(st);
  DevFloats x(d.x), w_hwio(d.w_hwio), bias(d.bias), dy(d.dy);
  DevFloats w_ohwi(d.w_hwio.size()), y(d.dy.size()), dx(d.x.size());
  DevFloats dw_ohwi(d.w_hwio.size()), dw_hwio(d.w_hwio.size()), dbias(d.bias.size());

  gpu::repack_hwio_to_ohwi(s.kh, s.kw, s.cin, s.cout, w_hwio.p(), w_ohwi.p(), st);
  st.sync();
  Floats ohwi_ref(d.w_hwio.size());
  gpu::repack_hwio_to_ohwi_host(s.kh, s.kw, s.cin, s.cout, d.w_hwio.data(), ohwi_ref.data());
  EXPECT_TRUE(same_bits(w_ohwi.get(), ohwi_ref)) << "device HWIO -> OHWI repack";

  gpu::CudnnConv conv(s);
  if (mode.find) {
    DevBuf find_ws(kFindWsBytes);
    gpu::CudnnFindBuffers fb;
    fb.x = x.p();
    fb.w_ohwi = w_ohwi.p();
    fb.dy = dy.p();
    fb.y = y.p();
    fb.dx = dx.p();
    fb.dw_ohwi = dw_ohwi.p();
    conv.choose_algorithms(handle, mode.deterministic, mode.allow_tf32, find_ws.data(),
                           find_ws.bytes(), &fb, mode.family);
    st.sync();
    expect_guards({&x, &w_ohwi, &dy, &y, &dx, &dw_ohwi, &find_ws});
  } else {
    conv.choose_algorithms(handle, mode.deterministic, mode.allow_tf32, nullptr, kWsLimit, nullptr,
                           mode.family);
  }
  EXPECT_LE(conv.workspace_bytes(), mode.find ? kFindWsBytes : kWsLimit);
  std::cout << "[ conv     ] " << c.name << ": " << conv.describe_algorithms() << ", workspace "
            << conv.workspace_bytes() << " B\n";
  DevBuf ws(std::max<size_t>(conv.workspace_bytes(), 1));

  const auto twice = [&](std::initializer_list<DevFloats*> outs,
                         const std::function<void()>& launch) {
    if (mode.deterministic) return run_twice(st, outs, [&] { ws.poison(); }, launch);
    for (DevFloats* o : outs) o->poison();
    ws.poison();
    launch();
    st.sync();
    std::vector<Floats> got;
    for (DevFloats* o : outs) got.push_back(o->get());
    return got;
  };

  ConvOut o;
  o.y = twice({&y}, [&] { conv.forward(handle, x.p(), w_ohwi.p(), bias.p(), y.p(), ws.data()); })[0];
  o.dx = twice({&dx}, [&] { conv.backward_data(handle, dy.p(), w_ohwi.p(), dx.p(), ws.data()); })[0];
  const auto f = twice({&dw_hwio, &dbias}, [&] {
    dw_ohwi.poison();
    conv.backward_filter(handle, x.p(), dy.p(), dw_ohwi.p(), dbias.p(), ws.data());
    gpu::repack_ohwi_to_hwio(s.kh, s.kw, s.cin, s.cout, dw_ohwi.p(), dw_hwio.p(), st);
  });
  o.dw_hwio = f[0];
  o.dbias = f[1];
  expect_guards({&x, &w_hwio, &bias, &dy, &w_ohwi, &y, &dx, &dw_ohwi, &dw_hwio, &dbias, &ws});
  return o;
}

void check_case(const ConvCase& c, bool integers, const Mode& mode, double rtol) {
  SCOPED_TRACE(c.str());
  const ConvData d = make_data(c.s, integers);
  const ConvOut ref = cpu_reference(c.s, d);
  const ConvOut got = gpu_run(c, d, mode);
  EXPECT_TRUE(close(got.y, ref.y, rtol)) << "forward y";
  EXPECT_TRUE(close(got.dx, ref.dx, rtol)) << "backward-data dx";
  EXPECT_TRUE(close(got.dw_hwio, ref.dw_hwio, rtol)) << "backward-filter dw";
  EXPECT_TRUE(close(got.dbias, ref.dbias, rtol)) << "backward-filter dbias";
}

// ==== host-only tests (no device needed) ====

TEST(ConvCudnnHost, RepackIndexIsAPermutationToOhwi) {
  const int dims[][4] = {{1, 1, 1, 1}, {3, 3, 3, 16}, {1, 3, 5, 7}, {3, 1, 2, 1}, {2, 2, 1, 9},
                         {3, 3, 320, 128}};
  for (const auto& d : dims) {
    const int kh = d[0], kw = d[1], cin = d[2], cout = d[3];
    SCOPED_TRACE(std::to_string(kh) + "x" + std::to_string(kw) + "x" + std::to_string(cin) + "x" +
                 std::to_string(cout));
    const int64_t n = int64_t(kh) * kw * cin * cout;
    std::vector<int> hits(size_t(n), 0);
    int64_t i = 0;  // flat HWIO index, walked in HWIO order
    for (int y = 0; y < kh; ++y)
      for (int x = 0; x < kw; ++x)
        for (int ci = 0; ci < cin; ++ci)
          for (int co = 0; co < cout; ++co, ++i) {
            const int64_t j = gpu::hwio_to_ohwi_index(i, kh, kw, cin, cout);
            ASSERT_EQ(j, ((int64_t(co) * kh + y) * kw + x) * cin + ci) << "at HWIO " << i;
            ++hits[size_t(j)];
          }
    for (int64_t k = 0; k < n; ++k) ASSERT_EQ(hits[size_t(k)], 1) << "OHWI " << k;

    const size_t count = static_cast<size_t>(n);
    Floats hwio(count), ohwi(count, -1.f), back(count, -1.f);
    for (int64_t k = 0; k < n; ++k) hwio[size_t(k)] = float(k);
    gpu::repack_hwio_to_ohwi_host(kh, kw, cin, cout, hwio.data(), ohwi.data());
    gpu::repack_ohwi_to_hwio_host(kh, kw, cin, cout, ohwi.data(), back.data());
    EXPECT_TRUE(same_bits(back, hwio)) << "round trip";
  }
  float a = 0, b = 0;
  EXPECT_THROW(gpu::repack_hwio_to_ohwi_host(0, 3, 3, 3, &a, &b), rpp::Error);
  EXPECT_THROW(gpu::repack_ohwi_to_hwio_host(3, 3, -1, 3, &a, &b), rpp::Error);
}

TEST(ConvCudnnHost, RejectsBadShapes) {
  const cpu::Conv2dShape ok = conv(2, 8, 8, 4, 4, 3, 3, 1, 1, 1);
  const auto with = [&](const std::function<void(cpu::Conv2dShape&)>& edit) {
    cpu::Conv2dShape s = ok;
    edit(s);
    return s;
  };
  const std::pair<const char*, cpu::Conv2dShape> bad[] = {
      {"cout 0", with([](cpu::Conv2dShape& s) { s.cout = 0; })},
      {"n 0", with([](cpu::Conv2dShape& s) { s.n = 0; })},
      {"stride 0", with([](cpu::Conv2dShape& s) { s.stride = 0; })},
      {"pad -1", with([](cpu::Conv2dShape& s) { s.pad = -1; })},
      {"dilation 0", with([](cpu::Conv2dShape& s) { s.dil = 0; })},
      {"kernel larger than the padded input", with([](cpu::Conv2dShape& s) {
         s.h = 2;
         s.kh = 5;
         s.pad = 1;
       })},
      {"dilated kernel too large", with([](cpu::Conv2dShape& s) {
         s.dil = 5;
         s.pad = 1;
       })},
      {"pad 2^30", with([](cpu::Conv2dShape& s) { s.pad = 1 << 30; })},
      {"2^31 input elements", with([](cpu::Conv2dShape& s) {
         s.n = 1 << 10;
         s.h = 1 << 10;
         s.w = 1 << 10;
         s.cin = 2;
       })},
  };
  for (const auto& [what, s] : bad) EXPECT_THROW(gpu::CudnnConv{s}, rpp::Error) << what;
}

// cuDNN's output size (computed from the descriptors in the constructor) agrees with the
// reference for every test shape; the passes refuse to run before algorithms are chosen.
TEST(ConvCudnnHost, DescriptorsAgreeWithReference) {
  std::vector<ConvCase> all = resunet_cases();
  for (const ConvCase& c : odd_cases()) all.push_back(c);
  for (const ConvCase& c : all) {
    SCOPED_TRACE(c.str());
    std::unique_ptr<gpu::CudnnConv> conv;
    ASSERT_NO_THROW(conv = std::make_unique<gpu::CudnnConv>(c.s));
    EXPECT_FALSE(conv->has_algorithms());
    float dummy = 0;
    EXPECT_THROW(conv->forward(nullptr, &dummy, &dummy, nullptr, &dummy, nullptr), rpp::Error);
    EXPECT_THROW(conv->backward_data(nullptr, &dummy, &dummy, &dummy, nullptr), rpp::Error);
    EXPECT_THROW(conv->backward_filter(nullptr, &dummy, &dummy, &dummy, &dummy, nullptr),
                 rpp::Error);
  }
}

// ==== GPU tests ====

TEST(GpuConv, RepackKernelsMatchHost) {
  REQUIRE_GPU();
  const int dims[][4] = {{3, 3, 3, 16}, {1, 1, 256, 256}, {3, 3, 320, 128}, {1, 3, 5, 7}, {1, 1, 1, 1}};
  Stream st;
  for (const auto& d : dims) {
    const int kh = d[0], kw = d[1], cin = d[2], cout = d[3];
    const size_t n = size_t(kh) * kw * cin * cout;
    SCOPED_TRACE(std::to_string(n) + " elements");
    const Floats hwio = normal(n);
    Floats ohwi_ref(n), hwio_back(n);
    gpu::repack_hwio_to_ohwi_host(kh, kw, cin, cout, hwio.data(), ohwi_ref.data());
    DevFloats src(hwio), mid(n), back(n);
    gpu::repack_hwio_to_ohwi(kh, kw, cin, cout, src.p(), mid.p(), st);
    gpu::repack_ohwi_to_hwio(kh, kw, cin, cout, mid.p(), back.p(), st);
    st.sync();
    EXPECT_TRUE(same_bits(mid.get(), ohwi_ref)) << "HWIO -> OHWI";
    EXPECT_TRUE(same_bits(back.get(), hwio)) << "OHWI -> HWIO";
    expect_guards({&src, &mid, &back});
    EXPECT_THROW(gpu::repack_hwio_to_ohwi(kh, kw, cin, cout, src.p(), src.p(), st), rpp::Error);
    EXPECT_THROW(gpu::repack_ohwi_to_hwio(kh, kw, cin, cout, nullptr, back.p(), st), rpp::Error);
  }
}

TEST(GpuConv, ResUNetShapesMatchCpu) {
  REQUIRE_GPU();
  for (const ConvCase& c : resunet_cases()) check_case(c, false, Mode{}, kFp32Rtol);
}

TEST(GpuConv, OddShapesMatchCpu) {
  REQUIRE_GPU();
  for (const ConvCase& c : odd_cases()) check_case(c, false, Mode{}, kFp32Rtol);
}

// Small integers, GEMM-family algorithms, FMA math: every sum is exact on both sides.
TEST(GpuConv, SmallIntegersExact) {
  REQUIRE_GPU();
  Mode m;
  m.family = gpu::CudnnAlgoFamily::GemmOnly;
  for (const ConvCase& c : resunet_cases()) check_case(c, true, m, 0);
  for (const ConvCase& c : odd_cases()) check_case(c, true, m, 0);
}

// Algorithms timed by cudnnFind*Ex (on the test's own buffers) instead of the heuristics.
TEST(GpuConv, FindExMatchesCpu) {
  REQUIRE_GPU();
  Mode m;
  m.find = true;
  const std::vector<ConvCase> all = resunet_cases();
  for (const ConvCase& c : all)
    if (c.name.rfind("c1.c1.0", 0) == 0 || c.name.rfind("b1.c4.0", 0) == 0 ||
        c.name.rfind("d1.r1.c1.2", 0) == 0 || c.name.rfind("output", 0) == 0)
      check_case(c, false, m, kFp32Rtol);
  check_case(odd_cases()[1], false, m, kFp32Rtol);
}

// Non-deterministic algorithms allowed: still correct (not checked for repeatability).
TEST(GpuConv, NonDeterministicAllowedMatchesCpu) {
  REQUIRE_GPU();
  Mode m;
  m.deterministic = false;
  for (const ConvCase& c : resunet_cases())
    if (c.name.rfind("c2.c1.2", 0) == 0 || c.name.rfind("b1.c2.0", 0) == 0)
      check_case(c, false, m, kFp32Rtol);
}

// TF32 allowed: looser tolerance (10-bit mantissa products, fp32 accumulation).
TEST(GpuConv, Tf32WithinLooseTolerance) {
  REQUIRE_GPU();
  Mode m;
  m.allow_tf32 = true;
  for (const ConvCase& c : resunet_cases())
    if (c.name.rfind("c1.c1.3", 0) == 0 || c.name.rfind("d1.r1.c1.2", 0) == 0 ||
        c.name.rfind("aspp.c4.0", 0) == 0)
      check_case(c, false, m, kTf32Rtol);
}

TEST(GpuConv, ArgumentChecks) {
  REQUIRE_GPU();
  const cpu::Conv2dShape s = conv(2, 8, 8, 4, 6, 3, 3, 1, 1, 1);
  Stream st;
  Handle handle(st);
  gpu::CudnnConv c(s);
  // A workspace limit below the bias gradient's partial sums leaves backward-filter nothing.
  EXPECT_THROW(c.choose_algorithms(handle, true, false, nullptr, 0), rpp::Error);
  gpu::CudnnFindBuffers incomplete;
  EXPECT_THROW(c.choose_algorithms(handle, true, false, nullptr, kWsLimit, &incomplete), rpp::Error);
  c.choose_algorithms(handle, true, false, nullptr, kWsLimit);
  ASSERT_TRUE(c.has_algorithms());
  EXPECT_GT(c.backward_filter_workspace_bytes(), 0u);  // the bias partials at least
  EXPECT_EQ(c.workspace_bytes(),
            std::max({c.forward_workspace_bytes(), c.backward_data_workspace_bytes(),
                      c.backward_filter_workspace_bytes()}));
  DevFloats x(size_t(2 * 8 * 8 * 4)), w(size_t(9 * 4 * 6)), y(size_t(2 * 8 * 8 * 6));
  DevBuf ws(c.workspace_bytes());
  EXPECT_THROW(c.forward(handle, nullptr, w.p(), nullptr, y.p(), ws.data()), rpp::Error);
  EXPECT_THROW(c.backward_data(handle, y.p(), w.p(), nullptr, ws.data()), rpp::Error);
  EXPECT_THROW(c.backward_filter(handle, x.p(), y.p(), w.p(), w.p(), nullptr), rpp::Error);
  EXPECT_THROW(c.backward_filter(handle, x.p(), y.p(), w.p(), w.p(),
                                 static_cast<unsigned char*>(ws.data()) + 4),
               rpp::Error);  // misaligned workspace
  // The recorded algorithms can be set again (what a stored plan does).
  const gpu::CudnnConvAlgos a = c.algorithms();
  gpu::CudnnConv again(s);
  again.use_algorithms(handle, a);
  EXPECT_EQ(again.describe_algorithms(), c.describe_algorithms());
  EXPECT_EQ(again.workspace_bytes(), c.workspace_bytes());
  st.sync();
}

}  // namespace

#else  // !RESUNETPP_HAVE_CUDNN

TEST(GpuConv, CudnnNotBuilt) {
  GTEST_SKIP() << "built without cuDNN (RESUNETPP_CUDNN=OFF or cuDNN not found): the cuDNN "
                  "convolutions are compiled out";
}

#endif
