// tests/capi/fixture.h — test material for the C API tests: a small ResUNet++ checkpoint (filters
// 8,8,16,16,32) written exactly as the trainer writes one (metadata "filters" and "size"), images
// with some structure, and a hand-made PyTorch-style state_dict (no metadata, no checksum, tensors
// in another order). Used by tests/capi/test_capi.cpp and tests/capi/make_fixture.cpp.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "model/image_io.h"
#include "model/inference.h"
#include "model/resunetpp.h"
#include "runtime/checkpoint.h"
#include "runtime/rng.h"
#include "runtime/tensor.h"

namespace capi_fixture {

inline rpp::ModelConfig tiny_config() {
  rpp::ModelConfig c;
  c.filters = {8, 8, 16, 16, 32};
  return c;
}

// w x h RGB: a coloured background gradient, a few soft discs and some noise, from `seed`.
inline rpp::Image test_image(int w, int h, uint64_t seed) {
  rpp::Rng rng(seed, 77);
  rpp::Image img;
  img.w = w;
  img.h = h;
  img.c = 3;
  img.px.resize(size_t(w) * size_t(h) * 3);
  struct Disc {
    float x, y, r, col[3];
  };
  std::vector<Disc> discs(3);
  for (Disc& d : discs) {
    d.x = rng.uniform(0.f, float(w));
    d.y = rng.uniform(0.f, float(h));
    d.r = rng.uniform(0.1f, 0.4f) * float(std::max(w, h));
    for (float& c : d.col) c = rng.uniform(0.f, 255.f);
  }
  const float base[3] = {rng.uniform(60.f, 200.f), rng.uniform(20.f, 120.f), rng.uniform(20.f, 120.f)};
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x)
      for (int ch = 0; ch < 3; ++ch) {
        float v = base[ch] + 40.f * float(x) / float(w) - 30.f * float(y) / float(h);
        for (const Disc& d : discs) {
          const float dx = float(x) - d.x, dy = float(y) - d.y;
          const float t = std::exp(-(dx * dx + dy * dy) / (d.r * d.r));
          v = v * (1.f - t) + d.col[ch] * t;
        }
        v += rng.uniform(-12.f, 12.f);
        img.px[(size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(ch)] = uint8_t(std::clamp(v, 0.f, 255.f) + 0.5f);
      }
  return img;
}

// Initialises p's parameters from `seed` and shifts output.bias so that about half of the pixels
// of `probe` come out as polyp: masks then have both values, and many boundaries.
inline void init_balanced(rpp::Predictor& p, uint64_t seed, const std::vector<rpp::Image>& probe) {
  rpp::init_params(p.graph(), p.store(), seed);
  std::vector<float> all;
  for (const rpp::Image& img : probe) {
    const std::vector<float> lg = p.predict_logits(img, false);
    all.insert(all.end(), lg.begin(), lg.end());
  }
  std::nth_element(all.begin(), all.begin() + std::ptrdiff_t(all.size() / 2), all.end());
  p.store().get("output.bias").f()[0] -= all[all.size() / 2];
}

// The metadata the trainer writes that the Predictor reads (see model/trainer.cpp run_metadata).
inline rpp::Metadata tiny_metadata(int size) {
  return {{"model", "resunetpp"}, {"filters", "8,8,16,16,32"}, {"in_channels", "3"}, {"size", std::to_string(size)}};
}

// The probe images used to balance the fixture checkpoint.
inline std::vector<rpp::Image> probe_images() {
  return {test_image(48, 40, 1), test_image(40, 56, 2), test_image(64, 64, 3)};
}

// Writes the fixture checkpoint: tiny filters at `size`, initialised from `seed`, balanced.
inline void write_tiny_checkpoint(const std::string& path, uint64_t seed, int size = 32) {
  rpp::Predictor p(tiny_config(), size, 1);
  init_balanced(p, seed, probe_images());
  rpp::save_checkpoint(path, p.graph(), p.store(), false, tiny_metadata(size));
}

// A safetensors file as PyTorch's safetensors.torch.save_file(model.state_dict()) would write it
// for the model in `store`: no __metadata__, no checksum, OIHW conv weights, tensors listed in
// reverse order (any order is valid). Tensors named in `skip` are left out.
inline std::string torch_state_dict(const rpp::Graph& g, const rpp::ParamStore& store,
                                    const std::set<std::string>& skip = {}) {
  std::vector<std::pair<std::string, rpp::Tensor>> ts;
  for (int t = 0; t < g.num_tensors(); ++t) {
    const rpp::TensorInfo& ti = g.tensor(t);
    if (!rpp::is_persistent(ti.kind) || skip.count(ti.name)) continue;
    const rpp::Tensor& v = store.get(ti.name);
    ts.emplace_back(ti.name, v.shape().size() == 4 ? rpp::hwio_to_oihw(v) : v);
  }
  std::reverse(ts.begin(), ts.end());
  std::string header = "{", data;
  for (const auto& [name, t] : ts) {
    std::string shape;
    for (int64_t d : t.shape()) shape += (shape.empty() ? "" : ",") + std::to_string(d);
    if (header.size() > 1) header += ",";
    header += "\"" + name + "\":{\"dtype\":\"" + rpp::dtype_name(t.dtype()) + "\",\"shape\":[" + shape +
              "],\"data_offsets\":[" + std::to_string(data.size()) + "," + std::to_string(data.size() + t.nbytes()) +
              "]}";
    data.append(static_cast<const char*>(t.raw()), t.nbytes());
  }
  header += "}";
  while (header.size() % 8) header += ' ';
  std::string out(8, '\0');
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xFF);
  return out + header + data;
}

}  // namespace capi_fixture
