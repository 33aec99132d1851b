// tools/cli/flags.h — a small typed flag parser whose --help is generated from the definitions,
// so the help text and the accepted flags cannot drift apart.
#pragma once
#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

namespace rpp::cli {

class Flags {
 public:
  Flags(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}
  // Each flag's default is the variable's value when add() is called.
  void add(const std::string& name, std::string* v, const std::string& help, const std::string& metavar = "VALUE");
  void add(const std::string& name, int* v, const std::string& help);
  void add(const std::string& name, int64_t* v, const std::string& help);
  void add(const std::string& name, uint64_t* v, const std::string& help);
  void add(const std::string& name, double* v, const std::string& help);
  void add(const std::string& name, bool* v, const std::string& help);  // --name sets true
  // Marks a flag as required (no default shown).
  void require(const std::string& name);
  // Parses argv[first..argc). Returns false if --help was given (help already printed to out).
  // Throws rpp::Error for unknown flags, missing values, bad numbers, missing required flags.
  bool parse(int argc, char** argv, int first, std::ostream& out);
  void print_help(std::ostream& out) const;
  bool given(const std::string& name) const;

 private:
  struct Flag {
    std::string name, help, metavar, def;
    bool is_bool = false, required = false, seen = false;
    std::function<void(const std::string&)> set;
  };
  Flag& find(const std::string& name);
  std::string command_, summary_;
  std::vector<Flag> flags_;
};

}  // namespace rpp::cli
