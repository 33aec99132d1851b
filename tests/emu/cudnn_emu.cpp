// tests/emu/cudnn_emu.cpp — the emulated cuDNN convolutions of tests/emu/cudnn.h, computed by
// the CPU reference (kernels/cpu/conv2d.h, HWIO weights: the OHWI filters are repacked around
// each call). Work is queued on the handle's stream, so that stream capture records it.
#include "cudnn.h"

#include <cstdio>
#include <cstring>
#include <vector>

#include "kernels/cpu/conv2d.h"

struct cudnnContext {
  cudaStream_t stream = nullptr;
};
struct cudnnTensorStruct {
  int n = 0, c = 0, h = 0, w = 0;
  bool nhwc = false;
};
struct cudnnFilterStruct {
  int k = 0, c = 0, h = 0, w = 0;
  bool nhwc = false;
};
struct cudnnConvolutionStruct {
  int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1;
  cudnnMathType_t math = CUDNN_DEFAULT_MATH;
};

namespace {

char g_last[256] = "";

cudnnStatus_t bad(const char* why) {
  std::snprintf(g_last, sizeof g_last, "%s", why);
  return CUDNN_STATUS_NOT_SUPPORTED;
}

// The convolution of x (tensor) with w (filter) under c, as the CPU reference's shape.
bool shape_of(const cudnnTensorStruct* x, const cudnnFilterStruct* w, const cudnnConvolutionStruct* c,
              rpp::cpu::Conv2dShape& s) {
  if (!x || !w || !c || !x->nhwc || !w->nhwc || w->c != x->c || w->h != w->w || c->pad_h != c->pad_w ||
      c->u != c->v || c->dil_h != c->dil_w)
    return false;
  s.n = x->n;
  s.h = x->h;
  s.w = x->w;
  s.cin = x->c;
  s.kh = w->h;
  s.kw = w->w;
  s.cout = w->k;
  s.stride = c->u;
  s.pad = c->pad_h;
  s.dil = c->dil_h;
  return s.ho() > 0 && s.wo() > 0;
}

// OHWI <-> HWIO.
void ohwi_to_hwio(const rpp::cpu::Conv2dShape& s, const float* o, float* h) {
  for (int co = 0; co < s.cout; ++co)
    for (int y = 0; y < s.kh; ++y)
      for (int x = 0; x < s.kw; ++x)
        for (int ci = 0; ci < s.cin; ++ci)
          h[((size_t(y) * s.kw + x) * s.cin + ci) * s.cout + co] = o[((size_t(co) * s.kh + y) * s.kw + x) * s.cin + ci];
}
void hwio_to_ohwi(const rpp::cpu::Conv2dShape& s, const float* h, float* o) {
  for (int co = 0; co < s.cout; ++co)
    for (int y = 0; y < s.kh; ++y)
      for (int x = 0; x < s.kw; ++x)
        for (int ci = 0; ci < s.cin; ++ci)
          o[((size_t(co) * s.kh + y) * s.kw + x) * s.cin + ci] = h[((size_t(y) * s.kw + x) * s.cin + ci) * s.cout + co];
}

size_t weights(const rpp::cpu::Conv2dShape& s) { return size_t(s.kh) * s.kw * s.cin * s.cout; }

bool plain_scalars(const void* alpha, const void* beta) {
  return alpha && beta && *static_cast<const float*>(alpha) == 1.f && *static_cast<const float*>(beta) == 0.f;
}

template <class Perf, class Algo>
void one_algo(Algo a, int requested, int* returned, Perf* perf) {
  *returned = requested > 0 ? 1 : 0;
  if (requested > 0) {
    perf[0] = Perf{};
    perf[0].algo = a;
    perf[0].status = CUDNN_STATUS_SUCCESS;
    perf[0].memory = 0;
    perf[0].determinism = CUDNN_DETERMINISTIC;
    perf[0].mathType = CUDNN_FMA_MATH;
  }
}

}  // namespace

const char* cudnnGetErrorString(cudnnStatus_t s) {
  switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED (emulated cuDNN)";
    default: return "CUDNN_STATUS_NOT_INITIALIZED";
  }
}
void cudnnGetLastErrorString(char* message, size_t max_size) {
  if (max_size) std::snprintf(message, max_size, "%s", g_last);
}
cudnnStatus_t cudnnCreate(cudnnHandle_t* h) {
  *h = new cudnnContext;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
  delete h;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
  h->stream = s;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetStream(cudnnHandle_t h, cudaStream_t* s) {
  *s = h->stream;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t* d) {
  *d = new cudnnTensorStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t f, cudnnDataType_t t, int n,
                                         int c, int h, int w) {
  if (n < 1 || c < 1 || h < 1 || w < 1 || t != CUDNN_DATA_FLOAT) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnTensorStruct{n, c, h, w, f == CUDNN_TENSOR_NHWC};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t* d) {
  *d = new cudnnFilterStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t t, cudnnTensorFormat_t f, int k,
                                         int c, int h, int w) {
  if (k < 1 || c < 1 || h < 1 || w < 1 || t != CUDNN_DATA_FLOAT) return CUDNN_STATUS_BAD_PARAM;
  *d = cudnnFilterStruct{k, c, h, w, f == CUDNN_TENSOR_NHWC};
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t* d) {
  *d = new cudnnConvolutionStruct;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t d) {
  delete d;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dil_h, int dil_w, cudnnConvolutionMode_t mode, cudnnDataType_t t) {
  if (pad_h < 0 || pad_w < 0 || u < 1 || v < 1 || dil_h < 1 || dil_w < 1 || mode != CUDNN_CROSS_CORRELATION ||
      t != CUDNN_DATA_FLOAT)
    return CUDNN_STATUS_BAD_PARAM;
  d->pad_h = pad_h;
  d->pad_w = pad_w;
  d->u = u;
  d->v = v;
  d->dil_h = dil_h;
  d->dil_w = dil_w;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t d, cudnnMathType_t m) {
  d->math = m;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t x,
                                                    cudnnFilterDescriptor_t w, int* n, int* ch, int* h, int* wd) {
  rpp::cpu::Conv2dShape s;
  if (!shape_of(x, w, c, s)) return bad("unsupported convolution");
  *n = s.n;
  *ch = s.cout;
  *h = s.ho();
  *wd = s.wo();
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionForwardAlgorithmMaxCount(cudnnHandle_t, int* count) {
  *count = 1;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithmMaxCount(cudnnHandle_t, int* count) {
  *count = 1;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithmMaxCount(cudnnHandle_t, int* count) {
  *count = 1;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t, cudnnTensorDescriptor_t, cudnnFilterDescriptor_t,
                                                     cudnnConvolutionDescriptor_t, cudnnTensorDescriptor_t,
                                                     int requested, int* returned,
                                                     cudnnConvolutionFwdAlgoPerf_t* perf) {
  one_algo(CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM, requested, returned, perf);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t, cudnnFilterDescriptor_t,
                                                          cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t,
                                                          cudnnTensorDescriptor_t, int requested, int* returned,
                                                          cudnnConvolutionBwdDataAlgoPerf_t* perf) {
  one_algo(CUDNN_CONVOLUTION_BWD_DATA_ALGO_1, requested, returned, perf);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t, cudnnTensorDescriptor_t,
                                                            cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t,
                                                            cudnnFilterDescriptor_t, int requested, int* returned,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t* perf) {
  one_algo(CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1, requested, returned, perf);
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnFindConvolutionForwardAlgorithmEx(cudnnHandle_t h, cudnnTensorDescriptor_t xd, const void*,
                                                     cudnnFilterDescriptor_t wd, const void*,
                                                     cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t yd, void*,
                                                     int requested, int* returned,
                                                     cudnnConvolutionFwdAlgoPerf_t* perf, void*, size_t) {
  return cudnnGetConvolutionForwardAlgorithm_v7(h, xd, wd, c, yd, requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithmEx(cudnnHandle_t h, cudnnFilterDescriptor_t wd, const void*,
                                                          cudnnTensorDescriptor_t dyd, const void*,
                                                          cudnnConvolutionDescriptor_t c, cudnnTensorDescriptor_t dxd,
                                                          void*, int requested, int* returned,
                                                          cudnnConvolutionBwdDataAlgoPerf_t* perf, void*, size_t) {
  return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, wd, dyd, c, dxd, requested, returned, perf);
}
cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithmEx(cudnnHandle_t h, cudnnTensorDescriptor_t xd, const void*,
                                                            cudnnTensorDescriptor_t dyd, const void*,
                                                            cudnnConvolutionDescriptor_t c,
                                                            cudnnFilterDescriptor_t dwd, void*, int requested,
                                                            int* returned, cudnnConvolutionBwdFilterAlgoPerf_t* perf,
                                                            void*, size_t) {
  return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, xd, dyd, c, dwd, requested, returned, perf);
}
cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t, cudnnTensorDescriptor_t x,
                                                      cudnnFilterDescriptor_t w, cudnnConvolutionDescriptor_t c,
                                                      cudnnTensorDescriptor_t, cudnnConvolutionFwdAlgo_t,
                                                      size_t* bytes) {
  rpp::cpu::Conv2dShape s;
  if (!shape_of(x, w, c, s)) return bad("unsupported convolution");
  *bytes = 0;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t, cudnnFilterDescriptor_t w,
                                                           cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t c,
                                                           cudnnTensorDescriptor_t dx, cudnnConvolutionBwdDataAlgo_t,
                                                           size_t* bytes) {
  rpp::cpu::Conv2dShape s;
  if (!shape_of(dx, w, c, s)) return bad("unsupported convolution");
  *bytes = 0;
  return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t, cudnnTensorDescriptor_t x,
                                                             cudnnTensorDescriptor_t, cudnnConvolutionDescriptor_t c,
                                                             cudnnFilterDescriptor_t dw,
                                                             cudnnConvolutionBwdFilterAlgo_t, size_t* bytes) {
  rpp::cpu::Conv2dShape s;
  if (!shape_of(x, dw, c, s)) return bad("unsupported convolution");
  *bytes = 0;
  return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t h, const void* alpha, cudnnTensorDescriptor_t xd, const void* x,
                                      cudnnFilterDescriptor_t wd, const void* w, cudnnConvolutionDescriptor_t c,
                                      cudnnConvolutionFwdAlgo_t, void*, size_t, const void* beta,
                                      cudnnTensorDescriptor_t, void* y) {
  rpp::cpu::Conv2dShape s;
  if (!shape_of(xd, wd, c, s)) return bad("unsupported convolution");
  if (!plain_scalars(alpha, beta)) return bad("only alpha 1, beta 0");
  const cudaError_t queued = rpp_emu::enqueue_on(h->stream, [s, x, w, y] {
    std::vector<float> hwio(weights(s)), ws(rpp::cpu::conv2d_forward_workspace(s) + 1);
    ohwi_to_hwio(s, static_cast<const float*>(w), hwio.data());
    rpp::cpu::conv2d_forward<float>(s, static_cast<const float*>(x), hwio.data(), nullptr, static_cast<float*>(y),
                                    ws.data());
  });
  return queued == cudaSuccess ? CUDNN_STATUS_SUCCESS : bad("the stream's capture refused the work");
}
cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t h, const void* alpha, cudnnFilterDescriptor_t wd,
                                           const void* w, cudnnTensorDescriptor_t, const void* dy,
                                           cudnnConvolutionDescriptor_t c, cudnnConvolutionBwdDataAlgo_t, void*,
                                           size_t, const void* beta, cudnnTensorDescriptor_t dxd, void* dx) {
  rpp::cpu::Conv2dShape s;
  if (!shape_of(dxd, wd, c, s)) return bad("unsupported convolution");
  if (!plain_scalars(alpha, beta)) return bad("only alpha 1, beta 0");
  const cudaError_t queued = rpp_emu::enqueue_on(h->stream, [s, w, dy, dx] {
    std::vector<float> hwio(weights(s)), ws(rpp::cpu::conv2d_backward_data_workspace(s) + 1);
    ohwi_to_hwio(s, static_cast<const float*>(w), hwio.data());
    rpp::cpu::conv2d_backward_data<float>(s, static_cast<const float*>(dy), hwio.data(), static_cast<float*>(dx),
                                          ws.data());
  });
  return queued == cudaSuccess ? CUDNN_STATUS_SUCCESS : bad("the stream's capture refused the work");
}
cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t h, const void* alpha, cudnnTensorDescriptor_t xd,
                                             const void* x, cudnnTensorDescriptor_t, const void* dy,
                                             cudnnConvolutionDescriptor_t c, cudnnConvolutionBwdFilterAlgo_t, void*,
                                             size_t, const void* beta, cudnnFilterDescriptor_t dwd, void* dw) {
  rpp::cpu::Conv2dShape s;
  if (!shape_of(xd, dwd, c, s)) return bad("unsupported convolution");
  if (!plain_scalars(alpha, beta)) return bad("only alpha 1, beta 0");
  const cudaError_t queued = rpp_emu::enqueue_on(h->stream, [s, x, dy, dw] {
    std::vector<float> hwio(weights(s)), db(size_t(s.cout)), ws(rpp::cpu::conv2d_backward_filter_workspace(s) + 1);
    rpp::cpu::conv2d_backward_filter<float>(s, static_cast<const float*>(x), static_cast<const float*>(dy),
                                            hwio.data(), db.data(), ws.data());
    hwio_to_ohwi(s, hwio.data(), static_cast<float*>(dw));
  });
  return queued == cudaSuccess ? CUDNN_STATUS_SUCCESS : bad("the stream's capture refused the work");
}
