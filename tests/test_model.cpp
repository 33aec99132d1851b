// tests/test_model.cpp — ResUNet++ structure, names, shapes, initialisation and checkpoints.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

#include "model/resunetpp.h"
#include "runtime/checkpoint.h"
#include "runtime/executor_cpu.h"
#include "runtime/fileio.h"
#include "runtime/safetensors.h"

using namespace rpp;

namespace {

// The reference PyTorch definition's state_dict, written out independently of the builder: module
// by module in definition order, conv weights in OIHW.
struct Expect {
  std::vector<std::pair<std::string, Shape>> v;
  void conv(const std::string& p, int64_t ci, int64_t co, int64_t k) {
    v.push_back({p + ".weight", {co, ci, k, k}});
    v.push_back({p + ".bias", {co}});
  }
  void bn(const std::string& p, int64_t c) {
    for (const char* n : {".weight", ".bias", ".running_mean", ".running_var"}) v.push_back({p + n, {c}});
    v.push_back({p + ".num_batches_tracked", {}});
  }
  void se(const std::string& p, int64_t c) {
    v.push_back({p + ".net.0.weight", {c / 8, c}});
    v.push_back({p + ".net.2.weight", {c, c / 8}});
  }
  void stem(const std::string& p, int64_t ci, int64_t co) {
    conv(p + ".c1.0", ci, co, 3); bn(p + ".c1.1", co); conv(p + ".c1.3", co, co, 3);
    conv(p + ".c2.0", ci, co, 1); bn(p + ".c2.1", co); se(p + ".attn", co);
  }
  void res(const std::string& p, int64_t ci, int64_t co) {
    bn(p + ".c1.0", ci); conv(p + ".c1.2", ci, co, 3); bn(p + ".c1.3", co); conv(p + ".c1.5", co, co, 3);
    conv(p + ".c2.0", ci, co, 1); bn(p + ".c2.1", co); se(p + ".attn", co);
  }
  void aspp(const std::string& p, int64_t ci, int64_t co) {
    for (int i = 1; i <= 4; ++i) {
      conv(p + ".c" + std::to_string(i) + ".0", ci, co, 3);
      bn(p + ".c" + std::to_string(i) + ".1", co);
    }
    conv(p + ".c5", co, co, 1);
  }
  void attn(const std::string& p, int64_t cg, int64_t cx) {
    bn(p + ".g_conv.0", cg); conv(p + ".g_conv.2", cg, cx, 3);
    bn(p + ".x_conv.0", cx); conv(p + ".x_conv.2", cx, cx, 3);
    bn(p + ".gc_conv.0", cx); conv(p + ".gc_conv.2", cx, cx, 3);
  }
  void dec(const std::string& p, int64_t cg, int64_t cx, int64_t co) {
    attn(p + ".a1", cg, cx);
    res(p + ".r1", cg + cx, co);
  }
  Expect() {
    stem("c1", 3, 16); res("c2", 16, 32); res("c3", 32, 64); res("c4", 64, 128); aspp("b1", 128, 256);
    dec("d1", 64, 256, 128); dec("d2", 32, 128, 64); dec("d3", 16, 64, 32); aspp("aspp", 32, 16);
    conv("output", 16, 1, 1);
  }
};

std::string tmp_path(const std::string& name) {
  return "/tmp/rpp_test_model_" + std::to_string(getpid()) + "_" + name;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Model, ParameterCountIsExact) {
  ModelGraph m = build_resunetpp(ModelConfig{}, 1, 64, 64, false);
  EXPECT_EQ(count_params(m.graph), 4062993);
  // The count does not depend on the input size.
  EXPECT_EQ(count_params(build_resunetpp(ModelConfig{}, 2, 256, 256, true).graph), 4062993);
  int64_t running = 0;
  for (const TensorInfo& t : m.graph.tensors())
    if (t.kind == TensorKind::Buffer && t.dtype == DType::F32) running += numel(t.shape);
  EXPECT_EQ(running, 7392);
}

TEST(Model, CheckpointNamesShapesAndOrderMatchPyTorch) {
  ModelGraph m = build_resunetpp(ModelConfig{}, 1, 32, 32, false);
  ParamStore store;
  init_params(m.graph, store, 7);
  const std::string path = tmp_path("names.safetensors");
  save_checkpoint(path, m.graph, store, false, {});
  StFile f = read_safetensors(path);
  Expect e;
  ASSERT_EQ(f.tensors.size(), e.v.size());
  for (size_t i = 0; i < e.v.size(); ++i) {
    EXPECT_EQ(f.tensors[i].name, e.v[i].first) << "at position " << i;
    EXPECT_EQ(f.tensors[i].shape, e.v[i].second) << e.v[i].first;
    const bool counter = e.v[i].first.find("num_batches_tracked") != std::string::npos;
    EXPECT_EQ(f.tensors[i].dtype, counter ? DType::I64 : DType::F32) << e.v[i].first;
  }
  std::remove(path.c_str());
}

TEST(Model, ForwardShapes) {
#if defined(__SANITIZE_ADDRESS__)
  const std::vector<int> sizes{64};  // the 256x256 forward takes a minute under ASan; Release runs it
#else
  const std::vector<int> sizes{64, 256};
#endif
  for (int size : sizes) {
    const int n = size == 64 ? 2 : 1;
    ModelGraph m = build_resunetpp(ModelConfig{}, n, size, size, false);
    ParamStore store;
    init_params(m.graph, store, 1);
    CpuExecutor ex(m.graph, store);
    float* img = ex.data(m.image);
    for (int64_t i = 0; i < numel(m.graph.tensor(m.image).shape); ++i) img[i] = float((i * 37) % 255) / 255.f;
    ex.run();
    EXPECT_EQ(m.graph.tensor(m.logits).shape, (Shape{n, size, size, 1}));
    const float* lg = ex.data(m.logits);
    for (int64_t i = 0; i < int64_t(n) * size * size; ++i) ASSERT_TRUE(std::isfinite(lg[i])) << i;
  }
  // Shapes of the named intermediate modules at 64x64.
  ModelGraph m = build_resunetpp(ModelConfig{}, 2, 64, 64, true);
  auto out_of = [&](const std::string& mod) {
    Shape s;
    for (const Node& nd : m.graph.nodes())
      if (nd.name == mod + ".attn") s = m.graph.tensor(nd.out[0]).shape;
    return s;
  };
  EXPECT_EQ(out_of("c1"), (Shape{2, 64, 64, 16}));
  EXPECT_EQ(out_of("c2"), (Shape{2, 32, 32, 32}));
  EXPECT_EQ(out_of("c3"), (Shape{2, 16, 16, 64}));
  EXPECT_EQ(out_of("c4"), (Shape{2, 8, 8, 128}));
  EXPECT_EQ(out_of("d1.r1"), (Shape{2, 16, 16, 128}));
  EXPECT_EQ(out_of("d3.r1"), (Shape{2, 64, 64, 32}));
}

TEST(Model, ForwardFlopsMatchTheArchitecture) {
  // 31.4 GFLOP of convolution per 256x256 image (multiply-add = 2), per the architecture guide;
  // the elementwise ops (BN, ReLU, adds, SE) add a little on top.
  for (bool fuse : {false, true}) {
    ModelConfig cfg;
    cfg.fuse = fuse;
    ModelGraph m = build_resunetpp(cfg, 1, 256, 256, false);
    int64_t conv = 0;
    auto add = [&](const cpu::Conv2dShape& s) { conv += 2ll * s.n * s.ho() * s.wo() * s.cout * s.kh * s.kw * s.cin; };
    for (const Node& n : m.graph.nodes()) {
      if (n.op == OpKind::Conv2d || n.op == OpKind::BnReluConv2d) add(n.conv.shape);
      if (n.op == OpKind::ConvBnSum)  // the fused ASPP blocks (inference)
        for (const cpu::Conv2dShape& s : n.branches.shapes) add(s);
    }
    EXPECT_NEAR(double(conv) / 1e9, 31.4, 0.1) << "fuse " << fuse;  // 31.34 counted here
    EXPECT_GT(m.graph.forward_flops(), conv);
    EXPECT_LT(double(m.graph.forward_flops()), 1.01 * double(conv));
  }
}

TEST(Model, RejectsBadConfig) {
  EXPECT_NE(error_of([] { build_resunetpp(ModelConfig{}, 1, 60, 64, false); }).find("multiple of 8"), std::string::npos);
  ModelConfig c;
  c.filters = {16, 32, 64};
  EXPECT_NE(error_of([&] { build_resunetpp(c, 1, 64, 64, false); }).find("5 filter"), std::string::npos);
}

TEST(Model, InitialisationFollowsPyTorchDefaults) {
  ModelGraph m = build_resunetpp(ModelConfig{}, 1, 32, 32, false);
  ParamStore a, b, c;
  init_params(m.graph, a, 3);
  init_params(m.graph, b, 3);
  init_params(m.graph, c, 4);
  // Conv weight c2.c1.2: HWIO (3,3,16,32), fan_in 144, bound 1/12.
  const Tensor& w = a.get("c2.c1.2.weight");
  double mx = 0, sum2 = 0;
  for (int64_t i = 0; i < w.numel(); ++i) {
    mx = std::max(mx, double(std::fabs(w.f()[i])));
    sum2 += double(w.f()[i]) * w.f()[i];
  }
  EXPECT_LE(mx, 1.0 / 12.0);
  EXPECT_GT(mx, 0.95 / 12.0);
  EXPECT_NEAR(sum2 / double(w.numel()), (1.0 / 144.0) / 3.0, 0.15 * (1.0 / 144.0) / 3.0);  // var of U(-b,b)
  const Tensor& bias = a.get("c2.c1.2.bias");
  for (int64_t i = 0; i < bias.numel(); ++i) EXPECT_LE(std::fabs(bias.f()[i]), 1.0 / 12.0);
  const Tensor& lin = a.get("c2.attn.net.0.weight");  // (4, 32): bound 1/sqrt(32)
  for (int64_t i = 0; i < lin.numel(); ++i) EXPECT_LE(std::fabs(lin.f()[i]), 1.0 / std::sqrt(32.0) + 1e-7);
  for (float v : {a.get("c2.c1.0.weight").f()[0], a.get("c2.c1.0.running_var").f()[5]}) EXPECT_EQ(v, 1.f);
  for (float v : {a.get("c2.c1.0.bias").f()[0], a.get("c2.c1.0.running_mean").f()[5]}) EXPECT_EQ(v, 0.f);
  // Seeded: same seed, same bits; other seed, other values.
  EXPECT_EQ(0, std::memcmp(a.get("d1.r1.c1.2.weight").raw(), b.get("d1.r1.c1.2.weight").raw(),
                           a.get("d1.r1.c1.2.weight").nbytes()));
  EXPECT_NE(0, std::memcmp(a.get("d1.r1.c1.2.weight").raw(), c.get("d1.r1.c1.2.weight").raw(),
                           a.get("d1.r1.c1.2.weight").nbytes()));
}

TEST(Model, LayoutConversionRoundTrips) {
  Tensor t = Tensor::f32({3, 3, 5, 7});
  for (int64_t i = 0; i < t.numel(); ++i) t.f()[i] = float(i);
  Tensor o = hwio_to_oihw(t);
  EXPECT_EQ(o.shape(), (Shape{7, 5, 3, 3}));
  // element (kh=1, kw=2, ci=4, co=6) of HWIO sits at (6, 4, 1, 2) of OIHW.
  EXPECT_EQ(o.f()[((6 * 5 + 4) * 3 + 1) * 3 + 2], t.f()[((1 * 3 + 2) * 5 + 4) * 7 + 6]);
  Tensor back = oihw_to_hwio(o);
  EXPECT_EQ(0, std::memcmp(back.raw(), t.raw(), t.nbytes()));
}

TEST(Checkpoint, RoundTripIsBitExactIncludingOptimizerState) {
  ModelGraph m = build_resunetpp(ModelConfig{}, 1, 32, 32, false);
  ParamStore a;
  init_params(m.graph, a, 11);
  a.get("c1.c1.1.num_batches_tracked").data<int64_t>()[0] = 1234;
  a.get("b1.c3.1.running_var").f()[7] = 0.123f;
  const std::string path = tmp_path("rt.safetensors");
  save_checkpoint(path, m.graph, a, false, {{"epoch", "3"}});
  ParamStore b;
  Metadata meta = load_checkpoint(path, m.graph, b, false);
  for (const std::string& n : a.names()) {
    ASSERT_TRUE(b.has(n)) << n;
    ASSERT_EQ(0, std::memcmp(a.get(n).raw(), b.get(n).raw(), a.get(n).nbytes())) << n;
  }
  bool found = false;
  for (auto& [k, v] : meta) found = found || (k == "epoch" && v == "3");
  EXPECT_TRUE(found);
  std::remove(path.c_str());
}

TEST(Checkpoint, MalformedFilesGiveClearErrors) {
  ModelGraph m = build_resunetpp(ModelConfig{}, 1, 32, 32, false);
  ParamStore a;
  init_params(m.graph, a, 5);
  const std::string good = tmp_path("good.safetensors");
  save_checkpoint(good, m.graph, a, false, {});
  const std::string bytes = read_file(good);
  const std::string bad = tmp_path("bad.safetensors");
  auto load_err = [&](const std::string& content) {
    write_file_atomic(bad, content);
    ParamStore s;
    init_params(m.graph, s, 9);
    const float before = s.get("output.weight").f()[0];
    std::string e = error_of([&] { load_checkpoint(bad, m.graph, s, false); });
    EXPECT_EQ(s.get("output.weight").f()[0], before) << "store modified by a failed load";
    return e;
  };
  auto has = [](const std::string& msg, const std::string& what) {
    return msg.find(what) != std::string::npos;
  };
  // Truncated.
  std::string e = load_err(bytes.substr(0, bytes.size() / 2));
  EXPECT_TRUE(has(e, bad)) << e;
  e = load_err(bytes.substr(0, 5));
  EXPECT_TRUE(has(e, bad)) << e;
  // Bad JSON: break the header's first brace.
  std::string j = bytes;
  j[8] = 'x';
  e = load_err(j);
  EXPECT_TRUE(has(e, bad) && has(e, "JSON")) << e;
  // Offsets out of range: header length claims more than the file.
  std::string big = bytes;
  big[5] = '\x7f';
  e = load_err(big);
  EXPECT_TRUE(has(e, bad)) << e;
  // Wrong shape / missing tensor / unexpected tensor: build such files from the model's tensors.
  auto views_without = [&](const std::string& skip, const std::string& reshape, bool extra) {
    ModelGraph mm = build_resunetpp(ModelConfig{}, 1, 32, 32, false);
    std::vector<Tensor> keep;
    std::vector<StTensorView> views;
    keep.reserve(500);
    for (const std::string& n : a.names()) {
      if (n == skip) continue;
      Tensor t = a.get(n);
      if (t.shape().size() == 4) t = hwio_to_oihw(t);
      Shape sh = t.shape();
      if (n == reshape) sh = {sh[0] * sh[1] * sh[2] * sh[3]};
      keep.push_back(std::move(t));
      views.push_back({n, keep.back().dtype(), sh, keep.back().raw()});
    }
    static float extra_v[2] = {1, 2};
    if (extra) views.push_back({"head.weight", DType::F32, {2}, extra_v});
    auto buf = serialize_safetensors(views, {});
    return std::string(buf.begin(), buf.end());
  };
  e = load_err(views_without("d2.a1.x_conv.2.bias", "", false));
  EXPECT_TRUE(has(e, bad) && has(e, "missing tensor 'd2.a1.x_conv.2.bias'")) << e;
  e = load_err(views_without("", "c3.c1.2.weight", false));
  EXPECT_TRUE(has(e, "c3.c1.2.weight") && has(e, "[64, 32, 3, 3]")) << e;
  e = load_err(views_without("", "", true));
  EXPECT_TRUE(has(e, "unexpected tensor 'head.weight'")) << e;
  // Another architecture: a checkpoint of a smaller network.
  ModelConfig small;
  small.filters = {8, 16, 32, 64, 128};
  ModelGraph sm = build_resunetpp(small, 1, 32, 32, false);
  ParamStore ss;
  init_params(sm.graph, ss, 1);
  save_checkpoint(bad, sm.graph, ss, false, {});
  ParamStore s2;
  e = error_of([&] { load_checkpoint(bad, m.graph, s2, false); });
  EXPECT_TRUE(has(e, "does not match this model")) << e;
  std::remove(good.c_str());
  std::remove(bad.c_str());
}
