// model/npy.cpp — .npy float32 writer and minimal reader.
#include "model/npy.h"

#include <cstring>
#include <limits>

#include "runtime/error.h"
#include "runtime/fileio.h"

namespace rpp {
namespace {

const char kMagic[6] = {'\x93', 'N', 'U', 'M', 'P', 'Y'};

int64_t checked_numel(const std::vector<int64_t>& shape, const std::string& what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) fail(what, ": negative dimension ", d, " in the shape");
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / 4 / d)
      fail(what, ": the shape holds too many elements");
    n *= d;
  }
  return n;
}

void put_f32_le(uint8_t* dst, float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  dst[0] = uint8_t(u);
  dst[1] = uint8_t(u >> 8);
  dst[2] = uint8_t(u >> 16);
  dst[3] = uint8_t(u >> 24);
}

float get_f32_le(const uint8_t* src) {
  const uint32_t u = uint32_t(src[0]) | uint32_t(src[1]) << 8 | uint32_t(src[2]) << 16 | uint32_t(src[3]) << 24;
  float v;
  std::memcpy(&v, &u, 4);
  return v;
}

// A tiny cursor over the header dict text.
struct HeaderParser {
  const std::string& s;
  const std::string& label;
  size_t i = 0;

  [[noreturn]] void bad(const std::string& why) const {
    fail(label, ": malformed .npy header (", why, " at header byte ", i, "): ", s);
  }
  void ws() {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  }
  bool eat(char c) {
    ws();
    if (i < s.size() && s[i] == c) {
      ++i;
      return true;
    }
    return false;
  }
  void expect(char c) {
    if (!eat(c)) bad(std::string("expected '") + c + "'");
  }
  std::string str() {
    ws();
    if (i >= s.size() || (s[i] != '\'' && s[i] != '"')) bad("expected a string");
    const char q = s[i++];
    const size_t b = i;
    while (i < s.size() && s[i] != q) ++i;
    if (i >= s.size()) bad("unterminated string");
    return s.substr(b, i++ - b);
  }
  std::string word() {
    ws();
    const size_t b = i;
    while (i < s.size() && ((s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= 'a' && s[i] <= 'z'))) ++i;
    return s.substr(b, i - b);
  }
  int64_t integer() {
    ws();
    const size_t b = i;
    int64_t v = 0;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') {
      if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) bad("dimension too large");
      v = v * 10 + (s[i++] - '0');
    }
    if (i == b) bad("expected a non-negative integer");
    if (i < s.size() && s[i] == 'L') ++i;  // Python 2 long suffix
    return v;
  }
};

}  // namespace

std::string npy_header_f32(const std::vector<int64_t>& shape) {
  checked_numel(shape, "npy header");
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (size_t k = 0; k < shape.size(); ++k) {
    if (k) dict += ", ";
    dict += std::to_string(shape[k]);
  }
  if (shape.size() == 1) dict += ",";
  dict += "), }";
  // 6 magic + 2 version + 2 length bytes, then the dict, spaces and '\n' up to a multiple of 64.
  size_t total = 10 + dict.size() + 1;
  const size_t padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict += '\n';
  const size_t hlen = dict.size();
  if (hlen > 65535) fail("npy header: ", hlen, " bytes do not fit format version 1.0 (shape of rank ", shape.size(), ")");
  std::string out(kMagic, 6);
  out += char(1);
  out += char(0);
  out += char(hlen & 0xFF);
  out += char(hlen >> 8);
  return out + dict;
}

std::vector<uint8_t> encode_npy_f32(const float* data, const std::vector<int64_t>& shape) {
  const int64_t n = checked_numel(shape, "encode_npy_f32");
  if (n > 0 && !data) fail("encode_npy_f32: null data for ", n, " values");
  const std::string h = npy_header_f32(shape);
  std::vector<uint8_t> out(h.size() + size_t(n) * 4);
  std::memcpy(out.data(), h.data(), h.size());
  uint8_t* p = out.data() + h.size();
  for (int64_t k = 0; k < n; ++k) put_f32_le(p + size_t(k) * 4, data[k]);
  return out;
}

void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  std::vector<uint8_t> bytes;
  try {
    bytes = encode_npy_f32(data, shape);
  } catch (const Error& e) {
    fail("cannot write '", path, "': ", e.what());
  }
  write_file_atomic(path, bytes.data(), bytes.size());
}

NpyArray decode_npy_f32(const uint8_t* b, size_t size, const std::string& label) {
  if (size < 10 || std::memcmp(b, kMagic, 6) != 0) fail(label, ": not a .npy file (no \\x93NUMPY magic)");
  const int major = b[6], minor = b[7];
  size_t hlen = 0, hstart = 0;
  if (major == 1 && minor == 0) {
    hlen = size_t(b[8]) | size_t(b[9]) << 8;
    hstart = 10;
  } else if (major == 2 && minor == 0) {
    if (size < 12) fail(label, ": truncated .npy header");
    hlen = size_t(b[8]) | size_t(b[9]) << 8 | size_t(b[10]) << 16 | size_t(b[11]) << 24;
    hstart = 12;
  } else {
    fail(label, ": unsupported .npy format version ", major, ".", minor);
  }
  if (hlen > size - hstart) fail(label, ": truncated .npy header (", hlen, " header bytes declared, ", size - hstart, " present)");
  const std::string header(reinterpret_cast<const char*>(b + hstart), hlen);
  HeaderParser p{header, label};
  std::string descr;
  bool have_descr = false, have_order = false, have_shape = false, fortran = false;
  NpyArray a;
  p.expect('{');
  while (!p.eat('}')) {
    const std::string key = p.str();
    p.expect(':');
    if (key == "descr") {
      descr = p.str();
      have_descr = true;
    } else if (key == "fortran_order") {
      const std::string w = p.word();
      if (w != "True" && w != "False") p.bad("fortran_order must be True or False");
      fortran = w == "True";
      have_order = true;
    } else if (key == "shape") {
      p.expect('(');
      while (!p.eat(')')) {
        a.shape.push_back(p.integer());
        if (!p.eat(',')) {
          p.expect(')');
          break;
        }
      }
      have_shape = true;
    } else {
      p.bad("unknown key '" + key + "'");
    }
    if (!p.eat(',')) {
      p.expect('}');
      break;
    }
  }
  if (!have_descr || !have_order || !have_shape) fail(label, ": .npy header lacks descr, fortran_order or shape: ", header);
  if (descr != "<f4") fail(label, ": .npy dtype is '", descr, "', expected '<f4' (little-endian float32)");
  if (fortran) fail(label, ": .npy array is in Fortran order; only C order is supported");
  const int64_t n = checked_numel(a.shape, label);
  const size_t data_bytes = size - hstart - hlen;
  if (uint64_t(n) * 4 != data_bytes)
    fail(label, ": .npy data holds ", data_bytes, " bytes, the shape needs ", uint64_t(n) * 4);
  a.data.resize(size_t(n));
  const uint8_t* d = b + hstart + hlen;
  for (int64_t k = 0; k < n; ++k) a.data[size_t(k)] = get_f32_le(d + size_t(k) * 4);
  return a;
}

NpyArray read_npy_f32(const std::string& path) {
  const std::string bytes = read_file(path);
  return decode_npy_f32(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
}

}  // namespace rpp
