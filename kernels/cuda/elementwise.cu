// kernels/cuda/elementwise.cu — GPU elementwise, per-channel scale, global average pool,
// bias-free linear, 2x2 max pool, 2x nearest upsample and channel concat, forward and backward,
// fp32 NHWC. kernels/cpu/elementwise.cpp is the specification; tests/gpu/test_ops_gpu.cpp
// compares against it.
//
//  * Pure per-element ops are functors run by detail::launch_flat (a grid-stride loop with a
//    32-bit index whenever the element count allows). Each thread computes one output from its
//    own inputs in the CPU's order of operations, so these match the reference bit for bit
//    except where a libm function is involved (sigmoid's expf) or the CPU divides in double
//    (global_avg_pool_backward).
//  * Per-(image, channel) sums over pixels (scale_channels_backward_scale, global_avg_pool_forward)
//    run in two deterministic stages: a partial block sums a fixed group of pixel rows for a tile
//    of <= 32 channels in double into the workspace, then one block per (image, channel) adds the
//    groups in a fixed tree.
//  * linear: one warp per output dot product (double accumulation, fixed shuffle tree), and one
//    thread per weight-gradient element (sum over the batch in order).
#include "kernels/cuda/elementwise.cuh"

#include <cuda_runtime.h>

#include "kernels/cuda/check.cuh"
#include "kernels/cuda/device_math.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

using detail::check_not_null;
using device_math::sigmoid_stable;
using device_math::warp_sum;
using detail::check_workspace;
using detail::from_f32;
using detail::launch_flat;
using detail::to_f32;

constexpr int kThreads = 256;
constexpr int kRowIters = 16;
constexpr int kTileChannels = 32;
constexpr int64_t kMaxWarpBlocks = 2048;

// ---- Elementwise functors ----


template <class T>
struct ReluFwd {
  const T* x;
  T* y;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    const float v = to_f32(x[i]);
    y[i] = from_f32<T>((v > 0.f || v != v) ? v : 0.f);  // NaN propagates, as in PyTorch
  }
};

struct ReluBwd {
  const float* x;
  const float* dy;
  float* dx;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    dx[i] = x[i] > 0.f ? dy[i] : 0.f;
  }
};

template <class T>
struct Add {
  const T* a;
  const T* b;
  T* y;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    y[i] = from_f32<T>(to_f32(a[i]) + to_f32(b[i]));
  }
};

// TB: b's storage when it differs from a's and y's (the backward of a product: an fp32 gradient
// times a bf16 saved activation, into an fp32 gradient).
template <class T, class TB = T>
struct Mul {
  const T* a;
  const TB* b;
  T* y;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    y[i] = from_f32<T>(to_f32(a[i]) * to_f32(b[i]));
  }
};

// Storage conversion: TI widened, rounded once to TO.
template <class TI, class TO>
struct Convert {
  const TI* x;
  TO* y;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    y[i] = from_f32<TO>(to_f32(x[i]));
  }
};

struct SigmoidFwd {
  const float* x;
  float* y;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    y[i] = sigmoid_stable(x[i]);
  }
};

struct SigmoidBwd {
  const float* y;
  const float* dy;
  float* dx;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    const float v = y[i];
    dx[i] = dy[i] * v * (1.f - v);
  }
};

// Element i of an (N, HW, C) tensor: its channel and image.
template <class Idx>
__device__ __forceinline__ void image_channel(Idx i, int64_t hw, int c, Idx& img, int& ch) {
  const Idx row = i / Idx(c);
  ch = int(i - row * Idx(c));
  img = row / Idx(hw);
}

template <class T>
struct ScaleChannels {
  const T* x;
  const float* s;
  T* y;
  int64_t hw;
  int c;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    Idx img;
    int ch;
    image_channel(i, hw, c, img, ch);
    y[i] = from_f32<T>(to_f32(x[i]) * s[int64_t(img) * c + ch]);
  }
};

struct GapBwd {
  const float* dy;
  float* dx;
  int64_t hw;
  int c;
  float hwf;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    Idx img;
    int ch;
    image_channel(i, hw, c, img, ch);
    dx[i] = dy[int64_t(img) * c + ch] / hwf;
  }
};

// dw[o, i] = sum_r dy[r, o] x[r, i], r in order.
struct LinearBwdWeight {
  const float* x;
  const float* dy;
  float* dw;
  int n, in, out;
  template <class Idx>
  __device__ void operator()(Idx k) const {
    const int o = int(k / Idx(in)), i = int(k % Idx(in));
    double acc = 0;
    for (int r = 0; r < n; ++r)
      acc += double(dy[int64_t(r) * out + o]) * double(x[int64_t(r) * in + i]);
    dw[k] = float(acc);
  }
};

// Output element i of an (N, HO, WO, C) tensor -> (img, oh, ow, ch).
template <class Idx>
__device__ __forceinline__ void nhwc_coords(Idx i, int ho, int wo, int c, int64_t& img, int& oh,
                                            int& ow, int& ch) {
  const Idx pix = i / Idx(c);
  ch = int(i - pix * Idx(c));
  const Idx q = pix / Idx(wo);
  ow = int(pix - q * Idx(wo));
  const Idx im = q / Idx(ho);
  oh = int(q - im * Idx(ho));
  img = int64_t(im);
}

// One thread per output: y = max of the window; strict > keeps the first maximum, as the CPU.
template <class T>
struct MaxPoolFwd {
  const T* x;
  T* y;
  uint8_t* argmax;  // may be null
  int h, w, c;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    int64_t img;
    int oh, ow, ch;
    nhwc_coords(i, h / 2, w / 2, c, img, oh, ow, ch);
    const int64_t row = int64_t(w) * c;
    const T* p = x + ((img * h + 2 * oh) * int64_t(w) + 2 * ow) * int64_t(c) + ch;
    float best = to_f32(p[0]);
    const float v1 = to_f32(p[c]), v2 = to_f32(p[row]), v3 = to_f32(p[row + c]);
    uint8_t arg = 0;  // strict >: the first maximum, as the CPU
    if (v1 > best) best = v1, arg = 1;
    if (v2 > best) best = v2, arg = 2;
    if (v3 > best) best = v3, arg = 3;
    y[i] = from_f32<T>(best);  // exact: best is one of the stored values
    if (argmax) argmax[i] = arg;
  }
};

// One thread per output: the windows tile the input, so the four writes cover dx exactly once.
// The gradient goes where the forward's argmax says.
struct MaxPoolBwd {
  const uint8_t* argmax;
  const float* dy;
  float* dx;
  int h, w, c;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    int64_t img;
    int oh, ow, ch;
    nhwc_coords(i, h / 2, w / 2, c, img, oh, ow, ch);
    const int64_t row = int64_t(w) * c;
    const int64_t base = ((img * h + 2 * oh) * int64_t(w) + 2 * ow) * int64_t(c) + ch;
    const int64_t offs[4] = {0, c, row, row + c};
    const int arg = argmax[i];
    const float g = dy[i];
#pragma unroll
    for (int q = 0; q < 4; ++q) dx[base + offs[q]] = q == arg ? g : 0.f;
  }
};

template <class T>
struct UpsampleFwd {
  const T* x;
  T* y;
  int h, w, c;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    int64_t img;
    int oh, ow, ch;
    nhwc_coords(i, 2 * h, 2 * w, c, img, oh, ow, ch);
    y[i] = x[((img * h + oh / 2) * int64_t(w) + ow / 2) * int64_t(c) + ch];
  }
};

// The gradient of input element (img, ih, iw, ch) of a 2x upsample from h x w, whose output pixels
// hold `stride` channels (c; or ca + cb when the output is a concatenation's first channels): its
// four copies' gradients at the top-left copy d, d + one pixel, d + one row and d + both, added in
// that order in double, as the CPU adds them.
__device__ __forceinline__ float upsample_grad(const float* dy, int64_t img, int ih, int iw, int ch, int h, int w,
                                               int stride) {
  const int64_t col = stride, row = int64_t(2 * w) * stride;
  const float* d = dy + ((img * 2 * h + 2 * ih) * int64_t(2 * w) + 2 * iw) * col + ch;
  return float(double(d[0]) + double(d[col]) + double(d[row]) + double(d[row + col]));
}

// One thread per input element: the sum of its four copies, in the CPU's order, in double.
struct UpsampleBwd {
  const float* dy;
  float* dx;
  int h, w, c;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    int64_t img;
    int ih, iw, ch;
    nhwc_coords(i, h, w, c, img, ih, iw, ch);
    dx[i] = upsample_grad(dy, img, ih, iw, ch, h, w, c);
  }
};

template <class T>
struct ConcatFwd {
  const T* a;
  const T* b;
  T* y;
  int ca, cb;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    const Idx cy = Idx(ca + cb);
    const Idx r = i / cy;
    const int j = int(i - r * cy);
    y[i] = j < ca ? a[int64_t(r) * ca + j] : b[int64_t(r) * cb + (j - ca)];
  }
};

struct ConcatBwd {
  const float* dy;
  float* da;
  float* db;
  int ca, cb;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    const Idx cy = Idx(ca + cb);
    const Idx r = i / cy;
    const int j = int(i - r * cy);
    if (j < ca)
      da[int64_t(r) * ca + j] = dy[i];
    else
      db[int64_t(r) * cb + (j - ca)] = dy[i];
  }
};

// One thread per output: channel ch < ca comes from a at the pixel's source (oh / 2, ow / 2),
// the others from b at the same pixel.
template <class T>
struct UpsampleConcatFwd {
  const T* a;
  const T* b;
  T* y;
  int h, w, ca, cb;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    int64_t img;
    int oh, ow, ch;
    nhwc_coords(i, 2 * h, 2 * w, ca + cb, img, oh, ow, ch);
    if (ch < ca)
      y[i] = a[((img * h + oh / 2) * int64_t(w) + ow / 2) * int64_t(ca) + ch];
    else
      y[i] = b[((img * 2 * h + oh) * int64_t(2 * w) + ow) * int64_t(cb) + (ch - ca)];
  }
};

// Threads [0, na): one per element of da, as UpsampleBwd but with the concatenation's channel
// stride; the rest: one per element of db, a copy.
struct UpsampleConcatBwd {
  const float* dy;
  float* da;
  float* db;
  int h, w, ca, cb;
  int64_t na;
  template <class Idx>
  __device__ void operator()(Idx i) const {
    const int cy = ca + cb;
    if (int64_t(i) < na) {
      int64_t img;
      int ih, iw, ch;
      nhwc_coords(i, h, w, ca, img, ih, iw, ch);
      da[i] = upsample_grad(dy, img, ih, iw, ch, h, w, cy);
    } else {
      const int64_t k = int64_t(i) - na;
      const int64_t r = k / cb;
      db[k] = dy[r * cy + ca + (k - r * cb)];
    }
  }
};

// ---- Per-(image, channel) sums over pixels ----

struct ChannelTiling {
  int tc, rs, tiles;
  int64_t rows, groups;
};

ChannelTiling channel_tiling(int64_t hw, int c) {
  ChannelTiling t{};
  t.tc = c < kTileChannels ? c : kTileChannels;
  t.rs = kThreads / t.tc;
  t.tiles = (c + t.tc - 1) / t.tc;
  t.rows = int64_t(t.rs) * kRowIters;
  t.groups = (hw + t.rows - 1) / t.rows;
  return t;
}

size_t channel_sum_workspace_bytes(int n, int64_t hw, int c) {
  if (n <= 0 || hw <= 0 || c <= 0) return 0;
  const ChannelTiling t = channel_tiling(hw, c);
  return detail::round_up(size_t(n) * size_t(t.groups) * size_t(c) * sizeof(double), 256);
}

__device__ double block_sum(double v, double* red) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  const double r = red[0];
  __syncthreads();
  return r;
}

// grid (groups, tiles, n): part[img, g, ch] = sum over the group's rows of x (kProduct: x * dy).
template <bool kProduct, class T>
__global__ void __launch_bounds__(kThreads)
    channel_sum_partial_kernel(const T* __restrict__ x, const float* __restrict__ dy,
                               int64_t hw, int c, int tc, int rs, int64_t rows, int64_t groups,
                               double* __restrict__ part) {
  __shared__ double red[kThreads];
  const int t = int(threadIdx.x);
  const int lc = t % tc, lr = t / tc;
  const int ch = int(blockIdx.y) * tc + lc;
  const int64_t g = blockIdx.x;
  const int64_t img = blockIdx.z;
  const int64_t row0 = g * rows;
  const int64_t left = hw - row0;
  const int64_t nb = left < rows ? left : rows;
  const int64_t base = img * hw * c;
  double s = 0;
  if (lr < rs && ch < c) {
#pragma unroll 4
    for (int k = 0; k < kRowIters; ++k) {
      const int64_t r = lr + int64_t(k) * rs;
      if (r < nb) {
        const int64_t idx = base + (row0 + r) * c + ch;
        double v = double(to_f32(x[idx]));
        if constexpr (kProduct) v *= double(dy[idx]);
        s += v;
      }
    }
  }
  red[t] = s;
  __syncthreads();
  if (lr == 0 && ch < c) {
    double tot = 0;
    for (int j = 0; j < rs; ++j) tot += red[j * tc + lc];
    part[(img * groups + g) * c + ch] = tot;
  }
}

// grid (c, n): out[img, ch] = (sum of the groups' partials) / divisor.
__global__ void __launch_bounds__(kThreads)
    channel_sum_finalize_kernel(const double* __restrict__ part, int64_t groups, int c,
                                double divisor, float* __restrict__ out) {
  __shared__ double red[kThreads];
  const int ch = int(blockIdx.x);
  const int64_t img = blockIdx.y;
  double s = 0;
  for (int64_t g = threadIdx.x; g < groups; g += kThreads) s += part[(img * groups + g) * c + ch];
  s = block_sum(s, red);
  if (threadIdx.x == 0) out[img * c + ch] = float(s / divisor);
}

template <bool kProduct, class T>
void channel_sums(const char* op, int n, int64_t hw, int c, const T* x, const float* dy,
                  float* out, double divisor, void* workspace, cudaStream_t stream) {
  if (n > 65535) fail(op, ": batch ", n, " exceeds the grid limit of 65535 images");
  check_workspace(op, workspace, channel_sum_workspace_bytes(n, hw, c));
  const ChannelTiling t = channel_tiling(hw, c);
  if (t.groups > 0x7fffffff || t.tiles > 65535) fail(op, ": tensor too large for one launch");
  double* part = static_cast<double*>(workspace);
  if (t.groups > 0) {
    channel_sum_partial_kernel<kProduct, T>
        <<<dim3(unsigned(t.groups), unsigned(t.tiles), unsigned(n)), kThreads, 0, stream>>>(
            x, dy, hw, c, t.tc, t.rs, t.rows, t.groups, part);
    RPP_CUDA_CHECK_LAUNCH(op);
  }
  channel_sum_finalize_kernel<<<dim3(unsigned(c), unsigned(n)), kThreads, 0, stream>>>(
      part, t.groups, c, divisor, out);
  RPP_CUDA_CHECK_LAUNCH(op);
}

// ---- Linear: one warp per output dot product ----


constexpr int kWarpsPerBlock = kThreads / 32;

unsigned warp_blocks(int64_t outputs) {
  const int64_t b = (outputs + kWarpsPerBlock - 1) / kWarpsPerBlock;
  return unsigned(b < kMaxWarpBlocks ? b : kMaxWarpBlocks);
}

// y[r, o] = sum_i x[r, i] w[o, i]. The loop over k is uniform within a warp.
__global__ void __launch_bounds__(kThreads)
    linear_fwd_kernel(int n, int in, int out, const float* __restrict__ x,
                      const float* __restrict__ w, float* __restrict__ y) {
  const int lane = int(threadIdx.x) & 31;
  const int64_t total = int64_t(n) * out;
  const int64_t step = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t k = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; k < total; k += step) {
    const int64_t r = k / out, o = k % out;
    double acc = 0;
    for (int i = lane; i < in; i += 32) acc += double(x[r * in + i]) * double(w[o * in + i]);
    acc = warp_sum(acc);
    if (lane == 0) y[k] = float(acc);
  }
}

// dx[r, i] = sum_o dy[r, o] w[o, i].
__global__ void __launch_bounds__(kThreads)
    linear_bwd_data_kernel(int n, int in, int out, const float* __restrict__ w,
                           const float* __restrict__ dy, float* __restrict__ dx) {
  const int lane = int(threadIdx.x) & 31;
  const int64_t total = int64_t(n) * in;
  const int64_t step = int64_t(gridDim.x) * kWarpsPerBlock;
  for (int64_t k = int64_t(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32; k < total; k += step) {
    const int64_t r = k / in, i = k % in;
    double acc = 0;
    for (int o = lane; o < out; o += 32) acc += double(dy[r * out + o]) * double(w[int64_t(o) * in + i]);
    acc = warp_sum(acc);
    if (lane == 0) dx[k] = float(acc);
  }
}

void check_pool_sizes(const char* op, int n, int h, int w, int c) {
  if (n < 0 || h < 0 || w < 0 || c <= 0)
    fail(op, ": bad sizes n=", n, " h=", h, " w=", w, " c=", c);
  if (h % 2 != 0 || w % 2 != 0) fail(op, ": H and W must be even, got ", h, "x", w);
}

void check_nchw_sizes(const char* op, int n, int64_t hw, int c, bool hw_positive) {
  if (n < 0 || hw < 0 || c <= 0 || (hw_positive && hw == 0))
    fail(op, ": bad sizes n=", n, " hw=", hw, " c=", c);
}

}  // namespace

// ---- Elementwise ----

namespace {
template <class T>
void relu_forward_impl(int64_t n, const T* x, T* y,
                       cudaStream_t stream) {
  if (n < 0) fail("relu_forward: n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null("relu_forward", {{"x", x}, {"y", y}});
  launch_flat("relu_forward", n, ReluFwd<T>{x, y}, stream);
}
}  // namespace

void relu_forward(int64_t n, const float* x, float* y, cudaStream_t stream) {
  relu_forward_impl(n, x, y, stream);
}
void relu_forward(int64_t n, const bf16* x, bf16* y, cudaStream_t stream) {
  relu_forward_impl(n, x, y, stream);
}

void relu_backward(int64_t n, const float* x, const float* dy, float* dx, cudaStream_t stream) {
  if (n < 0) fail("relu_backward: n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null("relu_backward", {{"x", x}, {"dy", dy}, {"dx", dx}});
  launch_flat("relu_backward", n, ReluBwd{x, dy, dx}, stream);
}

namespace {
// add and mul: y = f(a, b) elementwise, F the functor (on a's, b's and y's storage types).
template <class F, class TA, class TB, class TY>
void binary_impl(const char* op, int64_t n, const TA* a, const TB* b, TY* y, cudaStream_t stream) {
  if (n < 0) fail(op, ": n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null(op, {{"a", a}, {"b", b}, {"y", y}});
  launch_flat(op, n, F{a, b, y}, stream);
}
}  // namespace

void add(int64_t n, const float* a, const float* b, float* y, cudaStream_t stream) {
  binary_impl<Add<float>>("add", n, a, b, y, stream);
}
void add(int64_t n, const bf16* a, const bf16* b, bf16* y, cudaStream_t stream) {
  binary_impl<Add<bf16>>("add", n, a, b, y, stream);
}
void mul(int64_t n, const float* a, const float* b, float* y, cudaStream_t stream) {
  binary_impl<Mul<float>>("mul", n, a, b, y, stream);
}
void mul(int64_t n, const bf16* a, const bf16* b, bf16* y, cudaStream_t stream) {
  binary_impl<Mul<bf16>>("mul", n, a, b, y, stream);
}
void mul(int64_t n, const float* a, const bf16* b, float* y, cudaStream_t stream) {
  binary_impl<Mul<float, bf16>>("mul", n, a, b, y, stream);
}

namespace {
template <class TI, class TO>
void convert_impl(int64_t n, const TI* x, TO* y, cudaStream_t stream) {
  if (n < 0) fail("convert: n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null("convert", {{"x", x}, {"y", y}});
  launch_flat("convert", n, Convert<TI, TO>{x, y}, stream);
}
}  // namespace

void convert(int64_t n, const bf16* x, float* y, cudaStream_t stream) { convert_impl(n, x, y, stream); }
void convert(int64_t n, const float* x, bf16* y, cudaStream_t stream) { convert_impl(n, x, y, stream); }

void sigmoid_forward(int64_t n, const float* x, float* y, cudaStream_t stream) {
  if (n < 0) fail("sigmoid_forward: n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null("sigmoid_forward", {{"x", x}, {"y", y}});
  launch_flat("sigmoid_forward", n, SigmoidFwd{x, y}, stream);
}

void sigmoid_backward(int64_t n, const float* y, const float* dy, float* dx, cudaStream_t stream) {
  if (n < 0) fail("sigmoid_backward: n must be >= 0, got ", n);
  if (n == 0) return;
  check_not_null("sigmoid_backward", {{"y", y}, {"dy", dy}, {"dx", dx}});
  launch_flat("sigmoid_backward", n, SigmoidBwd{y, dy, dx}, stream);
}

// ---- Per-channel scale ----

namespace {
template <class T>
void scale_channels_impl(int n, int64_t hw, int c, const T* x, const float* s, T* y,
                         cudaStream_t stream) {
  const char* op = "scale_channels";
  check_nchw_sizes(op, n, hw, c, false);
  const int64_t total = int64_t(n) * hw * c;
  if (total == 0) return;
  check_not_null(op, {{"x", x}, {"s", s}, {"y", y}});
  launch_flat(op, total, ScaleChannels<T>{x, s, y, hw, c}, stream);
}
}  // namespace

void scale_channels(int n, int64_t hw, int c, const float* x, const float* s, float* y, cudaStream_t stream) {
  scale_channels_impl(n, hw, c, x, s, y, stream);
}
void scale_channels(int n, int64_t hw, int c, const bf16* x, const float* s, bf16* y, cudaStream_t stream) {
  scale_channels_impl(n, hw, c, x, s, y, stream);
}

size_t scale_channels_workspace_bytes(int n, int64_t hw, int c) {
  return channel_sum_workspace_bytes(n, hw, c);
}

namespace {
template <class T>
void scale_channels_backward_scale_impl(int n, int64_t hw, int c, const T* x, const float* dy, float* ds,
                                        void* workspace, cudaStream_t stream) {
  const char* op = "scale_channels_backward_scale";
  check_nchw_sizes(op, n, hw, c, false);
  if (n == 0) return;
  check_not_null(op, {{"ds", ds}});
  if (hw > 0) check_not_null(op, {{"x", x}, {"dy", dy}});
  channel_sums<true, T>(op, n, hw, c, x, dy, ds, 1.0, workspace, stream);
}
}  // namespace

void scale_channels_backward_scale(int n, int64_t hw, int c, const float* x, const float* dy,
                                   float* ds, void* workspace, cudaStream_t stream) {
  scale_channels_backward_scale_impl(n, hw, c, x, dy, ds, workspace, stream);
}
void scale_channels_backward_scale(int n, int64_t hw, int c, const bf16* x, const float* dy,
                                   float* ds, void* workspace, cudaStream_t stream) {
  scale_channels_backward_scale_impl(n, hw, c, x, dy, ds, workspace, stream);
}

// ---- Global average pool ----

size_t global_avg_pool_workspace_bytes(int n, int64_t hw, int c) {
  return channel_sum_workspace_bytes(n, hw, c);
}

namespace {
template <class T>
void global_avg_pool_forward_impl(int n, int64_t hw, int c, const T* x, float* y, void* workspace,
                                  cudaStream_t stream) {
  const char* op = "global_avg_pool_forward";
  check_nchw_sizes(op, n, hw, c, true);
  if (n == 0) return;
  check_not_null(op, {{"x", x}, {"y", y}});
  channel_sums<false, T>(op, n, hw, c, x, nullptr, y, double(hw), workspace, stream);
}
}  // namespace

void global_avg_pool_forward(int n, int64_t hw, int c, const float* x, float* y, void* workspace, cudaStream_t stream) {
  global_avg_pool_forward_impl(n, hw, c, x, y, workspace, stream);
}
void global_avg_pool_forward(int n, int64_t hw, int c, const bf16* x, float* y, void* workspace, cudaStream_t stream) {
  global_avg_pool_forward_impl(n, hw, c, x, y, workspace, stream);
}

void global_avg_pool_backward(int n, int64_t hw, int c, const float* dy, float* dx,
                              cudaStream_t stream) {
  const char* op = "global_avg_pool_backward";
  check_nchw_sizes(op, n, hw, c, true);
  const int64_t total = int64_t(n) * hw * c;
  if (total == 0) return;
  check_not_null(op, {{"dy", dy}, {"dx", dx}});
  launch_flat(op, total, GapBwd{dy, dx, hw, c, float(hw)}, stream);
}

// ---- Linear ----

void linear_forward(int n, int in, int out, const float* x, const float* w, float* y,
                    cudaStream_t stream) {
  const char* op = "linear_forward";
  if (n < 0 || in <= 0 || out <= 0) fail(op, ": bad sizes n=", n, " in=", in, " out=", out);
  if (n == 0) return;
  check_not_null(op, {{"x", x}, {"w", w}, {"y", y}});
  linear_fwd_kernel<<<warp_blocks(int64_t(n) * out), kThreads, 0, stream>>>(n, in, out, x, w, y);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void linear_backward(int n, int in, int out, const float* x, const float* w, const float* dy,
                     float* dx, float* dw, cudaStream_t stream) {
  const char* op = "linear_backward";
  if (n < 0 || in <= 0 || out <= 0) fail(op, ": bad sizes n=", n, " in=", in, " out=", out);
  check_not_null(op, {{"w", w}, {"dw", dw}});
  if (n > 0) {
    check_not_null(op, {{"x", x}, {"dy", dy}, {"dx", dx}});
    linear_bwd_data_kernel<<<warp_blocks(int64_t(n) * in), kThreads, 0, stream>>>(n, in, out, w,
                                                                                  dy, dx);
    RPP_CUDA_CHECK_LAUNCH(op);
  }
  // With n == 0 the weight gradient is all zeros, as on the CPU.
  launch_flat(op, int64_t(out) * in, LinearBwdWeight{x, dy, dw, n, in, out}, stream);
}

// ---- 2x2 max pool ----

namespace {
template <class T>
void maxpool2_forward_impl(int n, int h, int w, int c, const T* x, T* y, uint8_t* argmax,
                           cudaStream_t stream) {
  const char* op = "maxpool2_forward";
  check_pool_sizes(op, n, h, w, c);
  const int64_t total = int64_t(n) * (h / 2) * (w / 2) * c;
  if (total == 0) return;
  check_not_null(op, {{"x", x}, {"y", y}});
  launch_flat(op, total, MaxPoolFwd<T>{x, y, argmax, h, w, c}, stream);
}
}  // namespace

void maxpool2_forward(int n, int h, int w, int c, const float* x, float* y, uint8_t* argmax, cudaStream_t stream) {
  maxpool2_forward_impl(n, h, w, c, x, y, argmax, stream);
}
void maxpool2_forward(int n, int h, int w, int c, const bf16* x, bf16* y, uint8_t* argmax, cudaStream_t stream) {
  maxpool2_forward_impl(n, h, w, c, x, y, argmax, stream);
}

void maxpool2_backward(int n, int h, int w, int c, const uint8_t* argmax, const float* dy, float* dx,
                       cudaStream_t stream) {
  const char* op = "maxpool2_backward";
  check_pool_sizes(op, n, h, w, c);
  const int64_t total = int64_t(n) * (h / 2) * (w / 2) * c;
  if (total == 0) return;
  check_not_null(op, {{"argmax", argmax}, {"dy", dy}, {"dx", dx}});
  launch_flat(op, total, MaxPoolBwd{argmax, dy, dx, h, w, c}, stream);
}

// ---- 2x nearest upsample ----

namespace {
template <class T>
void upsample2_forward_impl(int n, int h, int w, int c, const T* x, T* y,
                            cudaStream_t stream) {
  const char* op = "upsample2_forward";
  if (n < 0 || h < 0 || w < 0 || c <= 0)
    fail(op, ": bad sizes n=", n, " h=", h, " w=", w, " c=", c);
  const int64_t total = int64_t(n) * (2 * int64_t(h)) * (2 * int64_t(w)) * c;
  if (total == 0) return;
  if (2 * int64_t(h) > 0x7fffffff || 2 * int64_t(w) > 0x7fffffff)
    fail(op, ": output size overflows int, h=", h, " w=", w);
  check_not_null(op, {{"x", x}, {"y", y}});
  launch_flat(op, total, UpsampleFwd<T>{x, y, h, w, c}, stream);
}
}  // namespace

void upsample2_forward(int n, int h, int w, int c, const float* x, float* y, cudaStream_t stream) {
  upsample2_forward_impl(n, h, w, c, x, y, stream);
}
void upsample2_forward(int n, int h, int w, int c, const bf16* x, bf16* y, cudaStream_t stream) {
  upsample2_forward_impl(n, h, w, c, x, y, stream);
}

void upsample2_backward(int n, int h, int w, int c, const float* dy, float* dx,
                        cudaStream_t stream) {
  const char* op = "upsample2_backward";
  if (n < 0 || h < 0 || w < 0 || c <= 0)
    fail(op, ": bad sizes n=", n, " h=", h, " w=", w, " c=", c);
  const int64_t total = int64_t(n) * h * w * c;
  if (total == 0) return;
  if (2 * int64_t(h) > 0x7fffffff || 2 * int64_t(w) > 0x7fffffff)
    fail(op, ": output size overflows int, h=", h, " w=", w);
  check_not_null(op, {{"dy", dy}, {"dx", dx}});
  launch_flat(op, total, UpsampleBwd{dy, dx, h, w, c}, stream);
}

// ---- Channel concat ----

namespace {
template <class T>
void concat_forward_impl(int64_t count, int ca, int cb, const T* a, const T* b, T* y,
                         cudaStream_t stream) {
  const char* op = "concat_forward";
  if (count < 0 || ca < 0 || cb < 0 || int64_t(ca) + cb > 0x7fffffff)
    fail(op, ": bad sizes count=", count, " ca=", ca, " cb=", cb);
  const int64_t total = count * (int64_t(ca) + cb);
  if (total == 0) return;
  check_not_null(op, {{"y", y}});
  if (ca > 0) check_not_null(op, {{"a", a}});
  if (cb > 0) check_not_null(op, {{"b", b}});
  launch_flat(op, total, ConcatFwd<T>{a, b, y, ca, cb}, stream);
}
}  // namespace

void concat_forward(int64_t count, int ca, int cb, const float* a, const float* b, float* y, cudaStream_t stream) {
  concat_forward_impl(count, ca, cb, a, b, y, stream);
}
void concat_forward(int64_t count, int ca, int cb, const bf16* a, const bf16* b, bf16* y, cudaStream_t stream) {
  concat_forward_impl(count, ca, cb, a, b, y, stream);
}

namespace {
void check_upsample_concat_sizes(const char* op, int n, int h, int w, int ca, int cb) {
  if (n < 0 || h < 0 || w < 0 || ca < 1 || cb < 1 || int64_t(ca) + cb > 0x7fffffff)
    fail(op, ": bad sizes n=", n, " h=", h, " w=", w, " ca=", ca, " cb=", cb);
  if (2 * int64_t(h) > 0x7fffffff || 2 * int64_t(w) > 0x7fffffff)
    fail(op, ": output size overflows int, h=", h, " w=", w);
}

template <class T>
void upsample_concat_forward_impl(int n, int h, int w, int ca, int cb, const T* a, const T* b, T* y,
                                  cudaStream_t stream) {
  const char* op = "upsample_concat_forward";
  check_upsample_concat_sizes(op, n, h, w, ca, cb);
  const int64_t total = int64_t(n) * (2 * int64_t(h)) * (2 * int64_t(w)) * (int64_t(ca) + cb);
  if (total == 0) return;
  check_not_null(op, {{"a", a}, {"b", b}, {"y", y}});
  launch_flat(op, total, UpsampleConcatFwd<T>{a, b, y, h, w, ca, cb}, stream);
}
}  // namespace

void upsample_concat_forward(int n, int h, int w, int ca, int cb, const float* a, const float* b, float* y,
                             cudaStream_t stream) {
  upsample_concat_forward_impl(n, h, w, ca, cb, a, b, y, stream);
}
void upsample_concat_forward(int n, int h, int w, int ca, int cb, const bf16* a, const bf16* b, bf16* y,
                             cudaStream_t stream) {
  upsample_concat_forward_impl(n, h, w, ca, cb, a, b, y, stream);
}

void upsample_concat_backward(int n, int h, int w, int ca, int cb, const float* dy, float* da, float* db,
                              cudaStream_t stream) {
  const char* op = "upsample_concat_backward";
  check_upsample_concat_sizes(op, n, h, w, ca, cb);
  const int64_t na = int64_t(n) * h * w * ca;
  const int64_t nb = int64_t(n) * (2 * int64_t(h)) * (2 * int64_t(w)) * cb;
  if (na + nb == 0) return;
  check_not_null(op, {{"dy", dy}, {"da", da}, {"db", db}});
  launch_flat(op, na + nb, UpsampleConcatBwd{dy, da, db, h, w, ca, cb, na}, stream);
}

void concat_backward(int64_t count, int ca, int cb, const float* dy, float* da, float* db,
                     cudaStream_t stream) {
  const char* op = "concat_backward";
  if (count < 0 || ca < 0 || cb < 0 || int64_t(ca) + cb > 0x7fffffff)
    fail(op, ": bad sizes count=", count, " ca=", ca, " cb=", cb);
  const int64_t total = count * (int64_t(ca) + cb);
  if (total == 0) return;
  check_not_null(op, {{"dy", dy}});
  if (ca > 0) check_not_null(op, {{"da", da}});
  if (cb > 0) check_not_null(op, {{"db", db}});
  launch_flat(op, total, ConcatBwd{dy, da, db, ca, cb}, stream);
}

}  // namespace rpp::cuda
