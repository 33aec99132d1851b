// runtime/json.h — a small JSON value, a strict parser and a writer.
//
// Used for safetensors headers, config.json, summary.json and log.jsonl. Objects keep their
// insertion order (so files are written in a predictable order and read back the same way).
// Numbers hold a double and, when the source text was an integer that fits, the exact int64
// (checkpoint offsets and sizes must not pass through a double).
//
// The parser is strict RFC 8259: no trailing commas, no comments, no NaN/Infinity, \u escapes with
// surrogate pairs checked, raw control characters and invalid UTF-8 in strings rejected, nothing
// but whitespace after the value, nesting at most 64 deep, and duplicate object keys rejected.
// Every failure is rpp::Error("<label>: invalid JSON at byte N: <reason>"), N counted from 0.
//
// Exercised by tests/test_runtime_json.cpp.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "runtime/error.h"

namespace rpp::json {

enum class Type : uint8_t { Null, Bool, Number, String, Array, Object };
const char* type_name(Type t);  // "null", "bool", "number", "string", "array", "object"

class Value {
 public:
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  Value() = default;  // null
  Value(std::nullptr_t) {}
  Value(bool b) : type_(Type::Bool), bool_(b) {}
  Value(double d) : type_(Type::Number), num_(d) {}
  Value(float f) : Value(double(f)) {}
  // Any integer type except bool. Values that do not fit an int64 are kept as a double only.
  template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Value(T v) : type_(Type::Number), num_(double(v)) {
    if constexpr (std::is_signed_v<T> || sizeof(T) < sizeof(int64_t)) {
      int_ = int64_t(v);
      is_int_ = true;
    } else if (v <= T(INT64_MAX)) {
      int_ = int64_t(v);
      is_int_ = true;
    }
  }
  Value(const char* s) : type_(Type::String), str_(s) {}
  Value(std::string s) : type_(Type::String), str_(std::move(s)) {}
  Value(Array a) : type_(Type::Array), arr_(std::move(a)) {}
  Value(Object o);  // throws on duplicate keys

  static Value object() { Value v; v.type_ = Type::Object; return v; }
  static Value array() { Value v; v.type_ = Type::Array; return v; }

  Type type() const { return type_; }
  bool is_null() const { return type_ == Type::Null; }
  bool is_bool() const { return type_ == Type::Bool; }
  bool is_number() const { return type_ == Type::Number; }
  // A number whose exact value is an int64 (integer text, or built from an integer).
  bool is_int() const { return type_ == Type::Number && is_int_; }
  bool is_string() const { return type_ == Type::String; }
  bool is_array() const { return type_ == Type::Array; }
  bool is_object() const { return type_ == Type::Object; }

  // Typed reads; each throws rpp::Error("JSON value is a <t>, expected a <u>") on a type mismatch.
  bool as_bool() const;
  double as_double() const;
  // The exact integer; also accepts a double holding an integral value in int64 range (1e3).
  int64_t as_int() const;
  const std::string& as_string() const;
  const Array& as_array() const;
  const Object& items() const;  // the object's members in insertion order

  // Number of elements (array) or members (object); throws for other types.
  size_t size() const;

  // Array element; throws if not an array or out of range.
  const Value& operator[](size_t i) const;
  const Value& at(size_t i) const { return (*this)[i]; }

  // Object member; throws rpp::Error("JSON object has no key 'k'") if missing.
  const Value& operator[](const std::string& key) const;
  const Value& at(const std::string& key) const { return (*this)[key]; }
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  // Object member or nullptr if missing (also nullptr if this is not an object).
  const Value* find(const std::string& key) const;
  Value* find(const std::string& key);

  // Builders. set() replaces an existing key in place or appends; push_back() appends. Both turn
  // a null into an empty object/array first and return *this for chaining.
  Value& set(const std::string& key, Value v);
  Value& push_back(Value v);

  // Deep equality: numbers compare as int64 when both are exact integers, else as doubles.
  friend bool operator==(const Value& a, const Value& b);
  friend bool operator!=(const Value& a, const Value& b) { return !(a == b); }

 private:
  friend class Parser;
  [[noreturn]] void type_error(Type want) const;

  Type type_ = Type::Null;
  bool bool_ = false;
  bool is_int_ = false;
  int64_t int_ = 0;
  double num_ = 0.0;
  std::string str_;
  Array arr_;
  Object obj_;
};

// Parses one JSON document (surrounding whitespace allowed).
Value parse(const std::string& text, const std::string& label);

// Writes `v`. indent < 0: compact, no spaces. indent >= 0: one member per line, `indent` spaces per
// level, ": " after keys. Integers print exactly; other numbers in the shortest form that parses back
// to the same double; non-finite numbers (not representable in JSON) print as null. Strings are
// escaped (", \, control characters); other UTF-8 passes through.
std::string dump(const Value& v, int indent = -1);

// `s` as a quoted, escaped JSON string literal.
std::string quote(const std::string& s);

}  // namespace rpp::json
