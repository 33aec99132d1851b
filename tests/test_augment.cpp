// tests/test_augment.cpp — training-time augmentation: exact index mappings of flips and rot90,
// mask/image alignment under free rotation and zoom, binary masks, colour jitter semantics,
// cutout, reproducibility, presets and override parsing.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "model/augment.h"
#include "runtime/error.h"

using namespace rpp;

namespace {

struct Pair {
  int n = 0;
  std::vector<float> image, mask, scratch;
  explicit Pair(int size)
      : n(size), image(size_t(3 * size * size)), mask(size_t(size * size)), scratch(augment_scratch_floats(size)) {}
  void run(const AugmentConfig& c, Rng& rng) { augment_sample(c, rng, n, image.data(), mask.data(), scratch.data()); }
  float px(int x, int y, int ch) const { return image[size_t(3 * (y * n + x) + ch)]; }
  float m(int x, int y) const { return mask[size_t(y * n + x)]; }
};

// Pixels encode their own coordinates; the mask is a fixed pseudo-random 0/1 pattern.
Pair coordinate_sample(int n) {
  Pair s(n);
  Rng r(99);
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      float* p = &s.image[size_t(3 * (y * n + x))];
      p[0] = float(x) / float(n);
      p[1] = float(y) / float(n);
      p[2] = 0.5f;
      s.mask[size_t(y * n + x)] = float(r.below(2));
    }
  return s;
}

Pair random_sample(int n, uint64_t seed) {
  Pair s(n);
  Rng r(seed);
  for (float& v : s.image) v = r.uniform();
  for (float& v : s.mask) v = float(r.below(2));
  return s;
}

// Black image with a white square exactly where the mask is 1.
Pair square_sample(int n) {
  Pair s(n);
  const int a = n / 3, b = n - n / 3;
  for (int y = a; y < b; ++y)
    for (int x = a; x < b; ++x) {
      s.mask[size_t(y * n + x)] = 1;
      for (int ch = 0; ch < 3; ++ch) s.image[size_t(3 * (y * n + x) + ch)] = 1;
    }
  return s;
}

// The eight symmetries of the square as source-pixel maps: out(x, y) = in(map(x, y)).
// Index k < 4 is rot90 by k (numpy.rot90 direction); k >= 4 is rot90 by k-4 after a hflip.
void d4_source(int k, int n, int x, int y, int* sx, int* sy) {
  int u = x, v = y;
  for (int r = 0; r < (k & 3); ++r) {  // rot90 once: out(x, y) = in(n-1-y, x)
    const int nu = n - 1 - v, nv = u;
    u = nu;
    v = nv;
  }
  if (k >= 4) u = n - 1 - u;
  *sx = u;
  *sy = v;
}

bool matches_d4(const Pair& out, const Pair& in, int k) {
  const int n = in.n;
  for (int y = 0; y < n; ++y)
    for (int x = 0; x < n; ++x) {
      int sx, sy;
      d4_source(k, n, x, y, &sx, &sy);
      for (int ch = 0; ch < 3; ++ch)
        if (out.px(x, y, ch) != in.px(sx, sy, ch)) return false;
      if (out.m(x, y) != in.m(sx, sy)) return false;
    }
  return true;
}

int which_d4(const Pair& out, const Pair& in) {
  int found = -1;
  for (int k = 0; k < 8; ++k)
    if (matches_d4(out, in, k)) {
      if (found >= 0) return -2;  // ambiguous: cannot happen with the coordinate image
      found = k;
    }
  return found;
}

bool binary(const Pair& s) {
  for (float v : s.mask)
    if (v != 0 && v != 1) return false;
  return true;
}

// Alignment of a warped "square" sample. The bilinear image of the square is the product of two
// 1-D tents; at a pixel whose nearest-neighbour mask sample is inside the square each tent is at
// least 0.5 (so the product is at least 0.25), and at a pixel whose mask sample is outside one
// tent is below 0.5 (so the product is below 0.5). Any misregistration between the mask's and
// the image's sampling positions breaks one of the two bounds at the square's edges.
// Returns the number of violating pixels.
int misaligned(const Pair& s) {
  int bad = 0;
  for (int y = 0; y < s.n; ++y)
    for (int x = 0; x < s.n; ++x)
      for (int ch = 0; ch < 3; ++ch) {
        const float v = s.px(x, y, ch);
        if (s.m(x, y) == 1 ? v < 0.25f - 1e-4f : v > 0.5f + 1e-4f) ++bad;
      }
  return bad;
}

double mask_sum(const Pair& s) {
  double t = 0;
  for (float v : s.mask) t += v;
  return t;
}

AugmentConfig with(const std::string& spec) {
  AugmentConfig c;
  apply_augment_overrides(c, spec);
  return c;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST(Augment, NoneIsBitExactIdentityAndDrawsNothing) {
  for (int n : {1, 7, 32}) {
    Pair s = random_sample(n, 3);
    const Pair before = s;
    Rng rng(11), fresh(11);
    s.run(augment_preset("none"), rng);
    EXPECT_EQ(0, std::memcmp(s.image.data(), before.image.data(), s.image.size() * sizeof(float)));
    EXPECT_EQ(0, std::memcmp(s.mask.data(), before.mask.data(), s.mask.size() * sizeof(float)));
    EXPECT_EQ(rng.next_u32(), fresh.next_u32());
  }
  EXPECT_TRUE(augment_is_identity(augment_preset("none")));
  EXPECT_FALSE(augment_is_identity(augment_preset("light")));
  EXPECT_FALSE(augment_is_identity(augment_preset("paper")));
  // Amounts that select nothing: probabilities 0, zoom range [1, 1], rotate 0, jitter 0.
  EXPECT_TRUE(augment_is_identity(with("rotate_prob=1,scale_prob=1,cutout_size=0.5")));
  EXPECT_TRUE(augment_is_identity(with("rotate=30,rotate_prob=0,scale_min=0.5,scale_prob=0")));
}

TEST(Augment, HflipVflipExactMapping) {
  for (int n : {7, 8}) {
    const Pair in = coordinate_sample(n);
    Pair h = in, v = in, hv = in;
    Rng rng(1);
    h.run(with("hflip=1"), rng);
    v.run(with("vflip=1"), rng);
    hv.run(with("hflip=1,vflip=1"), rng);
    for (int y = 0; y < n; ++y)
      for (int x = 0; x < n; ++x) {
        for (int ch = 0; ch < 3; ++ch) {
          ASSERT_EQ(h.px(x, y, ch), in.px(n - 1 - x, y, ch));
          ASSERT_EQ(v.px(x, y, ch), in.px(x, n - 1 - y, ch));
          ASSERT_EQ(hv.px(x, y, ch), in.px(n - 1 - x, n - 1 - y, ch));
        }
        ASSERT_EQ(h.m(x, y), in.m(n - 1 - x, y));
        ASSERT_EQ(v.m(x, y), in.m(x, n - 1 - y));
        ASSERT_EQ(hv.m(x, y), in.m(n - 1 - x, n - 1 - y));
      }
  }
}

TEST(Augment, Rot90ExactMappingAllThreeAngles) {
  for (int n : {7, 8}) {
    const Pair in = coordinate_sample(n);
    int seen[4] = {0, 0, 0, 0};
    Rng rng(5);
    for (int i = 0; i < 60; ++i) {
      Pair s = in;
      s.run(with("rot90=1"), rng);
      const int k = which_d4(s, in);
      ASSERT_GE(k, 1) << "rot90=1 must rotate by 90, 180 or 270 degrees";
      ASSERT_LE(k, 3);
      ++seen[k];
    }
    EXPECT_GT(seen[1], 5);
    EXPECT_GT(seen[2], 5);
    EXPECT_GT(seen[3], 5);
    // k = 1 is numpy.rot90's direction: the top-right corner moves to the top-left.
    Pair s = in;
    Rng r2(5);
    for (int i = 0; i < 60 && which_d4(s, in) != 1; ++i) {
      s = in;
      s.run(with("rot90=1"), r2);
    }
    ASSERT_EQ(which_d4(s, in), 1);
    EXPECT_EQ(s.px(0, 0, 0), in.px(n - 1, 0, 0));
    EXPECT_EQ(s.px(0, 0, 1), in.px(n - 1, 0, 1));
  }
}

TEST(Augment, FlipsAndRot90ComposeToASymmetry) {
  const Pair in = coordinate_sample(9);
  bool seen[8] = {};
  Rng rng(8);
  for (int i = 0; i < 300; ++i) {
    Pair s = in;
    s.run(with("hflip=0.5,vflip=0.5,rot90=0.75"), rng);
    const int k = which_d4(s, in);
    ASSERT_GE(k, 0) << "flips and rot90 must be an exact permutation";
    seen[k] = true;
  }
  for (int k = 0; k < 8; ++k) EXPECT_TRUE(seen[k]) << "symmetry " << k << " never drawn";
}

TEST(Augment, MaskStaysBinaryAndAlignedUnderRotationAndZoom) {
  const char* specs[] = {
      "rotate=30",
      "rotate=180",
      "scale_min=0.5,scale_max=0.9",
      "scale_min=1.1,scale_max=1.6",
      "scale_min=0.6,scale_max=1.6,rotate=45,hflip=0.5,vflip=0.5,rot90=0.5",
      "rotate=90,rotate_prob=0.5,scale_min=0.8,scale_max=1.5,scale_prob=0.5,hflip=0.5",
  };
  for (const char* spec : specs) {
    for (int n : {24, 33}) {
      const Pair in = square_sample(n);
      Rng rng(21);
      int changed = 0;
      for (int i = 0; i < 40; ++i) {
        Pair s = in;
        s.run(with(spec), rng);
        ASSERT_TRUE(binary(s)) << spec;
        ASSERT_EQ(misaligned(s), 0) << spec << " n=" << n << " sample " << i;
        ASSERT_GT(mask_sum(s), 0) << spec;  // the central square never leaves the frame here
        for (float v : s.image) ASSERT_TRUE(v >= 0 && v <= 1) << spec;
        if (s.mask != in.mask) ++changed;
        // The check has teeth: shifting the mask one pixel sideways breaks it.
        Pair shifted = s;
        for (int y = 0; y < n; ++y)
          for (int x = n - 1; x > 0; --x) shifted.mask[size_t(y * n + x)] = s.m(x - 1, y);
        EXPECT_GT(misaligned(shifted), 0) << spec;
      }
      EXPECT_GT(changed, 20) << spec << ": the transform should usually move the mask";
    }
  }
}

TEST(Augment, TinyRotationIsNearIdentityAndZoomOutShrinks) {
  // A tiny rotation stays close to the identity, and a 0.5 zoom-out keeps the whole square at a
  // quarter of its area.
  const int n = 40;
  const Pair in = square_sample(n);
  Rng rng(4);
  Pair s = in;
  s.run(with("rotate=0.001"), rng);
  EXPECT_EQ(s.mask, in.mask);
  for (size_t i = 0; i < s.image.size(); ++i) ASSERT_NEAR(s.image[i], in.image[i], 1e-3);
  for (int i = 0; i < 20; ++i) {
    Pair z = in;
    z.run(with("scale_min=0.5,scale_max=0.5"), rng);
    // side 14 at half scale -> 7x7 pixels; nearest sampling of a 0.5-scaled square.
    EXPECT_NEAR(mask_sum(z), mask_sum(in) * 0.25, 0.25 * mask_sum(in) * 0.35);
    ASSERT_EQ(misaligned(z), 0);
  }
}

TEST(Augment, ColourJitterKeepsMaskAndRange) {
  const Pair in = random_sample(32, 7);
  Rng rng(2);
  int changed = 0;
  for (int i = 0; i < 20; ++i) {
    Pair s = in;
    s.run(with("brightness=0.8,contrast=0.8,saturation=0.8"), rng);
    ASSERT_EQ(0, std::memcmp(s.mask.data(), in.mask.data(), s.mask.size() * sizeof(float)));
    for (float v : s.image) ASSERT_TRUE(v >= 0 && v <= 1);
    if (s.image != in.image) ++changed;
  }
  EXPECT_GE(changed, 19);
}

TEST(Augment, BrightnessContrastSaturationSemantics) {
  const Pair in = random_sample(16, 8);
  Rng rng(3);
  // Brightness: every unclamped value is scaled by one common factor.
  for (int i = 0; i < 10; ++i) {
    Pair s = in;
    s.run(with("brightness=0.5"), rng);
    double f = -1;
    for (size_t j = 0; j < s.image.size(); ++j) {
      if (in.image[j] < 0.05f || s.image[j] >= 1.0f) continue;
      if (f < 0) f = double(s.image[j]) / double(in.image[j]);
      ASSERT_NEAR(double(s.image[j]), std::min(1.0, double(in.image[j]) * f), 1e-5);
    }
    EXPECT_GE(f, 0.5 - 1e-6);
    EXPECT_LE(f, 1.5 + 1e-6);
  }
  // Contrast: out = clamp(f * x + (1 - f) * mean_grey); every channel uses the same (f, mean).
  for (int i = 0; i < 10; ++i) {
    Pair s = in;
    s.run(with("contrast=0.5"), rng);
    double mean = 0;
    for (size_t p = 0; p < in.image.size() / 3; ++p)
      mean += 0.2989 * in.image[3 * p] + 0.587 * in.image[3 * p + 1] + 0.114 * in.image[3 * p + 2];
    mean /= double(in.image.size() / 3);
    // Recover f from a value that cannot have been clamped, then check all others.
    size_t k = 0;
    while (std::fabs(in.image[k] - mean) < 0.15 || std::fabs(in.image[k] - mean) > 0.3) ++k;
    const double f = (double(s.image[k]) - mean) / (double(in.image[k]) - mean);
    EXPECT_GE(f, 0.5 - 1e-4);
    EXPECT_LE(f, 1.5 + 1e-4);
    for (size_t j = 0; j < s.image.size(); ++j)
      ASSERT_NEAR(double(s.image[j]), std::min(1.0, std::max(0.0, f * in.image[j] + (1 - f) * mean)), 1e-4);
  }
  // Saturation: grey pixels stay grey; colour moves along the line through the pixel's grey.
  Pair g(8);
  for (size_t p = 0; p < 64; ++p) g.image[3 * p] = g.image[3 * p + 1] = g.image[3 * p + 2] = float(p) / 64.0f;
  for (int i = 0; i < 5; ++i) {
    Pair s = g;
    s.run(with("saturation=1"), rng);
    for (size_t j = 0; j < s.image.size(); ++j) ASSERT_NEAR(s.image[j], g.image[j], 1e-3);
  }
  // Amount 0 (factor exactly 1) is the identity for each jitter.
  for (const char* spec : {"brightness=0", "contrast=0", "saturation=0"}) {
    Pair s = in;
    s.run(with(spec), rng);
    EXPECT_EQ(0, std::memcmp(s.image.data(), in.image.data(), s.image.size() * sizeof(float))) << spec;
  }
}

TEST(Augment, CutoutZeroesOneSquareOfTheImageOnly) {
  const int n = 32;
  Pair in(n);
  Rng mr(1);
  for (float& v : in.image) v = 0.7f;
  for (float& v : in.mask) v = float(mr.below(2));
  Rng rng(9);
  for (int keep_mask = 0; keep_mask < 2; ++keep_mask) {
    for (int i = 0; i < 30; ++i) {
      Pair s = in;
      s.run(with(keep_mask ? "cutout=1,cutout_size=0.25" : "cutout=1,cutout_size=0.25,cutout_mask=1"), rng);
      // The zeroed pixels form one axis-aligned box, at most 8x8 (clipped at the borders).
      int x0 = n, x1 = -1, y0 = n, y1 = -1, zeros = 0;
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x) {
          const bool z = s.px(x, y, 0) == 0;
          ASSERT_EQ(z, s.px(x, y, 1) == 0);
          ASSERT_EQ(z, s.px(x, y, 2) == 0);
          if (!z) {
            ASSERT_EQ(s.px(x, y, 0), 0.7f);
            continue;
          }
          ++zeros;
          x0 = std::min(x0, x), x1 = std::max(x1, x), y0 = std::min(y0, y), y1 = std::max(y1, y);
        }
      ASSERT_GT(zeros, 0);
      ASSERT_EQ(zeros, (x1 - x0 + 1) * (y1 - y0 + 1)) << "not a box";
      ASSERT_LE(x1 - x0 + 1, 8);
      ASSERT_LE(y1 - y0 + 1, 8);
      if (x0 > 0 && x1 < n - 1) {
        ASSERT_EQ(x1 - x0 + 1, 8);
      }
      if (y0 > 0 && y1 < n - 1) {
        ASSERT_EQ(y1 - y0 + 1, 8);
      }
      for (int y = 0; y < n; ++y)
        for (int x = 0; x < n; ++x) {
          const bool inside = x >= x0 && x <= x1 && y >= y0 && y <= y1;
          if (keep_mask || !inside)
            ASSERT_EQ(s.m(x, y), in.m(x, y));
          else
            ASSERT_EQ(s.m(x, y), 0.0f);
        }
    }
  }
}

TEST(Augment, SameSeedSameBytesDifferentSeedDifferent) {
  const AugmentConfig all =
      with("hflip=1,vflip=1,rot90=1,rotate=40,scale_min=0.7,scale_max=1.4,brightness=0.3,contrast=0.3,"
           "saturation=0.3,cutout=1,cutout_size=0.3");
  const Pair in = random_sample(48, 12);
  Pair a = in, b = in, c = in;
  Rng ra(5, 77), rb(5, 77), rc(6, 77);
  a.run(all, ra);
  b.run(all, rb);
  c.run(all, rc);
  EXPECT_EQ(0, std::memcmp(a.image.data(), b.image.data(), a.image.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a.mask.data(), b.mask.data(), a.mask.size() * sizeof(float)));
  EXPECT_NE(0, std::memcmp(a.image.data(), c.image.data(), a.image.size() * sizeof(float)));
  EXPECT_TRUE(binary(a));
  EXPECT_TRUE(binary(c));
  // The generators advanced identically, so the next sample matches too.
  EXPECT_EQ(ra.next_u64(), rb.next_u64());
  // Scratch contents on entry do not matter.
  Pair d = in;
  for (float& v : d.scratch) v = 123.0f;
  Rng rd(5, 77);
  d.run(all, rd);
  EXPECT_EQ(0, std::memcmp(a.image.data(), d.image.data(), a.image.size() * sizeof(float)));
}

TEST(Augment, AllSwitchesOnTinyAndOddSizes) {
  const AugmentConfig all = with(describe(augment_preset("paper")) + ",hflip=1,rotate_prob=1,scale_prob=1,cutout=1");
  for (int n : {1, 2, 3, 5, 17}) {
    Rng rng{uint64_t(n)};
    for (int i = 0; i < 20; ++i) {
      Pair s = random_sample(n, uint64_t(i));
      s.run(all, rng);
      ASSERT_TRUE(binary(s));
      for (float v : s.image) ASSERT_TRUE(v >= 0 && v <= 1);
    }
  }
}

TEST(Augment, HflipHalfFlipsAboutHalf) {
  const Pair in = coordinate_sample(6);
  Rng rng(2024);
  int flipped = 0;
  for (int i = 0; i < 400; ++i) {
    Pair s = in;
    s.run(with("hflip=0.5"), rng);
    const int k = which_d4(s, in);
    ASSERT_TRUE(k == 0 || k == 4);
    flipped += k == 4;
  }
  // Binomial(400, 0.5): mean 200, sd 10; +-5 sd.
  EXPECT_GT(flipped, 150);
  EXPECT_LT(flipped, 250);
}

TEST(Augment, PresetsParseAndValidate) {
  for (const char* name : {"none", "light", "paper"}) EXPECT_NO_THROW(validate_augment(augment_preset(name))) << name;
  const AugmentConfig light = augment_preset("light");
  EXPECT_EQ(light.hflip, 0.5f);
  EXPECT_EQ(light.vflip, 0.5f);
  EXPECT_EQ(light.rot90, 0.5f);
  EXPECT_EQ(light.rotate, 0.0f);
  EXPECT_GT(light.brightness, 0.0f);
  const AugmentConfig paper = augment_preset("paper");
  EXPECT_GT(paper.rotate, 0.0f);
  EXPECT_LT(paper.scale_min, 1.0f);
  EXPECT_GT(paper.scale_max, 1.0f);
  EXPECT_GT(paper.cutout, 0.0f);
  EXPECT_GT(paper.hflip, 0.0f);
  EXPECT_GT(paper.vflip, 0.0f);
  const std::string err = error_of([] { augment_preset("heavy"); });
  EXPECT_NE(err.find("heavy"), std::string::npos) << err;
  EXPECT_NE(err.find("none, light, paper"), std::string::npos) << err;
}

TEST(Augment, OverridesParseDescribeRoundTripAndRejectGarbage) {
  AugmentConfig c = augment_preset("paper");
  apply_augment_overrides(c, " hflip=0.25, rotate = 30 ,cutout=0,,scale_min=1e-1");
  EXPECT_EQ(c.hflip, 0.25f);
  EXPECT_EQ(c.rotate, 30.0f);
  EXPECT_EQ(c.cutout, 0.0f);
  EXPECT_EQ(c.scale_min, 0.1f);
  EXPECT_EQ(c.vflip, 0.5f);  // untouched
  apply_augment_overrides(c, "");
  EXPECT_EQ(c.hflip, 0.25f);

  // describe() lists every field and reads back to the same config.
  const std::string d = describe(c);
  EXPECT_NE(d.find("hflip=0.25"), std::string::npos) << d;
  EXPECT_NE(d.find("rotate=30"), std::string::npos) << d;
  EXPECT_NE(d.find("scale_min=0.1,"), std::string::npos) << d;
  EXPECT_EQ(d.find('\n'), std::string::npos);
  AugmentConfig back;
  apply_augment_overrides(back, d);
  EXPECT_EQ(describe(back), d);
  EXPECT_EQ(0, std::memcmp(&back, &c, sizeof c));

  const AugmentConfig before = c;
  struct Bad {
    const char* spec;
    const char* must_mention;
  };
  const Bad bad[] = {
      {"flip=0.5", "flip"},           {"hflip=abc", "hflip"},        {"hflip=0.5x", "hflip"},
      {"hflip=", "hflip"},            {"hflip", "key=value"},        {"hflip=1.5", "hflip"},
      {"rotate=-3", "rotate"},        {"rotate=nan", "rotate"},      {"contrast=inf", "contrast"},
      {"scale_min=2,scale_max=1.5", "scale_min"},                    {"cutout_size=0", "cutout_size"},
      {"cutout_mask=0.5", "cutout_mask"}, {"vflip=0.5,bogus=1", "bogus"}, {"saturation=1e99", "saturation"},
  };
  for (const Bad& b : bad) {
    const std::string err = error_of([&] { apply_augment_overrides(c, b.spec); });
    EXPECT_NE(err.find(b.must_mention), std::string::npos) << b.spec << " -> " << err;
    EXPECT_NE(err, "(no error)") << b.spec;
    EXPECT_EQ(describe(c), describe(before)) << "a failed override must leave the config unchanged: " << b.spec;
  }
  // The unknown-key message lists the valid keys.
  EXPECT_NE(error_of([&] { apply_augment_overrides(c, "zoom=2"); }).find("scale_max"), std::string::npos);
  // augment_sample validates too.
  AugmentConfig broken;
  broken.hflip = 2;
  Pair s(4);
  Rng rng(1);
  EXPECT_THROW(s.run(broken, rng), Error);
}

TEST(Augment, Speed) {
  // Reported, not asserted (sanitizer builds are far slower); see the report in the log.
  AugmentConfig all = augment_preset("paper");
  apply_augment_overrides(all, "hflip=1,vflip=1,rot90=1,rotate_prob=1,scale_prob=1,cutout=1,saturation=0.3");
  for (int n : {64, 256}) {
    Pair s = random_sample(n, 1);
    Rng rng(1);
    const int reps = n == 64 ? 400 : 40;
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) s.run(all, rng);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
    std::printf("augment_sample %dx%d, all switches on: %.4f ms per sample\n", n, n, ms);
    EXPECT_TRUE(binary(s));
  }
}
