// runtime/safetensors.cpp — safetensors serialisation and validating parser (see safetensors.h).
#include "runtime/safetensors.h"

#include <algorithm>
#include <cstring>
#include <unordered_set>

#include "runtime/fileio.h"
#include "runtime/json.h"

namespace rpp {

namespace {

constexpr const char* kFormat = "resunetpp-safetensors";
constexpr const char* kFormatVersion = "1";
constexpr const char* kChecksumPrefix = "fnv1a64:";
constexpr const char* kSupportedDtypes = "F32, F64, BF16, F16, I64";

// numel(shape) * elem_size, or false when a dimension is negative or the product overflows int64.
bool checked_nbytes(const Shape& shape, size_t elem_size, uint64_t* out) {
  const uint64_t limit = uint64_t(INT64_MAX);
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > limit / uint64_t(d)) return false;
    n *= uint64_t(d);
  }
  if (n != 0 && n > limit / elem_size) return false;
  *out = n * elem_size;
  return true;
}

void put_u64_le(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (8 * i));
}

uint64_t get_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);
  return v;
}

constexpr uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr uint64_t kFnvPrime = 0x100000001b3ull;

uint64_t fnv1a64_update(uint64_t h, const void* data, size_t size) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= kFnvPrime;
  }
  return h;
}

std::string checksum_string(uint64_t h) {
  static const char hex[] = "0123456789abcdef";
  std::string s = kChecksumPrefix;
  for (int i = 15; i >= 0; --i) s += hex[(h >> (4 * i)) & 15];
  return s;
}

bool is_reserved_key(const std::string& k) {
  return k == "format" || k == "format_version" || k == "checksum";
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t size) { return fnv1a64_update(kFnvOffset, data, size); }

std::string fnv1a64_string(const void* data, size_t size) { return checksum_string(fnv1a64(data, size)); }

const StTensor* StFile::find(const std::string& name) const {
  for (auto& t : tensors)
    if (t.name == name) return &t;
  return nullptr;
}

std::string StFile::metadata_value(const std::string& key) const {
  for (auto& kv : metadata)
    if (kv.first == key) return kv.second;
  return "";
}

// ---- writing ----

std::vector<uint8_t> serialize_safetensors(const std::vector<StTensorView>& tensors,
                                           std::vector<std::pair<std::string, std::string>> metadata) {
  std::vector<uint64_t> sizes(tensors.size());
  uint64_t total = 0;
  std::unordered_set<std::string> names;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const StTensorView& t = tensors[i];
    if (t.name == "__metadata__") fail("safetensors: tensor name '__metadata__' is reserved");
    if (!names.insert(t.name).second) fail("safetensors: duplicate tensor name '", t.name, "'");
    if (!checked_nbytes(t.shape, dtype_size(t.dtype), &sizes[i]))
      fail("safetensors: tensor '", t.name, "' has an invalid shape ", shape_str(t.shape));
    if (sizes[i] > 0 && !t.data) fail("safetensors: tensor '", t.name, "' has no data");
    if (total + sizes[i] < total) fail("safetensors: tensors too large to serialise");
    total += sizes[i];
  }

  std::vector<std::pair<std::string, std::string>> meta;
  for (auto& kv : metadata)
    if (!is_reserved_key(kv.first)) meta.push_back(std::move(kv));
  meta.emplace_back("format", kFormat);
  meta.emplace_back("format_version", kFormatVersion);
  // The checksum goes into the header, so hash the data before building it.
  uint64_t h = kFnvOffset;
  for (size_t i = 0; i < tensors.size(); ++i)
    if (sizes[i]) h = fnv1a64_update(h, tensors[i].data, size_t(sizes[i]));
  meta.emplace_back("checksum", checksum_string(h));

  json::Value header = json::Value::object();
  json::Value md = json::Value::object();
  for (auto& kv : meta) md.set(kv.first, kv.second);
  header.set("__metadata__", std::move(md));
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    json::Value shape = json::Value::array();
    for (int64_t d : tensors[i].shape) shape.push_back(d);
    json::Value offsets = json::Value::array();
    offsets.push_back(offset).push_back(offset + sizes[i]);
    offset += sizes[i];
    json::Value entry = json::Value::object();
    entry.set("dtype", dtype_name(tensors[i].dtype));
    entry.set("shape", std::move(shape));
    entry.set("data_offsets", std::move(offsets));
    header.set(tensors[i].name, std::move(entry));
  }
  std::string text = json::dump(header);
  while (text.size() % 8 != 0) text += ' ';
  if (text.size() > kSafetensorsMaxHeader)
    fail("safetensors: header of ", text.size(), " bytes exceeds the limit of ", kSafetensorsMaxHeader);

  std::vector<uint8_t> out(8 + text.size() + total);
  put_u64_le(out.data(), text.size());
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t* dst = out.data() + 8 + text.size();
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (sizes[i]) std::memcpy(dst, tensors[i].data, sizes[i]);
    dst += sizes[i];
  }
  return out;
}

void write_safetensors(const std::string& path, const std::vector<StTensorView>& tensors,
                       std::vector<std::pair<std::string, std::string>> metadata) {
  std::vector<uint8_t> bytes = serialize_safetensors(tensors, std::move(metadata));
  write_file_atomic(path, bytes.data(), bytes.size());
}

// ---- reading ----

namespace {

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

class StParser {
 public:
  StParser(const uint8_t* data, size_t size, const std::string& label)
      : data_(data), size_(size), label_(label) {}

  StFile run() {
    if (size_ < 8)
      error("file is too short to be safetensors (", size_, " bytes; the header length alone needs 8)");
    uint64_t n = get_u64_le(data_);
    if (n == 0) error("header length is 0");
    if (n > kSafetensorsMaxHeader)
      error("header length ", n, " exceeds the limit of ", kSafetensorsMaxHeader, " bytes");
    if (n > size_ - 8)
      error("header length ", n, " extends beyond the end of the file (", size_, " bytes)");
    const uint8_t* buffer = data_ + 8 + n;
    const uint64_t buffer_size = size_ - 8 - n;

    std::string text(reinterpret_cast<const char*>(data_ + 8), size_t(n));
    json::Value header = json::parse(text, label_ + ": safetensors header");
    if (!header.is_object())
      error("header is a JSON ", json::type_name(header.type()), ", expected an object");

    StFile file;
    std::vector<Entry> entries;
    for (auto& [name, v] : header.items()) {
      if (name == "__metadata__") {
        read_metadata(v, &file);
        continue;
      }
      entries.push_back(read_entry(name, v, buffer_size));
    }

    check_tiling(entries, buffer_size);

    const std::string* checksum = nullptr;
    for (auto& kv : file.metadata)
      if (kv.first == "checksum") checksum = &kv.second;
    if (checksum) {
      const std::string& stored = *checksum;
      const size_t plen = std::strlen(kChecksumPrefix);
      bool well_formed = stored.size() == plen + 16 && stored.compare(0, plen, kChecksumPrefix) == 0 &&
                         std::all_of(stored.begin() + long(plen), stored.end(), [](char c) {
                           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
                         });
      if (!well_formed)
        error("checksum '", stored, "' is not of the form fnv1a64:<16 hex digits>");
      std::string computed = fnv1a64_string(buffer, size_t(buffer_size));
      std::string lower = stored;
      for (char& c : lower)
        if (c >= 'A' && c <= 'F') c = char(c - 'A' + 'a');
      if (lower != computed)
        error("checksum mismatch: file is corrupt (header says ", stored, ", data hashes to ", computed, ")");
    }

    file.tensors.reserve(entries.size());
    for (auto& e : entries) {
      StTensor t;
      t.name = std::move(e.name);
      t.dtype = e.dtype;
      t.shape = std::move(e.shape);
      t.bytes.assign(buffer + e.begin, buffer + e.end);
      file.tensors.push_back(std::move(t));
    }
    return file;
  }

 private:
  template <class... Args>
  [[noreturn]] void error(const Args&... args) const {
    fail(label_, ": ", args...);
  }

  void read_metadata(const json::Value& v, StFile* file) const {
    if (!v.is_object())
      error("__metadata__ is a JSON ", json::type_name(v.type()), ", expected an object of strings");
    for (auto& [k, val] : v.items()) {
      if (!val.is_string())
        error("__metadata__ is not an object of strings: value of '", k, "' is a JSON ",
              json::type_name(val.type()));
      file->metadata.emplace_back(k, val.as_string());
    }
  }

  static bool non_negative_int(const json::Value& v) { return v.is_int() && v.as_int() >= 0; }

  Entry read_entry(const std::string& name, const json::Value& v, uint64_t buffer_size) const {
    if (!v.is_object())
      error("entry '", name, "' is a JSON ", json::type_name(v.type()), ", expected an object");
    Entry e;
    e.name = name;

    const json::Value* dt = v.find("dtype");
    if (!dt) error("tensor '", name, "' has no dtype");
    if (!dt->is_string()) error("tensor '", name, "': dtype is not a string");
    if (!dtype_from_name(dt->as_string(), &e.dtype))
      error("dtype '", dt->as_string(), "' of tensor '", name,
            "' is not supported (supported: ", kSupportedDtypes, ")");

    const json::Value* sh = v.find("shape");
    if (!sh) error("tensor '", name, "' has no shape");
    if (!sh->is_array()) error("tensor '", name, "': shape must be an array of non-negative integers");
    for (auto& d : sh->as_array()) {
      if (!non_negative_int(d))
        error("tensor '", name, "': shape must be an array of non-negative integers, found ", json::dump(d));
      e.shape.push_back(d.as_int());
    }
    uint64_t need = 0;
    if (!checked_nbytes(e.shape, dtype_size(e.dtype), &need))
      error("tensor '", name, "': shape ", shape_str(e.shape), " has too many elements (numel overflows)");

    const json::Value* off = v.find("data_offsets");
    if (!off) error("tensor '", name, "' has no data_offsets");
    if (!off->is_array() || off->size() != 2 || !non_negative_int((*off)[0]) ||
        !non_negative_int((*off)[1]))
      error("tensor '", name, "': data_offsets must be two non-negative integers [begin, end], found ",
            json::dump(*off));
    e.begin = uint64_t((*off)[0].as_int());
    e.end = uint64_t((*off)[1].as_int());
    if (e.begin > e.end)
      error("tensor '", name, "': data_offsets begin ", e.begin, " is after end ", e.end);
    if (e.end - e.begin != need)
      error("tensor '", name, "': data_offsets span ", e.end - e.begin, " bytes but ", dtype_name(e.dtype),
            " ", shape_str(e.shape), " needs ", need);
    if (e.end > buffer_size)
      error("tensor '", name, "': data_offsets [", e.begin, ", ", e.end,
            "] extend beyond the end of the file (the data buffer has ", buffer_size, " bytes)");
    return e;
  }

  // The tensors must tile [0, buffer_size) exactly: no gap, no overlap, nothing left over.
  void check_tiling(const std::vector<Entry>& entries, uint64_t buffer_size) const {
    std::vector<const Entry*> order;
    order.reserve(entries.size());
    for (auto& e : entries) order.push_back(&e);
    std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
      return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    uint64_t expected = 0;
    const Entry* prev = nullptr;
    for (const Entry* e : order) {
      if (e->begin > expected)
        error("data_offsets are not contiguous: gap of ", e->begin - expected, " bytes at [", expected,
              ", ", e->begin, ") before tensor '", e->name, "'");
      if (e->begin < expected)
        error("data_offsets are not contiguous: tensor '", e->name, "' [", e->begin, ", ", e->end,
              ") overlaps tensor '", prev->name, "' [", prev->begin, ", ", prev->end, ")");
      expected = e->end;
      prev = e;
    }
    if (expected != buffer_size)
      error("data_offsets are not contiguous: tensors cover ", expected, " bytes but the data buffer has ",
            buffer_size, " (", buffer_size - expected, " trailing bytes)");
  }

  const uint8_t* data_;
  size_t size_;
  const std::string& label_;
};

}  // namespace

StFile parse_safetensors(const uint8_t* data, size_t size, const std::string& label) {
  return StParser(data, size, label).run();
}

StFile read_safetensors(const std::string& path) {
  std::string bytes = read_file(path);
  return parse_safetensors(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
}

}  // namespace rpp
