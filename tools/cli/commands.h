// tools/cli/commands.h — one function per `resunetpp` command, plus helpers they share.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rpp::cli {

int cmd_summary(int argc, char** argv);
int cmd_synth(int argc, char** argv);
int cmd_train(int argc, char** argv);
int cmd_eval(int argc, char** argv);
int cmd_predict(int, char**);
int cmd_check_data(int, char**);

std::string mib(size_t bytes);         // "12.3 MiB"
std::string thousands(int64_t v);      // "4,062,993"

}  // namespace rpp::cli
