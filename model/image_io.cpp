// model/image_io.cpp — stb-based codecs, crash-safe file writes and the two resamplers.
// The only translation unit that compiles stb_image / stb_image_write; both are compiled with
// static linkage so no other library that embeds stb can collide with these symbols.
#include "model/image_io.h"
#include "runtime/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "runtime/error.h"

// GCC's -Wmaybe-uninitialized fires inside stb_image's inlined readers after optimisation, where
// a push/pop around the include does not reach; it stays off for this file only.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wtype-limits"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wcast-qual"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#define STB_IMAGE_STATIC
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_NO_STDIO
#define STBI_MAX_DIMENSIONS 16384
#include <stb_image.h>
#define STB_IMAGE_WRITE_STATIC
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STBI_WRITE_NO_STDIO
#include <stb_image_write.h>
#pragma GCC diagnostic pop

namespace rpp {
namespace {

void check_image(const Image& img, const char* what) {
  if (img.w <= 0 || img.h <= 0 || img.c < 1 || img.c > 4)
    fail(what, ": invalid image ", img.w, "x", img.h, "x", img.c);
  if (img.px.size() != size_t(img.w) * size_t(img.h) * size_t(img.c))
    fail(what, ": image ", img.w, "x", img.h, "x", img.c, " holds ", img.px.size(),
         " bytes, expected ", size_t(img.w) * size_t(img.h) * size_t(img.c));
}

void append_bytes(void* ctx, void* data, int size) {
  auto* out = static_cast<std::vector<uint8_t>*>(ctx);
  const auto* p = static_cast<const uint8_t*>(data);
  out->insert(out->end(), p, p + size);
}

// What the first bytes say the file is: "PNG", "JPEG", "BMP" or nullptr.
const char* sniff_format(const uint8_t* d, size_t n) {
  static const uint8_t png[8] = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A};
  if (n >= 8 && std::memcmp(d, png, 8) == 0) return "PNG";
  if (n >= 3 && d[0] == 0xFF && d[1] == 0xD8 && d[2] == 0xFF) return "JPEG";
  if (n >= 2 && d[0] == 'B' && d[1] == 'M') return "BMP";
  return nullptr;
}


}  // namespace



Image decode_image(const uint8_t* data, size_t size, int channels, const std::string& label) {
  if (channels != 1 && channels != 3)
    fail("cannot decode '", label, "': channels must be 1 or 3, got ", channels);
  if (size == 0) fail("cannot decode '", label, "': the file is empty (0 bytes)");
  const char* fmt = sniff_format(data, size);
  if (!fmt)
    fail("cannot decode '", label, "': not a PNG, JPEG or BMP image (", size,
         " bytes, unrecognised signature)");
  if (size > size_t(INT_MAX)) fail("cannot decode '", label, "': file too large (", size, " bytes)");
  int w = 0, h = 0, file_c = 0;
  stbi_uc* px = stbi_load_from_memory(data, int(size), &w, &h, &file_c, channels);
  if (!px) {
    const char* why = stbi_failure_reason();
    if (why && std::strcmp(why, "too large") == 0)
      fail("cannot decode '", label, "': the ", fmt, " image is larger than the limit of ",
           STBI_MAX_DIMENSIONS, " pixels per side (stb_image: too large)");
    fail("cannot decode '", label, "': corrupt or truncated ", fmt, " data (stb_image: ",
         why ? why : "unknown error", ")");
  }
  Image img;
  img.w = w;
  img.h = h;
  img.c = channels;
  img.px.assign(px, px + size_t(w) * size_t(h) * size_t(channels));
  stbi_image_free(px);
  return img;
}

Image load_image(const std::string& path, int channels) {
  if (is_directory(path)) fail("cannot read '", path, "': it is a folder, not a file");
  const std::string bytes = read_file(path);
  return decode_image(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), channels, path);
}

std::vector<uint8_t> encode_png(const Image& img) {
  check_image(img, "encode_png");
  std::vector<uint8_t> out;
  if (!stbi_write_png_to_func(append_bytes, &out, img.w, img.h, img.c, img.px.data(), img.w * img.c))
    fail("encode_png: stb_image_write failed for a ", img.w, "x", img.h, "x", img.c, " image");
  return out;
}

void save_png(const std::string& path, const Image& img) {
  check_image(img, path.c_str());
  std::vector<uint8_t> bytes = encode_png(img);
  write_file_atomic(path, bytes.data(), bytes.size());
}

std::vector<BilinearTap> bilinear_taps(int in, int out) {
  std::vector<BilinearTap> t(static_cast<size_t>(out));
  const float scale = float(in) / float(out);
  for (int d = 0; d < out; ++d) {
    float s = scale * (float(d) + 0.5f) - 0.5f;
    if (s < 0.f) s = 0.f;
    const int i0 = std::min(int(s), in - 1);
    t[size_t(d)] = {i0, i0 < in - 1 ? i0 + 1 : i0, s - float(i0)};
  }
  return t;
}

Image resize_bilinear(const Image& src, int w, int h) {
  check_image(src, "resize_bilinear");
  if (w <= 0 || h <= 0) fail("resize_bilinear: target size ", w, "x", h, " must be positive");
  if (w == src.w && h == src.h) return src;
  const std::vector<BilinearTap> tx = bilinear_taps(src.w, w), ty = bilinear_taps(src.h, h);
  const int c = src.c;
  Image out;
  out.w = w;
  out.h = h;
  out.c = c;
  out.px.resize(size_t(w) * size_t(h) * size_t(c));
  const size_t stride = size_t(src.w) * size_t(c);
  for (int y = 0; y < h; ++y) {
    const BilinearTap& ry = ty[size_t(y)];
    const uint8_t* r0 = src.px.data() + size_t(ry.i0) * stride;
    const uint8_t* r1 = src.px.data() + size_t(ry.i1) * stride;
    const float ly = ry.l, hy = 1.f - ly;
    uint8_t* o = out.px.data() + size_t(y) * size_t(w) * size_t(c);
    for (int x = 0; x < w; ++x) {
      const BilinearTap& rx = tx[size_t(x)];
      const float lx = rx.l, hx = 1.f - lx;
      const size_t a = size_t(rx.i0) * size_t(c), b = size_t(rx.i1) * size_t(c);
      for (int ch = 0; ch < c; ++ch) {
        float v = hy * (hx * float(r0[a + size_t(ch)]) + lx * float(r0[b + size_t(ch)])) +
                  ly * (hx * float(r1[a + size_t(ch)]) + lx * float(r1[b + size_t(ch)]));
        v = std::floor(v + 0.5f);
        o[size_t(x) * size_t(c) + size_t(ch)] = uint8_t(std::min(255.f, std::max(0.f, v)));
      }
    }
  }
  return out;
}

Image resize_nearest(const Image& src, int w, int h) {
  check_image(src, "resize_nearest");
  if (w <= 0 || h <= 0) fail("resize_nearest: target size ", w, "x", h, " must be positive");
  auto index = [](int in, int out) {
    std::vector<int> idx(static_cast<size_t>(out));
    const float scale = float(in) / float(out);
    for (int d = 0; d < out; ++d) {
      if (out == in)
        idx[size_t(d)] = d;
      else if (out == 2 * in)
        idx[size_t(d)] = d >> 1;
      else
        idx[size_t(d)] = std::min(int(std::floor(float(d) * scale)), in - 1);
    }
    return idx;
  };
  const std::vector<int> ix = index(src.w, w), iy = index(src.h, h);
  const size_t c = size_t(src.c);
  Image out;
  out.w = w;
  out.h = h;
  out.c = src.c;
  out.px.resize(size_t(w) * size_t(h) * c);
  for (int y = 0; y < h; ++y) {
    const uint8_t* row = src.px.data() + size_t(iy[size_t(y)]) * size_t(src.w) * c;
    uint8_t* o = out.px.data() + size_t(y) * size_t(w) * c;
    for (int x = 0; x < w; ++x)
      std::memcpy(o + size_t(x) * c, row + size_t(ix[size_t(x)]) * c, c);
  }
  return out;
}

}  // namespace rpp
