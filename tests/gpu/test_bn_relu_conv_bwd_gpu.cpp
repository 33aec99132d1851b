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
//    is deterministic), guard bytes checked;
//  * backward-data with the BN-backward sums (bn_relu_conv_backward_data_with_sums): dx the same
//    bits as the plain launch; sum_dy and sum_dy_xhat within 1e-12 of the sum of the terms'
//    magnitudes of double sums taken on the host from the kernel's own dx and x (summation order
//    only), and within the dx tolerance (summed over the elements) of cpu::batchnorm_backward's
//    dbeta and dgamma, in double, on the reference dx; then cuda::batchnorm_backward_from_sums on
//    them against cuda::batchnorm_backward on the same dx (the whole fused BN backward): dx within
//    2^-22 relative (an ulp or so) plus 1e-12 of the size of its terms, dgamma and dbeta likewise.
//    Shapes: the network's at 64x64 (and 256x256), the ragged ones, and two with more than 256
//    pixel tiles (the cross-tile reduction's strided loop). NaN in x makes sum_dy_xhat NaN in
//    exactly the channels where batchnorm_backward's dgamma is NaN.
// GPU tests skip without a device; BnReluConvBwdHost runs everywhere (argument checks).
//   ./build/gpu_test_bn_relu_conv_bwd_gpu
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "conv_test_util.h"
#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/batchnorm.cuh"
#include "kernels/cuda/bn_relu_conv_bwd.cuh"
#include "model/resunetpp.h"
#include "runtime/error.h"

using namespace rpp;
using namespace rpp::gputest;

namespace {

constexpr double kRtol = 1e-4;

size_t sz(int64_t n) { return static_cast<size_t>(n); }

cpu::Conv2dShape rect(int n, int h, int w, int cin, int cout, int kh, int kw, int stride, int pad, int dil) {
  cpu::Conv2dShape s = conv_shape(n, h, w, cin, cout, kh, stride, pad, dil);
  s.kw = kw;
  return s;
}

int64_t in_count(const cpu::Conv2dShape& s) { return int64_t(s.n) * s.h * s.w * s.cin; }
int64_t out_count(const cpu::Conv2dShape& s) { return int64_t(s.n) * s.ho() * s.wo() * s.cout; }
int64_t w_count(const cpu::Conv2dShape& s) { return int64_t(s.kh) * s.kw * s.cin * s.cout; }

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
  SCOPED_TRACE(shape_str(s) + (bn ? " backward-data with BN-ReLU mask" : " backward-data plain"));
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
  DevFloats d_dz(dz), d_w(hwio_to_ohwi(s, w)), d_x(x), d_dx(sz(in_count(s)));
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
  SCOPED_TRACE(shape_str(s) + (bn ? " backward-filter with BN-ReLU" : " backward-filter plain"));
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
  EXPECT_TRUE(close(out[0], hwio_to_ohwi(s, ref_w), &g_max_err.dw));
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

// Partial tiles in M, N and K, strides 2 and 3 (parity classes of unequal size, and empty ones),
// dilations, 1x1 and 3x1 kernels.
std::vector<cpu::Conv2dShape> ragged_shapes() {
  return {
      conv_shape(1, 7, 9, 5, 3, 3, 1, 1, 1),       // everything smaller than a tile
      conv_shape(3, 13, 11, 70, 65, 3, 2, 1, 1),   // stride 2, odd sizes, partial tiles in M, N and K
      conv_shape(2, 17, 17, 33, 129, 3, 1, 3, 3),  // dilation 3 with pad 3
      conv_shape(2, 10, 10, 24, 40, 1, 1, 0, 1),   // 1x1
      conv_shape(1, 9, 9, 16, 8, 3, 1, 0, 1),      // no padding
      conv_shape(2, 12, 10, 20, 17, 1, 2, 0, 1),   // 1x1 stride 2: pixels no output reaches
      conv_shape(1, 16, 14, 19, 23, 3, 2, 2, 2),   // stride 2 with dilation 2: a parity class with no tap
      conv_shape(1, 11, 13, 9, 21, 5, 3, 2, 2),    // stride 3: taps in steps of 3
      conv_shape(2, 23, 19, 67, 18, 3, 1, 1, 1),   // cout not a multiple of 16
      conv_shape(1, 40, 40, 3, 70, 3, 1, 1, 1),    // cin 3 (stem): many pixels, one column tile
      conv_shape(2, 1, 9, 8, 8, 1, 2, 0, 1),       // h < stride: an empty parity class
      rect(2, 9, 7, 12, 20, 3, 1, 2, 1, 2),   // 3x1 kernel, stride 2, dilation 2, pad 1
  };
}

// ---- Backward-data with the BN-backward sums ----

// c doubles of device memory as a DevFloats of 2 c floats, so that run_twice poisons them and
// compares their bits.
double* dptr(const DevFloats& b) { return reinterpret_cast<double*>(b.p()); }
std::vector<double> as_doubles(const Floats& f) {
  std::vector<double> d(f.size() / 2);
  std::memcpy(d.data(), f.data(), d.size() * sizeof(double));
  return d;
}

// Largest errors of the sums seen by the current test, each as a fraction of its tolerance (<= 1
// passes): self, against the host sums of the kernel's own dx (1e-12 sum |terms|); spec, against
// the CPU (the dx tolerance summed over the channel); bn, the fused BN backward against the
// two-pass one (see close_bn).
struct MaxSumErr {
  double self = 0, spec = 0, bn = 0;
} g_sum_err;

void print_sum_err() {
  std::printf("[ max err  ] sums, fraction of the tolerance: vs host sums of own dx %.3g, vs CPU %.3g; fused BN "
              "backward vs two-pass %.3g\n",
              g_sum_err.self, g_sum_err.spec, g_sum_err.bn);
  g_sum_err = MaxSumErr{};
}

// |got - want| <= tol (finite got), the ratio recorded in *worst.
::testing::AssertionResult within(double got, double want, double tol, double* worst, const char* what, int c) {
  const double err = std::fabs(got - want);
  if (!(err <= tol))
    return ::testing::AssertionFailure() << what << " channel " << c << ": got " << got << ", want " << want
                                         << " (tolerance " << tol << ")";
  if (tol > 0) *worst = std::max(*worst, err / tol);
  return ::testing::AssertionSuccess();
}

// fused BN backward (from_sums) against two-pass (ref): |got - ref| <= 2^-22 |ref| + 1e-12 scale[i]
// (an ulp or so of float rounding, plus the sums' summation-order difference carried through the
// double arithmetic), NaN where ref is NaN.
::testing::AssertionResult close_bn(const Floats& got, const Floats& ref, const std::vector<double>& scale,
                                    const char* what) {
  for (size_t i = 0; i < ref.size(); ++i) {
    if (std::isnan(ref[i]) && std::isnan(got[i])) continue;
    const double err = std::fabs(double(got[i]) - double(ref[i]));
    const double tol = 0x1p-22 * std::fabs(double(ref[i])) + 1e-12 * scale[i];
    if (!(err <= tol))
      return ::testing::AssertionFailure() << what << " element " << i << ": got " << got[i] << ", want " << ref[i]
                                           << " (tolerance " << tol << ")";
    if (tol > 0) g_sum_err.bn = std::max(g_sum_err.bn, err / tol);
  }
  return ::testing::AssertionSuccess();
}

// The fused BN backward (batchnorm_backward_from_sums on the kernel's sums) against
// cuda::batchnorm_backward of the same dy: x's BN has saved statistics p.mean and p.invstd.
void check_bn_backward_from_sums(const cpu::Conv2dShape& s, const Stream& st, const DevFloats& d_x,
                                 const DevFloats& d_dy, const DevBn& d_bn, const double* d_sdy,
                                 const double* d_sdyx, const Floats& x, const Floats& dy, const BnParams& p) {
  const int64_t count = int64_t(s.n) * s.h * s.w;
  const int c = s.cin;
  DevFloats two_dx(sz(in_count(s))), two_dg(sz(c)), two_db(sz(c));
  DevFloats one_dx(sz(in_count(s))), one_dg(sz(c)), one_db(sz(c));
  DevBuf ws(cuda::batchnorm_workspace_bytes(count, c));
  cuda::batchnorm_backward(count, c, d_x.p(), d_dy.p(), d_bn.gamma.p(), d_bn.mean.p(), d_bn.invstd.p(), two_dx.p(),
                           two_dg.p(), two_db.p(), ws.data(), st);
  cuda::batchnorm_backward_from_sums(count, c, d_x.p(), d_dy.p(), d_bn.gamma.p(), d_bn.mean.p(), d_bn.invstd.p(),
                                     d_sdy, d_sdyx, one_dx.p(), one_dg.p(), one_db.p(), st);
  st.sync();
  // Scales: per element gamma invstd (|dy| + mean |dy| + |xhat| mean |dy xhat|), the size of the
  // terms of dx and of the sums' effect on it; per channel the sums of magnitudes.
  std::vector<double> abs_dy(sz(c), 0.0), abs_dyx(sz(c), 0.0);
  for (int64_t i = 0; i < in_count(s); ++i) {
    const int ch = int(i % c);
    const double xhat = (double(x[sz(i)]) - p.mean[sz(ch)]) * p.invstd[sz(ch)];
    abs_dy[sz(ch)] += std::fabs(double(dy[sz(i)]));
    abs_dyx[sz(ch)] += std::fabs(double(dy[sz(i)]) * xhat);
  }
  std::vector<double> scale_dx(sz(in_count(s)));
  for (int64_t i = 0; i < in_count(s); ++i) {
    const int ch = int(i % c);
    const double xhat = (double(x[sz(i)]) - p.mean[sz(ch)]) * p.invstd[sz(ch)];
    scale_dx[sz(i)] = std::fabs(double(p.gamma[sz(ch)]) * p.invstd[sz(ch)]) *
                      (std::fabs(double(dy[sz(i)])) + (abs_dy[sz(ch)] + std::fabs(xhat) * abs_dyx[sz(ch)]) / count);
  }
  EXPECT_TRUE(close_bn(one_dx.get(), two_dx.get(), scale_dx, "BN dx"));
  EXPECT_TRUE(close_bn(one_dg.get(), two_dg.get(), abs_dyx, "dgamma"));
  EXPECT_TRUE(close_bn(one_db.get(), two_db.get(), abs_dy, "dbeta"));
  expect_guards({&two_dx, &two_dg, &two_db, &one_dx, &one_dg, &one_db, &ws});
}

void check_data_sums(const cpu::Conv2dShape& s) {
  SCOPED_TRACE(shape_str(s) + " backward-data with BN sums");
  const int64_t count = int64_t(s.n) * s.h * s.w;
  const int c = s.cin;
  const Floats x = normal(sz(in_count(s)), 0.2f, 1.f);
  const Floats dz = normal(sz(out_count(s)));
  const Floats w = uniform(sz(w_count(s)), -0.2f, 0.2f);
  const BnParams p = random_bn(c);

  // The reference dx: the CPU's conv backward-data with the kernel's (float) mask, as check_data.
  Floats ref(sz(in_count(s)));
  Floats cws(cpu::conv2d_backward_data_workspace(s));
  cpu::conv2d_backward_data(s, dz.data(), w.data(), ref.data(), cws.data());
  for (int64_t i = 0; i < in_count(s); ++i)
    if (!(bn_float(x[sz(i)], p, int(i % c)) > 0.f)) ref[sz(i)] = 0.f;

  Stream st;
  DevFloats d_dz(dz), d_w(hwio_to_ohwi(s, w)), d_x(x), d_plain(sz(in_count(s))), d_dx(sz(in_count(s)));
  DevFloats d_sdy(2 * sz(c)), d_sdyx(2 * sz(c));
  DevBn d_bn(p);
  const size_t ws_bytes = cuda::bn_relu_conv_backward_data_sums_workspace_bytes(s);
  ASSERT_GT(ws_bytes, 0u);
  DevBuf d_ws(ws_bytes);
  cuda::bn_relu_conv_backward_data(s, d_dz.p(), d_w.p(), d_x.p(), d_bn.gamma.p(), d_bn.beta.p(), d_bn.mean.p(),
                                   d_bn.invstd.p(), d_plain.p(), st);
  st.sync();
  const auto out = run_twice(st, {&d_dx, &d_sdy, &d_sdyx}, [&] { d_ws.poison(); }, [&] {
    cuda::bn_relu_conv_backward_data_with_sums(s, d_dz.p(), d_w.p(), d_x.p(), d_bn.gamma.p(), d_bn.beta.p(),
                                               d_bn.mean.p(), d_bn.invstd.p(), d_dx.p(), dptr(d_sdy), dptr(d_sdyx),
                                               d_ws.data(), st);
  });
  const Floats& dx = out[0];
  EXPECT_TRUE(same_bits(dx, d_plain.get())) << "dx differs from bn_relu_conv_backward_data's";
  EXPECT_TRUE(close(dx, ref, &g_max_err.dx));
  const std::vector<double> sdy = as_doubles(out[1]), sdyx = as_doubles(out[2]);

  // The same sums on the host from the kernel's own dx, formed as batchnorm_backward forms them.
  std::vector<double> h_sdy(sz(c), 0.0), h_sdyx(sz(c), 0.0), m_dy(sz(c), 0.0), m_dyx(sz(c), 0.0);
  for (int64_t i = 0; i < in_count(s); ++i) {
    const int ch = int(i % c);
    const double g = dx[sz(i)], t = g * (double(x[sz(i)]) - double(p.mean[sz(ch)]));
    h_sdy[sz(ch)] += g;
    h_sdyx[sz(ch)] += t;
    m_dy[sz(ch)] += std::fabs(g);
    m_dyx[sz(ch)] += std::fabs(t);
  }
  // The specification: cpu::batchnorm_backward (in double, on the reference dx) gives
  // dbeta = sum dy and dgamma = sum dy * xhat. Its tolerance: the dx tolerance of each element,
  // kRtol (|ref| + rms(ref)), summed over the channel (times |xhat| for the second sum).
  const size_t n_in = sz(in_count(s));
  std::vector<double> xd(x.begin(), x.end()), refd(ref.begin(), ref.end()), outd(n_in);
  const std::vector<double> gd(p.gamma.begin(), p.gamma.end()), md(p.mean.begin(), p.mean.end()),
      id(p.invstd.begin(), p.invstd.end());
  std::vector<double> spec_dg(sz(c)), spec_db(sz(c));
  cpu::batchnorm_backward(count, c, xd.data(), refd.data(), gd.data(), md.data(), id.data(), outd.data(),
                          spec_dg.data(), spec_db.data());
  double ss = 0;
  for (float v : ref) ss += double(v) * v;
  const double rms = std::sqrt(ss / double(n_in));
  std::vector<double> tol_dy(sz(c), 0.0), tol_dyx(sz(c), 0.0);
  for (int64_t i = 0; i < in_count(s); ++i) {
    const int ch = int(i % c);
    const double t = kRtol * (std::fabs(double(ref[sz(i)])) + rms);
    tol_dy[sz(ch)] += t;
    tol_dyx[sz(ch)] += t * std::fabs((double(x[sz(i)]) - md[sz(ch)]) * id[sz(ch)]);
  }
  for (int ch = 0; ch < c; ++ch) {
    const double inv = double(p.invstd[sz(ch)]);
    EXPECT_TRUE(within(sdy[sz(ch)], h_sdy[sz(ch)], 1e-12 * m_dy[sz(ch)], &g_sum_err.self, "sum_dy vs host", ch));
    EXPECT_TRUE(within(sdyx[sz(ch)], h_sdyx[sz(ch)] * inv, 1e-12 * m_dyx[sz(ch)] * inv, &g_sum_err.self,
                       "sum_dy_xhat vs host", ch));
    EXPECT_TRUE(within(sdy[sz(ch)], spec_db[sz(ch)], tol_dy[sz(ch)], &g_sum_err.spec, "sum_dy vs CPU", ch));
    EXPECT_TRUE(within(sdyx[sz(ch)], spec_dg[sz(ch)], tol_dyx[sz(ch)], &g_sum_err.spec, "sum_dy_xhat vs CPU", ch));
  }
  check_bn_backward_from_sums(s, st, d_x, d_dx, d_bn, dptr(d_sdy), dptr(d_sdyx), x, dx, p);
  expect_guards({&d_dz, &d_w, &d_x, &d_plain, &d_dx, &d_sdy, &d_sdyx, &d_ws, &d_bn.gamma, &d_bn.beta, &d_bn.mean,
                 &d_bn.invstd});
}

}  // namespace

TEST(BnReluConvBwdHost, RejectsBadArguments) {
  const cpu::Conv2dShape ok = conv_shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_can_run(ok));
  EXPECT_TRUE(cuda::bn_relu_conv_bwd_can_run(conv_shape(1, 8, 8, 4096, 16, 3, 1, 1, 1)));  // no per-channel table limit
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1)));   // empty output
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(conv_shape(1, 8, 8, 16, 16, 3, 0, 1, 1)));   // stride 0
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(conv_shape(1, 8, 8, 16, 16, 3, 1, -1, 1)));  // negative pad
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(conv_shape(1, 8, 8, 0, 16, 3, 1, 1, 1)));    // no channel
  EXPECT_FALSE(cuda::bn_relu_conv_bwd_can_run(conv_shape(1, 300, 300, 1, 1, 1, 256, 0, 1)));  // stride > 255
  EXPECT_EQ(cuda::bn_relu_conv_backward_filter_workspace_bytes(conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1)), 0u);

  float dummy[4] = {};
  float* f = dummy;
  const cpu::Conv2dShape empty = conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1);
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
  const cpu::Conv2dShape split = conv_shape(2, 64, 64, 16, 16, 3, 1, 1, 1);  // few tiles, many pixels: split
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
  const std::vector<cpu::Conv2dShape> shapes = thin_for_emulator(fused_chain_shapes(64, 2));
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) check_both(s, true);
  print_max_err();
}

TEST(BnReluConvBwdGpu, NetworkShapesAt256MatchCpu) {
  REQUIRE_GPU();
  std::string skip;
  const std::vector<cpu::Conv2dShape> shapes = large_network_shapes(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) check_both(s, true);
  print_max_err();
}

TEST(BnReluConvBwdGpu, RaggedShapesAndPlainConvMatchCpu) {
  REQUIRE_GPU();
  for (const cpu::Conv2dShape& s : ragged_shapes()) {
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
      conv_shape(2, 8, 8, 40, 24, 3, 1, 6, 6),     conv_shape(2, 8, 8, 24, 40, 3, 1, 12, 12),
      conv_shape(2, 16, 16, 32, 32, 3, 1, 18, 18), conv_shape(1, 4, 4, 16, 16, 3, 1, 18, 18),
      conv_shape(1, 20, 20, 8, 8, 3, 1, 0, 6),     conv_shape(2, 14, 13, 8, 12, 3, 2, 6, 6),
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
  const cpu::Conv2dShape s = conv_shape(1, 5, 6, 8, 8, 3, 2, 1, 1);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Floats x = normal(sz(in_count(s)), 0.2f, 1.f);
  const int nan_pix[2][3] = {{0, 0, 3}, {2, 3, 5}};  // (y, x, channel)
  for (const auto& q : nan_pix) x[sz((q[0] * s.w + q[1]) * s.cin + q[2])] = nan;
  const Floats dz = normal(sz(out_count(s)));
  const Floats w = uniform(sz(w_count(s)), -0.2f, 0.2f);
  const BnParams p = random_bn(s.cin);
  Stream st;
  DevFloats d_x(x), d_dz(dz), d_w(hwio_to_ohwi(s, w)), d_dx(sz(in_count(s))), d_dw(sz(w_count(s))), d_db(sz(s.cout));
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

// ---- Backward-data with the BN-backward sums ----

// The workspace formula, and the argument checks (no device needed).
TEST(BnReluConvBwdHost, SumsWorkspaceAndArguments) {
  for (const cpu::Conv2dShape& s : {conv_shape(2, 64, 64, 16, 16, 3, 1, 1, 1), conv_shape(3, 13, 11, 70, 65, 3, 2, 1, 1),
                                    conv_shape(2, 1, 9, 8, 8, 1, 2, 0, 1), conv_shape(1, 11, 13, 9, 21, 5, 3, 2, 2)}) {
    SCOPED_TRACE(shape_str(s));
    const int64_t q = s.stride;
    const int64_t tiles = q * q * ((int64_t(s.n) * ((s.h + q - 1) / q) * ((s.w + q - 1) / q) + 63) / 64);
    const size_t bytes = size_t(2 * tiles * s.cin) * sizeof(double);
    EXPECT_EQ(cuda::bn_relu_conv_backward_data_sums_workspace_bytes(s), (bytes + 255) / 256 * 256);
  }
  const cpu::Conv2dShape empty = conv_shape(1, 2, 2, 16, 16, 5, 1, 0, 1);
  EXPECT_EQ(cuda::bn_relu_conv_backward_data_sums_workspace_bytes(empty), 0u);

  const cpu::Conv2dShape ok = conv_shape(1, 8, 8, 16, 16, 3, 1, 1, 1);
  alignas(16) static unsigned char ws[4096];
  ASSERT_LE(cuda::bn_relu_conv_backward_data_sums_workspace_bytes(ok), sizeof(ws));
  float dummy[4] = {};
  float* f = dummy;
  double dd[2] = {};
  double* d = dd;
  using cuda::bn_relu_conv_backward_data_with_sums;
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(empty, f, f, f, f, f, f, f, f, d, d, ws, nullptr), Error);
  // Every pointer is required: the BN arguments (no plain mode), the sums and the workspace.
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, nullptr, f, f, f, f, f, d, d, ws, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, f, nullptr, f, f, f, f, d, d, ws, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, f, f, f, f, nullptr, f, d, d, ws, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, f, f, f, f, f, nullptr, d, d, ws, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, f, f, f, f, f, f, nullptr, d, ws, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, f, f, f, f, f, f, d, nullptr, ws, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, f, f, f, f, f, f, d, d, nullptr, nullptr), Error);
  EXPECT_THROW(bn_relu_conv_backward_data_with_sums(ok, f, f, f, f, f, f, f, f, d, d, ws + 8, nullptr), Error);
}

TEST(BnReluConvBwdGpu, SumsAtNetworkShapes64MatchCpu) {
  REQUIRE_GPU();
  const std::vector<cpu::Conv2dShape> shapes = thin_for_emulator(fused_chain_shapes(64, 2));
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) check_data_sums(s);
  print_max_err();
  print_sum_err();
}

TEST(BnReluConvBwdGpu, SumsAt256NetworkShapesMatchCpu) {
  REQUIRE_GPU();
  std::string skip;
  const std::vector<cpu::Conv2dShape> shapes = large_network_shapes(&skip);
  if (!skip.empty()) GTEST_SKIP() << skip;
  ASSERT_FALSE(shapes.empty());
  for (const cpu::Conv2dShape& s : shapes) check_data_sums(s);
  print_max_err();
  print_sum_err();
}

TEST(BnReluConvBwdGpu, SumsAtRaggedShapesMatchCpu) {
  REQUIRE_GPU();
  for (const cpu::Conv2dShape& s : ragged_shapes()) check_data_sums(s);
  const cpu::Conv2dShape more[] = {
      conv_shape(2, 8, 8, 40, 24, 3, 1, 6, 6), conv_shape(2, 14, 13, 8, 12, 3, 2, 6, 6),  // ASPP-like: most taps outside
      conv_shape(4, 96, 90, 5, 7, 3, 1, 1, 1),    // 540 tiles: the reduction's strided loop runs 3 times
      conv_shape(2, 131, 129, 6, 4, 3, 2, 1, 1),  // stride 2, 532 tiles, classes of 4 sizes
  };
  for (const cpu::Conv2dShape& s : more) check_data_sums(s);
  print_max_err();
  print_sum_err();
}

// NaN in x: the mask zeroes dx there, so sum_dy stays finite, but dx * (x - mean) is NaN, so
// sum_dy_xhat is NaN for exactly the NaN channels, as cuda::batchnorm_backward's dgamma is; the
// fused BN backward then gives the two-pass NaN pattern in dx and dgamma.
TEST(BnReluConvBwdGpu, SumsWithNaNInXFollowBatchnormBackward) {
  REQUIRE_GPU();
  const cpu::Conv2dShape s = conv_shape(1, 5, 6, 8, 8, 3, 2, 1, 1);
  const int64_t count = int64_t(s.n) * s.h * s.w;
  const int c = s.cin;
  Floats x = normal(sz(in_count(s)), 0.2f, 1.f);
  const int nan_pix[2][3] = {{0, 0, 3}, {2, 3, 5}};  // (y, x, channel)
  for (const auto& q : nan_pix) x[sz((q[0] * s.w + q[1]) * s.cin + q[2])] = std::numeric_limits<float>::quiet_NaN();
  const Floats dz = normal(sz(out_count(s)));
  const Floats w = uniform(sz(w_count(s)), -0.2f, 0.2f);
  const BnParams p = random_bn(c);
  Stream st;
  DevFloats d_x(x), d_dz(dz), d_w(hwio_to_ohwi(s, w)), d_dx(sz(in_count(s))), d_sdy(2 * sz(c)), d_sdyx(2 * sz(c));
  DevBn d_bn(p);
  DevBuf d_ws(cuda::bn_relu_conv_backward_data_sums_workspace_bytes(s));
  cuda::bn_relu_conv_backward_data_with_sums(s, d_dz.p(), d_w.p(), d_x.p(), d_bn.gamma.p(), d_bn.beta.p(),
                                             d_bn.mean.p(), d_bn.invstd.p(), d_dx.p(), dptr(d_sdy), dptr(d_sdyx),
                                             d_ws.data(), st);
  DevFloats two_dx(sz(in_count(s))), two_dg(sz(c)), two_db(sz(c)), one_dx(sz(in_count(s))), one_dg(sz(c)),
      one_db(sz(c));
  DevBuf bws(cuda::batchnorm_workspace_bytes(count, c));
  cuda::batchnorm_backward(count, c, d_x.p(), d_dx.p(), d_bn.gamma.p(), d_bn.mean.p(), d_bn.invstd.p(), two_dx.p(),
                           two_dg.p(), two_db.p(), bws.data(), st);
  cuda::batchnorm_backward_from_sums(count, c, d_x.p(), d_dx.p(), d_bn.gamma.p(), d_bn.mean.p(), d_bn.invstd.p(),
                                     dptr(d_sdy), dptr(d_sdyx), one_dx.p(), one_dg.p(), one_db.p(), st);
  st.sync();
  const std::vector<double> sdy = as_doubles(d_sdy.get()), sdyx = as_doubles(d_sdyx.get());
  const Floats tdg = two_dg.get(), odg = one_dg.get(), tdx = two_dx.get(), odx = one_dx.get();
  for (int ch = 0; ch < c; ++ch) {
    const bool bad = ch == 3 || ch == 5;
    SCOPED_TRACE("channel " + std::to_string(ch));
    EXPECT_TRUE(std::isfinite(sdy[sz(ch)]));
    EXPECT_EQ(std::isnan(sdyx[sz(ch)]), bad);
    EXPECT_EQ(std::isnan(tdg[sz(ch)]), bad) << "the two-pass BN backward's dgamma";
    EXPECT_EQ(std::isnan(odg[sz(ch)]), bad);
  }
  for (size_t i = 0; i < tdx.size(); ++i) ASSERT_EQ(std::isnan(odx[i]), std::isnan(tdx[i])) << "BN dx element " << i;
  for (float v : one_db.get()) EXPECT_TRUE(std::isfinite(v));
  expect_guards({&d_x, &d_dz, &d_w, &d_dx, &d_sdy, &d_sdyx, &d_ws, &two_dx, &two_dg, &two_db, &one_dx, &one_dg,
                 &one_db, &bws});
}
