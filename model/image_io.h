// model/image_io.h — 8-bit image decode (PNG, JPEG, BMP), PNG encode, crash-safe PNG save,
// and the two resamplers the data pipeline uses (bilinear for images, nearest for masks).
// Codecs are stb_image / stb_image_write compiled into image_io.cpp only (PNG, JPEG and BMP
// decoders; nothing else). Exercised by tests/test_data.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rpp {

// An 8-bit image, channels interleaved, rows top to bottom: px[(y * w + x) * c + ch].
struct Image {
  int w = 0, h = 0, c = 0;
  std::vector<uint8_t> px;  // (h, w, c)
};

// Reads and decodes a PNG, JPEG or BMP file into `channels` channels (1: grey by luminance,
// 3: RGB; alpha is dropped). Throws rpp::Error naming the file and the reason: missing or
// unreadable file, zero-byte file, not a PNG/JPEG/BMP image, corrupt or truncated data, or
// dimensions above 16384.
Image load_image(const std::string& path, int channels);

// Same from bytes in memory; `label` (usually the file path) names the source in errors.
Image decode_image(const uint8_t* data, size_t size, int channels, const std::string& label);

// Encodes to PNG in memory (c = 1, 2, 3 or 4). There is deliberately no JPEG encoder:
// stb_image_write's shifts negative ints (undefined in C++17), which UBSan rejects.
std::vector<uint8_t> encode_png(const Image& img);

// Writes `img` as a PNG: encoded in memory, written to path + ".tmp", fsync'd, then renamed over
// `path`, so a crash leaves either the old file or the new one, never a torn one.
void save_png(const std::string& path, const Image& img);

// Bilinear resize with half-pixel centres (align_corners=false: PyTorch's bilinear without
// antialias, OpenCV's INTER_LINEAR): src = max(0, (dst + 0.5) * in / out - 0.5), neighbours
// clamped at the border, result rounded to nearest. Same size returns an exact copy.
Image resize_bilinear(const Image& src, int w, int h);

// The taps of that bilinear rule along one axis: output d reads inputs i0 and i1 with weight l on
// i1 (half-pixel centres, clamped at the edges). Shared by every bilinear resize in the project.
struct BilinearTap {
  int i0, i1;
  float l;
};
std::vector<BilinearTap> bilinear_taps(int in, int out);

// Nearest-neighbour resize with PyTorch's 'nearest' rule: src = min(floor(dst * (in / out)), in - 1),
// the scale computed in float as PyTorch does. Never invents values: safe for label masks.
Image resize_nearest(const Image& src, int w, int h);


}  // namespace rpp
