// tools/cli/main.cpp — entry point of `resunetpp`: dispatches to one function per command.
// Run `resunetpp --help` or `resunetpp COMMAND --help` for the flags of each command.
#include <iostream>
#include <string>

#include "tools/cli/commands.h"

namespace rpp::cli {
namespace {

void usage(std::ostream& os) {
  os << "usage: resunetpp COMMAND [options]\n\n"
        "ResUNet++ polyp segmentation: training and evaluation engine.\n\n"
        "commands:\n"
        "  summary      layers, parameter count, FLOPs and memory plans\n"
        "  synth        write a synthetic polyp-like dataset (Kvasir-SEG layout)\n"
        "  check-data   verify a dataset folder: pairs, decoding, sizes, binary masks\n"
        "  train        train on a dataset folder\n"
        "  eval         evaluate a checkpoint on a dataset split\n"
        "  predict      write masks, overlays (and logits) for images with a checkpoint\n\n"
        "Run 'resunetpp COMMAND --help' for the options of a command.\n";
}

}  // namespace
}  // namespace rpp::cli

int main(int argc, char** argv) {
  using namespace rpp::cli;
  if (argc < 2) {
    usage(std::cerr);
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      usage(std::cout);
      return 0;
    }
    if (cmd == "summary") return cmd_summary(argc, argv);
    if (cmd == "synth") return cmd_synth(argc, argv);
    if (cmd == "train") return cmd_train(argc, argv);
    if (cmd == "eval") return cmd_eval(argc, argv);
    if (cmd == "predict") return cmd_predict(argc, argv);
    if (cmd == "check-data") return cmd_check_data(argc, argv);
    std::cerr << "resunetpp: unknown command '" << cmd << "'\n\n";
    usage(std::cerr);
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "resunetpp " << cmd << ": error: " << e.what() << "\n";
    return 1;
  }
}
