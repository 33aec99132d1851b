// tests/gpu/conv_test_util.h — helpers shared by the convolution kernel suites
// (test_bn_relu_conv*_gpu, test_conv_bn_sum_gpu, test_conv_sum_bwd_gpu): shape construction and
// printing, the network's fused-chain shapes, the ASPP's branch shapes, the tensor-core maths'
// names and operand units, and the HWIO -> OHWI weight repack the device kernels expect.
// Header-only; not compiled on its own.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "gpu_test_util.h"
#include "kernels/cpu/conv2d.h"
#include "kernels/cuda/bn_relu_conv_tc.cuh"  // ConvMath
#include "model/resunetpp.h"

namespace rpp::gputest {

// A square-kernel conv shape.
inline cpu::Conv2dShape conv_shape(int n, int h, int w, int cin, int cout, int k, int stride, int pad, int dil) {
  cpu::Conv2dShape s;
  s.n = n;
  s.h = h;
  s.w = w;
  s.cin = cin;
  s.cout = cout;
  s.kh = s.kw = k;
  s.stride = stride;
  s.pad = pad;
  s.dil = dil;
  return s;
}

// The ASPP's branches: 3x3 convolutions of one input with padding = dilation.
inline std::vector<cpu::Conv2dShape> aspp(int n, int h, int w, int cin, int cout,
                                          std::vector<int> dils = {1, 6, 12, 18}) {
  std::vector<cpu::Conv2dShape> v;
  for (int d : dils) v.push_back(conv_shape(n, h, w, cin, cout, 3, 1, d, d));
  return v;
}

inline const char* math_name(cuda::ConvMath m) { return m == cuda::ConvMath::Tf32 ? "tf32" : "bf16"; }

// Unit roundoff of the tensor-core operands: 2^-11 (TF32) or 2^-8 (BF16).
inline double math_unit(cuda::ConvMath m) {
  return m == cuda::ConvMath::Tf32 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
}

// "n2 64x64x16 -> 32 k3x3 s2 p1 d1", for test messages.
inline std::string shape_str(const cpu::Conv2dShape& s) {
  return "n" + std::to_string(s.n) + " " + std::to_string(s.h) + "x" + std::to_string(s.w) + "x" +
         std::to_string(s.cin) + " -> " + std::to_string(s.cout) + " k" + std::to_string(s.kh) + "x" +
         std::to_string(s.kw) + " s" + std::to_string(s.stride) + " p" + std::to_string(s.pad) + " d" +
         std::to_string(s.dil);
}

// The distinct conv shapes of ResUNet++'s fused BN-ReLU-conv chains (runtime/fusion.h) at
// size x size, batch n, in graph order.
inline std::vector<cpu::Conv2dShape> fused_chain_shapes(int size, int n = 2) {
  ModelConfig cfg;
  cfg.fuse = true;
  const ModelGraph m = build_resunetpp(cfg, n, size, size, false);
  std::vector<cpu::Conv2dShape> out;
  std::set<std::tuple<int, int, int, int, int, int, int, int, int>> seen;
  for (const Node& node : m.graph.nodes()) {
    if (node.op != OpKind::BnReluConv2d) continue;
    const cpu::Conv2dShape& s = node.conv.shape;
    if (seen.insert({s.h, s.w, s.cin, s.cout, s.kh, s.kw, s.stride, s.pad, s.dil}).second) out.push_back(s);
  }
  return out;
}

// The fused-chain shapes at 256x256 for the large-shape tests: batch 2 on a GPU. The CPU
// emulator needs minutes for them (the same code paths as the 64x64 shapes), so there it gives
// batch 1 and only with RPP_EMU_LARGE=1; otherwise no shapes, and *skip says why (for
// GTEST_SKIP).
inline std::vector<cpu::Conv2dShape> large_network_shapes(std::string* skip) {
#ifdef RPP_CUDA_EMULATOR
  if (!std::getenv("RPP_EMU_LARGE")) {
    *skip = "emulator: set RPP_EMU_LARGE=1 to run the 256x256 shapes";
    return {};
  }
  return fused_chain_shapes(256, 1);
#else
  skip->clear();
  return fused_chain_shapes(256, 2);
#endif
}

// HWIO (kh, kw, cin, cout), the CPU reference's layout -> OHWI (cout, kh, kw, cin), the device's.
inline Floats hwio_to_ohwi(const cpu::Conv2dShape& s, const Floats& hwio) {
  Floats o(hwio.size());
  for (int y = 0; y < s.kh; ++y)
    for (int x = 0; x < s.kw; ++x)
      for (int ci = 0; ci < s.cin; ++ci)
        for (int co = 0; co < s.cout; ++co)
          o[size_t(((int64_t(co) * s.kh + y) * s.kw + x) * s.cin + ci)] =
              hwio[size_t(((int64_t(y) * s.kw + x) * s.cin + ci) * s.cout + co)];
  return o;
}

// BN arguments of a fused chain, host side. random_bn gives positive shifts (beta 0.2 .. 0.8), so
// relu(bn(0)) is not 0 for most channels and a kernel padding with relu(shift) instead of 0 fails.
struct BnParams {
  Floats gamma, beta, mean, invstd;
};

inline BnParams random_bn(int c) {
  BnParams p;
  p.gamma = uniform(size_t(c), 0.5f, 1.5f);
  p.beta = uniform(size_t(c), 0.2f, 0.8f);
  p.mean = uniform(size_t(c), -0.3f, 0.3f);
  p.invstd = uniform(size_t(c), 0.5f, 2.f);
  return p;
}

// The kernels' bn(x): the forward kernels' float expression (the ReLU-mask decision).
inline float bn_float(float x, const BnParams& p, int c) {
  const size_t i = size_t(c);
  return std::fmaf(x - p.mean[i], float(double(p.gamma[i]) * double(p.invstd[i])), p.beta[i]);
}

}  // namespace rpp::gputest
