// tests/run_command.h — runs a command line through the shell for the tests of the command-line
// tools (tests/test_cli*.cpp, tests/test_bench_cli.cpp): its exit code and its stdout and stderr
// together. Header-only.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace rpp::testing_util {

struct CommandResult {
  int code = -1;    // the exit status, or -1 when the command did not exit normally
  std::string out;  // stdout and stderr, interleaved
};

inline CommandResult run_command(const std::string& command_line) {
  CommandResult r;
  FILE* pipe = popen((command_line + " 2>&1").c_str(), "r");
  if (!pipe) {
    r.out = "popen failed";
    return r;
  }
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, pipe)) > 0;) r.out.append(buf, n);
  const int status = pclose(pipe);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace rpp::testing_util
