// tests/test_runtime_json.cpp — runtime/json: values, strict parsing, writing, round trips.
//   ./build/test_runtime_json
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>

#include "runtime/json.h"

namespace rpp::json {
namespace {

// Parses `text`, expecting failure; returns the message.
std::string parse_error(const std::string& text) {
  try {
    parse(text, "cfg.json");
  } catch (const rpp::Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "parsing " << text << " did not throw";
  return "";
}

void expect_invalid(const std::string& text, const std::string& reason) {
  std::string msg = parse_error(text);
  EXPECT_NE(msg.find("cfg.json: invalid JSON at byte "), std::string::npos) << text << " -> " << msg;
  EXPECT_NE(msg.find(reason), std::string::npos) << text << " -> " << msg << " (wanted '" << reason << "')";
}

TEST(Json, ParsesScalars) {
  EXPECT_TRUE(parse("null", "t").is_null());
  EXPECT_TRUE(parse(" true ", "t").as_bool());
  EXPECT_FALSE(parse("\tfalse\r\n", "t").as_bool());
  EXPECT_EQ(parse("\"hi\"", "t").as_string(), "hi");
  EXPECT_EQ(parse("0", "t").as_int(), 0);
  EXPECT_EQ(parse("-17", "t").as_int(), -17);
  EXPECT_DOUBLE_EQ(parse("2.5", "t").as_double(), 2.5);
}

TEST(Json, IntegersAreExact) {
  Value big = parse("9223372036854775807", "t");
  ASSERT_TRUE(big.is_int());
  EXPECT_EQ(big.as_int(), INT64_MAX);
  Value small = parse("-9223372036854775808", "t");
  ASSERT_TRUE(small.is_int());
  EXPECT_EQ(small.as_int(), INT64_MIN);
  // 2^53 + 1 is not representable as a double; the integer must survive anyway.
  Value odd = parse("9007199254740993", "t");
  EXPECT_EQ(odd.as_int(), 9007199254740993LL);
  EXPECT_EQ(dump(odd), "9007199254740993");
  // Beyond int64: kept as a double only.
  Value huge = parse("18446744073709551616", "t");
  EXPECT_FALSE(huge.is_int());
  EXPECT_DOUBLE_EQ(huge.as_double(), 18446744073709551616.0);
  EXPECT_THROW(huge.as_int(), rpp::Error);
  // Non-integer text is a double, but an integral value still reads as an int.
  Value e3 = parse("1e3", "t");
  EXPECT_FALSE(e3.is_int());
  EXPECT_EQ(e3.as_int(), 1000);
  EXPECT_THROW(parse("1.5", "t").as_int(), rpp::Error);
}

TEST(Json, DoublesRoundTrip) {
  for (double d : {1e-300, -0.5, 0.1, 1.0 / 3.0, 6.02214076e23, -1.7976931348623157e308,
                   4.9406564584124654e-324, 123456.789}) {
    std::string text = dump(Value(d));
    Value back = parse(text, "t");
    EXPECT_EQ(back.as_double(), d) << text;
  }
  EXPECT_EQ(parse("1e-300", "t").as_double(), 1e-300);
  EXPECT_EQ(parse("-0.5", "t").as_double(), -0.5);
  EXPECT_EQ(parse("1E+2", "t").as_double(), 100.0);
  Value negzero = parse("-0", "t");
  EXPECT_TRUE(std::signbit(negzero.as_double()));
  // Underflow rounds to zero; overflow is an error.
  EXPECT_EQ(parse("1e-400", "t").as_double(), 0.0);
  expect_invalid("1e400", "number out of range");
  // Not representable in JSON: written as null.
  EXPECT_EQ(dump(Value(std::numeric_limits<double>::quiet_NaN())), "null");
  EXPECT_EQ(dump(Value(std::numeric_limits<double>::infinity())), "null");
}

TEST(Json, StringEscapes) {
  Value v = parse(R"("a\"b\\c\/d\b\f\n\r\t\u0041\u00e9\u20ac\ud83d\ude00")", "t");
  EXPECT_EQ(v.as_string(), "a\"b\\c/d\b\f\n\r\tA\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  // Writer escapes what must be escaped and passes UTF-8 through.
  std::string s = std::string("q\"b\\n\n\x01\x1f") + "\xC3\xA9";
  EXPECT_EQ(dump(Value(s)), "\"q\\\"b\\\\n\\n\\u0001\\u001f\xC3\xA9\"");
  EXPECT_EQ(parse(dump(Value(s)), "t").as_string(), s);
  // Every byte value 1..127 survives a round trip.
  std::string all;
  for (int c = 1; c < 128; ++c) all += char(c);
  EXPECT_EQ(parse(dump(Value(all)), "t").as_string(), all);
  // Embedded NUL via \u0000.
  EXPECT_EQ(parse("\"a\\u0000b\"", "t").as_string(), std::string("a\0b", 3));
}

TEST(Json, ObjectsKeepInsertionOrder) {
  Value v = parse(R"({"z": 1, "a": [true, null, "x"], "m": {"k": -2.5}})", "t");
  ASSERT_TRUE(v.is_object());
  ASSERT_EQ(v.size(), 3u);
  EXPECT_EQ(v.items()[0].first, "z");
  EXPECT_EQ(v.items()[1].first, "a");
  EXPECT_EQ(v.items()[2].first, "m");
  EXPECT_EQ(v["a"][0].as_bool(), true);
  EXPECT_TRUE(v["a"][1].is_null());
  EXPECT_EQ(v["a"].at(2).as_string(), "x");
  EXPECT_EQ(v["m"]["k"].as_double(), -2.5);
  EXPECT_EQ(dump(v), R"({"z":1,"a":[true,null,"x"],"m":{"k":-2.5}})");
  EXPECT_EQ(v.find("nope"), nullptr);
  ASSERT_NE(v.find("z"), nullptr);
  EXPECT_TRUE(v.contains("m"));
}

TEST(Json, AccessorErrorsNameTheProblem) {
  Value v = parse(R"({"lr": 0.01, "name": "x", "list": [1]})", "t");
  try {
    (void)v["epochs"];
    FAIL() << "missing key did not throw";
  } catch (const rpp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("no key 'epochs'"), std::string::npos) << e.what();
  }
  try {
    (void)v["name"].as_double();
    FAIL() << "type mismatch did not throw";
  } catch (const rpp::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is a string, expected a number"), std::string::npos) << e.what();
  }
  EXPECT_THROW((void)v["list"][1], rpp::Error);
  EXPECT_THROW((void)v["lr"].as_string(), rpp::Error);
  EXPECT_THROW((void)v[0], rpp::Error);
  EXPECT_THROW((void)v["list"].items(), rpp::Error);
  EXPECT_THROW((void)Value(1).size(), rpp::Error);
}

TEST(Json, BuildersAndRoundTrip) {
  Value v = Value::object();
  v.set("name", "resunet++").set("step", int64_t(1234567890123)).set("loss", 0.125);
  v.set("flags", Value::array().push_back(true).push_back(false).push_back(nullptr));
  v.set("nested", Value::object().set("empty_obj", Value::object()).set("empty_arr", Value::array()));
  v.set("step", 7);  // replaces in place
  EXPECT_EQ(v.items()[1].first, "step");
  EXPECT_EQ(v["step"].as_int(), 7);
  Value arr;
  arr.push_back(1u).push_back(-3).push_back(uint64_t(UINT64_MAX));
  EXPECT_TRUE(arr[0].is_int());
  EXPECT_FALSE(arr[2].is_int());
  v.set("arr", arr);

  for (int indent : {-1, 0, 2, 4}) {
    std::string text = dump(v, indent);
    Value back = parse(text, "t");
    EXPECT_EQ(back, v) << text;
    EXPECT_EQ(dump(back, indent), text);
  }
  EXPECT_EQ(dump(Value::object().set("a", 1).set("b", Value::array().push_back(2)), 2),
            "{\n  \"a\": 1,\n  \"b\": [\n    2\n  ]\n}");
  EXPECT_EQ(dump(Value::object()), "{}");
  EXPECT_EQ(dump(Value::array(), 2), "[]");
  EXPECT_THROW(Value(Value::Object{{"a", 1}, {"a", 2}}), rpp::Error);
  EXPECT_THROW(Value(3).set("a", 1), rpp::Error);
  EXPECT_THROW(Value("s").push_back(1), rpp::Error);
}

TEST(Json, MalformedInputIsRejectedWithAReason) {
  expect_invalid("", "unexpected end of input");
  expect_invalid("   ", "unexpected end of input");
  expect_invalid("[1, 2,]", "trailing comma in array");
  expect_invalid("{\"a\": 1,}", "trailing comma in object");
  expect_invalid("{\"a\" 1}", "expected ':'");
  expect_invalid("{a: 1}", "expected a string key");
  expect_invalid("{\"a\": 1", "unterminated object");
  expect_invalid("[1 2]", "expected ',' or ']'");
  expect_invalid("[1", "unterminated array");
  expect_invalid("{\"a\": 1, \"a\": 2}", "duplicate key 'a'");
  expect_invalid("\"abc", "unterminated string");
  expect_invalid("\"a\tb\"", "unescaped control character");
  expect_invalid(std::string("\"a\0b\"", 5), "unescaped control character");
  expect_invalid("\"\\x\"", "invalid escape sequence");
  expect_invalid("\"\\u12G4\"", "invalid hex digit");
  expect_invalid("\"\\u12", "unexpected end of input in \\u escape");
  expect_invalid("\"\\ud83d\"", "not followed by a low surrogate");
  expect_invalid("\"\\ud83d\\u0041\"", "not followed by a low surrogate");
  expect_invalid("\"\\ude00\"", "lone low surrogate");
  expect_invalid("\"\xC3\"", "invalid UTF-8");
  expect_invalid("\"\xC0\xAF\"", "invalid UTF-8");      // overlong '/'
  expect_invalid("\"\xED\xA0\x80\"", "invalid UTF-8");  // encoded surrogate
  expect_invalid("\"\xFF\"", "invalid UTF-8");
  expect_invalid("01", "leading zero");
  expect_invalid("-", "expected a digit after '-'");
  expect_invalid("1.", "expected a digit after '.'");
  expect_invalid(".5", "expected a value");
  expect_invalid("1e", "expected a digit in the exponent");
  expect_invalid("+1", "expected a value");
  expect_invalid("NaN", "expected a value");
  expect_invalid("Infinity", "expected a value");
  expect_invalid("tru", "invalid literal");
  expect_invalid("nul", "invalid literal");
  expect_invalid("{} x", "after the value");
  expect_invalid("1 2", "after the value");
  expect_invalid("[] // comment", "after the value");
  expect_invalid("\xEF\xBB\xBF{}", "expected a value");  // byte-order mark
}

TEST(Json, ErrorPositionIsTheOffendingByte) {
  EXPECT_NE(parse_error("[1, 2,]").find("at byte 6:"), std::string::npos) << parse_error("[1, 2,]");
  EXPECT_NE(parse_error("{\"a\": tru}").find("at byte 6:"), std::string::npos);
  EXPECT_NE(parse_error("  x").find("at byte 2:"), std::string::npos);
}

TEST(Json, DepthIsLimited) {
  std::string ok = std::string(64, '[') + std::string(64, ']');
  EXPECT_NO_THROW(parse(ok, "t"));
  std::string deep = std::string(65, '[') + std::string(65, ']');
  expect_invalid(deep, "nesting deeper than 64");
  // Far deeper input must fail cleanly, not overflow the stack.
  expect_invalid(std::string(100000, '['), "nesting deeper than 64");
  std::string objs;
  for (int i = 0; i < 1000; ++i) objs += "{\"a\":";
  expect_invalid(objs, "nesting deeper than 64");
}

TEST(Json, QuoteEscapes) {
  EXPECT_EQ(quote("a\"b"), "\"a\\\"b\"");
  EXPECT_EQ(quote(""), "\"\"");
}

}  // namespace
}  // namespace rpp::json
