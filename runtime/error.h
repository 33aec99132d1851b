// runtime/error.h — the engine's one exception type and its check macro.
// Every failure inside the engine is an rpp::Error whose message names what failed and where
// (a file path, a tensor name, a flag). The C API boundary turns it into a status code.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace rpp {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from any streamable pieces: fail("cannot open ", path, ": ", why).
template <class... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw Error(os.str());
}

}  // namespace rpp

// Precondition check that throws rpp::Error with the condition text, file and line, followed by
// any extra message pieces: RPP_CHECK(n > 0) or RPP_CHECK(n > 0, "batch size ", n).
#define RPP_CHECK(...) RPP_CHECK_IMPL_(__VA_ARGS__, "")
#define RPP_CHECK_IMPL_(cond, ...)                                                    \
  do {                                                                                \
    if (!(cond))                                                                      \
      ::rpp::fail("check failed: " #cond " (", __FILE__, ":", __LINE__, ") ", __VA_ARGS__); \
  } while (0)
