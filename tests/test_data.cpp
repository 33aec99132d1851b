// tests/test_data.cpp — the image and data layer: codecs and their errors, the two resamplers
// against hand-computed values, the synthetic generator, scanning/pairing, splits, split files,
// loading with mask binarisation, batch gathering.
//   ./build/test_data            (fast: well under 10 s, also under ASan+UBSan)
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "model/dataset.h"
#include "model/image_io.h"
#include "model/synth.h"
#include "runtime/error.h"
#include "runtime/rng.h"

namespace fs = std::filesystem;
using namespace rpp;

namespace {

// A fresh folder per test under /tmp, removed afterwards.
class DataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::string("/tmp/rpp_test_data_") + std::to_string(::getpid()) + "_" + info->name();
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string path(const std::string& rel) const { return dir_ + "/" + rel; }
  std::string dir_;
};

void write_raw(const std::string& p, const std::vector<uint8_t>& bytes) {
  fs::create_directories(fs::path(p).parent_path());
  std::ofstream f(p, std::ios::binary);
  f.write(reinterpret_cast<const char*>(bytes.data()), std::streamsize(bytes.size()));
  ASSERT_TRUE(f.good()) << p;
}

// save_png into a folder that may not exist yet.
void save_in(const std::string& p, const Image& img) {
  fs::create_directories(fs::path(p).parent_path());
  save_png(p, img);
}

std::vector<uint8_t> read_raw(const std::string& p) {
  std::ifstream f(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

Image make_image(int w, int h, int c, std::vector<uint8_t> px) {
  Image img;
  img.w = w;
  img.h = h;
  img.c = c;
  img.px = std::move(px);
  return img;
}

Image random_image(int w, int h, int c, uint64_t seed) {
  Rng rng(seed);
  std::vector<uint8_t> px(size_t(w) * size_t(h) * size_t(c));
  for (auto& v : px) v = uint8_t(rng.next_u32() & 0xFF);
  return make_image(w, h, c, std::move(px));
}

// Expects `fn` to throw rpp::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected rpp::Error";
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

}  // namespace

// ---------------------------------------------------------------- codecs

TEST_F(DataTest, PngRoundTripIsBitExactRgbAndGrey) {
  const Image rgb = random_image(13, 7, 3, 1);
  const Image grey = random_image(9, 5, 1, 2);
  save_png(path("rgb.png"), rgb);
  save_png(path("grey.png"), grey);
  EXPECT_FALSE(fs::exists(path("rgb.png.tmp")));
  const Image rgb2 = load_image(path("rgb.png"), 3);
  const Image grey2 = load_image(path("grey.png"), 1);
  EXPECT_EQ(rgb2.w, 13);
  EXPECT_EQ(rgb2.h, 7);
  EXPECT_EQ(rgb2.c, 3);
  EXPECT_EQ(rgb2.px, rgb.px);
  EXPECT_EQ(grey2.w, 9);
  EXPECT_EQ(grey2.h, 5);
  EXPECT_EQ(grey2.c, 1);
  EXPECT_EQ(grey2.px, grey.px);
  // Overwriting an existing file replaces it.
  save_png(path("grey.png"), rgb);
  EXPECT_EQ(load_image(path("grey.png"), 3).px, rgb.px);
}

TEST_F(DataTest, GreyPngLoadedAsRgbReplicatesChannels) {
  const Image grey = make_image(2, 1, 1, {10, 200});
  save_png(path("g.png"), grey);
  const Image rgb = load_image(path("g.png"), 3);
  EXPECT_EQ(rgb.px, (std::vector<uint8_t>{10, 10, 10, 200, 200, 200}));
}

// A 16x12 baseline JPEG (quality 90, no chroma subsampling) of the gradient
// R = 40 + 10x, G = 30 + 12y, B = 120, made once with stbi_write_jpg. Embedded because the
// encoder itself is not UBSan-clean (it left-shifts negative ints).
const uint8_t kGradientJpeg[] = {
    0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, 0x4A, 0x46, 0x49, 0x46, 0x00, 0x01, 0x01, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x00, 0xFF, 0xDB, 0x00, 0x84, 0x00, 0x03, 0x02, 0x02, 0x03, 0x02, 0x02, 0x03,
    0x03, 0x03, 0x03, 0x04, 0x03, 0x03, 0x04, 0x05, 0x08, 0x05, 0x05, 0x04, 0x04, 0x05, 0x0A, 0x07,
    0x07, 0x06, 0x08, 0x0C, 0x0A, 0x0C, 0x0C, 0x0B, 0x0A, 0x0B, 0x0B, 0x0D, 0x0E, 0x12, 0x10, 0x0D,
    0x0E, 0x11, 0x0E, 0x0B, 0x0B, 0x10, 0x16, 0x10, 0x11, 0x13, 0x14, 0x15, 0x15, 0x15, 0x0C, 0x0F,
    0x17, 0x18, 0x16, 0x14, 0x18, 0x12, 0x14, 0x15, 0x14, 0x01, 0x03, 0x04, 0x04, 0x05, 0x04, 0x05,
    0x09, 0x05, 0x05, 0x09, 0x14, 0x0D, 0x0B, 0x0D, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14,
    0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0x14, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00,
    0x0C, 0x00, 0x10, 0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01, 0xFF, 0xC4, 0x01,
    0xA2, 0x00, 0x00, 0x01, 0x05, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x10, 0x00,
    0x02, 0x01, 0x03, 0x03, 0x02, 0x04, 0x03, 0x05, 0x05, 0x04, 0x04, 0x00, 0x00, 0x01, 0x7D, 0x01,
    0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22,
    0x71, 0x14, 0x32, 0x81, 0x91, 0xA1, 0x08, 0x23, 0x42, 0xB1, 0xC1, 0x15, 0x52, 0xD1, 0xF0, 0x24,
    0x33, 0x62, 0x72, 0x82, 0x09, 0x0A, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x25, 0x26, 0x27, 0x28, 0x29,
    0x2A, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4A,
    0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6A,
    0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A,
    0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6, 0xA7, 0xA8,
    0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6,
    0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE1, 0xE2, 0xE3,
    0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF1, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9,
    0xFA, 0x01, 0x00, 0x03, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x11, 0x00,
    0x02, 0x01, 0x02, 0x04, 0x04, 0x03, 0x04, 0x07, 0x05, 0x04, 0x04, 0x00, 0x01, 0x02, 0x77, 0x00,
    0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13,
    0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xA1, 0xB1, 0xC1, 0x09, 0x23, 0x33, 0x52, 0xF0, 0x15,
    0x62, 0x72, 0xD1, 0x0A, 0x16, 0x24, 0x34, 0xE1, 0x25, 0xF1, 0x17, 0x18, 0x19, 0x1A, 0x26, 0x27,
    0x28, 0x29, 0x2A, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3A, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49,
    0x4A, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69,
    0x6A, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7A, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88,
    0x89, 0x8A, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9A, 0xA2, 0xA3, 0xA4, 0xA5, 0xA6,
    0xA7, 0xA8, 0xA9, 0xAA, 0xB2, 0xB3, 0xB4, 0xB5, 0xB6, 0xB7, 0xB8, 0xB9, 0xBA, 0xC2, 0xC3, 0xC4,
    0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9, 0xDA, 0xE2,
    0xE3, 0xE4, 0xE5, 0xE6, 0xE7, 0xE8, 0xE9, 0xEA, 0xF2, 0xF3, 0xF4, 0xF5, 0xF6, 0xF7, 0xF8, 0xF9,
    0xFA, 0xFF, 0xDA, 0x00, 0x0C, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3F, 0x00, 0xF9,
    0xEF, 0x44, 0xF8, 0x7F, 0xF7, 0x7F, 0x77, 0xFA, 0x57, 0x7F, 0xA2, 0x7C, 0x3F, 0xFB, 0xBF, 0xBB,
    0xFD, 0x2B, 0xBF, 0xD1, 0x34, 0x5B, 0x5F, 0x97, 0xF7, 0x75, 0xE8, 0x1A, 0x26, 0x8B, 0x6B, 0xF2,
    0xFE, 0xEE, 0xBA, 0x71, 0xF9, 0xF5, 0x4D, 0x4A, 0xE1, 0x1E, 0x25, 0xAB, 0xEE, 0xEE, 0x7F, 0xFF,
    0xD9};

TEST_F(DataTest, JpegDecodesCloseToTheSource) {
  write_raw(path("a.jpg"), std::vector<uint8_t>(std::begin(kGradientJpeg), std::end(kGradientJpeg)));
  const Image dec = load_image(path("a.jpg"), 3);
  ASSERT_EQ(dec.w, 16);
  ASSERT_EQ(dec.h, 12);
  ASSERT_EQ(dec.c, 3);
  double err = 0;
  int worst = 0;
  for (int y = 0; y < 12; ++y)
    for (int x = 0; x < 16; ++x) {
      const int want[3] = {40 + 10 * x, 30 + 12 * y, 120};
      for (int c = 0; c < 3; ++c) {
        const int e = std::abs(int(dec.px[size_t(y * 16 + x) * 3 + size_t(c)]) - want[c]);
        err += e;
        worst = std::max(worst, e);
      }
    }
  EXPECT_LT(err / (16 * 12 * 3), 3.0);
  EXPECT_LE(worst, 16);
  const Image g = load_image(path("a.jpg"), 1);
  ASSERT_EQ(g.c, 1);
  ASSERT_EQ(g.px.size(), size_t(16 * 12));
  // Grey from a YCbCr JPEG is its luma plane: BT.601 luminance of the decoded colour, +-rounding.
  for (size_t i = 0; i < g.px.size(); ++i) {
    const uint8_t* p = &dec.px[i * 3];
    EXPECT_NEAR(int(g.px[i]), (77 * p[0] + 150 * p[1] + 29 * p[2]) >> 8, 2) << i;
  }
  // A truncated JPEG must not crash (stb may pad it or reject it; either way no UB).
  try {
    decode_image(kGradientJpeg, sizeof(kGradientJpeg) / 3, 3, "cut.jpg");
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cut.jpg"), std::string::npos);
  }
}

TEST_F(DataTest, BmpDecodes) {
  // 2x2, 24-bit, bottom-up rows of BGR padded to 4 bytes.
  std::vector<uint8_t> b = {'B', 'M', 70, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0,  // file header
                            40, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 1, 0, 24, 0, 0, 0, 0, 0,
                            16, 0, 0, 0, 0x13, 0x0B, 0, 0, 0x13, 0x0B, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
  // bottom row (y=1): (1,2,3) (4,5,6); top row (y=0): (7,8,9) (10,11,12), as RGB
  const std::vector<uint8_t> rows = {3, 2, 1, 6, 5, 4, 0, 0, 9, 8, 7, 12, 11, 10, 0, 0};
  b.insert(b.end(), rows.begin(), rows.end());
  write_raw(path("x.bmp"), b);
  const Image img = load_image(path("x.bmp"), 3);
  ASSERT_EQ(img.w, 2);
  ASSERT_EQ(img.h, 2);
  EXPECT_EQ(img.px, (std::vector<uint8_t>{7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5, 6}));
}

TEST_F(DataTest, DecodeErrorsNameTheFileAndTheReason) {
  expect_error([&] { load_image(path("missing.png"), 3); }, {path("missing.png"), "No such file"});
  write_raw(path("empty.png"), {});
  expect_error([&] { load_image(path("empty.png"), 3); }, {path("empty.png"), "empty"});
  const std::string text = "hello, this is not an image\n";
  write_raw(path("notes.jpg"), std::vector<uint8_t>(text.begin(), text.end()));
  expect_error([&] { load_image(path("notes.jpg"), 3); },
               {path("notes.jpg"), "not a PNG, JPEG or BMP image"});
  const std::vector<uint8_t> png = encode_png(random_image(64, 64, 3, 3));
  write_raw(path("half.png"), std::vector<uint8_t>(png.begin(), png.begin() + long(png.size() / 2)));
  expect_error([&] { load_image(path("half.png"), 3); },
               {path("half.png"), "corrupt or truncated PNG", "stb_image"});
  write_raw(path("huge.png"), encode_png(make_image(16385, 1, 1, std::vector<uint8_t>(16385, 9))));
  expect_error([&] { load_image(path("huge.png"), 1); }, {path("huge.png"), "larger than", "16384"});
  fs::create_directories(path("folder.png"));
  expect_error([&] { load_image(path("folder.png"), 3); }, {path("folder.png"), "folder"});
  expect_error([&] { decode_image(png.data(), png.size(), 2, "label-x"); }, {"label-x", "channels"});
}

TEST_F(DataTest, SavePngErrorsNameThePath) {
  expect_error([&] { save_png(path("no/such/dir/a.png"), random_image(2, 2, 3, 4)); },
               {path("no/such/dir/a.png")});
  Image bad = random_image(4, 4, 3, 5);
  bad.px.pop_back();
  expect_error([&] { save_png(path("bad.png"), bad); }, {path("bad.png"), "bytes"});
}

// ---------------------------------------------------------------- resampling

TEST(Resize, BilinearUpscaleFollowsTheHalfPixelRule) {
  // 2 -> 4 per axis: taps (0,-), (0,1 @0.25), (0,1 @0.75), (1,-).
  const Image src = make_image(2, 2, 1, {0, 200, 100, 40});
  const Image out = resize_bilinear(src, 4, 4);
  ASSERT_EQ(out.w, 4);
  ASSERT_EQ(out.h, 4);
  ASSERT_EQ(out.c, 1);
  const std::vector<uint8_t> expect = {0,   50,  150, 200,   // row 0 = source row 0
                                       25,  59,  126, 160,   // 0.75 * row0 + 0.25 * row1
                                       75,  76,  79,  80,    // 0.25 * row0 + 0.75 * row1
                                       100, 85,  55,  40};   // row 3 = source row 1
  EXPECT_EQ(out.px, expect);
}

TEST(Resize, BilinearHalvingAveragesPairs) {
  // 4 -> 2: source positions 0.5 and 2.5, i.e. the mean of each 2x2 block.
  const Image src = make_image(4, 2, 1, {10, 20, 100, 0,  //
                                         30, 40, 50, 50});
  const Image out = resize_bilinear(src, 2, 1);
  EXPECT_EQ(out.px, (std::vector<uint8_t>{25, 50}));
}

TEST(Resize, BilinearKeepsConstantsAndCopiesAtSameSize) {
  const Image c = make_image(5, 3, 3, std::vector<uint8_t>(45, 77));
  for (auto [w, h] : {std::pair{17, 11}, std::pair{2, 2}, std::pair{1, 1}, std::pair{5, 9}}) {
    const Image out = resize_bilinear(c, w, h);
    EXPECT_EQ(out.w, w);
    EXPECT_EQ(out.h, h);
    EXPECT_EQ(out.c, 3);
    EXPECT_EQ(out.px, std::vector<uint8_t>(size_t(w * h * 3), 77));
  }
  const Image r = random_image(7, 5, 3, 9);
  EXPECT_EQ(resize_bilinear(r, 7, 5).px, r.px);
  EXPECT_THROW(resize_bilinear(r, 0, 5), Error);
}

TEST(Resize, NearestUsesFloorOfScaledIndex) {
  const Image row = make_image(3, 1, 1, {10, 20, 30});
  // 3 -> 5: scale 0.6: 0, 0.6, 1.2, 1.8, 2.4 -> 0 0 1 1 2
  EXPECT_EQ(resize_nearest(row, 5, 1).px, (std::vector<uint8_t>{10, 10, 20, 20, 30}));
  // 3 -> 6 (exact 2x): 0 0 1 1 2 2
  EXPECT_EQ(resize_nearest(row, 6, 1).px, (std::vector<uint8_t>{10, 10, 20, 20, 30, 30}));
  // 3 -> 2: scale 1.5: 0, 1.5 -> 0 1
  EXPECT_EQ(resize_nearest(row, 2, 1).px, (std::vector<uint8_t>{10, 20}));
  const Image col = make_image(1, 4, 1, {1, 2, 3, 4});
  // 4 -> 3: scale 4/3: 0, 1.33, 2.67 -> 0 1 2
  EXPECT_EQ(resize_nearest(col, 1, 3).px, (std::vector<uint8_t>{1, 2, 3}));
  const Image rgb = make_image(2, 1, 3, {1, 2, 3, 4, 5, 6});
  EXPECT_EQ(resize_nearest(rgb, 4, 2).px,
            (std::vector<uint8_t>{1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6, 1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6}));
  // Never invents values: a 0/255 mask stays 0/255 at any size.
  Image mask = random_image(37, 29, 1, 11);
  for (auto& v : mask.px) v = v >= 128 ? 255 : 0;
  for (uint8_t v : resize_nearest(mask, 64, 16).px) EXPECT_TRUE(v == 0 || v == 255);
}

// ---------------------------------------------------------------- synthetic data

TEST(Synth, DeterministicPerSeedAndIndex) {
  Image m1, m2, m3;
  const Image a = synth_frame(64, 7, 0, &m1);
  const Image b = synth_frame(64, 7, 0, &m2);
  EXPECT_EQ(a.px, b.px);
  EXPECT_EQ(m1.px, m2.px);
  EXPECT_NE(synth_frame(64, 8, 0, &m3).px, a.px);
  EXPECT_NE(synth_frame(64, 7, 1, &m3).px, a.px);
  Rng r1(42), r2(42);
  EXPECT_EQ(synth_image(40, r1, nullptr).px, synth_image(40, r2, nullptr).px);
}

TEST(Synth, ShapesMaskValuesAndPolypFraction) {
  double total = 0;
  const int n = 40, S = 64;
  for (int i = 0; i < n; ++i) {
    Image mask;
    const Image img = synth_frame(S, 123, i, &mask);
    ASSERT_EQ(img.w, S);
    ASSERT_EQ(img.h, S);
    ASSERT_EQ(img.c, 3);
    ASSERT_EQ(img.px.size(), size_t(S * S * 3));
    ASSERT_EQ(mask.w, S);
    ASSERT_EQ(mask.h, S);
    ASSERT_EQ(mask.c, 1);
    size_t on = 0;
    for (uint8_t v : mask.px) {
      ASSERT_TRUE(v == 0 || v == 255);
      on += v == 255;
    }
    const double frac = double(on) / double(S * S);
    EXPECT_GT(frac, 0.005) << "frame " << i;
    EXPECT_LT(frac, 0.8) << "frame " << i;
    total += frac;
  }
  const double mean = total / n;
  EXPECT_GT(mean, 0.02);
  EXPECT_LT(mean, 0.6);
}

TEST(Synth, NoSingleChannelThresholdSegmentsIt) {
  // Pool 30 frames; for R, G, B and the sum, the best global threshold (either direction) must
  // stay well below a usable Dice: the polyp is not just a colour.
  const int n = 30, S = 64;
  std::vector<std::vector<double>> pos(4, std::vector<double>(766, 0)), neg = pos;
  for (int i = 0; i < n; ++i) {
    Image mask;
    const Image img = synth_frame(S, 99, i, &mask);
    for (int p = 0; p < S * S; ++p) {
      const uint8_t* px = &img.px[size_t(p) * 3];
      const int v[4] = {px[0], px[1], px[2], px[0] + px[1] + px[2]};
      for (int k = 0; k < 4; ++k) (mask.px[size_t(p)] ? pos : neg)[size_t(k)][size_t(v[k])] += 1;
    }
  }
  double best = 0;
  for (int k = 0; k < 4; ++k) {
    double P = 0;
    for (double c : pos[size_t(k)]) P += c;
    double tp_hi = P, fp_hi = 0;
    for (double c : neg[size_t(k)]) fp_hi += c;
    // predict polyp for value >= t (hi) or value < t (lo)
    for (int t = 0; t < 766; ++t) {
      const double dice_hi = 2 * tp_hi / (2 * tp_hi + fp_hi + (P - tp_hi));
      const double tp_lo = P - tp_hi;
      double N = 0;
      for (double c : neg[size_t(k)]) N += c;
      const double fp_lo = N - fp_hi;
      const double dice_lo = 2 * tp_lo / (2 * tp_lo + fp_lo + (P - tp_lo) + 1e-12);
      best = std::max({best, dice_hi, dice_lo});
      tp_hi -= pos[size_t(k)][size_t(t)];
      fp_hi -= neg[size_t(k)][size_t(t)];
    }
  }
  EXPECT_LT(best, 0.6) << "a single colour threshold reaches Dice " << best;
}

TEST_F(DataTest, GeneratedDatasetIsKvasirLayoutAndReproducible) {
  generate_synthetic_dataset(path("a"), 5, 48, 2024);
  generate_synthetic_dataset(path("b/nested"), 5, 48, 2024);
  for (int i = 0; i < 5; ++i) {
    char name[32];
    std::snprintf(name, sizeof name, "synth_%05d.png", i);
    for (const char* sub : {"images/", "masks/"}) {
      const auto x = read_raw(path(std::string("a/") + sub + name));
      ASSERT_FALSE(x.empty()) << name;
      EXPECT_EQ(x, read_raw(path(std::string("b/nested/") + sub + name))) << sub << name;
    }
    Image mem_mask;
    const Image mem = synth_frame(48, 2024, i, &mem_mask);
    const Image img = load_image(path(std::string("a/images/") + name), 3);
    const Image mask = load_image(path(std::string("a/masks/") + name), 1);
    EXPECT_EQ(img.px, mem.px);
    EXPECT_EQ(mask.px, mem_mask.px);
  }
  EXPECT_FALSE(fs::exists(path("a/images/synth_00005.png")));
  const auto samples = scan_dataset(path("a"));
  ASSERT_EQ(samples.size(), 5u);
  EXPECT_EQ(samples[0].stem, "synth_00000");
  // A different seed gives different frames.
  generate_synthetic_dataset(path("c"), 1, 48, 2025);
  EXPECT_NE(read_raw(path("c/images/synth_00000.png")), read_raw(path("a/images/synth_00000.png")));
  // A file where a folder must go is a clear error.
  write_raw(path("blocked"), {1});
  expect_error([&] { generate_synthetic_dataset(path("blocked"), 1, 16, 1); }, {path("blocked")});
}

// ---------------------------------------------------------------- scanning

TEST_F(DataTest, ScanPairsByStemAcrossExtensions) {
  write_raw(path("d/images/b.jpg"), {1});
  write_raw(path("d/images/A.PNG"), {1});
  write_raw(path("d/images/c.bmp"), {1});
  write_raw(path("d/images/notes.txt"), {1});
  write_raw(path("d/images/.hidden.png"), {1});
  write_raw(path("d/masks/c.Jpeg"), {1});
  write_raw(path("d/masks/A.png"), {1});
  write_raw(path("d/masks/b.png"), {1});
  const auto s = scan_dataset(path("d"));
  ASSERT_EQ(s.size(), 3u);
  EXPECT_EQ(s[0].stem, "A");
  EXPECT_EQ(s[1].stem, "b");
  EXPECT_EQ(s[2].stem, "c");
  EXPECT_EQ(s[0].image_path, path("d/images/A.PNG"));
  EXPECT_EQ(s[0].mask_path, path("d/masks/A.png"));
  EXPECT_EQ(s[1].image_path, path("d/images/b.jpg"));
  EXPECT_EQ(s[1].mask_path, path("d/masks/b.png"));
  EXPECT_EQ(s[2].image_path, path("d/images/c.bmp"));
  EXPECT_EQ(s[2].mask_path, path("d/masks/c.Jpeg"));
}

TEST_F(DataTest, ScanErrorsNameFolderAndStems) {
  expect_error([&] { scan_dataset(path("nope")); }, {path("nope"), "does not exist"});
  write_raw(path("file"), {1});
  expect_error([&] { scan_dataset(path("file")); }, {path("file"), "not a folder"});
  fs::create_directories(path("noimg/masks"));
  expect_error([&] { scan_dataset(path("noimg")); }, {path("noimg"), "images/"});
  fs::create_directories(path("nomask/images"));
  expect_error([&] { scan_dataset(path("nomask")); }, {path("nomask"), "masks/"});
  fs::create_directories(path("empty/images"));
  fs::create_directories(path("empty/masks"));
  write_raw(path("empty/images/readme.txt"), {1});
  expect_error([&] { scan_dataset(path("empty")); }, {path("empty"), "no images"});

  for (const char* s : {"a", "b", "c"}) write_raw(path(std::string("u/images/") + s + ".png"), {1});
  write_raw(path("u/masks/a.png"), {1});
  expect_error([&] { scan_dataset(path("u")); }, {path("u"), "2 image(s) without a mask", "b, c"});

  write_raw(path("v/images/a.png"), {1});
  write_raw(path("v/masks/a.png"), {1});
  write_raw(path("v/masks/zzz.jpg"), {1});
  expect_error([&] { scan_dataset(path("v")); }, {path("v"), "1 mask(s) without an image", "zzz"});

  for (int i = 0; i < 9; ++i) write_raw(path("w/images/im" + std::to_string(i) + ".png"), {1});
  fs::create_directories(path("w/masks"));
  expect_error([&] { scan_dataset(path("w")); }, {"9 image(s)", "im0", "(4 more)"});

  write_raw(path("x/images/a.png"), {1});
  write_raw(path("x/images/a.jpg"), {1});
  write_raw(path("x/masks/a.png"), {1});
  expect_error([&] { scan_dataset(path("x")); }, {path("x"), "'a'", "a.jpg", "a.png"});
}

// ---------------------------------------------------------------- splits

namespace {
std::vector<Sample> fake_samples(int n) {
  std::vector<Sample> s;
  for (int i = 0; i < n; ++i) {
    char stem[16];
    std::snprintf(stem, sizeof stem, "s%03d", i);
    s.push_back({stem, std::string("/img/") + stem + ".png", std::string("/msk/") + stem + ".png"});
  }
  return s;
}
std::vector<std::string> stems_of(const std::vector<Sample>& v) {
  std::vector<std::string> out;
  for (const auto& s : v) out.push_back(s.stem);
  return out;
}
}  // namespace

TEST(Split, DeterministicDisjointAndCovering) {
  const auto all = fake_samples(100);
  std::vector<Sample> tr, va, te, tr2, va2, te2, tr3;
  split_seeded(all, 5, {}, &tr, &va, &te);
  EXPECT_EQ(tr.size(), 80u);
  EXPECT_EQ(va.size(), 10u);
  EXPECT_EQ(te.size(), 10u);
  std::set<std::string> seen;
  for (const auto* v : {&tr, &va, &te})
    for (const auto& s : *v) EXPECT_TRUE(seen.insert(s.stem).second) << s.stem << " twice";
  EXPECT_EQ(seen.size(), 100u);
  EXPECT_TRUE(std::is_sorted(tr.begin(), tr.end(),
                             [](const Sample& a, const Sample& b) { return a.stem < b.stem; }));
  // Paths travel with their stems.
  for (const auto& s : va) EXPECT_EQ(s.image_path, "/img/" + s.stem + ".png");

  auto rev = all;
  std::reverse(rev.begin(), rev.end());
  split_seeded(rev, 5, {}, &tr2, &va2, &te2);
  EXPECT_EQ(stems_of(tr2), stems_of(tr));
  EXPECT_EQ(stems_of(va2), stems_of(va));
  EXPECT_EQ(stems_of(te2), stems_of(te));
  split_seeded(all, 6, {}, &tr3, nullptr, nullptr);
  EXPECT_NE(stems_of(tr3), stems_of(tr));
}

TEST(Split, SmallSetsAndZeroFractions) {
  std::vector<Sample> tr, va, te;
  split_seeded(fake_samples(3), 1, {}, &tr, &va, &te);
  EXPECT_EQ(tr.size(), 1u);
  EXPECT_EQ(va.size(), 1u);
  EXPECT_EQ(te.size(), 1u);
  split_seeded(fake_samples(10), 1, {0.7, 0.0, 0.3}, &tr, &va, &te);
  EXPECT_EQ(tr.size(), 7u);
  EXPECT_EQ(va.size(), 0u);
  EXPECT_EQ(te.size(), 3u);
  split_seeded(fake_samples(2), 1, {}, &tr, &va, &te);
  EXPECT_EQ(tr.size() + va.size() + te.size(), 2u);
  split_seeded(fake_samples(0), 1, {}, &tr, &va, &te);
  EXPECT_TRUE(tr.empty() && va.empty() && te.empty());
  EXPECT_THROW(split_seeded(fake_samples(5), 1, {0, 0, 0}, &tr, &va, &te), Error);
  EXPECT_THROW(split_seeded(fake_samples(5), 1, {-1, 1, 1}, &tr, &va, &te), Error);
}

TEST_F(DataTest, SplitFilesReadWriteAndErrors) {
  const auto all = fake_samples(5);
  write_raw(path("ok.txt"), {' ', ' ', 's', '0', '0', '3', ' ', '\n', '\n', 's', '0', '0', '1', '.',
                             'p', 'n', 'g', '\r', '\n', '\t', 's', '0', '0', '0'});
  EXPECT_EQ(stems_of(read_split_file(path("ok.txt"), all)),
            (std::vector<std::string>{"s003", "s001", "s000"}));
  const std::string bad = "s000\ns001\n\nnot_there\n";
  write_raw(path("bad.txt"), std::vector<uint8_t>(bad.begin(), bad.end()));
  expect_error([&] { read_split_file(path("bad.txt"), all); },
               {path("bad.txt") + ":4:", "not_there"});
  const std::string dup = "s000\ns002\ns000\n";
  write_raw(path("dup.txt"), std::vector<uint8_t>(dup.begin(), dup.end()));
  expect_error([&] { read_split_file(path("dup.txt"), all); },
               {path("dup.txt") + ":3:", "twice", "line 1"});
  expect_error([&] { read_split_file(path("none.txt"), all); }, {path("none.txt")});
  std::vector<Sample> tr, va, te;
  split_seeded(all, 3, {}, &tr, &va, &te);
  write_split_file(path("train.txt"), tr);
  EXPECT_EQ(stems_of(read_split_file(path("train.txt"), all)), stems_of(tr));
}

// ---------------------------------------------------------------- loading

TEST_F(DataTest, LoadBinarisesMasksAt128AndScalesImages) {
  const Image img = random_image(4, 4, 3, 21);
  const Image mask = make_image(4, 4, 1, {0, 127, 128, 255, 127, 128, 1, 254,  //
                                          0, 0, 0, 0, 200, 100, 129, 126});
  save_in(path("d/images/one.png"), img);
  save_in(path("d/masks/one.png"), mask);
  // a second, non-square pair that is resized
  save_in(path("d/images/two.png"), random_image(8, 6, 3, 22));
  Image m2 = random_image(8, 6, 1, 23);
  save_in(path("d/masks/two.png"), m2);

  const auto samples = scan_dataset(path("d"));
  const LoadedDataset ds = load_dataset(samples, 4);
  ASSERT_EQ(ds.n, 2);
  EXPECT_EQ(ds.size, 4);
  ASSERT_EQ(ds.images.size(), size_t(2 * 4 * 4 * 3));
  ASSERT_EQ(ds.masks.size(), size_t(2 * 4 * 4));
  EXPECT_EQ(ds.stems, (std::vector<std::string>{"one", "two"}));
  EXPECT_EQ(ds.orig_w, (std::vector<int>{4, 8}));
  EXPECT_EQ(ds.orig_h, (std::vector<int>{4, 6}));
  const std::vector<float> expect_mask = {0, 0, 1, 1, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 1, 0};
  for (int i = 0; i < 16; ++i) EXPECT_EQ(ds.masks[size_t(i)], expect_mask[size_t(i)]) << i;
  for (int i = 0; i < 48; ++i) EXPECT_EQ(ds.images[size_t(i)], float(img.px[size_t(i)]) / 255.f);
  // The resized pair: nearest-resized source mask, binarised.
  const Image m2r = resize_nearest(m2, 4, 4);
  for (int i = 0; i < 16; ++i)
    EXPECT_EQ(ds.masks[size_t(16 + i)], m2r.px[size_t(i)] >= 128 ? 1.f : 0.f) << i;
  const Image i2r = resize_bilinear(load_image(path("d/images/two.png"), 3), 4, 4);
  for (int i = 0; i < 48; ++i) EXPECT_EQ(ds.images[size_t(48 + i)], float(i2r.px[size_t(i)]) / 255.f);

  std::vector<float> bi(2 * 48), bm(2 * 16);
  const int idx[2] = {1, 0};
  gather_batch(ds, idx, 2, bi.data(), bm.data());
  EXPECT_TRUE(std::equal(bi.begin(), bi.begin() + 48, ds.images.begin() + 48));
  EXPECT_TRUE(std::equal(bi.begin() + 48, bi.end(), ds.images.begin()));
  EXPECT_TRUE(std::equal(bm.begin(), bm.begin() + 16, ds.masks.begin() + 16));
  EXPECT_TRUE(std::equal(bm.begin() + 16, bm.end(), ds.masks.begin()));
  gather_batch(ds, idx, 1, bi.data(), nullptr);
  const int out_of_range[1] = {2};
  expect_error([&] { gather_batch(ds, out_of_range, 1, bi.data(), bm.data()); }, {"index 2"});
}

TEST_F(DataTest, LoadErrorsNameTheFiles) {
  save_in(path("d/images/a.png"), random_image(4, 4, 3, 1));
  save_in(path("d/masks/a.png"), random_image(5, 4, 1, 2));
  save_in(path("d/images/b.png"), random_image(4, 4, 3, 1));
  save_in(path("d/masks/b.png"), random_image(4, 3, 1, 2));
  const auto samples = scan_dataset(path("d"));
  // The first failing sample in input order is reported.
  expect_error([&] { load_dataset(samples, 8); },
               {path("d/images/a.png"), path("d/masks/a.png"), "4x4", "5x4"});
  write_raw(path("e/images/a.png"), {});
  write_raw(path("e/masks/a.png"), {});
  expect_error([&] { load_dataset(scan_dataset(path("e")), 8); }, {path("e/images/a.png"), "empty"});
}

TEST_F(DataTest, LoadUsesManySamplesInOrder) {
  // Enough samples that the thread pool splits the work; results land at their own index.
  generate_synthetic_dataset(path("s"), 12, 24, 77);
  const auto samples = scan_dataset(path("s"));
  const LoadedDataset ds = load_dataset(samples, 16);
  ASSERT_EQ(ds.n, 12);
  for (int i = 0; i < 12; ++i) {
    EXPECT_EQ(ds.stems[size_t(i)], samples[size_t(i)].stem);
    Image mask;
    const Image img = resize_bilinear(synth_frame(24, 77, i, &mask), 16, 16);
    const Image mr = resize_nearest(mask, 16, 16);
    for (size_t k = 0; k < img.px.size(); ++k)
      ASSERT_EQ(ds.images[size_t(i) * 768 + k], float(img.px[k]) / 255.f) << i;
    for (size_t k = 0; k < mr.px.size(); ++k)
      ASSERT_EQ(ds.masks[size_t(i) * 256 + k], mr.px[k] ? 1.f : 0.f) << i;
  }
}

TEST(DatasetTiff, TiffGivesAConversionHint) {
  const std::string d = "/tmp/rpp_test_tiff_" + std::to_string(::getpid());
  std::system(("rm -rf " + d + " && mkdir -p " + d + "/images " + d + "/masks && touch " + d + "/images/1.tif " +
               d + "/masks/1.tif").c_str());
  try {
    rpp::scan_dataset(d);
    FAIL() << "expected an error";
  } catch (const rpp::Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("1.tif"), std::string::npos) << m;
    EXPECT_NE(m.find("TIFF"), std::string::npos) << m;
    EXPECT_NE(m.find("mogrify"), std::string::npos) << m;
  }
  std::system(("rm -rf " + d).c_str());
}
