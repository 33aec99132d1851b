// kernels/cpu/grad_norm.cpp — reference sum of squares and in-place scaling, the two halves of
// global gradient-norm clipping. Plain loops; the sum is taken over fixed blocks in block order,
// so it does not depend on the thread count.
#include <algorithm>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/parallel.h"
#include "runtime/error.h"

namespace rpp::cpu {

template <class T>
double sum_squares(int64_t n, const T* x) {
  RPP_CHECK(n >= 0, "sum_squares: n must be >= 0, got ", n);
  constexpr int kBlocks = 64;
  double part[kBlocks] = {};
  parallel_for(kBlocks, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t lo = n * b / kBlocks, hi = n * (b + 1) / kBlocks;
      double s = 0;
      for (int64_t i = lo; i < hi; ++i) s += double(x[i]) * double(x[i]);
      part[b] = s;
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

template <class T>
void scale_inplace(int64_t n, T* x, double s) {
  RPP_CHECK(n >= 0, "scale_inplace: n must be >= 0, got ", n);
  const T f = T(s);
  parallel_for(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) x[i] *= f;
  }, 1 << 14);
}

template double sum_squares<float>(int64_t, const float*);
template double sum_squares<double>(int64_t, const double*);
template void scale_inplace<float>(int64_t, float*, double);
template void scale_inplace<double>(int64_t, double*, double);

}  // namespace rpp::cpu
