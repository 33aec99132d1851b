// model/augment.h — training-time data augmentation of one (image, mask) sample, in place.
//
// A sample is what the trainer holds: `image` is size x size x 3 floats (NHWC, values in [0, 1])
// and `mask` is size x size floats that are exactly 0 or 1. augment_sample applies, in this
// order and each with its own probability:
//   1. geometry: horizontal flip, vertical flip, rotation by k * 90 degrees (k uniform in 1..3),
//      free rotation by an angle uniform in [-rotate, rotate] degrees about the centre, random
//      zoom by a factor uniform in [scale_min, scale_max] with a random crop position (zoom in:
//      a random size x size window of the enlarged frame; zoom out: the shrunken frame at a random
//      place on a black canvas). Flips and rot90 alone are exact pixel permutations. When a free
//      rotation or zoom is drawn, the whole geometric chain is composed into ONE affine map and
//      resampled once: bilinear for the image, nearest for the mask, both through the same
//      mapping, so the mask stays exactly 0/1 and aligned with the image. Where the map reads
//      outside the frame the image is black (0) and the mask background (0); black rather than
//      reflection because Kvasir frames already have black borders and a reflected polyp would
//      need a reflected label that never occurs in real data.
//   2. colour (image only), torchvision ColorJitter semantics: each enabled jitter draws a factor
//      uniform in [max(0, 1 - a), 1 + a]; brightness: x * f; contrast: blend with the mean of the
//      image's grey level (0.2989 R + 0.587 G + 0.114 B), x * f + mean * (1 - f); saturation:
//      blend with each pixel's own grey level; every step clamps to [0, 1]. The three are applied
//      in a random order, as ColorJitter does. No hue jitter.
//   3. cutout (image only by default): a square of side round(cutout_size * size) (at least 1)
//      whose centre is uniform over the frame (clipped at the borders, as in DeVries & Taylor's
//      Cutout) is set to 0 in the image. The mask is left unchanged unless cutout_mask is 1,
//      in which case the same square is also set to 0 in the mask.
// Only step 1 touches the mask.
//
// Randomness comes only from the Rng passed in, so the same Rng state and config give the same
// output bits; the number of draws depends on the config (a switch at 0 draws nothing).
// Nothing is allocated: the caller provides augment_scratch_floats(size) floats of scratch.
// Thread-safe for distinct (rng, image, mask, scratch). Exercised by tests/test_augment.cpp.
#pragma once
#include <cstddef>
#include <string>

#include "runtime/rng.h"

namespace rpp {

struct AugmentConfig {
  // geometry (image and mask)
  float hflip = 0;        // probability of a left-right mirror
  float vflip = 0;        // probability of a top-bottom mirror
  float rot90 = 0;        // probability of a rotation by k * 90 degrees, k uniform in {1, 2, 3}
  float rotate = 0;       // max |angle| in degrees of a free rotation (0: off), at most 180
  float rotate_prob = 1;  // probability of drawing a free rotation when rotate > 0
  float scale_min = 1;    // zoom factor range (> 1 zooms in); [1, 1]: off
  float scale_max = 1;
  float scale_prob = 1;   // probability of drawing a zoom when the range is not [1, 1]
  // colour (image only)
  float brightness = 0;   // jitter amounts a >= 0: factor uniform in [max(0, 1 - a), 1 + a]
  float contrast = 0;
  float saturation = 0;
  // cutout (image; mask only with cutout_mask = 1)
  float cutout = 0;         // probability of one cutout square
  float cutout_size = 0.25f;  // its side as a fraction of the image side, in (0, 1]
  float cutout_mask = 0;    // 0: the mask is kept; 1: the mask is zeroed in the square too
};

// Named presets:
//   "none":  the identity.
//   "light": hflip 0.5, vflip 0.5, rot90 0.5, brightness/contrast/saturation 0.1.
//   "paper": the ResUNet++ paper's Kvasir-SEG augmentations as far as these switches express them
//            (see augment.cpp for what is approximated or left out).
// Unknown name: rpp::Error listing the valid names.
AugmentConfig augment_preset(const std::string& name);

// The preset names, comma-separated ("none, light, paper"), for help texts.
std::string augment_preset_names();

// Applies "key=value,key=value" overrides (keys are the field names above, values decimal
// numbers; spaces around items are ignored; an empty spec changes nothing), then validates.
// rpp::Error naming the key for an unknown key, a missing '=', a value that is not a finite
// number, or a value out of range.
void apply_augment_overrides(AugmentConfig& cfg, const std::string& spec);

// rpp::Error naming the field if a value is out of range: probabilities in [0, 1], rotate in
// [0, 180], 0 < scale_min <= scale_max <= 10, jitter amounts in [0, 10], cutout_size in (0, 1],
// cutout_mask 0 or 1, and every value finite.
void validate_augment(const AugmentConfig& cfg);

// One line listing every field as "key=value,..." in declaration order (shortest decimal that
// reads back to the same float), for logs and config.json. apply_augment_overrides accepts it:
// applying describe(c) to any config gives back c.
std::string describe(const AugmentConfig& cfg);

// True when the config can never change a sample (every probability or amount that matters is 0).
bool augment_is_identity(const AugmentConfig& cfg);

// Floats of scratch augment_sample needs for a size x size sample (4 * size * size).
size_t augment_scratch_floats(int size);

// Augments one sample in place (see the top of this file). `scratch` holds at least
// augment_scratch_floats(size) floats; its contents on entry do not matter. rpp::Error for
// size < 1, a null pointer or an invalid config.
void augment_sample(const AugmentConfig& cfg, Rng& rng, int size, float* image, float* mask, float* scratch);

}  // namespace rpp
