// model/overlay.h — a predicted mask drawn over its image, for `resunetpp predict`.
//
// Inside the mask the image is blended with a tint colour (by default 40% green); the mask's
// inner boundary is then drawn in a contrasting contour colour (by default yellow). The contour
// lies inside the mask (a mask pixel with a background pixel within `thickness` pixels in x and
// y), so every pixel outside the mask keeps its original value. The image border does not count
// as background. Exercised by tests/test_predict.cpp.
#pragma once
#include <cstdint>
#include <vector>

#include "model/image_io.h"

namespace rpp {

struct OverlayStyle {
  uint8_t tint[3] = {0, 255, 0};        // blended into the mask's pixels
  double alpha = 0.4;                   // weight of the tint: out = (1 - alpha) * px + alpha * tint
  uint8_t contour[3] = {255, 255, 0};   // drawn on the mask's inner boundary
  int thickness = 0;                    // contour width in pixels; 0: 1, or 2 when min(w, h) >= 256
};

// Contour width that style.thickness = 0 resolves to for a w x h image.
int overlay_thickness(const OverlayStyle& style, int w, int h);

// True for mask pixels (>= 128) that have a background pixel (< 128) within `thickness` pixels
// (Chebyshev distance), row-major w * h. `mask` is one channel.
std::vector<uint8_t> mask_contour(const Image& mask, int thickness);

// `image` (RGB, 3 channels) with `mask` (1 channel, same size, >= 128 is polyp) drawn over it.
// rpp::Error when the channel counts or the sizes differ.
Image draw_overlay(const Image& image, const Image& mask, const OverlayStyle& style = {});

}  // namespace rpp
