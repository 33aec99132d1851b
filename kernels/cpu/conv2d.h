// kernels/cpu/conv2d.h — reference 2-D convolution, forward and backward, NHWC.
//
// Layouts: x (N, H, W, Cin); y (N, Ho, Wo, Cout); weights HWIO (KH, KW, Cin, Cout), the layout the
// GEMM formulation wants (checkpoints keep PyTorch's OIHW and are repacked when loaded); bias (Cout).
// Zero padding of `pad` on every side; Ho = (H + 2*pad - dil*(KH-1) - 1) / stride + 1.
//
// Formulation: tiles of output pixels are gathered (im2col) into a per-thread slice of the caller's
// workspace and multiplied by the weight matrix with a register-blocked GEMM; threads own disjoint
// output rows (forward, backward-data) or partial weight-gradient sums reduced in a fixed order
// (backward-filter), so results are identical on every run with the same thread count.
// Instantiated for float (the engine) and double (gradient checks).
#pragma once
#include <cstddef>
#include <cstdint>

namespace rpp::cpu {

struct Conv2dShape {
  int n = 1, h = 1, w = 1, cin = 1, cout = 1;
  int kh = 1, kw = 1, stride = 1, pad = 0, dil = 1;
  // 0 when the dilated kernel does not fit in the padded input.
  int ho() const { return out_size(h, kh); }
  int wo() const { return out_size(w, kw); }
  int out_size(int in, int k) const {
    const int span = in + 2 * pad - dil * (k - 1) - 1;
    return span < 0 ? 0 : span / stride + 1;
  }
};

// Workspace each call needs, in elements of the scalar type (may be 0). The three passes may
// differ; a caller sizes one shared buffer to the maximum. The sizes are the same for float and
// double and depend on the shape and on num_threads() (kernels/cpu/parallel.h, fixed for the
// life of the process): per-thread gather tiles of at most 240 pixels (about 2^17 elements),
// backward-filter's per-thread partial dw (K x Cout), backward-data's repacked weights.
size_t conv2d_forward_workspace(const Conv2dShape& s);
size_t conv2d_backward_data_workspace(const Conv2dShape& s);
size_t conv2d_backward_filter_workspace(const Conv2dShape& s);

// y = conv(x, w) + bias. bias may be null. Overwrites y.
template <class T>
void conv2d_forward(const Conv2dShape& s, const T* x, const T* w, const T* bias, T* y, T* ws);

// dx = dL/dx given dy = dL/dy. Overwrites dx.
template <class T>
void conv2d_backward_data(const Conv2dShape& s, const T* dy, const T* w, T* dx, T* ws);

// dw = dL/dw (HWIO) and, if dbias is not null, dbias = dL/dbias. Overwrites both.
template <class T>
void conv2d_backward_filter(const Conv2dShape& s, const T* x, const T* dy, T* dw, T* dbias, T* ws);

// Single-threaded GEMM used by the convolutions: C(M x N) = A * B (+ C if accumulate), where
// A(i, k) = A[i * a_row + k * a_col] (any strides, so A may be transposed), B is row-major K x N
// with row stride ldb, C row-major with row stride ldc.
template <class T>
void gemm(int64_t M, int64_t N, int64_t K, const T* A, int64_t a_row, int64_t a_col, const T* B,
          int64_t ldb, T* C, int64_t ldc, bool accumulate);

}  // namespace rpp::cpu
