// model/overlay.cpp — tinted mask and contour over an RGB image.
#include "model/overlay.h"

#include <algorithm>
#include <cmath>

#include "runtime/error.h"

namespace rpp {

int overlay_thickness(const OverlayStyle& style, int w, int h) {
  if (style.thickness > 0) return style.thickness;
  return std::min(w, h) >= 256 ? 2 : 1;
}

std::vector<uint8_t> mask_contour(const Image& mask, int thickness) {
  if (mask.c != 1 || mask.px.size() != size_t(mask.w) * size_t(mask.h))
    fail("mask_contour: expected a one-channel mask, got ", mask.w, "x", mask.h, "x", mask.c);
  if (thickness < 1) fail("mask_contour: thickness must be at least 1, got ", thickness);
  const int w = mask.w, h = mask.h;
  auto fg = [&](int x, int y) { return mask.px[size_t(y) * size_t(w) + size_t(x)] >= 128; };
  std::vector<uint8_t> out(size_t(w) * size_t(h), 0);
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      if (!fg(x, y)) continue;
      bool edge = false;
      for (int dy = -thickness; dy <= thickness && !edge; ++dy) {
        const int yy = y + dy;
        if (yy < 0 || yy >= h) continue;
        for (int dx = -thickness; dx <= thickness; ++dx) {
          const int xx = x + dx;
          if (xx < 0 || xx >= w) continue;
          if (!fg(xx, yy)) {
            edge = true;
            break;
          }
        }
      }
      out[size_t(y) * size_t(w) + size_t(x)] = edge ? 1 : 0;
    }
  return out;
}

Image draw_overlay(const Image& image, const Image& mask, const OverlayStyle& style) {
  if (image.c != 3 || image.px.size() != size_t(image.w) * size_t(image.h) * 3)
    fail("draw_overlay: expected an RGB image, got ", image.w, "x", image.h, "x", image.c);
  if (mask.c != 1) fail("draw_overlay: expected a one-channel mask, got ", mask.c, " channels");
  if (mask.w != image.w || mask.h != image.h)
    fail("draw_overlay: the mask is ", mask.w, "x", mask.h, " but the image is ", image.w, "x", image.h);
  if (!(style.alpha >= 0.0 && style.alpha <= 1.0)) fail("draw_overlay: alpha must be in [0, 1], got ", style.alpha);
  const std::vector<uint8_t> edge = mask_contour(mask, overlay_thickness(style, image.w, image.h));
  Image out = image;
  const size_t n = size_t(image.w) * size_t(image.h);
  const float a = float(style.alpha);
  for (size_t i = 0; i < n; ++i) {
    if (mask.px[i] < 128) continue;
    uint8_t* p = out.px.data() + i * 3;
    for (int ch = 0; ch < 3; ++ch) {
      if (edge[i]) {
        p[ch] = style.contour[ch];
      } else {
        const float v = (1.f - a) * float(p[ch]) + a * float(style.tint[ch]);
        p[ch] = uint8_t(std::min(255.f, std::max(0.f, std::floor(v + 0.5f))));
      }
    }
  }
  return out;
}

}  // namespace rpp
