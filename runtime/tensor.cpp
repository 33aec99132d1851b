// runtime/tensor.cpp — dtype tables and the owning host Tensor.
#include "runtime/tensor.h"

#include <sstream>

namespace rpp {

size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: return 4;
    case DType::F64: return 8;
    case DType::BF16: return 2;
    case DType::F16: return 2;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::F64: return "F64";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

bool dtype_from_name(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F32", DType::F32}, {"F64", DType::F64}, {"BF16", DType::BF16},
      {"F16", DType::F16}, {"I64", DType::I64}};  // U8 is never stored in a file
  for (auto& [name, t] : table)
    if (s == name) {
      *out = t;
      return true;
    }
  return false;
}

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << ']';
  return os.str();
}

static void* align64(std::vector<uint8_t>& v) {
  auto p = reinterpret_cast<uintptr_t>(v.data());
  return v.data() + ((64 - p % 64) % 64);
}

Tensor::Tensor(DType dtype, Shape shape) : dtype_(dtype), shape_(std::move(shape)) {
  for (int64_t d : shape_)
    if (d < 0) fail("negative dimension in shape ", shape_str(shape_));
  storage_.assign(nbytes() + 64, 0);
  data_ = align64(storage_);
}

Tensor& Tensor::operator=(const Tensor& o) {
  if (this == &o) return *this;
  dtype_ = o.dtype_;
  shape_ = o.shape_;
  storage_.assign(o.nbytes() + 64, 0);
  data_ = align64(storage_);
  if (o.nbytes()) std::memcpy(data_, o.data_, o.nbytes());
  return *this;
}

Tensor& Tensor::operator=(Tensor&& o) noexcept {
  if (this == &o) return *this;
  dtype_ = o.dtype_;
  shape_ = std::move(o.shape_);
  // Moving a std::vector keeps its buffer, so the aligned pointer stays valid.
  storage_ = std::move(o.storage_);
  data_ = o.data_;
  o.data_ = nullptr;
  o.shape_.clear();
  return *this;
}

}  // namespace rpp
