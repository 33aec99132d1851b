// model/augment.cpp — see augment.h for what each transform does and the order they run in.
#include "model/augment.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>

#include "runtime/error.h"

namespace rpp {

namespace {

// The fields by name, in declaration order: the one table that parsing, describing and validation
// share.
struct Field {
  const char* name;
  float AugmentConfig::*member;
};
constexpr Field kFields[] = {
    {"hflip", &AugmentConfig::hflip},
    {"vflip", &AugmentConfig::vflip},
    {"rot90", &AugmentConfig::rot90},
    {"rotate", &AugmentConfig::rotate},
    {"rotate_prob", &AugmentConfig::rotate_prob},
    {"scale_min", &AugmentConfig::scale_min},
    {"scale_max", &AugmentConfig::scale_max},
    {"scale_prob", &AugmentConfig::scale_prob},
    {"brightness", &AugmentConfig::brightness},
    {"contrast", &AugmentConfig::contrast},
    {"saturation", &AugmentConfig::saturation},
    {"cutout", &AugmentConfig::cutout},
    {"cutout_size", &AugmentConfig::cutout_size},
    {"cutout_mask", &AugmentConfig::cutout_mask},
};

std::string field_names() {
  std::string s;
  for (const Field& f : kFields) {
    if (!s.empty()) s += ", ";
    s += f.name;
  }
  return s;
}

// Shortest "%g" text that reads back as the same float.
std::string float_text(float v) {
  char buf[48];
  for (int prec = 1; prec <= 9; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, double(v));
    // Plain decimals for ordinary magnitudes ("30", not "3e+01").
    const bool exp_form = std::strchr(buf, 'e') != nullptr;
    const float a = std::fabs(v);
    if (exp_form && prec < 9 && a >= 1e-4f && a < 1e7f) continue;
    if (std::strtof(buf, nullptr) == v) break;
  }
  return buf;
}

void check_range(const char* name, float v, float lo, float hi) {
  if (!std::isfinite(v)) fail("augment: ", name, " = ", v, " is not a finite number");
  if (v < lo || v > hi) fail("augment: ", name, " = ", float_text(v), " is out of range [", lo, ", ", hi, "]");
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Draws "with probability p": no draw at all when p is 0 (so a switched-off transform does not
// shift the random stream of the others), always true at p = 1 (uniform() < 1).
bool chance(Rng& rng, float p) { return p > 0 && rng.uniform() < p; }

// ---- geometry ----

// Source pixel of output pixel (x, y) for flips and rot90: sx = ax*x + bx*y + cx, sy likewise.
struct IntMap {
  int ax = 1, bx = 0, cx = 0, ay = 0, by = 1, cy = 0;
};

// 2x2 matrix in centred coordinates: source = M * output.
struct Mat2 {
  double a = 1, b = 0, c = 0, d = 1;  // [[a, b], [c, d]]
};
Mat2 mul(const Mat2& m, const Mat2& n) {
  return {m.a * n.a + m.b * n.c, m.a * n.b + m.b * n.d, m.c * n.a + m.d * n.c, m.c * n.b + m.d * n.d};
}

void warp_exact(const IntMap& m, int n, const float* src_img, const float* src_mask, float* img, float* mask) {
  for (int y = 0; y < n; ++y) {
    for (int x = 0; x < n; ++x) {
      const int sx = m.ax * x + m.bx * y + m.cx;
      const int sy = m.ay * x + m.by * y + m.cy;
      const size_t s = size_t(sy) * size_t(n) + size_t(sx);
      const size_t o = size_t(y) * size_t(n) + size_t(x);
      img[3 * o] = src_img[3 * s];
      img[3 * o + 1] = src_img[3 * s + 1];
      img[3 * o + 2] = src_img[3 * s + 2];
      mask[o] = src_mask[s];
    }
  }
}

// Affine resampling: output pixel (x, y) reads the source at pixel-index coordinates
// (ux, uy) = (gx + x * m.a + y * m.b, gy + x * m.c + y * m.d). Image: bilinear, zero outside.
// Mask: nearest (round half up), zero outside.
void warp_affine(const Mat2& m, double gx, double gy, int n, const float* src_img, const float* src_mask,
                 float* img, float* mask) {
  for (int y = 0; y < n; ++y) {
    const double rx = gx + double(y) * m.b, ry = gy + double(y) * m.d;
    for (int x = 0; x < n; ++x) {
      const float ux = float(rx + double(x) * m.a);
      const float uy = float(ry + double(x) * m.c);
      const size_t o = size_t(y) * size_t(n) + size_t(x);
      float* out = img + 3 * o;
      // Mask: nearest source pixel.
      const float nxf = std::floor(ux + 0.5f), nyf = std::floor(uy + 0.5f);
      mask[o] = (nxf >= 0 && nyf >= 0 && nxf < float(n) && nyf < float(n))
                    ? src_mask[size_t(nyf) * size_t(n) + size_t(nxf)]
                    : 0.0f;
      // Image: bilinear between the four neighbours.
      const float fx0 = std::floor(ux), fy0 = std::floor(uy);
      if (fx0 < -1 || fy0 < -1 || fx0 >= float(n) || fy0 >= float(n)) {
        out[0] = out[1] = out[2] = 0;
        continue;
      }
      const int x0 = int(fx0), y0 = int(fy0);
      const float wx = ux - fx0, wy = uy - fy0;
      const float w00 = (1 - wx) * (1 - wy), w01 = wx * (1 - wy), w10 = (1 - wx) * wy, w11 = wx * wy;
      if (x0 >= 0 && y0 >= 0 && x0 + 1 < n && y0 + 1 < n) {
        const float* p00 = src_img + 3 * (size_t(y0) * size_t(n) + size_t(x0));
        const float* p10 = p00 + 3 * size_t(n);
        for (int ch = 0; ch < 3; ++ch)
          out[ch] = w00 * p00[ch] + w01 * p00[3 + ch] + w10 * p10[ch] + w11 * p10[3 + ch];
      } else {
        float acc[3] = {0, 0, 0};
        const int xs[2] = {x0, x0 + 1}, ys[2] = {y0, y0 + 1};
        const float ws[2][2] = {{w00, w01}, {w10, w11}};
        for (int j = 0; j < 2; ++j) {
          if (ys[j] < 0 || ys[j] >= n) continue;
          for (int i = 0; i < 2; ++i) {
            if (xs[i] < 0 || xs[i] >= n) continue;
            const float* p = src_img + 3 * (size_t(ys[j]) * size_t(n) + size_t(xs[i]));
            for (int ch = 0; ch < 3; ++ch) acc[ch] += ws[j][i] * p[ch];
          }
        }
        out[0] = acc[0];
        out[1] = acc[1];
        out[2] = acc[2];
      }
      // Bilinear weights sum to 1 but rounding may overshoot [0, 1] by an ulp: keep the range.
      for (int ch = 0; ch < 3; ++ch) out[ch] = std::min(1.0f, std::max(0.0f, out[ch]));
    }
  }
}

void apply_geometry(const AugmentConfig& cfg, Rng& rng, int n, float* image, float* mask, float* scratch) {
  // Draws, in a fixed order.
  const bool hflip = chance(rng, cfg.hflip);
  const bool vflip = chance(rng, cfg.vflip);
  int k90 = 0;
  if (chance(rng, cfg.rot90)) k90 = 1 + int(rng.below(3));
  double angle = 0;  // degrees
  if (cfg.rotate > 0 && chance(rng, cfg.rotate_prob)) angle = double(rng.uniform(-cfg.rotate, cfg.rotate));
  double s = 1, tx = 0, ty = 0;  // zoom and shift (output pixels) of the zoomed frame's centre
  if ((cfg.scale_min != 1 || cfg.scale_max != 1) && chance(rng, cfg.scale_prob)) {
    s = double(rng.uniform(cfg.scale_min, cfg.scale_max));
    const double half = std::fabs(s - 1) * 0.5 * double(n);
    tx = double(rng.uniform(-1.0f, 1.0f)) * half;
    ty = double(rng.uniform(-1.0f, 1.0f)) * half;
  }
  if (!hflip && !vflip && k90 == 0 && angle == 0 && s == 1) return;

  // Inverse maps in centred coordinates (source = D * output), composed in the order the
  // transforms apply: out = affine(rot90(vflip(hflip(in)))) reads in(Dh Dv Dr A p).
  Mat2 d;
  if (hflip) d = mul(d, Mat2{-1, 0, 0, 1});
  if (vflip) d = mul(d, Mat2{1, 0, 0, -1});
  // rot90 by k, counter-clockwise on screen as numpy.rot90: out(x, y) = in(n-1-y, x) for k = 1.
  for (int k = 0; k < k90; ++k) d = mul(d, Mat2{0, -1, 1, 0});

  float* src_img = scratch;
  float* src_mask = scratch + 3 * size_t(n) * size_t(n);
  std::memcpy(src_img, image, sizeof(float) * 3 * size_t(n) * size_t(n));
  std::memcpy(src_mask, mask, sizeof(float) * size_t(n) * size_t(n));

  if (angle == 0 && s == 1) {
    // Pure permutation. d has one +-1 per row; sx = d.a * x + d.b * y + (n-1)(1 - d.a - d.b)/2.
    IntMap m;
    m.ax = int(d.a), m.bx = int(d.b), m.ay = int(d.c), m.by = int(d.d);
    m.cx = (n - 1) * (1 - m.ax - m.bx) / 2;
    m.cy = (n - 1) * (1 - m.ay - m.by) / 2;
    warp_exact(m, n, src_img, src_mask, image, mask);
    return;
  }
  // Forward affine of centred coordinates: p = s R(theta) q + t; inverse q = R(-theta)(p - t) / s.
  const double th = angle * (3.14159265358979323846 / 180.0);
  const double cs = std::cos(th) / s, sn = std::sin(th) / s;
  const Mat2 a{cs, sn, -sn, cs};  // R(-theta) / s
  const Mat2 g = mul(d, a);
  // Source centred = g * (p - t), with p = (x + 0.5 - c, y + 0.5 - c); source index = centred + c - 0.5.
  const double c = 0.5 * double(n);
  const double px0 = 0.5 - c - tx, py0 = 0.5 - c - ty;  // p - t at output pixel (0, 0)
  const double gx = g.a * px0 + g.b * py0 + c - 0.5;
  const double gy = g.c * px0 + g.d * py0 + c - 0.5;
  warp_affine(g, gx, gy, n, src_img, src_mask, image, mask);
}

// ---- colour ----

void blend_clamp(float* px, size_t count, float f, float other) {
  const float base = other * (1 - f);
  for (size_t i = 0; i < count; ++i) px[i] = std::min(1.0f, std::max(0.0f, px[i] * f + base));
}

float grey(const float* p) { return 0.2989f * p[0] + 0.587f * p[1] + 0.114f * p[2]; }

void apply_colour(const AugmentConfig& cfg, Rng& rng, int n, float* image) {
  if (!(cfg.brightness > 0 || cfg.contrast > 0 || cfg.saturation > 0)) return;
  static const int kOrders[6][3] = {{0, 1, 2}, {0, 2, 1}, {1, 0, 2}, {1, 2, 0}, {2, 0, 1}, {2, 1, 0}};
  const int* order = kOrders[rng.below(6)];
  const size_t pixels = size_t(n) * size_t(n);
  for (int step = 0; step < 3; ++step) {
    const int op = order[step];
    const float amount = op == 0 ? cfg.brightness : op == 1 ? cfg.contrast : cfg.saturation;
    if (!(amount > 0)) continue;
    const float f = rng.uniform(std::max(0.0f, 1 - amount), 1 + amount);
    if (f == 1) continue;
    if (op == 0) {
      blend_clamp(image, 3 * pixels, f, 0);
    } else if (op == 1) {
      double sum = 0;
      for (size_t i = 0; i < pixels; ++i) sum += double(grey(image + 3 * i));
      blend_clamp(image, 3 * pixels, f, float(sum / double(pixels)));
    } else {
      for (size_t i = 0; i < pixels; ++i) blend_clamp(image + 3 * i, 3, f, grey(image + 3 * i));
    }
  }
}

// ---- cutout ----

void apply_cutout(const AugmentConfig& cfg, Rng& rng, int n, float* image, float* mask) {
  if (!chance(rng, cfg.cutout)) return;
  const int side = std::max(1, int(std::lround(double(cfg.cutout_size) * double(n))));
  const int cx = int(rng.below(uint32_t(n))), cy = int(rng.below(uint32_t(n)));
  const int x0 = std::max(0, cx - side / 2), x1 = std::min(n, cx - side / 2 + side);
  const int y0 = std::max(0, cy - side / 2), y1 = std::min(n, cy - side / 2 + side);
  for (int y = y0; y < y1; ++y) {
    std::fill(image + 3 * (size_t(y) * size_t(n) + size_t(x0)), image + 3 * (size_t(y) * size_t(n) + size_t(x1)), 0.0f);
    if (cfg.cutout_mask == 1)
      std::fill(mask + size_t(y) * size_t(n) + size_t(x0), mask + size_t(y) * size_t(n) + size_t(x1), 0.0f);
  }
}

}  // namespace

// "paper": the ResUNet++ paper (Jha et al., ISM 2019) trains on Kvasir-SEG with offline
// augmentation; its reference script (process_image.py in the authors' repository) writes 31
// variants of each training image, each with ONE of: centre crop, random crop, horizontal flip,
// vertical flip, scale augmentation (enlarge, random crop, resize back), random rotation
// (0-90 degrees, canvas enlarged then resized back), cutout, brightness (HSV value times
// 0.3-1.9), and grayscale conversion of several of those. Here the augmentations are drawn
// online and composed, with these approximations:
//   - random crop / centre crop / scale augmentation -> random zoom 0.8-1.5 at a random position
//     (zoom-out also stands in for the canvas enlargement of the paper's rotation);
//   - random rotation -> free rotation in [-90, 90] degrees with probability 0.5, black corners;
//   - horizontal / vertical flip -> hflip 0.5, vflip 0.5;
//   - brightness (HSV value) -> brightness jitter 0.3; contrast and saturation jitter 0.2 stand
//     in for the HSV/colour changes (saturation near its lower end also approaches grayscale);
//   - cutout -> probability 0.25, side 0.3 of the frame, filled with 0 (the reference script
//     fills with the image mean), and the mask zeroed inside the box as the reference script
//     does (cutout_mask=1; the switch's default elsewhere is 0, which keeps the mask).
// Left out: grayscale conversion as such, and the elastic, grid and optical distortions that
// later work on Kvasir-SEG (and albumentations pipelines) add; none has a switch here.
AugmentConfig augment_preset(const std::string& name) {
  AugmentConfig c;
  if (name == "none") return c;
  if (name == "light") {
    c.hflip = 0.5f;
    c.vflip = 0.5f;
    c.rot90 = 0.5f;
    c.brightness = 0.1f;
    c.contrast = 0.1f;
    c.saturation = 0.1f;
    return c;
  }
  if (name == "paper") {
    c.hflip = 0.5f;
    c.vflip = 0.5f;
    c.rotate = 90;
    c.rotate_prob = 0.5f;
    c.scale_min = 0.8f;
    c.scale_max = 1.5f;
    c.scale_prob = 0.5f;
    c.brightness = 0.3f;
    c.contrast = 0.2f;
    c.saturation = 0.2f;
    c.cutout = 0.25f;
    c.cutout_size = 0.3f;
    c.cutout_mask = 1;  // as the reference script: the cut-out region is background in the mask too
    return c;
  }
  fail("unknown augmentation preset '", name, "' (valid: ", augment_preset_names(), ")");
}

std::string augment_preset_names() { return "none, light, paper"; }

void validate_augment(const AugmentConfig& c) {
  for (const Field& f : kFields)
    if (!std::isfinite(c.*f.member)) fail("augment: ", f.name, " = ", c.*f.member, " is not a finite number");
  check_range("hflip", c.hflip, 0, 1);
  check_range("vflip", c.vflip, 0, 1);
  check_range("rot90", c.rot90, 0, 1);
  check_range("rotate", c.rotate, 0, 180);
  check_range("rotate_prob", c.rotate_prob, 0, 1);
  check_range("scale_min", c.scale_min, 0.01f, 10);
  check_range("scale_max", c.scale_max, 0.01f, 10);
  if (c.scale_min > c.scale_max)
    fail("augment: scale_min = ", float_text(c.scale_min), " is above scale_max = ", float_text(c.scale_max));
  check_range("scale_prob", c.scale_prob, 0, 1);
  check_range("brightness", c.brightness, 0, 10);
  check_range("contrast", c.contrast, 0, 10);
  check_range("saturation", c.saturation, 0, 10);
  check_range("cutout", c.cutout, 0, 1);
  check_range("cutout_size", c.cutout_size, 0, 1);
  if (!(c.cutout_size > 0)) fail("augment: cutout_size must be above 0");
  if (c.cutout_mask != 0 && c.cutout_mask != 1)
    fail("augment: cutout_mask = ", float_text(c.cutout_mask), " must be 0 or 1");
}

void apply_augment_overrides(AugmentConfig& cfg, const std::string& spec) {
  AugmentConfig c = cfg;
  std::stringstream ss(spec);
  std::string item;
  while (std::getline(ss, item, ',')) {
    item = trim(item);
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    if (eq == std::string::npos) fail("augment override '", item, "': expected key=value");
    const std::string key = trim(item.substr(0, eq)), value = trim(item.substr(eq + 1));
    const Field* field = nullptr;
    for (const Field& f : kFields)
      if (key == f.name) field = &f;
    if (!field) fail("augment override: unknown key '", key, "' (valid keys: ", field_names(), ")");
    char* end = nullptr;
    const double v = value.empty() ? 0.0 : std::strtod(value.c_str(), &end);
    if (value.empty() || end != value.c_str() + value.size() || !std::isfinite(v) ||
        std::fabs(v) > 3.0e38)
      fail("augment override '", key, "': '", value, "' is not a finite number");
    c.*field->member = float(v);
  }
  validate_augment(c);
  cfg = c;
}

std::string describe(const AugmentConfig& cfg) {
  std::string s;
  for (const Field& f : kFields) {
    if (!s.empty()) s += ',';
    s += f.name;
    s += '=';
    s += float_text(cfg.*f.member);
  }
  return s;
}

bool augment_is_identity(const AugmentConfig& c) {
  const bool rotate = c.rotate > 0 && c.rotate_prob > 0;
  const bool scale = (c.scale_min != 1 || c.scale_max != 1) && c.scale_prob > 0;
  return !(c.hflip > 0) && !(c.vflip > 0) && !(c.rot90 > 0) && !rotate && !scale && !(c.brightness > 0) &&
         !(c.contrast > 0) && !(c.saturation > 0) && !(c.cutout > 0);
}

size_t augment_scratch_floats(int size) { return size > 0 ? 4 * size_t(size) * size_t(size) : 0; }

void augment_sample(const AugmentConfig& cfg, Rng& rng, int size, float* image, float* mask, float* scratch) {
  if (size < 1) fail("augment_sample: size ", size, " must be at least 1");
  if (!image || !mask || !scratch) fail("augment_sample: null image, mask or scratch pointer");
  validate_augment(cfg);
  apply_geometry(cfg, rng, size, image, mask, scratch);
  apply_colour(cfg, rng, size, image);
  apply_cutout(cfg, rng, size, image, mask);
}

}  // namespace rpp
