// runtime/tensor.h — element types, shapes and the host-side owning Tensor.
// Activations are NHWC: a 4-D shape is {N, H, W, C}. Convolution weights are held in HWIO inside
// the engine and in PyTorch's OIHW in checkpoints (see runtime/checkpoint.h).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "runtime/error.h"

namespace rpp {

enum class DType : uint8_t { F32, F64, BF16, F16, I64, U8 };  // U8: max-pool window indices

size_t dtype_size(DType t);
// Safetensors spelling: "F32", "F64", "BF16", "F16", "I64", "U8".
const char* dtype_name(DType t);
// Parses a safetensors dtype string; returns false if unknown, and for "U8" (an activation-only
// dtype that no checkpoint holds).
bool dtype_from_name(const std::string& s, DType* out);

using Shape = std::vector<int64_t>;
int64_t numel(const Shape& s);
std::string shape_str(const Shape& s);  // "[2, 64, 64, 3]"

// A host tensor that owns its bytes (64-byte aligned, zero-initialised).
class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape);
  static Tensor f32(Shape shape) { return Tensor(DType::F32, std::move(shape)); }

  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int64_t numel() const { return rpp::numel(shape_); }
  size_t nbytes() const { return size_t(numel()) * dtype_size(dtype_); }
  bool empty() const { return shape_.empty() && storage_.empty(); }

  void* raw() { return data_; }
  const void* raw() const { return data_; }
  template <class T> T* data() { return static_cast<T*>(data_); }
  template <class T> const T* data() const { return static_cast<const T*>(data_); }
  float* f() { check_f32(); return data<float>(); }
  const float* f() const { check_f32(); return data<float>(); }

  Tensor(const Tensor& o) { *this = o; }
  Tensor& operator=(const Tensor& o);
  Tensor(Tensor&& o) noexcept { *this = std::move(o); }
  Tensor& operator=(Tensor&& o) noexcept;

 private:
  void check_f32() const {
    if (dtype_ != DType::F32) fail("tensor of dtype ", dtype_name(dtype_), " used as F32");
  }
  DType dtype_ = DType::F32;
  Shape shape_;
  std::vector<uint8_t> storage_;
  void* data_ = nullptr;
};

}  // namespace rpp
