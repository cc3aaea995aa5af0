// What the command line's files share (main.cpp, cli_config.cpp): the flags every client command
// takes, and the usage error.
#pragma once

#include <optional>
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

// A command's whole name below hotrestart: "upgrade", "config history" (cli_suggest.cpp).
std::string full_name(const CLI::App* command);
// After CLI11 refused a command line: the first command or option in it that does not exist, with
// the one it is nearest to, as "unknown option --drian-timeout; did you mean --drain-timeout?".
// Nothing when every word is known (the error was in a value).
std::optional<std::string> unknown_word(const CLI::App& app, int argc, char** argv);

}  // namespace hotrestart
