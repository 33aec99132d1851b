// tests/test_predict.cpp — the inference side: .npy bytes, overlays, the Predictor (preprocessing
// equal to training's, flip TTA equal to a hand-made flip-run-unflip average, batch independence,
// checkpoint metadata), probability resampling and native-resolution metrics.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "model/dataset.h"
#include "model/image_io.h"
#include "model/inference.h"
#include "model/metrics.h"
#include "model/npy.h"
#include "model/overlay.h"
#include "model/resunetpp.h"
#include "runtime/checkpoint.h"
#include "runtime/error.h"
#include "runtime/fileio.h"
#include "runtime/rng.h"

using namespace rpp;

namespace {

std::string tmp_root() { return "/tmp/rpp_test_predict_" + std::to_string(getpid()); }

std::string tmp_path(const std::string& name) {
  make_dirs(tmp_root());
  return tmp_root() + "/" + name;
}

// Removes the scratch folder after the last test.
class ScratchCleanup : public ::testing::Environment {
 public:
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(tmp_root(), ec);
  }
};
const auto* const kCleanup = ::testing::AddGlobalTestEnvironment(new ScratchCleanup);

Image random_rgb(int w, int h, uint64_t seed) {
  Image img;
  img.w = w;
  img.h = h;
  img.c = 3;
  img.px.resize(size_t(w) * size_t(h) * 3);
  Rng rng(seed, 11);
  for (uint8_t& v : img.px) v = uint8_t(rng.below(256));
  return img;
}

std::vector<float> random_inputs(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  Rng rng(seed, 12);
  for (float& x : v) x = float(rng.below(1000)) / 999.f;
  return v;
}

template <class F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

bool has(const std::string& s, const std::string& what) { return s.find(what) != std::string::npos; }

const ModelConfig kTiny = [] {
  ModelConfig c;
  c.filters = {8, 8, 16, 16, 32};
  return c;
}();

}  // namespace

// ---- .npy -----------------------------------------------------------------------------------

TEST(Npy, HeaderBytesAreExact) {
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }";
  const std::string want = std::string("\x93NUMPY\x01\x00\x76\x00", 10) + dict + std::string(58, ' ') + "\n";
  const std::string h = npy_header_f32({3, 4});
  EXPECT_EQ(h.size(), 128u);
  EXPECT_EQ(h, want);
  // 1-D shapes carry Python's trailing comma; 0-D is "()".
  EXPECT_EQ(npy_header_f32({5}),
            std::string("\x93NUMPY\x01\x00\x76\x00", 10) + "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }" +
                std::string(60, ' ') + "\n");
  EXPECT_TRUE(has(npy_header_f32({}), "'shape': (), }"));
  // Every header, however long, ends in '\n' at a multiple of 64 bytes.
  for (auto shape : std::vector<std::vector<int64_t>>{{1}, {256, 256}, {1, 2, 3, 4, 5, 6, 7, 8}, {123456789, 987654}}) {
    const std::string s = npy_header_f32(shape);
    EXPECT_EQ(s.size() % 64, 0u);
    EXPECT_EQ(s.back(), '\n');
    EXPECT_EQ(size_t(uint8_t(s[8])) | size_t(uint8_t(s[9])) << 8, s.size() - 10);
  }
  EXPECT_TRUE(has(error_of([] { npy_header_f32({2, -1}); }), "negative dimension"));
}

TEST(Npy, DataIsLittleEndianFloat32InCOrder) {
  const float v[6] = {1.f, -2.f, 0.5f, 0.f, 3.f, 4.f};
  const std::vector<uint8_t> b = encode_npy_f32(v, {2, 3});
  ASSERT_EQ(b.size(), 128u + 24u);
  const uint8_t one[4] = {0x00, 0x00, 0x80, 0x3F}, minus_two[4] = {0x00, 0x00, 0x00, 0xC0};
  EXPECT_EQ(std::memcmp(b.data() + 128, one, 4), 0);
  EXPECT_EQ(std::memcmp(b.data() + 132, minus_two, 4), 0);
}

TEST(Npy, RoundTripThroughAFile) {
  std::vector<float> v = random_inputs(7 * 5, 3);
  v[0] = -0.f;
  v[1] = std::numeric_limits<float>::infinity();
  v[2] = std::numeric_limits<float>::denorm_min();
  const std::string path = tmp_path("a.npy");
  write_npy_f32(path, v.data(), {7, 5});
  const NpyArray a = read_npy_f32(path);
  EXPECT_EQ(a.shape, (std::vector<int64_t>{7, 5}));
  ASSERT_EQ(a.data.size(), v.size());
  EXPECT_EQ(std::memcmp(a.data.data(), v.data(), v.size() * 4), 0);  // bit-exact, -0 included
}

TEST(Npy, ReaderRejectsWhatItCannotRead) {
  const float v[4] = {1, 2, 3, 4};
  std::vector<uint8_t> b = encode_npy_f32(v, {2, 2});
  EXPECT_TRUE(has(error_of([&] { decode_npy_f32(b.data(), b.size() - 1, "x.npy"); }), "x.npy: .npy data holds 15 bytes"));
  std::vector<uint8_t> f8 = b;
  const std::string head(f8.begin(), f8.begin() + 128);
  ASSERT_NE(head.find("'<f4'"), std::string::npos);
  f8[head.find("'<f4'") + 3] = '8';  // '<f4' -> '<f8'
  EXPECT_TRUE(has(error_of([&] { decode_npy_f32(f8.data(), f8.size(), "y.npy"); }), "y.npy: .npy dtype is '<f8'"));
  const uint8_t junk[12] = {'P', 'K', 3, 4, 0, 0, 0, 0, 0, 0, 0, 0};
  EXPECT_TRUE(has(error_of([&] { decode_npy_f32(junk, sizeof junk, "z.npy"); }), "z.npy: not a .npy file"));
  EXPECT_TRUE(has(error_of([] { read_npy_f32("/nonexistent/q.npy"); }), "/nonexistent/q.npy"));
}

// ---- overlay --------------------------------------------------------------------------------

TEST(Overlay, TintsInsideOutlinesBoundaryLeavesOutsideAlone) {
  const int w = 10, h = 8;
  const Image img = random_rgb(w, h, 5);
  Image mask;
  mask.w = w;
  mask.h = h;
  mask.c = 1;
  mask.px.assign(size_t(w * h), 0);
  for (int y = 1; y <= 6; ++y)
    for (int x = 2; x <= 7; ++x) mask.px[size_t(y * w + x)] = 255;  // a 6x6 square
  OverlayStyle st;  // 40% green, yellow contour, thickness 1 at this size
  EXPECT_EQ(overlay_thickness(st, w, h), 1);
  EXPECT_EQ(overlay_thickness(st, 300, 256), 2);
  const Image o = draw_overlay(img, mask, st);
  ASSERT_EQ(o.w, w);
  ASSERT_EQ(o.h, h);
  ASSERT_EQ(o.c, 3);
  int contour = 0, tinted = 0;
  for (int y = 0; y < h; ++y)
    for (int x = 0; x < w; ++x) {
      const size_t i = size_t(y * w + x) * 3;
      const bool inside = x >= 2 && x <= 7 && y >= 1 && y <= 6;
      const bool boundary = inside && (x == 2 || x == 7 || y == 1 || y == 6);
      for (int ch = 0; ch < 3; ++ch) {
        if (!inside) {
          EXPECT_EQ(o.px[i + size_t(ch)], img.px[i + size_t(ch)]) << x << "," << y;
        } else if (boundary) {
          EXPECT_EQ(o.px[i + size_t(ch)], st.contour[ch]) << x << "," << y;
        } else {
          const double want = std::floor(0.6 * img.px[i + size_t(ch)] + 0.4 * st.tint[ch] + 0.5);
          EXPECT_NEAR(o.px[i + size_t(ch)], want, 1.0) << x << "," << y;
        }
      }
      contour += boundary;
      tinted += inside && !boundary;
    }
  EXPECT_EQ(contour, 20);
  EXPECT_EQ(tinted, 16);
  // Thickness 2 outlines two rings: only the 2x2 centre stays tinted.
  st.thickness = 2;
  const std::vector<uint8_t> edge = mask_contour(mask, 2);
  int n2 = 0;
  for (uint8_t e : edge) n2 += e;
  EXPECT_EQ(n2, 32);
  // An empty mask leaves the image untouched; a size mismatch is an error.
  Image none = mask;
  std::fill(none.px.begin(), none.px.end(), 0);
  EXPECT_EQ(draw_overlay(img, none).px, img.px);
  Image small = mask;
  small.w = 5;
  small.px.resize(40);
  EXPECT_TRUE(has(error_of([&] { draw_overlay(img, small); }), "5x8"));
}

// ---- Predictor --------------------------------------------------------------------------------

TEST(Predictor, PreprocessingEqualsTheTrainingLoader) {
  const std::string dir = tmp_path("ds");
  make_dirs(dir + "/images");
  make_dirs(dir + "/masks");
  const Image img = random_rgb(21, 13, 9);
  Image m;
  m.w = 21;
  m.h = 13;
  m.c = 1;
  m.px.assign(21 * 13, 255);
  save_png(dir + "/images/a.png", img);
  save_png(dir + "/masks/a.png", m);
  const LoadedDataset ds = load_dataset(scan_dataset(dir), 16);
  Predictor p(kTiny, 16, 1);
  const std::vector<float> x = p.preprocess(load_image(dir + "/images/a.png", 3));
  ASSERT_EQ(x.size(), ds.images.size());
  EXPECT_EQ(std::memcmp(x.data(), ds.images.data(), x.size() * 4), 0);
}

TEST(Predictor, TtaEqualsManualFlipRunUnflipAverage) {
  const int size = 16, n = 3;
  const size_t plane = size_t(size) * size, per = plane * 3;
  Predictor p(kTiny, size, 2);  // batch 2: n = 3 exercises the padded last batch
  init_params(p.graph(), p.store(), 7);
  const std::vector<float> x = random_inputs(size_t(n) * per, 21);

  const std::vector<float> plain = p.logits(x, n, false);
  std::vector<float> xf(x.size()), lf(plain.size()), back(plane);
  std::vector<double> sum(plain.size(), 0.0);
  for (size_t k = 0; k < plain.size(); ++k) sum[k] = sigmoid(plain[k]);
  for (Flip f : {Flip::Horizontal, Flip::Vertical}) {
    for (int i = 0; i < n; ++i) flip_image(x.data() + size_t(i) * per, xf.data() + size_t(i) * per, size, size, 3, f);
    lf = p.logits(xf, n, false);
    for (int i = 0; i < n; ++i) {
      flip_image(lf.data() + size_t(i) * plane, back.data(), size, size, 1, f);
      for (size_t k = 0; k < plane; ++k) sum[size_t(i) * plane + k] += sigmoid(back[k]);
    }
  }
  const std::vector<float> tta = p.logits(x, n, true);
  double max_err = 0, max_change = 0;
  for (size_t k = 0; k < tta.size(); ++k) {
    max_err = std::max(max_err, std::abs(sigmoid(tta[k]) - sum[k] / 3));
    max_change = std::max(max_change, std::abs(sigmoid(tta[k]) - sigmoid(plain[k])));
    EXPECT_EQ(tta[k] >= 0.f, sum[k] / 3 >= 0.5) << k;
  }
  EXPECT_LT(max_err, 1e-6);
  EXPECT_GT(max_change, 1e-4);  // the network is not flip-invariant, so TTA changes something

  // Flipping twice is the identity; a horizontal flip mirrors columns.
  std::vector<float> a(per), b(per);
  flip_image(x.data(), a.data(), size, size, 3, Flip::Horizontal);
  EXPECT_EQ(a[0], x[(size_t(size) - 1) * 3]);
  flip_image(a.data(), b.data(), size, size, 3, Flip::Horizontal);
  EXPECT_EQ(std::memcmp(b.data(), x.data(), per * 4), 0);
}

TEST(Predictor, ResultsDoNotDependOnTheBatchSize) {
  const int size = 16, n = 3;
  Predictor p1(kTiny, size, 1), p4(kTiny, size, 4);
  init_params(p1.graph(), p1.store(), 3);
  init_params(p4.graph(), p4.store(), 3);
  const std::vector<float> x = random_inputs(size_t(n) * size * size * 3, 8);
  const std::vector<float> a = p1.logits(x, n, false), b = p4.logits(x, n, false);
  ASSERT_EQ(a.size(), b.size());
  for (size_t k = 0; k < a.size(); ++k) EXPECT_NEAR(a[k], b[k], 1e-5) << k;
}

TEST(Predictor, ReadsModelAndSizeFromCheckpointMetadata) {
  Predictor src(kTiny, 16, 1);
  init_params(src.graph(), src.store(), 4);
  const std::string path = tmp_path("tiny.safetensors");
  save_checkpoint(path, src.graph(), src.store(), false, {{"filters", "8,8,16,16,32"}, {"size", "16"}});
  Predictor p(path);
  EXPECT_EQ(p.size(), 16);
  EXPECT_EQ(p.config().filters, kTiny.filters);
  EXPECT_EQ(metadata_get(p.metadata(), "size"), "16");
  const Image img = random_rgb(30, 20, 2);
  EXPECT_EQ(p.predict_logits(img, false), src.predict_logits(img, false));
  Predictor p24(path, 24);  // fully convolutional: any multiple of 8
  EXPECT_EQ(p24.predict_logits(img, true).size(), 24u * 24u);
  EXPECT_TRUE(has(error_of([&] { Predictor bad(path, 20); }), "multiple of 8"));

  // A truncated file, and a checkpoint of another model, are errors naming the file.
  const std::string bytes = read_file(path);
  const std::string cut = tmp_path("cut.safetensors");
  write_file_atomic(cut, bytes.substr(0, bytes.size() / 2));
  EXPECT_TRUE(has(error_of([&] { Predictor bad(cut); }), cut));
  const std::string other = tmp_path("other.safetensors");
  save_checkpoint(other, src.graph(), src.store(), false, {{"filters", "8,8,16,16,64"}});
  const std::string e = error_of([&] { Predictor bad(other); });
  EXPECT_TRUE(has(e, other) && has(e, "does not match")) << e;
}

TEST(Predictor, MetadataDefaultsAndErrors) {
  CheckpointModel m = model_from_metadata({}, "x");
  EXPECT_EQ(m.size, 256);
  EXPECT_EQ(m.config.filters, (std::vector<int>{16, 32, 64, 128, 256}));
  EXPECT_FALSE(m.filters_from_metadata);
  m = model_from_metadata({{"filters", "8,8,16,16,32"}, {"size", "48"}}, "x");
  EXPECT_EQ(m.size, 48);
  EXPECT_TRUE(m.size_from_metadata);
  EXPECT_EQ(m.config.filters, kTiny.filters);
  EXPECT_TRUE(has(error_of([] { model_from_metadata({{"filters", "8,8,16"}}, "ck.st"); }), "ck.st: metadata 'filters'"));
  EXPECT_TRUE(has(error_of([] { model_from_metadata({{"size", "-3"}}, "ck.st"); }), "ck.st: metadata 'size'"));
}

// ---- resampling and native metrics ----------------------------------------------------------

TEST(Resample, BilinearMapHasTheTargetSizeAndHalfPixelTaps) {
  const float src[4] = {0, 1, 2, 3};  // 2x2
  const std::vector<float> up = resize_map_bilinear(src, 2, 2, 4, 4);
  ASSERT_EQ(up.size(), 16u);
  const float row0[4] = {0.f, 0.25f, 0.75f, 1.f};
  for (int x = 0; x < 4; ++x) EXPECT_FLOAT_EQ(up[size_t(x)], row0[x]);
  EXPECT_FLOAT_EQ(up[15], 3.f);
  EXPECT_FLOAT_EQ(up[4], 0.5f);  // (0, 1): a quarter of the way from row 0 to row 1 of the source
  // Back to an original, non-square size: dims follow the target, a constant stays constant.
  std::vector<float> c(16 * 16, 0.3f);
  const std::vector<float> back = resize_map_bilinear(c.data(), 16, 16, 41, 23);
  EXPECT_EQ(back.size(), 41u * 23u);
  for (float v : back) EXPECT_FLOAT_EQ(v, 0.3f);
  // Same taps as the byte resizer: integer maps agree with resize_bilinear up to its rounding.
  const Image img = random_rgb(9, 7, 4);
  Image g;
  g.w = 9;
  g.h = 7;
  g.c = 1;
  for (size_t i = 0; i < img.px.size(); i += 3) g.px.push_back(img.px[i]);
  std::vector<float> gf(g.px.begin(), g.px.end());
  const Image gr = resize_bilinear(g, 20, 5);
  const std::vector<float> fr = resize_map_bilinear(gf.data(), 9, 7, 20, 5);
  for (size_t i = 0; i < fr.size(); ++i) EXPECT_NEAR(fr[i], gr.px[i], 0.5001) << i;
  EXPECT_TRUE(has(error_of([&] { resize_map_bilinear(src, 2, 2, 0, 4); }), "positive"));
}

TEST(NativeMetrics, HandBuiltCase) {
  // Model-resolution probabilities 8x8: the left 4 columns are polyp.
  std::vector<float> prob(64, 0.f);
  for (int y = 0; y < 8; ++y)
    for (int x = 0; x < 4; ++x) prob[size_t(y * 8 + x)] = 1.f;
  // Original 16x12 mask: the left 10 columns are polyp (stored with JPEG-like noise around 0/255).
  Image truth;
  truth.w = 16;
  truth.h = 12;
  truth.c = 1;
  for (int y = 0; y < 12; ++y)
    for (int x = 0; x < 16; ++x) truth.px.push_back(x < 10 ? 250 : 3);
  // Upsampled columns: x = 7 gets 0.75, x = 8 gets 0.25, so columns 0..7 are predicted polyp.
  Confusion c = native_confusion(prob.data(), 8, truth, 0.5);
  EXPECT_EQ(c.tp, 8 * 12);
  EXPECT_EQ(c.fn, 2 * 12);
  EXPECT_EQ(c.fp, 0);
  EXPECT_EQ(c.tn, 6 * 12);
  EXPECT_DOUBLE_EQ(dice(c), 192.0 / 216.0);
  EXPECT_DOUBLE_EQ(iou(c), 96.0 / 120.0);
  EXPECT_DOUBLE_EQ(background_iou(c), 72.0 / 96.0);
  EXPECT_DOUBLE_EQ(mean_iou(c), 0.5 * (96.0 / 120.0 + 72.0 / 96.0));
  c = native_confusion(prob.data(), 8, truth, 0.8);  // column 7 (0.75) drops out
  EXPECT_EQ(c.tp, 7 * 12);
  EXPECT_EQ(c.fn, 3 * 12);
  // binary_mask is 0/255 at the requested size.
  const std::vector<float> up = resize_map_bilinear(prob.data(), 8, 8, 16, 12);
  const Image m = binary_mask(up.data(), 16, 12, 0.5);
  EXPECT_EQ(m.w, 16);
  EXPECT_EQ(m.h, 12);
  EXPECT_EQ(m.px[7], 255);
  EXPECT_EQ(m.px[8], 0);
  // Empty rules: nothing anywhere scores 1; an all-polyp image has background IoU 1.
  Confusion empty;
  empty.tn = 50;
  EXPECT_DOUBLE_EQ(dice(empty), 1.0);
  EXPECT_DOUBLE_EQ(mean_iou(empty), 1.0);
  Confusion full;
  full.tp = 50;
  EXPECT_DOUBLE_EQ(background_iou(full), 1.0);
  Confusion half;
  half.tp = 2;
  half.fp = 1;
  half.fn = 1;
  half.tn = 6;
  EXPECT_DOUBLE_EQ(mean_iou(half), 0.5 * (0.5 + 0.75));
}

// ---- listings -------------------------------------------------------------------------------

TEST(Listing, DatasetListingReportsEveryProblemWithoutThrowing) {
  const std::string dir = tmp_path("listing");
  make_dirs(dir + "/images");
  make_dirs(dir + "/masks");
  for (const char* f : {"images/a.png", "images/b.jpg", "images/b.png", "images/c.png", "images/notes.txt",
                        "images/.hidden.png", "masks/a.png", "masks/b.png", "masks/d.bmp"})
    write_file_atomic(dir + "/" + f, "x");
  const DatasetListing L = list_dataset(dir);
  EXPECT_TRUE(L.fatal.empty());
  ASSERT_EQ(L.pairs.size(), 2u);  // a, and b (whichever of b.jpg / b.png came first)
  EXPECT_EQ(L.pairs[0].stem, "a");
  EXPECT_EQ(L.images_without_mask, (std::vector<std::string>{dir + "/images/c.png"}));
  EXPECT_EQ(L.masks_without_image, (std::vector<std::string>{dir + "/masks/d.bmp"}));
  ASSERT_EQ(L.duplicates.size(), 1u);
  EXPECT_TRUE(has(L.duplicates[0], "'b'")) << L.duplicates[0];
  EXPECT_EQ(L.other_files, (std::vector<std::string>{dir + "/images/notes.txt"}));
  const DatasetListing M = list_dataset(dir + "/images");
  ASSERT_FALSE(M.fatal.empty());
  EXPECT_TRUE(has(M.fatal[0], "no images/ subfolder")) << M.fatal[0];
  EXPECT_TRUE(has(list_dataset("/nonexistent/rpp").fatal.at(0), "does not exist"));
  std::vector<std::string> others;
  EXPECT_EQ(list_image_files(dir + "/images", &others).size(), 4u);
  EXPECT_EQ(others.size(), 1u);
  EXPECT_TRUE(has_image_extension("X.JPEG"));
  EXPECT_FALSE(has_image_extension("x.tif"));
}
