// runtime/safetensors.h — reading and writing the safetensors checkpoint format.
//
// Layout: an 8-byte little-endian u64 N, then N bytes of JSON header (padded with spaces to a
// multiple of 8), then the data buffer:
//   {"__metadata__": {"k": "v", ...},
//    "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...}
// Offsets are relative to the start of the data buffer; tensors tile it exactly, with no gaps.
//
// Files we write carry metadata "format" = "resunetpp-safetensors", "format_version" = "1" and
// "checksum" = "fnv1a64:<16 hex digits>" (FNV-1a 64 over the whole data buffer). Files from
// PyTorch's safetensors (no checksum, any tensor order, any padding) load as well; a checksum is
// verified only when present. Parsing validates everything and reports any problem as an
// rpp::Error that starts with the file's label; malformed input never crashes.
//
// Exercised by tests/test_runtime_safetensors.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "runtime/tensor.h"

namespace rpp {

// A tensor to write; it reads numel(shape) * dtype_size(dtype) bytes from `data`.
struct StTensorView {
  std::string name;
  DType dtype;
  Shape shape;
  const void* data;
};

// A tensor read from a file; `bytes` holds its raw little-endian data.
struct StTensor {
  std::string name;
  DType dtype;
  Shape shape;
  std::vector<uint8_t> bytes;
};

struct StFile {
  std::vector<std::pair<std::string, std::string>> metadata;  // header order
  std::vector<StTensor> tensors;                              // header order
  const StTensor* find(const std::string& name) const;        // nullptr if absent
  std::string metadata_value(const std::string& key) const;   // "" if absent
};

// Header length limit on both read and write.
constexpr uint64_t kSafetensorsMaxHeader = 100ull * 1000 * 1000;

// FNV-1a 64-bit hash, and its "fnv1a64:<16 lowercase hex digits>" spelling.
uint64_t fnv1a64(const void* data, size_t size);
std::string fnv1a64_string(const void* data, size_t size);

// Serialises to memory: tensors in the given order, data contiguous in that order, metadata from
// the caller followed by "format", "format_version" and "checksum" (caller entries with those keys
// are replaced). Throws on duplicate or reserved names, negative dimensions, or null data.
std::vector<uint8_t> serialize_safetensors(const std::vector<StTensorView>& tensors,
                                           std::vector<std::pair<std::string, std::string>> metadata);

// serialize_safetensors + write_file_atomic.
void write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                       std::vector<std::pair<std::string, std::string>> metadata);

// Parses and validates; `label` (a file path or "<memory>") starts every error message.
StFile parse_safetensors(const uint8_t* data, size_t size, const std::string& label);

// read_file + parse_safetensors with the path as label.
StFile read_safetensors(const std::string& path);

}  // namespace rpp
