// kernels/cuda/image_ops.cu — see image_ops.cuh. One thread per output pixel. The taps follow
// model/image_io.cpp bilinear_taps: scale = in / out, s = max(0, scale * (d + 0.5) - 0.5),
// i0 = min(int(s), in - 1), i1 = min(i0 + 1, in - 1), weight s - i0; the _rn intrinsics keep
// nvcc from fusing multiply-adds, so the rounding matches the host's.
#include "kernels/cuda/image_ops.cuh"

#include <cuda_runtime.h>

#include "kernels/cuda/check.cuh"
#include "runtime/error.h"

namespace rpp::cuda {

namespace {

constexpr int kThreads = 256;

struct Tap {
  int i0, i1;
  float l;
};

__device__ __forceinline__ Tap tap(int in, int out, int d) {
  const float scale = __fdiv_rn(float(in), float(out));
  float s = __fsub_rn(__fmul_rn(scale, __fadd_rn(float(d), 0.5f)), 0.5f);
  if (s < 0.f) s = 0.f;
  const int i0 = min(int(s), in - 1);
  return {i0, i0 < in - 1 ? i0 + 1 : i0, __fsub_rn(s, float(i0))};
}

// hy * (hx * a + lx * b) + ly * (hx * c + lx * d), evaluated as the host does.
__device__ __forceinline__ float blend(float hy, float ly, float hx, float lx, float a, float b, float c, float d) {
  const float top = __fadd_rn(__fmul_rn(hx, a), __fmul_rn(lx, b));
  const float bot = __fadd_rn(__fmul_rn(hx, c), __fmul_rn(lx, d));
  return __fadd_rn(__fmul_rn(hy, top), __fmul_rn(ly, bot));
}

__global__ void __launch_bounds__(kThreads)
    rgb8_kernel(const uint8_t* __restrict__ src, int w, int h, size_t stride, int size, float* __restrict__ dst) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= int64_t(size) * size) return;
  const int x = int(i % size), y = int(i / size);
  float* o = dst + i * 3;
  if (w == size && h == size) {  // the host returns the image unchanged
    const uint8_t* p = src + size_t(y) * stride + size_t(x) * 3;
    for (int c = 0; c < 3; ++c) o[c] = __fdiv_rn(float(p[c]), 255.f);
    return;
  }
  const Tap tx = tap(w, size, x), ty = tap(h, size, y);
  const float ly = ty.l, hy = __fsub_rn(1.f, ly), lx = tx.l, hx = __fsub_rn(1.f, lx);
  const uint8_t* r0 = src + size_t(ty.i0) * stride;
  const uint8_t* r1 = src + size_t(ty.i1) * stride;
  for (int c = 0; c < 3; ++c) {
    float v = blend(hy, ly, hx, lx, float(r0[size_t(tx.i0) * 3 + c]), float(r0[size_t(tx.i1) * 3 + c]),
                    float(r1[size_t(tx.i0) * 3 + c]), float(r1[size_t(tx.i1) * 3 + c]));
    v = floorf(__fadd_rn(v, 0.5f));
    v = fminf(255.f, fmaxf(0.f, v));
    o[c] = __fdiv_rn(float(uint8_t(v)), 255.f);
  }
}

__device__ __forceinline__ float sigmoid_f(float x) {
  const double d = double(x);
  if (d >= 0) return float(1.0 / (1.0 + exp(-d)));
  const double e = exp(d);
  return float(e / (1.0 + e));
}

__global__ void __launch_bounds__(kThreads)
    outputs_kernel(const float* __restrict__ logits, int size, int w, int h, double threshold,
                   float* __restrict__ prob, uint8_t* __restrict__ mask) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= int64_t(w) * h) return;
  const int x = int(i % w), y = int(i / w);
  float p;
  if (w == size && h == size) {
    p = sigmoid_f(logits[i]);
  } else {
    const Tap tx = tap(size, w, x), ty = tap(size, h, y);
    const float ly = ty.l, hy = __fsub_rn(1.f, ly), lx = tx.l, hx = __fsub_rn(1.f, lx);
    const float* r0 = logits + int64_t(ty.i0) * size;
    const float* r1 = logits + int64_t(ty.i1) * size;
    p = blend(hy, ly, hx, lx, sigmoid_f(r0[tx.i0]), sigmoid_f(r0[tx.i1]), sigmoid_f(r1[tx.i0]), sigmoid_f(r1[tx.i1]));
  }
  if (prob) prob[i] = p;
  if (mask) mask[i] = double(p) >= threshold ? 255 : 0;
}

unsigned blocks_for(int64_t n) { return unsigned((n + kThreads - 1) / kThreads); }

}  // namespace

void rgb8_to_model_input(const uint8_t* src, int w, int h, size_t stride, int size, float* dst,
                         cudaStream_t stream) {
  const char* op = "rgb8_to_model_input";
  detail::check_not_null(op, {{"src", src}, {"dst", dst}});
  if (w < 1 || h < 1 || size < 1) fail(op, ": sizes must be positive, got ", w, "x", h, " -> ", size);
  if (stride < size_t(w) * 3) fail(op, ": stride ", stride, " is less than a row of ", w, " RGB pixels");
  rgb8_kernel<<<blocks_for(int64_t(size) * size), kThreads, 0, stream>>>(src, w, h, stride, size, dst);
  RPP_CUDA_CHECK_LAUNCH(op);
}

void logits_to_outputs(const float* logits, int size, int w, int h, double threshold, float* prob,
                       uint8_t* mask, cudaStream_t stream) {
  const char* op = "logits_to_outputs";
  detail::check_not_null(op, {{"logits", logits}});
  if (!prob && !mask) fail(op, ": needs a probability or a mask output");
  if (w < 1 || h < 1 || size < 1) fail(op, ": sizes must be positive, got ", size, " -> ", w, "x", h);
  outputs_kernel<<<blocks_for(int64_t(w) * h), kThreads, 0, stream>>>(logits, size, w, h, threshold, prob, mask);
  RPP_CUDA_CHECK_LAUNCH(op);
}

}  // namespace rpp::cuda
