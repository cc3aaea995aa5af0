// What the command line's files share (main.cpp, cli_config.cpp): the flags every client command
// takes, and the usage error.
#pragma once

#include <string>

#include <CLI/CLI.hpp>

#include "src/run_options.h"

namespace hotrestart {

struct CommonOptions {
  std::string name = "default";
  std::string control;

  // Where a client looks for its supervisor.
  std::string control_path() const { return control.empty() ? find_control_path(name) : control; }
  // Where `run` puts its control socket.
  std::string serve_path() const { return control.empty() ? default_control_path(name) : control; }
};

// --name and --control.
void add_common(CLI::App* app, CommonOptions& common);
// "hotrestart: TEXT" on stderr; returns the usage exit code (2).
int usage_error(const std::string& text);

}  // namespace hotrestart
