// runtime/json.cpp — JSON value, strict recursive-descent parser and writer (see json.h).
#include "runtime/json.h"

#include <charconv>
#include <cmath>
#include <cstdlib>
#include <unordered_set>

namespace rpp::json {

const char* type_name(Type t) {
  switch (t) {
    case Type::Null: return "null";
    case Type::Bool: return "bool";
    case Type::Number: return "number";
    case Type::String: return "string";
    case Type::Array: return "array";
    case Type::Object: return "object";
  }
  return "?";
}

// ---- Value ----

Value::Value(Object o) : type_(Type::Object) {
  std::unordered_set<std::string> seen;
  for (auto& kv : o)
    if (!seen.insert(kv.first).second) fail("JSON object built with duplicate key '", kv.first, "'");
  obj_ = std::move(o);
}

void Value::type_error(Type want) const {
  const char* article = (want == Type::Array || want == Type::Object) ? "an " : "a ";
  fail("JSON value is a", (type_ == Type::Array || type_ == Type::Object) ? "n " : " ",
       type_name(type_), ", expected ", article, type_name(want));
}

bool Value::as_bool() const {
  if (type_ != Type::Bool) type_error(Type::Bool);
  return bool_;
}

double Value::as_double() const {
  if (type_ != Type::Number) type_error(Type::Number);
  return num_;
}

int64_t Value::as_int() const {
  if (type_ != Type::Number) type_error(Type::Number);
  if (is_int_) return int_;
  // 2^63 is exactly representable; anything >= it does not fit.
  if (std::isfinite(num_) && std::trunc(num_) == num_ && num_ >= -9223372036854775808.0 &&
      num_ < 9223372036854775808.0)
    return int64_t(num_);
  fail("JSON number ", dump(*this), " is not an integer in int64 range");
}

const std::string& Value::as_string() const {
  if (type_ != Type::String) type_error(Type::String);
  return str_;
}

const Value::Array& Value::as_array() const {
  if (type_ != Type::Array) type_error(Type::Array);
  return arr_;
}

const Value::Object& Value::items() const {
  if (type_ != Type::Object) type_error(Type::Object);
  return obj_;
}

size_t Value::size() const {
  if (type_ == Type::Array) return arr_.size();
  if (type_ == Type::Object) return obj_.size();
  fail("JSON value is a ", type_name(type_), ", expected an array or an object");
}

const Value& Value::operator[](size_t i) const {
  if (type_ != Type::Array) type_error(Type::Array);
  if (i >= arr_.size()) fail("JSON array index ", i, " out of range (size ", arr_.size(), ")");
  return arr_[i];
}

const Value& Value::operator[](const std::string& key) const {
  if (type_ != Type::Object) type_error(Type::Object);
  const Value* v = find(key);
  if (!v) fail("JSON object has no key '", key, "'");
  return *v;
}

const Value* Value::find(const std::string& key) const {
  if (type_ != Type::Object) return nullptr;
  for (auto& kv : obj_)
    if (kv.first == key) return &kv.second;
  return nullptr;
}

Value* Value::find(const std::string& key) {
  return const_cast<Value*>(static_cast<const Value*>(this)->find(key));
}

Value& Value::set(const std::string& key, Value v) {
  if (type_ == Type::Null) type_ = Type::Object;
  if (type_ != Type::Object) type_error(Type::Object);
  if (Value* old = find(key))
    *old = std::move(v);
  else
    obj_.emplace_back(key, std::move(v));
  return *this;
}

Value& Value::push_back(Value v) {
  if (type_ == Type::Null) type_ = Type::Array;
  if (type_ != Type::Array) type_error(Type::Array);
  arr_.push_back(std::move(v));
  return *this;
}

bool operator==(const Value& a, const Value& b) {
  if (a.type_ != b.type_) return false;
  switch (a.type_) {
    case Type::Null: return true;
    case Type::Bool: return a.bool_ == b.bool_;
    case Type::Number:
      if (a.is_int_ && b.is_int_) return a.int_ == b.int_;
      return a.num_ == b.num_;
    case Type::String: return a.str_ == b.str_;
    case Type::Array: return a.arr_ == b.arr_;
    case Type::Object: return a.obj_ == b.obj_;
  }
  return false;
}

// ---- parser ----

namespace {
constexpr int kMaxDepth = 64;
}

class Parser {
 public:
  Parser(const std::string& text, const std::string& label) : s_(text), label_(label) {}

  Value parse_document() {
    skip_ws();
    Value v = parse_value(0);
    skip_ws();
    if (pos_ != s_.size()) error("unexpected ", describe_here(), " after the value");
    return v;
  }

 private:
  template <class... Args>
  [[noreturn]] void error_at(size_t pos, const Args&... args) const {
    fail(label_, ": invalid JSON at byte ", pos, ": ", args...);
  }
  template <class... Args>
  [[noreturn]] void error(const Args&... args) const {
    error_at(pos_, args...);
  }

  std::string describe_here() const {
    if (pos_ >= s_.size()) return "end of input";
    unsigned char c = static_cast<unsigned char>(s_[pos_]);
    if (c >= 0x20 && c < 0x7f) return std::string("character '") + char(c) + "'";
    static const char hex[] = "0123456789abcdef";
    return std::string("byte 0x") + hex[c >> 4] + hex[c & 15];
  }

  bool at_end() const { return pos_ >= s_.size(); }
  char peek() const { return at_end() ? '\0' : s_[pos_]; }

  void skip_ws() {
    while (!at_end()) {
      char c = s_[pos_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
        ++pos_;
      else
        break;
    }
  }

  void expect_literal(const char* lit) {
    size_t start = pos_;
    for (const char* p = lit; *p; ++p, ++pos_)
      if (at_end() || s_[pos_] != *p) error_at(start, "invalid literal (expected '", lit, "')");
  }

  Value parse_value(int depth) {
    if (at_end()) error("unexpected end of input (expected a value)");
    char c = s_[pos_];
    switch (c) {
      case '{': return parse_object(depth + 1);
      case '[': return parse_array(depth + 1);
      case '"': return Value(parse_string());
      case 't': expect_literal("true"); return Value(true);
      case 'f': expect_literal("false"); return Value(false);
      case 'n': expect_literal("null"); return Value();
      default:
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        error("unexpected ", describe_here(), " (expected a value)");
    }
  }

  Value parse_object(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than ", kMaxDepth, " levels");
    ++pos_;  // '{'
    Value v = Value::object();
    skip_ws();
    if (peek() == '}') {
      ++pos_;
      return v;
    }
    std::unordered_set<std::string> seen;
    for (;;) {
      skip_ws();
      if (peek() != '"') {
        if (peek() == '}') error("trailing comma in object");
        error("unexpected ", describe_here(), " (expected a string key)");
      }
      size_t key_pos = pos_;
      std::string key = parse_string();
      if (!seen.insert(key).second) error_at(key_pos, "duplicate key '", key, "'");
      skip_ws();
      if (peek() != ':') error("unexpected ", describe_here(), " (expected ':' after key)");
      ++pos_;
      skip_ws();
      Value member = parse_value(depth);
      v.obj_.emplace_back(std::move(key), std::move(member));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == '}') {
        ++pos_;
        return v;
      }
      if (at_end()) error("unexpected end of input (unterminated object)");
      error("unexpected ", describe_here(), " (expected ',' or '}' in object)");
    }
  }

  Value parse_array(int depth) {
    if (depth > kMaxDepth) error("nesting deeper than ", kMaxDepth, " levels");
    ++pos_;  // '['
    Value v = Value::array();
    skip_ws();
    if (peek() == ']') {
      ++pos_;
      return v;
    }
    for (;;) {
      skip_ws();
      if (peek() == ']') error("trailing comma in array");
      v.arr_.push_back(parse_value(depth));
      skip_ws();
      if (peek() == ',') {
        ++pos_;
        continue;
      }
      if (peek() == ']') {
        ++pos_;
        return v;
      }
      if (at_end()) error("unexpected end of input (unterminated array)");
      error("unexpected ", describe_here(), " (expected ',' or ']' in array)");
    }
  }

  unsigned parse_hex4() {
    unsigned v = 0;
    for (int i = 0; i < 4; ++i, ++pos_) {
      if (at_end()) error("unexpected end of input in \\u escape");
      char c = s_[pos_];
      unsigned d;
      if (c >= '0' && c <= '9')
        d = unsigned(c - '0');
      else if (c >= 'a' && c <= 'f')
        d = unsigned(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F')
        d = unsigned(c - 'A' + 10);
      else
        error("invalid hex digit in \\u escape: ", describe_here());
      v = v * 16 + d;
    }
    return v;
  }

  static void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += char(cp);
    } else if (cp < 0x800) {
      out += char(0xC0 | (cp >> 6));
      out += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += char(0xE0 | (cp >> 12));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    } else {
      out += char(0xF0 | (cp >> 18));
      out += char(0x80 | ((cp >> 12) & 0x3F));
      out += char(0x80 | ((cp >> 6) & 0x3F));
      out += char(0x80 | (cp & 0x3F));
    }
  }

  // Validates one UTF-8 sequence starting at pos_ (lead byte >= 0x80) and copies it.
  void copy_utf8_sequence(std::string& out) {
    size_t start = pos_;
    auto byte = [&](size_t i) -> unsigned {
      return start + i < s_.size() ? static_cast<unsigned char>(s_[start + i]) : 0u;
    };
    unsigned b0 = byte(0);
    size_t len;
    uint32_t cp;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
      cp = b0 & 0x1F;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
      cp = b0 & 0x0F;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
      cp = b0 & 0x07;
    } else {
      error("invalid UTF-8 in string");
    }
    for (size_t i = 1; i < len; ++i) {
      unsigned b = byte(i);
      if ((b & 0xC0) != 0x80) error_at(start, "invalid UTF-8 in string");
      cp = (cp << 6) | (b & 0x3F);
    }
    bool overlong = (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000);
    if (overlong || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      error_at(start, "invalid UTF-8 in string");
    out.append(s_, start, len);
    pos_ = start + len;
  }

  std::string parse_string() {
    size_t open = pos_;
    ++pos_;  // opening quote
    std::string out;
    for (;;) {
      if (at_end()) error_at(open, "unterminated string");
      unsigned char c = static_cast<unsigned char>(s_[pos_]);
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (c < 0x20) error("unescaped control character ", describe_here(), " in string");
      if (c >= 0x80) {
        copy_utf8_sequence(out);
        continue;
      }
      if (c != '\\') {
        out += char(c);
        ++pos_;
        continue;
      }
      size_t esc = pos_;
      ++pos_;
      if (at_end()) error_at(open, "unterminated string");
      char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp = parse_hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) error_at(esc, "lone low surrogate in \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (pos_ + 1 >= s_.size() || s_[pos_] != '\\' || s_[pos_ + 1] != 'u')
              error_at(esc, "high surrogate in \\u escape not followed by a low surrogate");
            pos_ += 2;
            uint32_t lo = parse_hex4();
            if (lo < 0xDC00 || lo > 0xDFFF)
              error_at(esc, "high surrogate in \\u escape not followed by a low surrogate");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          append_utf8(out, cp);
          break;
        }
        default:
          pos_ = esc;
          error("invalid escape sequence '\\", (e >= 0x20 && e < 0x7f) ? std::string(1, e) : "?", "'");
      }
    }
  }

  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  Value parse_number() {
    size_t start = pos_;
    bool integral = true;
    if (peek() == '-') ++pos_;
    if (!is_digit(peek())) error("invalid number (expected a digit after '-')");
    if (peek() == '0') {
      ++pos_;
      if (is_digit(peek())) error_at(start, "invalid number (leading zero)");
    } else {
      while (is_digit(peek())) ++pos_;
    }
    if (peek() == '.') {
      integral = false;
      ++pos_;
      if (!is_digit(peek())) error("invalid number (expected a digit after '.')");
      while (is_digit(peek())) ++pos_;
    }
    if (peek() == 'e' || peek() == 'E') {
      integral = false;
      ++pos_;
      if (peek() == '+' || peek() == '-') ++pos_;
      if (!is_digit(peek())) error("invalid number (expected a digit in the exponent)");
      while (is_digit(peek())) ++pos_;
    }
    const char* first = s_.data() + start;
    const char* last = s_.data() + pos_;
    Value v;
    v.type_ = Type::Number;
    if (integral) {
      int64_t i = 0;
      auto r = std::from_chars(first, last, i);
      if (r.ec == std::errc() && r.ptr == last) {
        v.is_int_ = true;
        v.int_ = i;
        v.num_ = (i == 0 && *first == '-') ? -0.0 : double(i);
        return v;
      }
    }
    double d = 0.0;
    auto r = std::from_chars(first, last, d);
    if (r.ec == std::errc::result_out_of_range) {
      // from_chars reports both overflow and underflow; strtod tells them apart. The text is
      // a validated JSON number, so the C locale's decimal point is the only one in it.
      std::string copy(first, last);
      d = std::strtod(copy.c_str(), nullptr);
      if (std::isinf(d)) error_at(start, "number out of range");
    } else if (r.ec != std::errc() || r.ptr != last) {
      error_at(start, "invalid number");
    }
    v.num_ = d;
    return v;
  }

  const std::string& s_;
  const std::string& label_;
  size_t pos_ = 0;
};

Value parse(const std::string& text, const std::string& label) {
  return Parser(text, label).parse_document();
}

// ---- writer ----

namespace {

void dump_string(std::string& out, const std::string& s) {
  static const char hex[] = "0123456789abcdef";
  out += '"';
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out += hex[c >> 4];
          out += hex[c & 15];
        } else {
          out += char(c);
        }
    }
  }
  out += '"';
}

void dump_number(std::string& out, const Value& v) {
  char buf[64];
  std::to_chars_result r;
  if (v.is_int()) {
    r = std::to_chars(buf, buf + sizeof buf, v.as_int());
  } else {
    double d = v.as_double();
    if (!std::isfinite(d)) {
      out += "null";
      return;
    }
    r = std::to_chars(buf, buf + sizeof buf, d);  // shortest round-trip form
  }
  out.append(buf, r.ptr);
}

void newline(std::string& out, int indent, int level) {
  out += '\n';
  out.append(size_t(indent) * size_t(level), ' ');
}

void dump_value(std::string& out, const Value& v, int indent, int level) {
  switch (v.type()) {
    case Type::Null: out += "null"; return;
    case Type::Bool: out += v.as_bool() ? "true" : "false"; return;
    case Type::Number: dump_number(out, v); return;
    case Type::String: dump_string(out, v.as_string()); return;
    case Type::Array: {
      const auto& a = v.as_array();
      if (a.empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t i = 0; i < a.size(); ++i) {
        if (i) out += ',';
        if (indent >= 0) newline(out, indent, level + 1);
        dump_value(out, a[i], indent, level + 1);
      }
      if (indent >= 0) newline(out, indent, level);
      out += ']';
      return;
    }
    case Type::Object: {
      const auto& o = v.items();
      if (o.empty()) {
        out += "{}";
        return;
      }
      out += '{';
      for (size_t i = 0; i < o.size(); ++i) {
        if (i) out += ',';
        if (indent >= 0) newline(out, indent, level + 1);
        dump_string(out, o[i].first);
        out += indent >= 0 ? ": " : ":";
        dump_value(out, o[i].second, indent, level + 1);
      }
      if (indent >= 0) newline(out, indent, level);
      out += '}';
      return;
    }
  }
}

}  // namespace

std::string dump(const Value& v, int indent) {
  std::string out;
  dump_value(out, v, indent, 0);
  return out;
}

std::string quote(const std::string& s) {
  std::string out;
  dump_string(out, s);
  return out;
}

}  // namespace rpp::json
