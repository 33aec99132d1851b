// tests/test_plot.cpp — the training-curves image: size, which colours land in which panel,
// empty and single-epoch input, non-finite values, spike-robust loss axis, determinism, PNG file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "model/image_io.h"
#include "model/plot.h"
#include "runtime/error.h"

using namespace rpp;

namespace {

struct Colour {
  uint8_t r, g, b;
};
constexpr Colour kTrain{31, 119, 180}, kVal{255, 127, 14}, kDice{44, 160, 44}, kBest{214, 39, 40};

// Pixels of exactly colour c with x in [x0, x1).
int count(const Image& im, Colour c, int x0, int x1, int* ymin = nullptr, int* ymax = nullptr) {
  int k = 0;
  if (ymin) *ymin = im.h;
  if (ymax) *ymax = -1;
  for (int y = 0; y < im.h; ++y)
    for (int x = x0; x < x1; ++x) {
      const uint8_t* p = &im.px[(size_t(y) * size_t(im.w) + size_t(x)) * 3];
      if (p[0] == c.r && p[1] == c.g && p[2] == c.b) {
        ++k;
        if (ymin) *ymin = std::min(*ymin, y);
        if (ymax) *ymax = std::max(*ymax, y);
      }
    }
  return k;
}

// A plausible run: losses decay with noise, Dice rises and saturates.
void plausible(int n, std::vector<double>* tl, std::vector<double>* vl, std::vector<double>* vd) {
  for (int e = 1; e <= n; ++e) {
    const double t = double(e);
    tl->push_back(0.15 + 1.05 * std::exp(-t / 6.0) + 0.01 * std::sin(3.1 * t));
    vl->push_back(0.24 + 0.95 * std::exp(-t / 7.0) + 0.035 * std::sin(1.7 * t + 0.4));
    vd->push_back(0.86 - 0.70 * std::exp(-t / 5.0) + 0.025 * std::sin(2.3 * t));
  }
}

const double kNaN = std::numeric_limits<double>::quiet_NaN();
const double kInf = std::numeric_limits<double>::infinity();

}  // namespace

TEST(Plot, SizeAndChannels) {
  std::vector<double> tl, vl, vd;
  plausible(30, &tl, &vl, &vd);
  const Image a = draw_training_curves(tl, vl, vd);
  EXPECT_EQ(a.w, 800);
  EXPECT_EQ(a.h, 400);
  EXPECT_EQ(a.c, 3);
  EXPECT_EQ(a.px.size(), size_t(800) * 400 * 3);
  const Image b = draw_training_curves(tl, vl, vd, 501, 263);
  EXPECT_EQ(b.w, 501);
  EXPECT_EQ(b.h, 263);
  EXPECT_EQ(b.px.size(), size_t(501) * 263 * 3);
  const Image big = draw_training_curves(tl, vl, vd, 1600, 800);
  EXPECT_EQ(big.w, 1600);
  EXPECT_THROW(draw_training_curves(tl, vl, vd, 100, 400), Error);
  EXPECT_THROW(draw_training_curves(tl, vl, vd, 800, 50), Error);
}

TEST(Plot, ColoursLandInTheirPanels) {
  std::vector<double> tl, vl, vd;
  plausible(30, &tl, &vl, &vd);
  for (int w : {800, 400}) {
    const int h = w / 2;
    const Image im = draw_training_curves(tl, vl, vd, w, h);
    const int half = w / 2;
    // Mostly white background.
    EXPECT_GT(count(im, {255, 255, 255}, 0, w), w * h / 2);
    // Loss lines in the left panel only, the Dice line and best marker in the right only.
    EXPECT_GT(count(im, kTrain, 0, half), 100) << w;
    EXPECT_GT(count(im, kVal, 0, half), 100) << w;
    EXPECT_EQ(count(im, kTrain, half, w), 0) << w;
    EXPECT_EQ(count(im, kVal, half, w), 0) << w;
    EXPECT_GT(count(im, kDice, half, w), 100) << w;
    EXPECT_EQ(count(im, kDice, 0, half), 0) << w;
    EXPECT_GT(count(im, kBest, half, w), 10) << w;
    EXPECT_EQ(count(im, kBest, 0, half), 0) << w;
  }
}

TEST(Plot, BestEpochMarkerSitsAtTheMaximum) {
  std::vector<double> vd = {0.1, 0.3, 0.9, 0.5, 0.4, 0.45};  // best: epoch 3, high up
  const Image im = draw_training_curves({1, 0.8, 0.6, 0.5, 0.45, 0.4}, {}, vd);
  int ymin, ymax;
  ASSERT_GT(count(im, kBest, 400, 800, &ymin, &ymax), 0);
  // The marker (and the small legend dot at the bottom right): the highest red pixel is near
  // Dice 0.9, i.e. in the upper fifth of the image.
  EXPECT_LT(ymin, 400 / 5 + 20);
}

TEST(Plot, EmptyAndSingleEpoch) {
  const Image empty = draw_training_curves({}, {}, {});
  EXPECT_EQ(empty.w, 800);
  EXPECT_EQ(count(empty, kTrain, 0, 800), 0);
  EXPECT_EQ(count(empty, kDice, 0, 800), 0);
  EXPECT_EQ(count(empty, kBest, 0, 800), 0);
  // "no data" text and the frames are drawn: some dark pixels in each panel.
  EXPECT_GT(400 * 400 - count(empty, {255, 255, 255}, 0, 400), 500);
  EXPECT_GT(400 * 400 - count(empty, {255, 255, 255}, 400, 800), 500);
  const Image one = draw_training_curves({0.7}, {0.8}, {0.42});
  EXPECT_GT(count(one, kTrain, 0, 400), 10);  // a dot
  EXPECT_GT(count(one, kVal, 0, 400), 10);
  EXPECT_GT(count(one, kDice, 400, 800) + count(one, kBest, 400, 800), 10);
  // Different lengths are fine (validation missing entirely, or shorter).
  EXPECT_NO_THROW(draw_training_curves({1, 0.5, 0.3}, {}, {}));
  EXPECT_NO_THROW(draw_training_curves({1, 0.5, 0.3}, {0.9}, {0.2, 0.4}));
}

TEST(Plot, NonFiniteValuesAreSkipped) {
  std::vector<double> tl, vl, vd;
  plausible(20, &tl, &vl, &vd);
  vl[5] = kNaN;
  vl[6] = kInf;
  vl[12] = -kInf;
  vd[3] = kNaN;
  const Image im = draw_training_curves(tl, vl, vd);
  EXPECT_GT(count(im, kVal, 0, 400), 50);
  EXPECT_GT(count(im, kDice, 400, 800), 50);
  // All non-finite: nothing of those series but the legend sample.
  const std::vector<double> nans(10, kNaN);
  const Image all_nan = draw_training_curves(nans, nans, nans);
  const Image one_nan = draw_training_curves({kNaN}, {kNaN}, {kNaN});
  EXPECT_EQ(count(all_nan, kTrain, 0, 400), count(one_nan, kTrain, 0, 400));
  EXPECT_EQ(count(all_nan, kDice, 400, 800), count(one_nan, kDice, 400, 800));
  EXPECT_LT(count(all_nan, kTrain, 0, 400), 150);
  EXPECT_LT(count(all_nan, kDice, 400, 800), 150);
  EXPECT_EQ(count(all_nan, kBest, 400, 800), 0);
}

TEST(Plot, LossAxisIgnoresSpikes) {
  std::vector<double> tl, vl, vd;
  plausible(30, &tl, &vl, &vd);
  int clean_top, clean_bottom;
  count(draw_training_curves(tl, vl, vd), kTrain, 0, 400, &clean_top, &clean_bottom);
  vl[9] = 250.0;  // one divergent validation epoch
  int top, bottom;
  const Image im = draw_training_curves(tl, vl, vd);
  count(im, kTrain, 0, 400, &top, &bottom);
  // Without spike handling the training curve would be squashed into ~1% of the height.
  EXPECT_GT(bottom - top, (clean_bottom - clean_top) * 8 / 10);
  EXPECT_GT(bottom - top, 150);
}

TEST(Plot, DeterministicBytes) {
  std::vector<double> tl, vl, vd;
  plausible(30, &tl, &vl, &vd);
  const std::vector<uint8_t> a = encode_png(draw_training_curves(tl, vl, vd));
  const std::vector<uint8_t> b = encode_png(draw_training_curves(tl, vl, vd));
  EXPECT_EQ(a, b);
  vd[4] += 0.01;
  EXPECT_NE(a, encode_png(draw_training_curves(tl, vl, vd)));
}

TEST(Plot, SaveWritesAReadablePng) {
  std::vector<double> tl, vl, vd;
  plausible(30, &tl, &vl, &vd);
  const std::string path = ::testing::TempDir() + "rpp_test_curves.png";
  save_training_curves(path, tl, vl, vd, 640, 320);
  const Image back = load_image(path, 3);
  EXPECT_EQ(back.w, 640);
  EXPECT_EQ(back.h, 320);
  EXPECT_EQ(back.px, draw_training_curves(tl, vl, vd, 640, 320).px);
  std::remove(path.c_str());
  // RPP_CURVES_EXAMPLE=/some/file.png writes the 30-epoch example for a person to look at.
  if (const char* out = std::getenv("RPP_CURVES_EXAMPLE")) {
    std::vector<double> vl2 = vl;
    vl2[17] = kNaN;  // a skipped epoch
    save_training_curves(out, tl, vl2, vd);
  }
}
