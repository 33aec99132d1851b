// model/npy.h — NumPy .npy files of float32 arrays (format version 1.0): a writer whose bytes are
// fixed by the rules below, and a minimal reader for the same kind of file.
//
// Layout written: the magic "\x93NUMPY", version bytes 1 0, a little-endian uint16 header length
// HLEN, then the header: the Python dict literal
//   {'descr': '<f4', 'fortran_order': False, 'shape': (H, W), }
// padded with spaces and ended by '\n' so that 10 + HLEN is a multiple of 64, then the data as
// little-endian IEEE float32 in C (row-major) order. A 1-D shape is written "(N,)", a 0-D one "()".
// This is the NEP 1 / numpy.lib.format layout that np.load reads (numpy.save itself may pad with
// more spaces; np.load does not care). The tests check the header bytes exactly. Exercised by
// tests/test_predict.cpp and `resunetpp predict --logits`.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rpp {

struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // numel(shape) values, C order
};

// The header (magic through the terminating '\n') for a '<f4' C-order array of `shape`.
// rpp::Error for a negative dimension or a header longer than version 1.0 allows (65535 bytes).
std::string npy_header_f32(const std::vector<int64_t>& shape);

// Header + data in memory. `data` holds the product of `shape` values.
std::vector<uint8_t> encode_npy_f32(const float* data, const std::vector<int64_t>& shape);

// encode_npy_f32 + crash-safe write (temp file, fsync, rename); errors name `path`.
void write_npy_f32(const std::string& path, const float* data, const std::vector<int64_t>& shape);

// Parses a version 1.0 or 2.0 .npy holding little-endian float32 ('<f4') in C order. rpp::Error
// starting with `label` for a bad magic, an unsupported version, dtype or Fortran order, a
// malformed header, or a data size that does not match the shape.
NpyArray decode_npy_f32(const uint8_t* bytes, size_t size, const std::string& label);
NpyArray read_npy_f32(const std::string& path);

}  // namespace rpp
