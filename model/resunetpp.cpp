// model/resunetpp.cpp — the network builder. Module paths follow the reference PyTorch code:
// Stem_Block c1/c2/attn, ResNet_Block c1/c2/attn, ASPP c1..c5, Attention_Block g_conv/x_conv/
// gc_conv, Decoder_Block a1/r1, and Sequential indices for the layers inside them.
#include "model/resunetpp.h"

#include <cmath>
#include <cstdlib>

#include "runtime/executor.h"
#include "runtime/fusion.h"
#include "runtime/rng.h"

namespace rpp {

ModelGraph build_resunetpp(const ModelConfig& cfg, int n, int h, int w, bool training, LossKind loss) {
  if (cfg.filters.size() != 5) fail("ResUNet++ needs 5 filter counts, got ", cfg.filters.size());
  for (int f : cfg.filters)
    if (f < 8 || f % 8) fail("filter counts must be positive multiples of 8 (squeeze-excitation reduces by 8), got ", f);
  if (n < 1) fail("batch size must be at least 1, got ", n);
  if (h < 8 || w < 8 || h % 8 || w % 8) fail("input size must be a positive multiple of 8, got ", h, "x", w);
  ModelGraph m;
  GraphBuilder gb(m.graph, training);
  ResUNetBlocks b(gb);
  const auto& f = cfg.filters;
  m.image = gb.input("image", {n, h, w, cfg.in_channels});
  int c1 = b.stem("c1", m.image, f[0]);
  int c2 = b.resblock("c2", c1, f[1], 2);
  int c3 = b.resblock("c3", c2, f[2], 2);
  int c4 = b.resblock("c4", c3, f[3], 2);
  int b1 = b.aspp("b1", c4, f[4]);
  int d1 = b.decoder("d1", c3, b1, f[3]);
  int d2 = b.decoder("d2", c2, d1, f[2]);
  int d3 = b.decoder("d3", c1, d2, f[1]);
  int a = b.aspp("aspp", d3, f[0]);
  m.logits = b.conv("output", a, 1, 1, 1, 0);
  if (training) {
    m.target = gb.input("target", {n, h, w, 1});
    m.loss = gb.loss("loss", m.logits, m.target, loss);
  } else {
    m.graph.tensor(m.logits).is_output = true;
  }
  if (cfg.fuse) {
    fuse_bn_relu_conv(m.graph);
    fuse_se_excite(m.graph);
    if (training)
      fuse_bn_apply_sum(m.graph);  // the ASPP blocks: BN statistics per branch, one normalise-and-add
    else
      fuse_conv_bn_sum(m.graph);  // the ASPP blocks whole: eval BNs fold into the convolutions
    fuse_conv_add(m.graph);  // residual and attention adds into the convolution before them
    fuse_conv_pool(m.graph);  // the attention gates' max pools into their skip-branch convolutions
    fuse_conv_mul(m.graph);   // the attention gates' final products into their last convolutions
    fuse_upsample_concat(m.graph);  // the decoders' upsample and concat in one pass
    // Inference: the concatenation read in place by the next block. (Training graphs: at the end
    // of append_backward, after the backward readers have their recomputed copy.)
    if (!training) view_upsample_concats(m.graph);
  }
  return m;
}

ModelConfig config_for_device(ModelConfig cfg, const std::string& device) {
  cfg.fuse = parse_device(device).cuda;
  return cfg;
}

std::vector<int> parse_filters(const std::string& text, const std::string& what) {
  std::vector<int> v;
  size_t b = 0;
  for (;;) {
    const size_t e = text.find(',', b);
    const std::string item = text.substr(b, e == std::string::npos ? std::string::npos : e - b);
    char* end = nullptr;
    const long x = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end || x <= 0 || x > 65536)
      fail(what, " must be five comma-separated positive integers, got '", text, "'");
    v.push_back(int(x));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  if (v.size() != 5) fail(what, " must be five comma-separated positive integers, got '", text, "'");
  return v;
}

std::string filters_string(const std::vector<int>& filters) {
  std::string s;
  for (size_t i = 0; i < filters.size(); ++i) s += (i ? "," : "") + std::to_string(filters[i]);
  return s;
}

int64_t count_params(const Graph& g) {
  int64_t c = 0;
  for (const TensorInfo& t : g.tensors())
    if (t.kind == TensorKind::Param) c += numel(t.shape);
  return c;
}

void init_params(const Graph& g, ParamStore& store, uint64_t seed) {
  store.ensure(g);
  Rng rng(seed, /*stream=*/1);
  auto ends_with = [](const std::string& s, const std::string& suf) {
    return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
  };
  for (const TensorInfo& t : g.tensors()) {
    if (!is_persistent(t.kind) || t.kind == TensorKind::OptState) continue;
    Tensor& v = store.get(t.name);
    const int64_t m = v.numel();
    if (v.dtype() == DType::I64) {
      for (int64_t i = 0; i < m; ++i) v.data<int64_t>()[i] = 0;
      continue;
    }
    float* d = v.f();
    auto uniform = [&](double bound) {
      for (int64_t i = 0; i < m; ++i) d[i] = rng.uniform(float(-bound), float(bound));
    };
    const std::string base = t.name.substr(0, t.name.rfind('.'));
    if (ends_with(t.name, ".running_mean")) {
      std::fill(d, d + m, 0.f);
    } else if (ends_with(t.name, ".running_var")) {
      std::fill(d, d + m, 1.f);
    } else if (t.shape.size() == 4) {  // conv weight, HWIO: fan_in = kh * kw * cin
      uniform(1.0 / std::sqrt(double(t.shape[0] * t.shape[1] * t.shape[2])));
    } else if (t.shape.size() == 2) {  // linear weight (O, I)
      uniform(1.0 / std::sqrt(double(t.shape[1])));
    } else if (ends_with(t.name, ".bias") && g.find(base + ".weight") >= 0 &&
               g.tensor(g.find(base + ".weight")).shape.size() == 4) {
      const Shape& ws = g.tensor(g.find(base + ".weight")).shape;
      uniform(1.0 / std::sqrt(double(ws[0] * ws[1] * ws[2])));
    } else if (ends_with(t.name, ".weight")) {  // batchnorm scale
      std::fill(d, d + m, 1.f);
    } else {  // batchnorm shift
      std::fill(d, d + m, 0.f);
    }
  }
}

}  // namespace rpp
