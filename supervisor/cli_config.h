// The configuration commands of the command line: `hotrestart reload` and `hotrestart config
// history | show | diff | rollback` (their client side is src/client_config.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "cli_common.h"

namespace hotrestart {

struct ConfigFlags {
  CommonOptions common;
  std::string config;  // Which configuration ("": the only one, or for reload each one).
  std::string file;    // reload --file
  std::vector<std::uint64_t> versions;
  bool json = false;
};

struct ConfigCommands {
  CLI::App* reload;
  CLI::App* config;
  CLI::App* history;
  CLI::App* show;
  CLI::App* diff;
  CLI::App* rollback;
};

ConfigCommands add_config_commands(CLI::App& app, ConfigFlags& f);
// Runs the one that was parsed; returns the exit code.
int run_config_command(const ConfigCommands& commands, const ConfigFlags& f);

}  // namespace hotrestart
