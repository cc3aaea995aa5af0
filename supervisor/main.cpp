// hotrestart: keep a server's listening sockets open forever and swap the program behind
// them without refusing a connection. See `hotrestart --help` and docs/operations.md.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "src/client.h"
#include "src/duration.h"
#include "src/listen_spec.h"
#include "src/log.h"
#include "src/signals.h"
#include "src/supervisor.h"

using namespace hotrestart;

namespace {

constexpr const char* kVersion = "0.1.0";

struct CommonOptions {
  std::string name = "default";
  std::string control;

  std::string control_path() const { return control.empty() ? default_control_path(name) : control; }
};

void add_common(CLI::App* app, CommonOptions& common) {
  app->add_option("--name", common.name,
                  "Supervisor name; picks the default control socket "
                  "($XDG_RUNTIME_DIR/hotrestart/NAME.sock, else /tmp/hotrestart-UID/NAME.sock)")
      ->check([](const std::string& v) {
        return valid_listener_name(v) ? std::string() : "must be 1-64 letters, digits, '.', '_' or '-'";
      });
  app->add_option("--control", common.control, "Control socket path (overrides --name)");
}

// CLI11 validators that report our own parse errors verbatim.
CLI::Validator duration_check() {
  return CLI::Validator(
      [](std::string& v) {
        auto d = parse_duration(v);
        return d ? std::string() : d.error().text();
      },
      "DURATION");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "hotrestart: a zero-downtime hot-restart supervisor.\n"
      "It binds a server's listening sockets once, runs the server behind them, and swaps in a new\n"
      "binary without refusing a single connection, rolling back by itself when the new one fails."};
  app.set_version_flag("--version", kVersion);
  app.require_subcommand(1);
  app.footer(
      "Exit codes: run: 0 stopped on request, 1 could not start, 2 usage error.\n"
      "upgrade: 0 new generation serves, 1 rolled back (old one still serves), 2 usage error or\n"
      "no supervisor reachable, 3 refused (another upgrade in progress, or stopping).\n"
      "Signals to `run`: SIGUSR2 upgrade (same command), SIGTERM/SIGINT graceful stop, SIGQUIT stop now.");

  // ---- run
  CommonOptions run_common;
  std::vector<std::string> listen;
  std::string ready = "notify";
  std::string ready_timeout = "30s";
  std::string min_ready = "0s";
  std::string drain_signal = "SIGTERM";
  std::string drain_timeout = "30s";
  std::string state_timeout = "60s";
  std::vector<std::string> state_required;
  bool adopt_binds = false;
  std::string log_level = "info";
  std::vector<std::string> command;
  auto* run = app.add_subcommand(
      "run", "Run a server behind listening sockets that outlive it:\n  hotrestart run [OPTIONS] -- COMMAND [ARGS...]");
  add_common(run, run_common);
  run->add_option("--listen", listen,
                  "Listening socket, repeatable: [NAME=]tcp://HOST:PORT (IPv6 as [::1]; port 0 = any) or "
                  "[NAME=]unix:PATH. The worker gets them at fd 3.. with LISTEN_FDS/LISTEN_FDNAMES.")
      ->type_name("SPEC");
  run->add_option("--ready", ready,
                  "How a new worker shows it is ready: notify (it sends READY=1 to NOTIFY_SOCKET), "
                  "exec:CMD (CMD exits 0; $HOTRESTART_PID is the worker), or delay:DURATION")
      ->capture_default_str();
  run->add_option("--ready-timeout", ready_timeout, "How long a new worker may take to become ready")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--min-ready", min_ready,
                  "How long a new worker must stay up after it is ready before the old one is drained")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--drain-signal", drain_signal, "Signal that tells a worker to drain and exit")
      ->check(CLI::Validator(
          [](std::string& v) {
            auto s = parse_signal(v);
            return s ? std::string() : s.error().text();
          },
          "SIGNAL"))
      ->capture_default_str();
  run->add_option("--drain-timeout", drain_timeout, "How long a draining worker may take before SIGKILL")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--state-timeout", state_timeout,
                  "How long the state transfer from the old generation to an SDK worker may take")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--state-required", state_required,
                  "A state section that must be imported, repeatable: if it cannot be, the upgrade rolls back "
                  "(other sections just start cold)")
      ->type_name("NAME");
  run->add_flag("--adopt-binds", adopt_binds,
                "For servers that bind their own port and know nothing of hotrestart: preload a library "
                "(libhotrestart-adopt.so) that hands the server's bind() of a --listen address the supervisor's "
                "socket instead, reports READY=1 when the server first waits on it, and closes it on drain, so "
                "that the drain signal follows only once the server's connections are done");
  run->add_option("--log-level", log_level, "debug, info, warning or error")
      ->check(CLI::IsMember({"debug", "info", "warning", "error"}))
      ->capture_default_str();
  // The command line after `--` is split off before CLI11 sees argv (below), so that a
  // worker's own flags, such as --version, are never taken for ours.

  // ---- upgrade
  CommonOptions upgrade_common;
  std::string exec;
  bool upgrade_json = false;
  std::vector<std::string> new_command;
  auto* upgrade = app.add_subcommand(
      "upgrade",
      "Deploy a new generation and wait for the verdict:\n  hotrestart upgrade [OPTIONS] [-- COMMAND [ARGS...]]\nWith "
      "no arguments the same command line (which picks "
      "up a binary replaced on disk), --exec swaps only the executable, -- COMMAND replaces the command line");
  add_common(upgrade, upgrade_common);
  upgrade->add_option("--exec", exec, "New executable; the arguments stay the same");
  upgrade->add_flag("--json", upgrade_json, "Print one JSON event per line");

  // ---- status
  CommonOptions status_common;
  bool status_json = false;
  auto* status = app.add_subcommand("status", "Show listeners, generations, counters and the last error");
  add_common(status, status_common);
  status->add_flag("--json", status_json, "Print the status as JSON");

  // ---- stop
  CommonOptions stop_common;
  bool no_wait = false;
  auto* stop = app.add_subcommand("stop", "Stop gracefully (like SIGTERM): drain every worker, then exit");
  add_common(stop, stop_common);
  stop->add_flag("--no-wait", no_wait, "Return once the stop has begun instead of when the supervisor has exited");

  int our_argc = argc;
  std::vector<std::string> tail;
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--") {
      our_argc = i;
      tail.assign(argv + i + 1, argv + argc);
      break;
    }
  }
  try {
    app.parse(our_argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : kExitUsage;
  }

  const auto usage_error = [](const std::string& text) {
    fmt::print(stderr, "hotrestart: {}\n", text);
    return kExitUsage;
  };

  if (run->parsed()) {
    command = tail;
    if (command.empty())
      return usage_error("run needs the server's command line after --: hotrestart run [OPTIONS] -- COMMAND [ARGS...]");
    RunOptions options;
    options.name = run_common.name;
    options.control_path = run_common.control_path();
    auto specs = parse_listen_specs(listen);
    if (!specs) return usage_error(specs.error().text());
    options.listen = std::move(specs).value();
    auto mode = parse_ready_mode(ready);
    if (!mode) return usage_error(mode.error().text());
    options.ready = mode.value();
    options.ready_timeout = parse_duration(ready_timeout).value();
    options.min_ready = parse_duration(min_ready).value();
    options.drain_timeout = parse_duration(drain_timeout).value();
    options.drain_signal = parse_signal(drain_signal).value();
    options.drain_signal_given = run->get_option("--drain-signal")->count() > 0;
    options.state_timeout = parse_duration(state_timeout).value();
    options.state_required = state_required;
    options.adopt_binds = adopt_binds;
    options.command = command;
    set_log_level(log_level == "debug"     ? LogLevel::Debug
                  : log_level == "warning" ? LogLevel::Warning
                  : log_level == "error"   ? LogLevel::Error
                                           : LogLevel::Info);
    Supervisor supervisor(std::move(options));
    return supervisor.run();
  }
  if (upgrade->parsed()) {
    new_command = tail;
    if (!exec.empty() && !new_command.empty()) return usage_error("give --exec or -- COMMAND, not both");
    std::optional<std::string> exec_opt;
    std::optional<std::vector<std::string>> command_opt;
    if (!exec.empty()) exec_opt = exec;
    if (!new_command.empty()) command_opt = new_command;
    return client_upgrade(upgrade_common.control_path(), exec_opt, command_opt,
                          upgrade_json ? Output::Json : Output::Human);
  }
  if (!tail.empty()) return usage_error("only run and upgrade take a command line after --");
  if (status->parsed()) return client_status(status_common.control_path(), status_json ? Output::Json : Output::Human);
  if (stop->parsed()) return client_stop(stop_common.control_path(), !no_wait);
  return kExitUsage;
}
