// tools/cli/common.cpp — helpers shared by the commands.
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "runtime/error.h"
#include "tools/cli/commands.h"

namespace rpp::cli {

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
