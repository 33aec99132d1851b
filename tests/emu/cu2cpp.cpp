// tests/emu/cu2cpp.cpp — turns a CUDA source (.cu/.cuh) into C++ that the CPU emulator
// (tests/emu/cuda_emu.h) compiles: every launch `kernel<<<grid, block[, shmem[, stream]]>>>(args)`
// becomes `::rpp_emu::launch_config(grid, block[, shmem[, stream]]).run(kernel, args)`, and every
// `extern __shared__ T name[];` becomes a pointer to the launch's dynamic shared memory. A #line
// directive keeps compiler messages pointing at the original file.
//   rpp_cu2cpp IN.cu OUT.cpp
#include <cctype>
#include <fstream>
#include <iostream>
#include <regex>
#include <sstream>
#include <string>

namespace {

bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':'; }

// Index of the bracket that closes text[open] (one of ( [ < ), or npos.
size_t match_forward(const std::string& t, size_t open, char o, char c) {
  int depth = 0;
  for (size_t i = open; i < t.size(); ++i) {
    if (t[i] == o) ++depth;
    if (t[i] == c && --depth == 0) return i;
  }
  return std::string::npos;
}

std::string convert_launches(const std::string& in, const std::string& path) {
  std::string out;
  size_t pos = 0;
  for (;;) {
    const size_t lt = in.find("<<<", pos);
    if (lt == std::string::npos) break;
    // The kernel expression ends right before <<<: an identifier, maybe with template arguments.
    size_t k = lt;
    while (k > pos && std::isspace(static_cast<unsigned char>(in[k - 1]))) --k;
    size_t start = k;
    if (start > pos && in[start - 1] == '>') {
      int depth = 0;
      size_t i = start;
      while (i > pos) {
        --i;
        if (in[i] == '>') ++depth;
        if (in[i] == '<' && --depth == 0) break;
      }
      start = i;
    }
    while (start > pos && ident_char(in[start - 1])) --start;
    const std::string kernel = in.substr(start, k - start);
    const size_t gt = in.find(">>>", lt);
    if (kernel.empty() || gt == std::string::npos) {
      std::cerr << path << ": cannot parse the launch near offset " << lt << "\n";
      std::exit(1);
    }
    const std::string config = in.substr(lt + 3, gt - lt - 3);
    size_t paren = gt + 3;
    while (paren < in.size() && std::isspace(static_cast<unsigned char>(in[paren]))) ++paren;
    const size_t close = paren < in.size() && in[paren] == '(' ? match_forward(in, paren, '(', ')') : std::string::npos;
    if (close == std::string::npos) {
      std::cerr << path << ": no argument list after the launch of " << kernel << "\n";
      std::exit(1);
    }
    std::string args = in.substr(paren + 1, close - paren - 1);
    bool blank = true;
    for (char c : args) blank = blank && std::isspace(static_cast<unsigned char>(c));
    out += in.substr(pos, start - pos);
    out += "::rpp_emu::launch_config(" + config + ").run(" + kernel + (blank ? "" : ", " + args) + ")";
    pos = close + 1;
  }
  out += in.substr(pos);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::cerr << "usage: rpp_cu2cpp IN.cu OUT.cpp\n";
    return 2;
  }
  std::ifstream f(argv[1], std::ios::binary);
  if (!f) {
    std::cerr << "rpp_cu2cpp: cannot read " << argv[1] << "\n";
    return 1;
  }
  std::stringstream ss;
  ss << f.rdbuf();
  std::string text = convert_launches(ss.str(), argv[1]);
  static const std::regex dyn(R"(extern\s+__shared__\s+(\w+)\s+(\w+)\s*\[\s*\]\s*;)");
  text = std::regex_replace(text, dyn, "$1* $2 = ::rpp_emu::dynamic_shared<$1>();");
  std::ofstream o(argv[2], std::ios::binary);
  o << "#line 1 \"" << argv[1] << "\"\n" << text;
  if (!o) {
    std::cerr << "rpp_cu2cpp: cannot write " << argv[2] << "\n";
    return 1;
  }
  return 0;
}
