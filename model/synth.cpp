// model/synth.cpp — the procedural colonoscopy frame generator (see synth.h for what a frame
// holds). Everything is drawn in float RGB in [0, 1] in a fixed order of random draws, then
// quantised once, so the bytes depend only on the generator state. No std:: distributions and
// no per-pixel transcendental calls in the full-frame passes (value noise, polynomial falloffs),
// which keeps a 256x256 frame at a few milliseconds.
#include "model/synth.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <mutex>
#include <system_error>
#include <vector>

#include "kernels/cpu/parallel.h"
#include "runtime/error.h"

namespace rpp {
namespace {

constexpr float kTwoPi = 6.28318530717958647692f;

inline float clamp01(float v) { return v < 0.f ? 0.f : (v > 1.f ? 1.f : v); }
inline float smoothstep01(float t) {
  t = clamp01(t);
  return t * t * (3.f - 2.f * t);
}

// Adds amp * value noise with lattice spacing `cell` pixels (lattice values uniform in [-1, 1],
// smoothstep interpolation, random sub-cell offset) to the S x S field f.
void add_value_noise(std::vector<float>& f, int S, float cell, float amp, Rng& rng) {
  cell = std::max(cell, 1.5f);
  const float ox = rng.uniform(), oy = rng.uniform();
  const int g = int(float(S) / cell) + 3;  // lattice points per side
  std::vector<float> lat(size_t(g) * size_t(g));
  for (float& v : lat) v = rng.uniform(-1.f, 1.f);
  std::vector<int> ix(static_cast<size_t>(S));
  std::vector<float> tx(static_cast<size_t>(S));
  const float inv = 1.f / cell;
  for (int x = 0; x < S; ++x) {
    float fx = float(x) * inv + ox;
    int i = std::min(int(fx), g - 2);
    ix[size_t(x)] = i;
    tx[size_t(x)] = smoothstep01(fx - float(i));
  }
  for (int y = 0; y < S; ++y) {
    float fy = float(y) * inv + oy;
    int j = std::min(int(fy), g - 2);
    const float ty = smoothstep01(fy - float(j));
    const float* r0 = lat.data() + size_t(j) * size_t(g);
    const float* r1 = r0 + g;
    float* out = f.data() + size_t(y) * size_t(S);
    for (int x = 0; x < S; ++x) {
      const int i = ix[size_t(x)];
      const float t = tx[size_t(x)];
      const float a = r0[i] + (r0[i + 1] - r0[i]) * t;
      const float b = r1[i] + (r1[i + 1] - r1[i]) * t;
      out[x] += amp * (a + (b - a) * ty);
    }
  }
}

// Stamps a disc of radius w at (cx, cy) into `map` (max-combined, so overlapping stamps of one
// curve do not darken twice). hard: 1 px anti-aliased edge; soft: smooth falloff to 0 at 2w.
void stamp(std::vector<float>& map, int S, float cx, float cy, float w, float strength, bool soft) {
  const float reach = soft ? 2.f * w : w + 1.f;
  const int x0 = std::max(0, int(std::floor(cx - reach))), x1 = std::min(S - 1, int(std::ceil(cx + reach)));
  const int y0 = std::max(0, int(std::floor(cy - reach))), y1 = std::min(S - 1, int(std::ceil(cy + reach)));
  for (int y = y0; y <= y1; ++y) {
    const float dy = float(y) - cy;
    for (int x = x0; x <= x1; ++x) {
      const float dx = float(x) - cx;
      const float d = std::sqrt(dx * dx + dy * dy);
      const float v = soft ? strength * (1.f - smoothstep01(d / (2.f * w)))
                           : strength * clamp01(w + 0.5f - d);
      float& m = map[size_t(y) * size_t(S) + size_t(x)];
      if (v > m) m = v;
    }
  }
}

// A wandering curve: random start and heading, a base bend plus curvature doing a damped random
// walk; strength tapers to 0 at both ends (parabolic profile along the length).
void draw_curve(std::vector<float>& map, int S, Rng& rng, float w, float strength, float length,
                float bend, float curl, bool soft) {
  float x = rng.uniform(0.f, float(S)), y = rng.uniform(0.f, float(S));
  float a = rng.uniform(0.f, kTwoPi), da = 0.f;
  const float step = std::max(0.5f, w * 0.5f);
  const float turn = rng.uniform(-bend, bend) * step;  // radians per step of steady bend
  const int n = std::max(2, int(length / step));
  for (int k = 0; k < n; ++k) {
    da = 0.9f * da + curl * step * rng.uniform(-1.f, 1.f);
    a += turn + da;
    x += std::cos(a) * step;
    y += std::sin(a) * step;
    const float t = float(k) / float(n - 1);
    stamp(map, S, x, y, w, strength * std::min(1.f, 5.f * t * (1.f - t)), soft);
  }
}

// Blends a white glint (anisotropic Gaussian, saturated core) into rgb at (cx, cy).
void glint(std::vector<float>& rgb, int S, float cx, float cy, float sx, float sy, float peak) {
  const float reach_x = 3.f * sx, reach_y = 3.f * sy;
  const int x0 = std::max(0, int(std::floor(cx - reach_x))), x1 = std::min(S - 1, int(std::ceil(cx + reach_x)));
  const int y0 = std::max(0, int(std::floor(cy - reach_y))), y1 = std::min(S - 1, int(std::ceil(cy + reach_y)));
  const float ix = 0.5f / (sx * sx), iy = 0.5f / (sy * sy);
  for (int y = y0; y <= y1; ++y) {
    const float dy = float(y) - cy;
    for (int x = x0; x <= x1; ++x) {
      const float dx = float(x) - cx;
      const float a = std::min(1.f, 1.4f * peak * std::exp(-(dx * dx * ix + dy * dy * iy)));
      float* p = rgb.data() + (size_t(y) * size_t(S) + size_t(x)) * 3;
      p[0] += (1.00f - p[0]) * a;
      p[1] += (0.98f - p[1]) * a;
      p[2] += (0.96f - p[2]) * a;
    }
  }
}

struct Polyp {
  float cx, cy, r0;
  float a[4], b[4];  // r(theta) = r0 * (1 + sum_k a_k cos(k theta) + b_k sin(k theta)), k = 1..4
  float reach;       // upper bound of r(theta)
  // Radius at the direction (c, s) = (cos theta, sin theta), harmonics by the angle-sum recurrence.
  float radius(float c, float s) const {
    float ck = c, sk = s, sum = 0.f;
    for (int k = 0; k < 4; ++k) {
      sum += a[k] * ck + b[k] * sk;
      const float cn = ck * c - sk * s, sn = sk * c + ck * s;
      ck = cn;
      sk = sn;
    }
    return r0 * (1.f + sum);
  }
};

Polyp make_polyp(int S, Rng& rng, float rmin, float rmax) {
  Polyp p;
  p.r0 = rng.uniform(rmin, rmax) * float(S);
  p.cx = rng.uniform(0.12f, 0.88f) * float(S);
  p.cy = rng.uniform(0.12f, 0.88f) * float(S);
  const float wobble = rng.uniform(0.10f, 0.30f);
  float total = 0.f;
  for (int k = 0; k < 4; ++k) {
    const float amp = wobble / float(k + 1);
    p.a[k] = rng.uniform(-amp, amp);
    p.b[k] = rng.uniform(-amp, amp);
    total += std::fabs(p.a[k]) + std::fabs(p.b[k]);
  }
  if (total > 0.45f)  // keep r(theta) >= 0.55 r0: a blob, never a star
    for (int k = 0; k < 4; ++k) {
      p.a[k] *= 0.45f / total;
      p.b[k] *= 0.45f / total;
    }
  total = 0.f;
  for (int k = 0; k < 4; ++k) total += std::fabs(p.a[k]) + std::fabs(p.b[k]);
  p.reach = p.r0 * (1.f + total);
  return p;
}

}  // namespace

Image synth_image(int size, Rng& rng, Image* mask) {
  if (size < 8 || size > 8192) fail("synth_image: size must be in [8, 8192], got ", size);
  const int S = size;
  const size_t N = size_t(S) * size_t(S);
  const float sc = float(S) / 256.f;

  // Mucosa palette: red level and the green/blue ratios to red (pinkish to deep red).
  const float bg_r = rng.uniform(0.70f, 0.92f);
  const float bg_g = rng.uniform(0.36f, 0.56f), bg_b = rng.uniform(0.30f, 0.52f);
  // Polyp palette: paler (whiter pink) or more saturated (redder) than this frame's mucosa.
  const bool pale = rng.uniform() < 0.55f;
  const float po_r = bg_r * (pale ? rng.uniform(0.96f, 1.10f) : rng.uniform(0.92f, 1.06f));
  const float po_g = bg_g + (pale ? rng.uniform(0.03f, 0.10f) : -rng.uniform(0.03f, 0.09f));
  const float po_b = bg_b + (pale ? rng.uniform(0.02f, 0.08f) : -rng.uniform(0.02f, 0.07f));

  // Low-frequency fields (values roughly in [-1, 1]).
  std::vector<float> low(N, 0.f), fine(N, 0.f), chroma(N, 0.f), ptex(N, 0.f);
  add_value_noise(low, S, float(S) / 3.f, 0.55f, rng);
  add_value_noise(low, S, float(S) / 6.f, 0.30f, rng);
  add_value_noise(low, S, float(S) / 12.f, 0.15f, rng);
  add_value_noise(fine, S, float(S) / 24.f, 0.6f, rng);
  add_value_noise(fine, S, float(S) / 48.f, 0.4f, rng);
  add_value_noise(chroma, S, float(S) / 2.5f, 0.7f, rng);
  add_value_noise(chroma, S, float(S) / 5.f, 0.3f, rng);
  add_value_noise(ptex, S, float(S) / 64.f, 0.5f, rng);
  add_value_noise(ptex, S, float(S) / 28.f, 0.5f, rng);

  // Haustral folds (broad soft shadows) and vessels (thin dark red-purple lines).
  std::vector<float> folds(N, 0.f), vessels(N, 0.f);
  const int n_folds = int(rng.below(3));
  for (int i = 0; i < n_folds; ++i)
    draw_curve(folds, S, rng, rng.uniform(0.02f, 0.045f) * float(S), rng.uniform(0.12f, 0.30f),
               rng.uniform(0.6f, 1.4f) * float(S), 2.5f / float(S), 0.3f / float(S), true);
  const int n_vessels = 2 + int(rng.below(5));
  for (int i = 0; i < n_vessels; ++i)
    draw_curve(vessels, S, rng, std::max(0.45f, rng.uniform(0.5f, 1.5f) * sc),
               rng.uniform(0.15f, 0.4f), rng.uniform(0.25f, 0.8f) * float(S), 2.f / float(S),
               0.012f, false);

  // Mucosa.
  std::vector<float> rgb(3 * N);
  for (size_t i = 0; i < N; ++i) {
    const float lum = 1.f + 0.22f * low[i] + 0.08f * fine[i];
    const float v = vessels[i], f = 1.f - folds[i];
    float* p = rgb.data() + 3 * i;
    p[0] = bg_r * lum * (1.f - 0.35f * v) * f;
    p[1] = bg_r * lum * (bg_g + 0.08f * chroma[i]) * (1.f - 0.75f * v) * f;
    p[2] = bg_r * lum * (bg_b + 0.06f * chroma[i]) * (1.f - 0.55f * v) * f;
  }

  // Light direction in the image plane (the lit side of every dome).
  const float la = rng.uniform(0.f, kTwoPi);
  const float lx = std::cos(la), ly = std::sin(la);

  // Polyps: one, sometimes two (the second smaller and placed away from the first).
  std::vector<uint8_t> m(N, 0);
  Polyp polyps[2];
  const int n_polyps = rng.uniform() < 0.3f ? 2 : 1;
  polyps[0] = make_polyp(S, rng, 0.08f, 0.30f);
  if (n_polyps == 2) {
    for (int attempt = 0; attempt < 8; ++attempt) {
      polyps[1] = make_polyp(S, rng, 0.08f, 0.18f);
      const float dx = polyps[1].cx - polyps[0].cx, dy = polyps[1].cy - polyps[0].cy;
      if (std::sqrt(dx * dx + dy * dy) > 0.9f * (polyps[0].reach + polyps[1].reach)) break;
    }
  }
  for (int k = 0; k < n_polyps; ++k) {
    const Polyp& P = polyps[k];
    const float rim = rng.uniform(0.10f, 0.35f);
    const float rim_w = 0.08f * P.r0 + 1.f;
    const float reach = P.reach + 1.5f * rim_w + 1.f;
    const int x0 = std::max(0, int(std::floor(P.cx - reach))), x1 = std::min(S - 1, int(std::ceil(P.cx + reach)));
    const int y0 = std::max(0, int(std::floor(P.cy - reach))), y1 = std::min(S - 1, int(std::ceil(P.cy + reach)));
    const float tilt = rng.uniform(0.10f, 0.22f);
    for (int y = y0; y <= y1; ++y) {
      const float dy = float(y) - P.cy;
      for (int x = x0; x <= x1; ++x) {
        const float dx = float(x) - P.cx;
        const float d = std::sqrt(dx * dx + dy * dy);
        const float c = d > 1e-6f ? dx / d : 1.f, s = d > 1e-6f ? dy / d : 0.f;
        const float r = P.radius(c, s);
        const size_t i = size_t(y) * size_t(S) + size_t(x);
        float* p = rgb.data() + 3 * i;
        if (d > r) {  // rim shadow where the dome meets the wall
          const float t = (d - r) / (1.5f * rim_w);
          if (t < 1.f) {
            const float sh = 1.f - rim * (1.f - smoothstep01(t));
            p[0] *= sh;
            p[1] *= sh;
            p[2] *= sh;
          }
        }
        const float alpha = clamp01(r - d + 0.5f);
        if (alpha <= 0.f) continue;
        if (d <= r) m[i] = 255;
        const float rho = std::min(1.f, d / r);
        const float h = std::sqrt(std::max(0.f, 1.f - rho * rho));
        const float shade = 0.80f + 0.30f * h + tilt * rho * (c * lx + s * ly);
        const float lum = shade * (1.f + 0.10f * low[i] + 0.10f * ptex[i]);
        const float pr = po_r * lum;
        const float pg = po_r * lum * (po_g + 0.03f * chroma[i]);
        const float pb = po_r * lum * (po_b + 0.03f * chroma[i]);
        p[0] += (pr - p[0]) * alpha;
        p[1] += (pg - p[1]) * alpha;
        p[2] += (pb - p[2]) * alpha;
      }
    }
  }

  // Illumination: vignette around an off-centre light, optional dark lumen.
  const float vx = rng.uniform(0.3f, 0.7f) * float(S), vy = rng.uniform(0.3f, 0.7f) * float(S);
  const float vig = rng.uniform(0.25f, 0.55f);
  const bool has_lumen = rng.uniform() < 0.5f;
  const float lux = rng.uniform(0.f, float(S)), luy = rng.uniform(0.f, float(S));
  const float lur = rng.uniform(0.12f, 0.30f) * float(S), lud = rng.uniform(0.35f, 0.70f);
  const float inv_v = 1.f / (0.72f * float(S) * 0.72f * float(S)), inv_l = 1.f / (lur * lur);
  for (int y = 0; y < S; ++y) {
    for (int x = 0; x < S; ++x) {
      const float dx = float(x) - vx, dy = float(y) - vy;
      float g = 1.f - vig * std::min(1.5f, (dx * dx + dy * dy) * inv_v);
      if (has_lumen) {
        const float ex = float(x) - lux, ey = float(y) - luy;
        const float q = (ex * ex + ey * ey) * inv_l;
        g *= 1.f - lud / (1.f + q * q);
      }
      float* p = rgb.data() + 3 * (size_t(y) * size_t(S) + size_t(x));
      p[0] *= g;
      p[1] *= g;
      p[2] *= g;
    }
  }

  // Specular glints: on the mucosa anywhere, on each polyp toward its lit side.
  const int n_bg_glints = 1 + int(rng.below(6));
  for (int i = 0; i < n_bg_glints; ++i) {
    const float gx = rng.uniform(0.f, float(S)), gy = rng.uniform(0.f, float(S));
    const float sx = std::max(0.5f, rng.uniform(0.6f, 2.6f) * sc);
    const float sy = std::max(0.5f, sx * rng.uniform(0.5f, 2.0f));
    glint(rgb, S, gx, gy, sx, sy, rng.uniform(0.7f, 1.0f));
  }
  for (int k = 0; k < n_polyps; ++k) {
    const Polyp& P = polyps[k];
    const int n = 1 + int(rng.below(4));
    for (int i = 0; i < n; ++i) {
      const float off = rng.uniform(0.1f, 0.5f) * P.r0;
      const float gx = P.cx + lx * off + rng.uniform(-0.2f, 0.2f) * P.r0;
      const float gy = P.cy + ly * off + rng.uniform(-0.2f, 0.2f) * P.r0;
      const float sx = std::max(0.5f, rng.uniform(0.6f, 2.2f) * sc);
      const float sy = std::max(0.5f, sx * rng.uniform(0.5f, 2.0f));
      glint(rgb, S, gx, gy, sx, sy, rng.uniform(0.7f, 1.0f));
    }
  }

  // Optics: a [1 2 1] / 4 blur in each direction (edges clamped) softens every drawn edge.
  {
    std::vector<float> tmp(3 * N);
    for (int y = 0; y < S; ++y)
      for (int x = 0; x < S; ++x) {
        const size_t l = size_t(y) * size_t(S) + size_t(std::max(x - 1, 0));
        const size_t c = size_t(y) * size_t(S) + size_t(x);
        const size_t r = size_t(y) * size_t(S) + size_t(std::min(x + 1, S - 1));
        for (size_t ch = 0; ch < 3; ++ch)
          tmp[3 * c + ch] = 0.25f * (rgb[3 * l + ch] + 2.f * rgb[3 * c + ch] + rgb[3 * r + ch]);
      }
    for (int y = 0; y < S; ++y) {
      const size_t up = size_t(std::max(y - 1, 0)) * size_t(S), dn = size_t(std::min(y + 1, S - 1)) * size_t(S);
      const size_t row = size_t(y) * size_t(S);
      for (size_t k = 0; k < 3 * size_t(S); ++k)
        rgb[3 * row + k] = 0.25f * (tmp[3 * up + k] + 2.f * tmp[3 * row + k] + tmp[3 * dn + k]);
    }
  }

  // Sensor noise (triangular, luminance plus a little chroma) and quantisation.
  Image img;
  img.w = img.h = S;
  img.c = 3;
  img.px.resize(3 * N);
  for (size_t i = 0; i < N; ++i) {
    const uint32_t u = rng.next_u32();
    const float nl = (float(u & 0xFFu) + float((u >> 8) & 0xFFu) - 255.f) * (0.03f / 255.f);
    const float nr = (float((u >> 16) & 0xFFu) - 127.5f) * (0.016f / 255.f);
    const float nb = (float(u >> 24) - 127.5f) * (0.016f / 255.f);
    const float* p = rgb.data() + 3 * i;
    const float v[3] = {p[0] + nl + nr, p[1] + nl, p[2] + nl + nb};
    for (int ch = 0; ch < 3; ++ch) img.px[3 * i + size_t(ch)] = uint8_t(clamp01(v[ch]) * 255.f + 0.5f);
  }
  if (mask) {
    mask->w = mask->h = S;
    mask->c = 1;
    mask->px = std::move(m);
  }
  return img;
}

Image synth_frame(int size, uint64_t seed, int index, Image* mask) {
  Rng rng(seed, uint64_t(index));
  return synth_image(size, rng, mask);
}

void generate_synthetic_dataset(const std::string& out_dir, int count, int size, uint64_t seed) {
  if (count < 1) fail("synth: image count must be at least 1, got ", count);
  if (size < 8 || size > 8192) fail("synth: image size must be in [8, 8192], got ", size);
  const std::string img_dir = out_dir + "/images", mask_dir = out_dir + "/masks";
  for (const std::string& d : {img_dir, mask_dir}) {
    std::error_code ec;
    std::filesystem::create_directories(d, ec);
    if (ec) fail("synth: cannot create folder '", d, "': ", ec.message());
    if (!std::filesystem::is_directory(d, ec))
      fail("synth: cannot create folder '", d, "': a file of that name is in the way");
  }
  // Workers must not throw through the pool: the first failure (lowest index) is kept and
  // rethrown on the calling thread.
  std::mutex mu;
  int err_index = count;
  std::string err;
  cpu::parallel_for(count, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      try {
        char name[32];
        std::snprintf(name, sizeof name, "synth_%05d.png", int(i));
        Image mask;
        Image img = synth_frame(size, seed, int(i), &mask);
        save_png(img_dir + "/" + name, img);
        save_png(mask_dir + "/" + name, mask);
      } catch (const std::exception& ex) {
        std::lock_guard<std::mutex> lk(mu);
        if (int(i) < err_index) {
          err_index = int(i);
          err = ex.what();
        }
        return;
      }
    }
  });
  if (err_index < count) fail("synth: ", err);
}

}  // namespace rpp
