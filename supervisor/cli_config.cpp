// The configuration commands of the command line (see cli_config.h).
#include "cli_config.h"

#include <optional>

#include "src/client.h"

namespace hotrestart {

ConfigCommands add_config_commands(CLI::App& app, ConfigFlags& f) {
  ConfigCommands c{};
  c.reload = app.add_subcommand(
      "reload",
      "Reload configurations (run --config NAME=PATH): read the file, have every generation that reads it validate "
      "it, then switch all of them or none. Exits 0 with the new version, 1 when the file or a generation refused "
      "it (nothing changed), 3 when another reload is under way.");
  add_common(c.reload, f.common);
  c.reload->add_option("config", f.config, "The configuration to reload (default: each one)")->option_text("NAME");
  c.reload
      ->add_option("--file", f.file,
                   "Read this file instead of the configured path (it needs NAME when there are several)")
      ->option_text("PATH");
  c.reload->add_flag("--json", f.json, "Print the answer as JSON");

  c.config = app.add_subcommand(
      "config", "The versions of a configuration (run --config NAME=PATH): history, show, diff and rollback");
  c.config->require_subcommand(1);
  add_common(c.config, f.common);  // Before the subcommand too: `hotrestart config --name web history`.
  const auto sub = [&](const char* name, const char* help) {
    CLI::App* command = c.config->add_subcommand(name, help);
    add_common(command, f.common);
    command->add_option("-c,--config", f.config, "Which configuration (default: the only one)")->option_text("NAME");
    return command;
  };
  // The versions a subcommand takes: at most `most`, each described by `help`.
  const auto versions = [&](CLI::App* command, const char* help, int most) {
    command->add_option(most == 1 ? "version" : "versions", f.versions, help)
        ->option_text(most == 1 ? "V" : "A B")
        ->expected(0, most)
        ->check(CLI::Validator(
            [](std::string& v) {
              return !v.empty() && v.size() < 20 && v.find_first_not_of("0123456789") == std::string::npos &&
                             v.find_first_not_of('0') != std::string::npos
                         ? std::string()
                         : "must be a version number (1, 2, ...; see `hotrestart config history`), not '" + v + "'";
            },
            ""));
  };
  c.history = sub("history", "Every version: when, who, how it came, and whether it was applied");
  c.history->add_flag("--json", f.json, "Print the history as JSON");
  c.show = sub("show", "Print a version's bytes as they were applied");
  versions(c.show, "The version (default: the live one)", 1);
  c.diff = sub("diff", "Show what changed between two versions (diff -u)");
  versions(c.diff, "The older and the newer version (default: the one before the live one, and the live one)", 2);
  c.rollback = sub("rollback",
                   "Make an earlier version live again, as a new version with its bytes, validated and switched in "
                   "every generation as a reload is. Exits as reload does; 3 when there is no such version.");
  versions(c.rollback, "The version to bring back (default: the applied one before the live one)", 1);
  c.rollback->add_flag("--json", f.json, "Print the answer as JSON");
  return c;
}

int run_config_command(const ConfigCommands& c, const ConfigFlags& f) {
  const std::optional<std::string> name = f.config.empty() ? std::nullopt : std::optional<std::string>(f.config);
  const std::string path = f.common.control_path();
  const Output output = f.json ? Output::Json : Output::Human;
  if (c.reload->parsed()) {
    std::optional<std::string> file;
    if (!f.file.empty()) {
      // The supervisor reads it from its own directory (/): a relative path is this one's.
      const std::string here = run_directory(false);
      if (f.file.front() != '/' && here.empty())
        return usage_error("cannot tell which directory this is (was it deleted?): give --file an absolute path");
      file = f.file.front() == '/' ? f.file : absolute_path(here, f.file);
    }
    return client_reload(path, name, file, output);
  }
  if (c.history->parsed()) return client_config_history(path, name, output);
  if (c.show->parsed()) return client_config_show(path, name, f.versions);
  if (c.diff->parsed()) {
    if (f.versions.size() == 1) return usage_error("config diff takes two versions, or none");
    return client_config_diff(path, name, f.versions);
  }
  if (c.rollback->parsed()) {
    return client_config_rollback(
        path, name, f.versions.empty() ? std::nullopt : std::optional<std::uint64_t>(f.versions.front()), output);
  }
  return usage_error("config: which one? history, show, diff or rollback");
}

}  // namespace hotrestart
