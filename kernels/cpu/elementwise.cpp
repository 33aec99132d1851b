// kernels/cpu/elementwise.cpp — reference elementwise, per-channel, pooling, resampling, concat
// and bias-free linear ops over NHWC buffers, forward and backward. Plain loops: this is the
// executable specification the CUDA kernels are tested against (tests/test_kernels_ops.cpp).
//
// Loops are split over the pool with a static partition. The only reductions (per-channel sums
// of scale_channels_backward_scale and global_avg_pool_forward, the dot products of linear, the
// four-value sums of upsample2_backward) are each computed by one thread in a fixed order, in
// double, so results do not depend on the thread count.
#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/ops_reduce.h"
#include "kernels/cpu/parallel.h"
#include "runtime/error.h"

namespace rpp::cpu {

using detail::kChannelRun;
using detail::kParallelGrain;

namespace {

// Grain (in items) for a loop whose items each cost about `work` element operations.
int64_t grain(int64_t work) {
  return std::max<int64_t>(1, kParallelGrain / std::max<int64_t>(1, work));
}

}  // namespace

// ---- Elementwise ----

template <class T>
void relu_forward(int64_t n, const T* x, T* y) {
  RPP_CHECK(n >= 0, "relu: n must be >= 0, got ", n);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          // NaN propagates (x > 0 is false for NaN but x != x is true), as in PyTorch.
          y[i] = (x[i] > T(0) || x[i] != x[i]) ? x[i] : T(0);
        }
      },
      kParallelGrain);
}

template <class T>
void relu_backward(int64_t n, const T* x, const T* dy, T* dx) {
  RPP_CHECK(n >= 0, "relu: n must be >= 0, got ", n);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) dx[i] = x[i] > T(0) ? dy[i] : T(0);
      },
      kParallelGrain);
}

template <class T>
void add(int64_t n, const T* a, const T* b, T* y) {
  RPP_CHECK(n >= 0, "add: n must be >= 0, got ", n);
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) y[i] = a[i] + b[i];
      },
      kParallelGrain);
}

template <class T>
void mul(int64_t n, const T* a, const T* b, T* y) {
  RPP_CHECK(n >= 0, "mul: n must be >= 0, got ", n);
  parallel_for(
      n,
      [&](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) y[i] = a[i] * b[i];
      },
      kParallelGrain);
}

template <class T>
void sigmoid_forward(int64_t n, const T* x, T* y) {
  RPP_CHECK(n >= 0, "sigmoid: n must be >= 0, got ", n);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          // exp of a non-positive argument only, so nothing overflows for large |x|.
          if (x[i] >= T(0)) {
            y[i] = T(1) / (T(1) + std::exp(-x[i]));
          } else {
            const T z = std::exp(x[i]);
            y[i] = z / (T(1) + z);
          }
        }
      },
      kParallelGrain);
}

template <class T>
void sigmoid_backward(int64_t n, const T* y, const T* dy, T* dx) {
  RPP_CHECK(n >= 0, "sigmoid: n must be >= 0, got ", n);
  parallel_for(
      n,
      [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) dx[i] = dy[i] * y[i] * (T(1) - y[i]);
      },
      kParallelGrain);
}

// ---- Per-channel scale ----

template <class T>
void scale_channels(int n, int64_t hw, int c, const T* x, const T* s, T* y) {
  RPP_CHECK(n >= 0 && hw >= 0 && c > 0, "scale_channels: bad sizes n=", n, " hw=", hw, " c=", c);
  parallel_for(
      int64_t(n) * hw,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* sn = s + (r / hw) * c;  // row r = (image r / hw, pixel r % hw)
          for (int j = 0; j < c; ++j) y[r * c + j] = x[r * c + j] * sn[j];
        }
      },
      grain(c));
}

template <class T>
void scale_channels_backward_scale(int n, int64_t hw, int c, const T* x, const T* dy, T* ds) {
  RPP_CHECK(n >= 0 && hw >= 0 && c > 0, "scale_channels_backward_scale: bad sizes n=", n, " hw=",
            hw, " c=", c);
  detail::for_channel_runs(n, c, hw, [&](int64_t img, int c0, int c1) {
    const int k = c1 - c0;
    double acc[kChannelRun] = {};
    const T* xn = x + img * hw * c;
    const T* dyn = dy + img * hw * c;
    for (int64_t p = 0; p < hw; ++p)
      for (int j = 0; j < k; ++j)
        acc[j] += double(dyn[p * c + c0 + j]) * double(xn[p * c + c0 + j]);
    for (int j = 0; j < k; ++j) ds[img * c + c0 + j] = T(acc[j]);
  });
}

// ---- Global average pool ----

template <class T>
void global_avg_pool_forward(int n, int64_t hw, int c, const T* x, T* y) {
  RPP_CHECK(n >= 0 && hw > 0 && c > 0, "global_avg_pool: bad sizes n=", n, " hw=", hw, " c=", c);
  detail::for_channel_runs(n, c, hw, [&](int64_t img, int c0, int c1) {
    const int k = c1 - c0;
    double acc[kChannelRun] = {};
    const T* xn = x + img * hw * c;
    for (int64_t p = 0; p < hw; ++p)
      for (int j = 0; j < k; ++j) acc[j] += double(xn[p * c + c0 + j]);
    for (int j = 0; j < k; ++j) y[img * c + c0 + j] = T(acc[j] / double(hw));
  });
}

template <class T>
void global_avg_pool_backward(int n, int64_t hw, int c, const T* dy, T* dx) {
  RPP_CHECK(n >= 0 && hw > 0 && c > 0, "global_avg_pool: bad sizes n=", n, " hw=", hw, " c=", c);
  parallel_for(
      int64_t(n) * hw,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* dyn = dy + (r / hw) * c;
          for (int j = 0; j < c; ++j) dx[r * c + j] = T(double(dyn[j]) / double(hw));
        }
      },
      grain(c));
}

// ---- Linear without bias: y = x w^T ----

template <class T>
void linear_forward(int n, int in, int out, const T* x, const T* w, T* y) {
  RPP_CHECK(n >= 0 && in > 0 && out > 0, "linear: bad sizes n=", n, " in=", in, " out=", out);
  parallel_for(
      int64_t(n) * out,
      [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t r = k / out, o = k % out;
          double acc = 0;
          for (int i = 0; i < in; ++i) acc += double(x[r * in + i]) * double(w[o * in + i]);
          y[k] = T(acc);
        }
      },
      grain(in));
}

// dx (N, I) = dy (N, O) w (O, I);  dw (O, I) = dy^T (O, N) x (N, I).
template <class T>
void linear_backward(int n, int in, int out, const T* x, const T* w, const T* dy, T* dx, T* dw) {
  RPP_CHECK(n >= 0 && in > 0 && out > 0, "linear: bad sizes n=", n, " in=", in, " out=", out);
  parallel_for(
      int64_t(n) * in,
      [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t r = k / in, i = k % in;
          double acc = 0;
          for (int o = 0; o < out; ++o) acc += double(dy[r * out + o]) * double(w[o * in + i]);
          dx[k] = T(acc);
        }
      },
      grain(out));
  parallel_for(
      int64_t(out) * in,
      [&](int64_t k0, int64_t k1) {
        for (int64_t k = k0; k < k1; ++k) {
          const int64_t o = k / in, i = k % in;
          double acc = 0;
          for (int64_t r = 0; r < n; ++r) acc += double(dy[r * out + o]) * double(x[r * in + i]);
          dw[k] = T(acc);
        }
      },
      grain(n));
}

// ---- 2x2 max pool, stride 2 ----

namespace {
void check_pool_sizes(const char* op, int n, int h, int w, int c) {
  RPP_CHECK(n >= 0 && h >= 0 && w >= 0 && c > 0, op, ": bad sizes n=", n, " h=", h, " w=", w,
            " c=", c);
  RPP_CHECK(h % 2 == 0 && w % 2 == 0, op, ": H and W must be even, got ", h, "x", w);
}
}  // namespace

template <class T>
void maxpool2_forward(int n, int h, int w, int c, const T* x, T* y, uint8_t* argmax) {
  check_pool_sizes("maxpool2_forward", n, h, w, c);
  const int ho = h / 2, wo = w / 2;
  parallel_for(
      int64_t(n) * ho,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {  // r = output row (image r / ho, row r % ho)
          const int64_t img = r / ho, oh = r % ho;
          for (int ow = 0; ow < wo; ++ow)
            for (int j = 0; j < c; ++j) {
              const T* p = x + ((img * h + 2 * oh) * w + 2 * ow) * c + j;
              const int64_t row = int64_t(w) * c;
              // Window order (0,0), (0,1), (1,0), (1,1); strict > keeps the first maximum.
              T best = p[0];
              uint8_t arg = 0;
              if (p[c] > best) best = p[c], arg = 1;
              if (p[row] > best) best = p[row], arg = 2;
              if (p[row + c] > best) best = p[row + c], arg = 3;
              y[(r * wo + ow) * c + j] = best;
              if (argmax) argmax[(r * wo + ow) * c + j] = arg;
            }
        }
      },
      grain(int64_t(w) * c * 2));
}

template <class T>
void maxpool2_backward(int n, int h, int w, int c, const uint8_t* argmax, const T* dy, T* dx) {
  check_pool_sizes("maxpool2_backward", n, h, w, c);
  const int ho = h / 2, wo = w / 2;
  parallel_for(
      int64_t(n) * ho,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t img = r / ho, oh = r % ho;
          const int64_t row = int64_t(w) * c;
          for (int ow = 0; ow < wo; ++ow)
            for (int j = 0; j < c; ++j) {
              const int64_t base = ((img * h + 2 * oh) * w + 2 * ow) * c + j;
              const int64_t offs[4] = {0, c, row, row + c};
              const int64_t o = (r * wo + ow) * c + j;
              const int arg = argmax[o];
              RPP_CHECK(arg < 4, "maxpool2_backward: window index ", arg, " is not 0..3");
              for (int q = 0; q < 4; ++q) dx[base + offs[q]] = q == arg ? dy[o] : T(0);
            }
        }
      },
      grain(int64_t(w) * c * 2));
}

// ---- 2x nearest upsample ----

template <class T>
void upsample2_forward(int n, int h, int w, int c, const T* x, T* y) {
  RPP_CHECK(n >= 0 && h >= 0 && w >= 0 && c > 0, "upsample2_forward: bad sizes n=", n, " h=", h,
            " w=", w, " c=", c);
  const int ho = 2 * h, wo = 2 * w;
  parallel_for(
      int64_t(n) * ho,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {  // r = output row (image r / ho, row r % ho)
          const int64_t img = r / ho, oh = r % ho;
          const T* src = x + (img * h + oh / 2) * int64_t(w) * c;
          for (int ow = 0; ow < wo; ++ow)
            for (int j = 0; j < c; ++j) y[(r * wo + ow) * c + j] = src[(ow / 2) * c + j];
        }
      },
      grain(int64_t(wo) * c));
}

template <class T>
void upsample2_backward(int n, int h, int w, int c, const T* dy, T* dx) {
  RPP_CHECK(n >= 0 && h >= 0 && w >= 0 && c > 0, "upsample2_backward: bad sizes n=", n, " h=", h,
            " w=", w, " c=", c);
  const int wo = 2 * w;
  const int64_t orow = int64_t(wo) * c;  // one output row
  parallel_for(
      int64_t(n) * h,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {  // r = input row (image r / h, row r % h)
          const int64_t img = r / h, ih = r % h;
          const T* d = dy + (img * 2 * h + 2 * ih) * orow;
          for (int iw = 0; iw < w; ++iw)
            for (int j = 0; j < c; ++j) {
              const int64_t o = int64_t(2 * iw) * c + j;
              const double s = double(d[o]) + double(d[o + c]) + double(d[orow + o]) +
                               double(d[orow + o + c]);
              dx[(r * w + iw) * c + j] = T(s);
            }
        }
      },
      grain(int64_t(w) * c * 4));
}

// ---- Channel concat ----

template <class T>
void concat_forward(int64_t count, int ca, int cb, const T* a, const T* b, T* y) {
  RPP_CHECK(count >= 0 && ca >= 0 && cb >= 0, "concat_forward: bad sizes count=", count, " ca=",
            ca, " cb=", cb);
  const int cy = ca + cb;
  parallel_for(
      count,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          for (int j = 0; j < ca; ++j) y[r * cy + j] = a[r * ca + j];
          for (int j = 0; j < cb; ++j) y[r * cy + ca + j] = b[r * cb + j];
        }
      },
      grain(cy));
}

template <class T>
void concat_backward(int64_t count, int ca, int cb, const T* dy, T* da, T* db) {
  RPP_CHECK(count >= 0 && ca >= 0 && cb >= 0, "concat_backward: bad sizes count=", count, " ca=",
            ca, " cb=", cb);
  const int cy = ca + cb;
  parallel_for(
      count,
      [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          for (int j = 0; j < ca; ++j) da[r * ca + j] = dy[r * cy + j];
          for (int j = 0; j < cb; ++j) db[r * cb + j] = dy[r * cy + ca + j];
        }
      },
      grain(cy));
}

#define RPP_INSTANTIATE(T)                                                                     \
  template void relu_forward<T>(int64_t, const T*, T*);                                        \
  template void relu_backward<T>(int64_t, const T*, const T*, T*);                             \
  template void add<T>(int64_t, const T*, const T*, T*);                                       \
  template void mul<T>(int64_t, const T*, const T*, T*);                                       \
  template void sigmoid_forward<T>(int64_t, const T*, T*);                                     \
  template void sigmoid_backward<T>(int64_t, const T*, const T*, T*);                          \
  template void scale_channels<T>(int, int64_t, int, const T*, const T*, T*);                  \
  template void scale_channels_backward_scale<T>(int, int64_t, int, const T*, const T*, T*);   \
  template void global_avg_pool_forward<T>(int, int64_t, int, const T*, T*);                   \
  template void global_avg_pool_backward<T>(int, int64_t, int, const T*, T*);                  \
  template void linear_forward<T>(int, int, int, const T*, const T*, T*);                      \
  template void linear_backward<T>(int, int, int, const T*, const T*, const T*, T*, T*);       \
  template void maxpool2_forward<T>(int, int, int, int, const T*, T*, uint8_t*);               \
  template void maxpool2_backward<T>(int, int, int, int, const uint8_t*, const T*, T*);        \
  template void upsample2_forward<T>(int, int, int, int, const T*, T*);                        \
  template void upsample2_backward<T>(int, int, int, int, const T*, T*);                       \
  template void concat_forward<T>(int64_t, int, int, const T*, const T*, T*);                  \
  template void concat_backward<T>(int64_t, int, int, const T*, T*, T*);
RPP_INSTANTIATE(float)
RPP_INSTANTIATE(double)
#undef RPP_INSTANTIATE

}  // namespace rpp::cpu
