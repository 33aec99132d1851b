// tools/cli/flags.cpp
#include "tools/cli/flags.h"

#include <cerrno>
#include <cstdlib>
#include <iomanip>
#include <sstream>

#include "runtime/error.h"

namespace rpp::cli {

namespace {
template <class T>
std::string to_str(const T& v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

int64_t parse_int(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end || errno) fail("--", flag, " expects an integer, got '", s, "'");
  return v;
}

double parse_double(const std::string& flag, const std::string& s) {
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end || errno) fail("--", flag, " expects a number, got '", s, "'");
  return v;
}
}  // namespace

void Flags::add(const std::string& name, std::string* v, const std::string& help, const std::string& metavar) {
  flags_.push_back({name, help, metavar, *v, false, false, false, [v](const std::string& s) { *v = s; }});
}
void Flags::add(const std::string& name, int* v, const std::string& help) {
  flags_.push_back({name, help, "N", to_str(*v), false, false, false, [v, name](const std::string& s) {
                      int64_t x = parse_int(name, s);
                      if (x < INT32_MIN || x > INT32_MAX) fail("--", name, " is out of range: ", s);
                      *v = int(x);
                    }});
}
void Flags::add(const std::string& name, int64_t* v, const std::string& help) {
  flags_.push_back({name, help, "N", to_str(*v), false, false, false,
                    [v, name](const std::string& s) { *v = parse_int(name, s); }});
}
void Flags::add(const std::string& name, uint64_t* v, const std::string& help) {
  flags_.push_back({name, help, "N", to_str(*v), false, false, false, [v, name](const std::string& s) {
                      int64_t x = parse_int(name, s);
                      if (x < 0) fail("--", name, " must not be negative, got ", s);
                      *v = uint64_t(x);
                    }});
}
void Flags::add(const std::string& name, double* v, const std::string& help) {
  flags_.push_back({name, help, "X", to_str(*v), false, false, false,
                    [v, name](const std::string& s) { *v = parse_double(name, s); }});
}
void Flags::add(const std::string& name, bool* v, const std::string& help) {
  flags_.push_back({name, help, "", *v ? "on" : "off", true, false, false, [v](const std::string&) { *v = true; }});
}

Flags::Flag& Flags::find(const std::string& name) {
  for (Flag& f : flags_)
    if (f.name == name) return f;
  fail("unknown option --", name, " for '", command_, "' (see resunetpp ", command_, " --help)");
}

void Flags::require(const std::string& name) { find(name).required = true; }

bool Flags::given(const std::string& name) const {
  for (const Flag& f : flags_)
    if (f.name == name) return f.seen;
  return false;
}

bool Flags::parse(int argc, char** argv, int first, std::ostream& out) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      print_help(out);
      return false;
    }
    if (a.rfind("--", 0) != 0)
      fail("unexpected argument '", a, "' for '", command_, "' (options start with --; see resunetpp ", command_,
           " --help)");
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (auto eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    Flag& f = find(name);
    if (f.is_bool) {
      if (has_value) fail("--", name, " takes no value");
    } else if (!has_value) {
      if (i + 1 >= argc) fail("--", name, " needs a value");
      value = argv[++i];
    }
    f.set(value);
    f.seen = true;
  }
  for (const Flag& f : flags_)
    if (f.required && !f.seen) fail("'", command_, "' needs --", f.name, " (see resunetpp ", command_, " --help)");
  return true;
}

void Flags::print_help(std::ostream& out) const {
  out << "usage: resunetpp " << command_ << " [options]\n\n" << summary_ << "\n\noptions:\n";
  for (const Flag& f : flags_) {
    std::string left = "  --" + f.name + (f.is_bool ? "" : " " + f.metavar);
    out << std::left << std::setw(30) << left << " " << f.help;
    if (f.required)
      out << " (required)";
    else if (!f.def.empty())
      out << " (default: " << f.def << ")";
    out << "\n";
  }
  out << std::left << std::setw(30) << "  --help" << " " << "print this help\n";
}

}  // namespace rpp::cli
