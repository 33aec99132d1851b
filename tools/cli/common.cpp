// tools/cli/common.cpp — helpers shared by the commands.
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "runtime/error.h"
#include "tools/cli/commands.h"

namespace rpp::cli {

std::vector<int> parse_filters(const std::string& s) {
  std::vector<int> v;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char* end = nullptr;
    long x = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end) fail("--filters expects five comma-separated integers, got '", s, "'");
    v.push_back(int(x));
  }
  if (v.size() != 5) fail("--filters expects five comma-separated integers, got '", s, "'");
  return v;
}

std::string mib(size_t bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", double(bytes) / 1048576.0);
  return b;
}

std::string thousands(int64_t v) {
  std::string s = std::to_string(v), r;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i && (s.size() - i) % 3 == 0) r += ',';
    r += s[i];
  }
  return r;
}

}  // namespace rpp::cli
