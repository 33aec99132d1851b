// tests/test_kernels_conv2d.cpp — the CPU convolution (kernels/cpu/conv2d.h) and its GEMM.
//
//   ./test_kernels_conv2d   (well under a second in Release; RESUNETPP_THREADS=1/3/... changes the
//                            pool size, and with it the tiling and the partial-sum reduction)
//
// - Exact: small-integer tensors make every float sum exact, so forward, backward-data,
//   backward-filter and dbias must equal a direct 7-loop reference bit for bit, over kernels 1/3,
//   strides 1/2, dilations 1..18, padding 0 or = dilation, odd and even sizes, channel counts
//   that are not multiples of the vector width, and taps that fall entirely outside the image.
// - Every output and the workspace sit between guard elements and are poisoned with NaN before
//   the call: a write out of bounds breaks a guard, an unwritten or uninitialised-read element
//   leaves a NaN behind.
// - Central differences in double on loss = sum(y * r).
// - Determinism, the GEMM on its own, and invalid shapes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/cpu/conv2d.h"
#include "runtime/error.h"

namespace {

using rpp::cpu::Conv2dShape;

Conv2dShape make_shape(int n, int h, int w, int cin, int cout, int k, int stride, int pad,
                       int dil) {
  Conv2dShape s;
  s.n = n, s.h = h, s.w = w, s.cin = cin, s.cout = cout;
  s.kh = k, s.kw = k, s.stride = stride, s.pad = pad, s.dil = dil;
  return s;
}

std::string name(const Conv2dShape& s) {
  std::ostringstream os;
  os << "N" << s.n << " " << s.h << "x" << s.w << " " << s.cin << "->" << s.cout << " k" << s.kh
     << "x" << s.kw << " s" << s.stride << " p" << s.pad << " d" << s.dil;
  return os.str();
}

bool valid(const Conv2dShape& s) {
  return s.dil * (s.kh - 1) + 1 <= s.h + 2 * s.pad && s.dil * (s.kw - 1) + 1 <= s.w + 2 * s.pad;
}

size_t x_size(const Conv2dShape& s) { return size_t(s.n) * s.h * s.w * s.cin; }
size_t y_size(const Conv2dShape& s) { return size_t(s.n) * s.ho() * s.wo() * s.cout; }
size_t w_size(const Conv2dShape& s) { return size_t(s.kh) * s.kw * s.cin * s.cout; }

// A buffer with kGuard sentinel elements on each side of the n usable ones.
template <class T>
class Guarded {
 public:
  static constexpr size_t kGuard = 67;
  explicit Guarded(size_t n) : n_(n), buf_(n + 2 * kGuard) {
    for (size_t i = 0; i < kGuard; ++i) buf_[i] = buf_[kGuard + n + i] = sentinel(i);
    poison();
  }
  T* data() { return buf_.data() + kGuard; }
  const T* data() const { return buf_.data() + kGuard; }
  size_t size() const { return n_; }
  T& operator[](size_t i) { return data()[i]; }
  const T& operator[](size_t i) const { return data()[i]; }
  void poison() { std::fill(data(), data() + n_, std::numeric_limits<T>::quiet_NaN()); }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i) {
      const T a = sentinel(i);
      if (std::memcmp(&buf_[i], &a, sizeof(T)) != 0) return false;
      if (std::memcmp(&buf_[kGuard + n_ + i], &a, sizeof(T)) != 0) return false;
    }
    return true;
  }
  size_t count_nan() const {
    size_t c = 0;
    for (size_t i = 0; i < n_; ++i) c += std::isnan(data()[i]) ? 1 : 0;
    return c;
  }

 private:
  static T sentinel(size_t i) { return T(-1234.5) - T(i); }
  size_t n_;
  std::vector<T> buf_;
};

template <class T>
std::vector<T> random_ints(size_t n, std::mt19937& rng, int lo = -3, int hi = 3) {
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<T> v(n);
  for (auto& e : v) e = T(d(rng));
  return v;
}

template <class T>
std::vector<T> random_reals(size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  std::vector<T> v(n);
  for (auto& e : v) e = T(d(rng));
  return v;
}

// ---- direct 7-loop references (double accumulation) ----

template <class T>
void ref_forward(const Conv2dShape& s, const T* x, const T* w, const T* b, T* y) {
  const int ho = s.ho(), wo = s.wo();
  for (int n = 0; n < s.n; ++n)
    for (int oy = 0; oy < ho; ++oy)
      for (int ox = 0; ox < wo; ++ox)
        for (int co = 0; co < s.cout; ++co) {
          double acc = b ? double(b[co]) : 0.0;
          for (int kh = 0; kh < s.kh; ++kh)
            for (int kw = 0; kw < s.kw; ++kw)
              for (int ci = 0; ci < s.cin; ++ci) {
                const int iy = oy * s.stride - s.pad + kh * s.dil;
                const int ix = ox * s.stride - s.pad + kw * s.dil;
                if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                acc += double(x[((size_t(n) * s.h + iy) * s.w + ix) * s.cin + ci]) *
                       double(w[((size_t(kh) * s.kw + kw) * s.cin + ci) * s.cout + co]);
              }
          y[((size_t(n) * ho + oy) * wo + ox) * s.cout + co] = T(acc);
        }
}

template <class T>
void ref_backward(const Conv2dShape& s, const T* x, const T* w, const T* dy, T* dx, T* dw,
                  T* db) {
  const int ho = s.ho(), wo = s.wo();
  std::vector<double> adx(x_size(s), 0.0), adw(w_size(s), 0.0), adb(size_t(s.cout), 0.0);
  for (int n = 0; n < s.n; ++n)
    for (int oy = 0; oy < ho; ++oy)
      for (int ox = 0; ox < wo; ++ox)
        for (int co = 0; co < s.cout; ++co) {
          const double g = dy[((size_t(n) * ho + oy) * wo + ox) * s.cout + co];
          adb[size_t(co)] += g;
          for (int kh = 0; kh < s.kh; ++kh)
            for (int kw = 0; kw < s.kw; ++kw)
              for (int ci = 0; ci < s.cin; ++ci) {
                const int iy = oy * s.stride - s.pad + kh * s.dil;
                const int ix = ox * s.stride - s.pad + kw * s.dil;
                if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
                const size_t xi = ((size_t(n) * s.h + iy) * s.w + ix) * s.cin + ci;
                const size_t wi = ((size_t(kh) * s.kw + kw) * s.cin + ci) * s.cout + co;
                adx[xi] += g * double(w[wi]);
                adw[wi] += g * double(x[xi]);
              }
        }
  for (size_t i = 0; i < adx.size(); ++i) dx[i] = T(adx[i]);
  for (size_t i = 0; i < adw.size(); ++i) dw[i] = T(adw[i]);
  for (size_t i = 0; i < adb.size(); ++i) db[i] = T(adb[i]);
}

// ---- running the kernels with guards and poison ----

template <class T>
struct Outputs {
  std::vector<T> y, dx, dw, db;
};

// Runs the three passes with guarded, NaN-poisoned outputs and workspace sized exactly by the
// *_workspace functions; records failures (guards, leftover NaN) against `what`.
template <class T>
Outputs<T> run_all(const Conv2dShape& s, const std::vector<T>& x, const std::vector<T>& w,
                   const std::vector<T>* b, const std::vector<T>& dy, bool want_db,
                   const std::string& what) {
  Outputs<T> out;
  {
    Guarded<T> y(y_size(s)), ws(rpp::cpu::conv2d_forward_workspace(s));
    rpp::cpu::conv2d_forward<T>(s, x.data(), w.data(), b ? b->data() : nullptr, y.data(),
                                ws.data());
    EXPECT_TRUE(y.guards_intact()) << what << ": forward wrote outside y";
    EXPECT_TRUE(ws.guards_intact()) << what << ": forward wrote outside its workspace";
    EXPECT_EQ(y.count_nan(), 0u) << what << ": forward left elements of y unwritten";
    out.y.assign(y.data(), y.data() + y.size());
  }
  {
    Guarded<T> dx(x_size(s)), ws(rpp::cpu::conv2d_backward_data_workspace(s));
    rpp::cpu::conv2d_backward_data<T>(s, dy.data(), w.data(), dx.data(), ws.data());
    EXPECT_TRUE(dx.guards_intact()) << what << ": backward-data wrote outside dx";
    EXPECT_TRUE(ws.guards_intact()) << what << ": backward-data wrote outside its workspace";
    EXPECT_EQ(dx.count_nan(), 0u) << what << ": backward-data left elements of dx unwritten";
    out.dx.assign(dx.data(), dx.data() + dx.size());
  }
  {
    Guarded<T> dw(w_size(s)), db(size_t(s.cout)),
        ws(rpp::cpu::conv2d_backward_filter_workspace(s));
    rpp::cpu::conv2d_backward_filter<T>(s, x.data(), dy.data(), dw.data(),
                                        want_db ? db.data() : nullptr, ws.data());
    EXPECT_TRUE(dw.guards_intact()) << what << ": backward-filter wrote outside dw";
    EXPECT_TRUE(db.guards_intact()) << what << ": backward-filter wrote outside dbias";
    EXPECT_TRUE(ws.guards_intact()) << what << ": backward-filter wrote outside its workspace";
    EXPECT_EQ(dw.count_nan(), 0u) << what << ": backward-filter left elements of dw unwritten";
    if (want_db) {
      EXPECT_EQ(db.count_nan(), 0u) << what << ": backward-filter left dbias unwritten";
    } else {
      EXPECT_EQ(db.count_nan(), db.size()) << what << ": dbias written although null";
    }
    out.dw.assign(dw.data(), dw.data() + dw.size());
    out.db.assign(db.data(), db.data() + db.size());
  }
  return out;
}

// Index of the first differing element, or -1.
template <class T>
long first_mismatch(const std::vector<T>& a, const std::vector<T>& b) {
  if (a.size() != b.size()) return 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i])) return long(i);
  return -1;
}

// Exact comparison of all three passes against the reference, small integers.
template <class T = float>
void check_exact(const Conv2dShape& s, bool with_bias, unsigned seed) {
  const std::string what = name(s) + (with_bias ? " bias" : " nobias") +
                           (sizeof(T) == 8 ? " double" : " float");
  std::mt19937 rng(seed);
  const auto x = random_ints<T>(x_size(s), rng);
  const auto w = random_ints<T>(w_size(s), rng);
  const auto b = random_ints<T>(size_t(s.cout), rng);
  const auto dy = random_ints<T>(y_size(s), rng);
  const Outputs<T> got = run_all<T>(s, x, w, with_bias ? &b : nullptr, dy, with_bias, what);

  std::vector<T> y(y_size(s)), dx(x_size(s)), dw(w_size(s)), db(size_t(s.cout));
  ref_forward(s, x.data(), w.data(), with_bias ? b.data() : nullptr, y.data());
  ref_backward(s, x.data(), w.data(), dy.data(), dx.data(), dw.data(), db.data());

  long i;
  i = first_mismatch(got.y, y);
  EXPECT_EQ(i, -1) << what << ": forward differs at " << i << ": " << got.y[size_t(std::max(i, 0L))]
                   << " vs " << y[size_t(std::max(i, 0L))];
  i = first_mismatch(got.dx, dx);
  EXPECT_EQ(i, -1) << what << ": backward-data differs at " << i << ": "
                   << got.dx[size_t(std::max(i, 0L))] << " vs " << dx[size_t(std::max(i, 0L))];
  i = first_mismatch(got.dw, dw);
  EXPECT_EQ(i, -1) << what << ": backward-filter differs at " << i << ": "
                   << got.dw[size_t(std::max(i, 0L))] << " vs " << dw[size_t(std::max(i, 0L))];
  if (with_bias) {
    i = first_mismatch(got.db, db);
    EXPECT_EQ(i, -1) << what << ": dbias differs at " << i;
  }
}

// ---- 1. exact tests ----

TEST(Conv2dExact, Kernel3AllStridesDilationsPaddings) {
  // (H, W) sizes: even, odd/odd-mixed, and small enough that large dilations leave only the
  // centre tap (or none of the outer ones) inside the image.
  const int sizes[][2] = {{8, 8}, {7, 5}, {6, 9}};
  const int chans[][3] = {{1, 3, 5}, {3, 17, 16}, {1, 5, 33}, {3, 16, 17}, {1, 12, 48}};
  int round = 0;
  for (int stride : {1, 2})
    for (int dil : {1, 2, 6, 12, 18})
      for (int pad_is_dil : {0, 1})
        for (const auto& hw : sizes) {
          // Every channel combination, each with and without bias.
          for (int pick = 0; pick < 5; ++pick) {
            const auto& c = chans[pick];
            const Conv2dShape s =
                make_shape(c[0], hw[0], hw[1], c[1], c[2], 3, stride, pad_is_dil ? dil : 0, dil);
            if (!valid(s)) continue;
            check_exact(s, true, unsigned(round * 16 + pick * 2));
            check_exact(s, false, unsigned(round * 16 + pick * 2 + 1));
          }
          ++round;
        }
}

TEST(Conv2dExact, Kernel1) {
  const int chans[][3] = {{3, 16, 16}, {1, 5, 3}, {3, 17, 33}, {1, 32, 1}};
  int round = 0;
  for (int stride : {1, 2})
    for (int pad : {0, 1})
      for (const auto& hw : {std::pair<int, int>{8, 8}, std::pair<int, int>{7, 5}}) {
        const auto& c = chans[round % 4];
        ++round;
        for (bool bias : {true, false})
          check_exact(make_shape(c[0], hw.first, hw.second, c[1], c[2], 1, stride, pad, 1), bias,
                      100u + unsigned(round));
      }
}

TEST(Conv2dExact, SeveralTilesPerThreadAndKBlocks) {
  // K = 9*64 = 576 spans three GEMM k-blocks; 512 output pixels give each thread several tiles;
  // Cout 40 = one wide panel plus a narrow one.
  check_exact(make_shape(2, 16, 16, 64, 40, 3, 1, 1, 1), true, 7u);
  check_exact(make_shape(2, 16, 15, 40, 24, 3, 2, 1, 1), true, 8u);
  check_exact(make_shape(1, 12, 12, 32, 64, 3, 1, 6, 6), false, 9u);
  check_exact(make_shape(3, 20, 20, 7, 19, 1, 1, 0, 1), true, 10u);
}

TEST(Conv2dExact, Double) {
  // Same workspace sizes serve double: the layouts do not depend on the scalar type.
  check_exact<double>(make_shape(2, 8, 8, 17, 33, 3, 1, 1, 1), true, 71u);
  check_exact<double>(make_shape(1, 9, 7, 5, 12, 3, 2, 1, 1), true, 72u);
  check_exact<double>(make_shape(3, 8, 8, 16, 9, 3, 1, 6, 6), false, 73u);
  check_exact<double>(make_shape(1, 8, 8, 16, 9, 3, 1, 12, 12), true, 74u);
  check_exact<double>(make_shape(2, 6, 6, 20, 3, 1, 2, 0, 1), true, 75u);
  check_exact<double>(make_shape(2, 16, 16, 40, 24, 3, 1, 1, 1), true, 76u);
}

TEST(Conv2dExact, RectangularKernelsAndLargeStride) {
  Conv2dShape s = make_shape(2, 9, 7, 5, 6, 3, 3, 1, 2);
  s.kw = 2;
  check_exact(s, true, 11u);
  s = make_shape(1, 6, 11, 3, 9, 1, 1, 2, 1);
  s.kh = 5;
  check_exact(s, true, 12u);
  check_exact(make_shape(2, 10, 10, 4, 8, 3, 4, 2, 3), true, 13u);
  // Padding so large that some output pixels see only zeros, and (1x1 stride 2 pad 1 on 1x1) no
  // tap at all reaches the image: y = bias, dx = 0, dw = 0.
  check_exact(make_shape(1, 3, 3, 2, 3, 1, 2, 1, 1), true, 14u);
  check_exact(make_shape(1, 1, 1, 2, 3, 1, 2, 1, 1), true, 15u);
  check_exact(make_shape(2, 2, 3, 3, 4, 3, 2, 3, 2), true, 16u);
}

// ---- 2. finite differences in double ----

void check_gradients(const Conv2dShape& s, unsigned seed) {
  std::mt19937 rng(seed);
  auto x = random_reals<double>(x_size(s), rng);
  auto w = random_reals<double>(w_size(s), rng);
  auto b = random_reals<double>(size_t(s.cout), rng);
  const auto r = random_reals<double>(y_size(s), rng);  // loss = sum(y * r), so dL/dy = r

  std::vector<double> y(y_size(s)), dx(x_size(s)), dw(w_size(s)), db(size_t(s.cout));
  std::vector<double> ws(std::max({rpp::cpu::conv2d_forward_workspace(s),
                                   rpp::cpu::conv2d_backward_data_workspace(s),
                                   rpp::cpu::conv2d_backward_filter_workspace(s), size_t(1)}));
  auto loss = [&]() {
    rpp::cpu::conv2d_forward<double>(s, x.data(), w.data(), b.data(), y.data(), ws.data());
    double l = 0.0;
    for (size_t i = 0; i < y.size(); ++i) l += y[i] * r[i];
    return l;
  };
  rpp::cpu::conv2d_backward_data<double>(s, r.data(), w.data(), dx.data(), ws.data());
  rpp::cpu::conv2d_backward_filter<double>(s, x.data(), r.data(), dw.data(), db.data(), ws.data());

  const double h = 1e-6, tol = 1e-7;
  auto check = [&](std::vector<double>& v, const std::vector<double>& grad, const char* which) {
    for (size_t i = 0; i < v.size(); ++i) {
      const double keep = v[i];
      v[i] = keep + h;
      const double lp = loss();
      v[i] = keep - h;
      const double lm = loss();
      v[i] = keep;
      const double fd = (lp - lm) / (2 * h);
      ASSERT_NEAR(grad[i], fd, tol * std::max(1.0, std::abs(fd)))
          << name(s) << ": d loss / d " << which << "[" << i << "]";
    }
  };
  check(x, dx, "x");
  check(w, dw, "w");
  check(b, db, "bias");
}

TEST(Conv2dGradient, CentralDifferencesDouble) {
  check_gradients(make_shape(2, 5, 6, 3, 4, 3, 1, 1, 1), 21u);
  check_gradients(make_shape(2, 7, 6, 3, 5, 3, 2, 1, 1), 22u);
  check_gradients(make_shape(1, 6, 6, 2, 3, 3, 1, 2, 2), 23u);
  check_gradients(make_shape(1, 8, 8, 2, 3, 3, 1, 6, 6), 24u);
  check_gradients(make_shape(2, 6, 5, 3, 4, 1, 2, 0, 1), 25u);
  check_gradients(make_shape(1, 9, 7, 3, 2, 3, 2, 2, 2), 26u);
}

// ---- 3. guards and poison on model-like shapes (real-valued data) ----

TEST(Conv2dGuards, OutputsAndWorkspaceStayInBounds) {
  const Conv2dShape shapes[] = {
      make_shape(2, 16, 16, 3, 16, 3, 1, 1, 1),    make_shape(2, 16, 16, 16, 32, 3, 2, 1, 1),
      make_shape(1, 8, 8, 32, 48, 3, 1, 6, 6),     make_shape(1, 8, 8, 32, 48, 3, 1, 12, 12),
      make_shape(1, 8, 8, 32, 48, 3, 1, 18, 18),   make_shape(2, 16, 16, 16, 16, 1, 1, 0, 1),
      make_shape(2, 16, 16, 16, 32, 1, 2, 0, 1),   make_shape(1, 16, 16, 16, 1, 1, 1, 0, 1),
      make_shape(1, 8, 8, 40, 16, 3, 1, 1, 1),
  };
  unsigned seed = 31;
  for (const auto& s : shapes) {
    std::mt19937 rng(seed++);
    const auto x = random_reals<float>(x_size(s), rng);
    const auto w = random_reals<float>(w_size(s), rng);
    const auto b = random_reals<float>(size_t(s.cout), rng);
    const auto dy = random_reals<float>(y_size(s), rng);
    const Outputs<float> got = run_all<float>(s, x, w, &b, dy, true, name(s));
    // Real values: the reference agrees to rounding.
    std::vector<float> y(y_size(s)), dx(x_size(s)), dw(w_size(s)), db(size_t(s.cout));
    ref_forward(s, x.data(), w.data(), b.data(), y.data());
    ref_backward(s, x.data(), w.data(), dy.data(), dx.data(), dw.data(), db.data());
    auto close = [&](const std::vector<float>& a, const std::vector<float>& e, const char* which) {
      for (size_t i = 0; i < a.size(); ++i)
        ASSERT_NEAR(a[i], e[i], 1e-4f * (1.0f + std::abs(e[i]))) << name(s) << " " << which << i;
    };
    close(got.y, y, "y");
    close(got.dx, dx, "dx");
    close(got.dw, dw, "dw");
    close(got.db, db, "db");
  }
}

// ---- 4. determinism ----

TEST(Conv2dDeterminism, BitIdenticalRepeats) {
  for (const auto& s : {make_shape(2, 16, 16, 32, 32, 3, 1, 1, 1),
                        make_shape(2, 16, 16, 16, 32, 3, 2, 1, 1),
                        make_shape(2, 8, 8, 64, 48, 3, 1, 6, 6)}) {
    std::mt19937 rng(41);
    const auto x = random_reals<float>(x_size(s), rng);
    const auto w = random_reals<float>(w_size(s), rng);
    const auto b = random_reals<float>(size_t(s.cout), rng);
    const auto dy = random_reals<float>(y_size(s), rng);
    const Outputs<float> a = run_all<float>(s, x, w, &b, dy, true, name(s));
    const Outputs<float> c = run_all<float>(s, x, w, &b, dy, true, name(s));
    auto same = [](const std::vector<float>& u, const std::vector<float>& v) {
      return u.size() == v.size() && std::memcmp(u.data(), v.data(), u.size() * sizeof(float)) == 0;
    };
    EXPECT_TRUE(same(a.y, c.y)) << name(s) << ": forward not reproducible";
    EXPECT_TRUE(same(a.dx, c.dx)) << name(s) << ": backward-data not reproducible";
    EXPECT_TRUE(same(a.dw, c.dw)) << name(s) << ": backward-filter not reproducible";
    EXPECT_TRUE(same(a.db, c.db)) << name(s) << ": dbias not reproducible";
  }
}

// ---- 5. the GEMM alone ----

// C (M x N, row stride ldc > N, the gap columns are guards) = A * B (+ C), exact in float.
void check_gemm(int M, int N, int K, int layout, bool accumulate, unsigned seed) {
  std::mt19937 rng(seed);
  // layout 0: A row-major (a_row = K + 3, a_col = 1); 1: transposed (a_row = 1, a_col = M + 2);
  // 2: general strides (a_row = 2, a_col = 2 * M + 1).
  const int64_t a_row = layout == 0 ? K + 3 : layout == 1 ? 1 : 2;
  const int64_t a_col = layout == 0 ? 1 : layout == 1 ? M + 2 : 2 * int64_t(M) + 1;
  const size_t a_len = size_t((M - 1) * a_row + (K - 1) * a_col + 1);
  const int64_t ldb = N + 5, ldc = N + 4;
  const auto A = random_ints<float>(a_len, rng);
  const auto B = random_ints<float>(size_t(K) * size_t(ldb), rng);
  Guarded<float> C(size_t(M) * size_t(ldc));
  const auto C0 = random_ints<float>(C.size(), rng);
  std::copy(C0.begin(), C0.end(), C.data());
  rpp::cpu::gemm<float>(M, N, K, A.data(), a_row, a_col, B.data(), ldb, C.data(), ldc, accumulate);
  std::ostringstream what;
  what << "gemm M=" << M << " N=" << N << " K=" << K << " layout " << layout
       << (accumulate ? " acc" : "");
  ASSERT_TRUE(C.guards_intact()) << what.str();
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      double e = accumulate ? C0[size_t(i * ldc + j)] : 0.0;
      for (int k = 0; k < K; ++k)
        e += double(A[size_t(i * a_row + k * a_col)]) * B[size_t(k * ldb + j)];
      ASSERT_EQ(C[size_t(i * ldc + j)], float(e)) << what.str() << " at " << i << "," << j;
    }
    for (int64_t j = N; j < ldc; ++j)
      ASSERT_EQ(C[size_t(i * ldc + j)], C0[size_t(i * ldc + j)]) << what.str() << " gap " << i;
  }
}

TEST(Gemm, MatchesNaiveTripleLoop) {
  unsigned seed = 51;
  for (int M : {1, 5, 7, 13, 70})
    for (int N : {1, 3, 16, 17, 33, 70})
      for (int K : {1, 7, 300})
        for (int layout : {0, 1, 2})
          for (bool acc : {false, true}) check_gemm(M, N, K, layout, acc, seed++);
}

TEST(Gemm, ZeroK) {
  std::vector<float> C(6, 5.0f), A(1), B(1);
  rpp::cpu::gemm<float>(2, 3, 0, A.data(), 1, 1, B.data(), 3, C.data(), 3, true);
  for (float v : C) EXPECT_EQ(v, 5.0f);
  rpp::cpu::gemm<float>(2, 3, 0, A.data(), 1, 1, B.data(), 3, C.data(), 3, false);
  for (float v : C) EXPECT_EQ(v, 0.0f);
}

TEST(Gemm, Double) {
  std::mt19937 rng(61);
  const int M = 9, N = 11, K = 13;
  const auto A = random_reals<double>(size_t(M * K), rng);
  const auto B = random_reals<double>(size_t(K * N), rng);
  std::vector<double> C(size_t(M * N));
  rpp::cpu::gemm<double>(M, N, K, A.data(), 1, M, B.data(), N, C.data(), N, false);
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      double e = 0;
      for (int k = 0; k < K; ++k) e += A[size_t(k * M + i)] * B[size_t(k * N + j)];
      EXPECT_NEAR(C[size_t(i * N + j)], e, 1e-13);
    }
}

// ---- 6. invalid shapes ----

TEST(Conv2dErrors, InvalidShapesThrow) {
  std::vector<float> buf(4096, 0.0f);
  float* p = buf.data();
  const Conv2dShape ok = make_shape(1, 4, 4, 2, 2, 3, 1, 1, 1);
  EXPECT_NO_THROW(rpp::cpu::conv2d_forward<float>(ok, p, p, nullptr, p + 1024, p + 2048));

  std::vector<Conv2dShape> bad;
  auto with = [&](auto edit) {
    Conv2dShape s = ok;
    edit(s);
    bad.push_back(s);
  };
  with([](Conv2dShape& s) { s.n = 0; });
  with([](Conv2dShape& s) { s.h = -1; });
  with([](Conv2dShape& s) { s.w = 0; });
  with([](Conv2dShape& s) { s.cin = 0; });
  with([](Conv2dShape& s) { s.cout = -2; });
  with([](Conv2dShape& s) { s.kh = 0; });
  with([](Conv2dShape& s) { s.stride = 0; });
  with([](Conv2dShape& s) { s.dil = 0; });
  with([](Conv2dShape& s) { s.pad = -1; });
  // Dilated kernel larger than the padded input: (2 - 3) / 2 + 1 truncates to 1 in C++, so
  // Conv2dShape::ho() alone would not notice.
  with([](Conv2dShape& s) { s.h = 2, s.pad = 0, s.stride = 2; });
  with([](Conv2dShape& s) { s.pad = 0, s.dil = 2; });
  with([](Conv2dShape& s) { s.w = 1, s.pad = 0; });

  for (const auto& s : bad) {
    EXPECT_THROW(rpp::cpu::conv2d_forward_workspace(s), rpp::Error) << name(s);
    EXPECT_THROW(rpp::cpu::conv2d_backward_data_workspace(s), rpp::Error) << name(s);
    EXPECT_THROW(rpp::cpu::conv2d_backward_filter_workspace(s), rpp::Error) << name(s);
    EXPECT_THROW(rpp::cpu::conv2d_forward<float>(s, p, p, nullptr, p, p), rpp::Error) << name(s);
    EXPECT_THROW(rpp::cpu::conv2d_backward_data<float>(s, p, p, p, p), rpp::Error) << name(s);
    EXPECT_THROW(rpp::cpu::conv2d_backward_filter<float>(s, p, p, p, p, p), rpp::Error)
        << name(s);
  }
  try {
    rpp::cpu::conv2d_forward<float>(bad[9], p, p, nullptr, p, p);
    FAIL() << "no throw";
  } catch (const rpp::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("conv2d_forward"), std::string::npos) << msg;
    EXPECT_NE(msg.find("output size"), std::string::npos) << msg;
    EXPECT_NE(msg.find("H=2"), std::string::npos) << msg;
  }
  // A null workspace where one is needed is an error, not a crash.
  EXPECT_THROW(rpp::cpu::conv2d_forward<float>(ok, p, p, nullptr, p + 1024, nullptr), rpp::Error);
  EXPECT_THROW(rpp::cpu::conv2d_backward_filter<float>(ok, p, p, p, nullptr, nullptr), rpp::Error);
}

}  // namespace
