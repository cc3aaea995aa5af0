// hotrestart: keep a server's listening sockets open forever and swap the program behind
// them without refusing a connection. See `hotrestart --help` and docs/operations.md.
#include <fcntl.h>
#include <unistd.h>

#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>

#include "build_info.h"
#include "cli_common.h"
#include "cli_config.h"
#include "src/client.h"
#include "src/duration.h"
#include "src/guard.h"
#include "src/hold.h"
#include "src/listen_spec.h"
#include "src/log.h"
#include "src/run_options.h"
#include "src/self_upgrade.h"
#include "src/signals.h"
#include "src/supervisor.h"
#include "src/worker_environment.h"

using namespace hotrestart;

namespace {

constexpr const char* kVersion = HOTRESTART_VERSION;
constexpr std::size_t kMaxUnixPath = sizeof(sockaddr_un{}.sun_path);

// "hotrestart 0.1.0 (commit 1a2b3c4d5e6f)": the version and the commit the binary was built from.
std::string version_line() {
  return fmt::format("hotrestart {} (commit {})", kVersion, hotrestart_build_commit());
}

// Lays out `text` in lines of at most `width` columns, each after the first indented by `indent`
// spaces; the newlines already in it are kept.
std::string wrap(const std::string& text, std::size_t indent, std::size_t width) {
  std::string out;
  std::size_t column = indent;
  std::istringstream lines(text);
  std::string line;
  bool first_line = true;
  while (std::getline(lines, line)) {
    if (!first_line) {
      out += "\n" + std::string(indent, ' ');
      column = indent;
    }
    first_line = false;
    std::istringstream words(line);
    std::string word;
    bool first_word = true;
    while (words >> word) {
      if (!first_word && column + 1 + word.size() > width) {
        out += "\n" + std::string(indent, ' ');
        column = indent;
      } else if (!first_word) {
        out += ' ';
        ++column;
      }
      out += word;
      column += word.size();
      first_word = false;
    }
  }
  return out;
}

// CLI11's help without its type names ("TEXT:DURATION=30s"): each option shows a placeholder that
// says what to write (set with option_text), its default goes at the end of its description, the
// usage line is written out for each command, and the text is wrapped to fit a terminal.
class HelpFormatter : public CLI::Formatter {
 public:
  static constexpr std::size_t kWidth = 100;
  static constexpr std::size_t kNameColumn = 32;

  // What the usage line of the command `name` ("" for hotrestart itself) shows after its name.
  void usage(const std::string& name, std::string line) { usage_[name] = std::move(line); }

  std::string make_usage(const CLI::App* app, std::string) const override {
    // Its whole name below hotrestart: "upgrade", "config history".
    std::string name;
    for (const CLI::App* at = app; at->get_parent() != nullptr; at = at->get_parent())
      name = name.empty() ? at->get_name() : at->get_name() + " " + name;
    const auto found = usage_.find(name);
    const std::string rest = found != usage_.end() ? found->second : "[OPTIONS]";
    return fmt::format("Usage: hotrestart{}{}{}{}\n", name.empty() ? "" : " ", name, rest.empty() ? "" : " ", rest);
  }
  std::string make_description(const CLI::App* app) const override {
    const std::string& text = app->get_description();
    return text.empty() ? std::string() : wrap(text, 0, kWidth) + "\n\n";
  }
  std::string make_option_opts(const CLI::Option* opt) const override {
    // A flag takes no value; every option that does names its placeholder with option_text.
    if (takes_no_value(opt)) return {};
    return " " + (opt->get_option_text().empty() ? std::string("VALUE") : opt->get_option_text());
  }
  std::string make_option_desc(const CLI::Option* opt) const override {
    std::string text = opt->get_description();
    if (!takes_no_value(opt) && !opt->get_default_str().empty())
      text += fmt::format(" (default: {})", opt->get_default_str());
    return text;
  }
  std::string make_option(const CLI::Option* opt, bool is_positional) const override {
    return row(make_option_name(opt, is_positional) + make_option_opts(opt), make_option_desc(opt));
  }
  std::string make_subcommand(const CLI::App* sub) const override {
    // The list of commands shows the first sentence of each; `hotrestart COMMAND --help` the rest.
    std::string text = sub->get_description();
    text = text.substr(0, std::min(text.find(". "), text.find(":\n")));
    if (!text.empty() && text.back() == '.') text.pop_back();
    return row(sub->get_name(), text);
  }
  std::string make_footer(const CLI::App* app) const override {
    return app->get_footer().empty() ? std::string() : wrap(app->get_footer(), 0, kWidth) + "\n";
  }

 private:
  // A flag (--json) rather than an option that takes a value (--name NAME).
  static bool takes_no_value(const CLI::Option* opt) { return opt->get_expected_max() == 0; }

  std::string row(const std::string& name, const std::string& text) const {
    std::string out = "  " + name;
    if (out.size() + 2 > kNameColumn) {
      out += "\n" + std::string(kNameColumn, ' ');
    } else {
      out += std::string(kNameColumn - out.size(), ' ');
    }
    return out + wrap(text, kNameColumn, kWidth) + "\n";
  }

  std::map<std::string, std::string> usage_;
};

// CLI11 validators that report our own parse errors verbatim.
CLI::Validator duration_check(Infinity infinity = Infinity::Refused) {
  return CLI::Validator(
      [infinity](std::string& v) {
        auto d = parse_duration(v, infinity);
        return d ? std::string() : d.error().text();
      },
      "DURATION");
}

// --hold on upgrade and rollback: a duration or "manual".
void add_hold_option(CLI::App* app, std::string& hold) {
  app->add_option("--hold", hold,
                  "Canary hold: once the new generation is healthy, keep both generations serving (the kernel hands "
                  "each new connection to whichever one accepts first) for this long, then promote the new one; "
                  "'manual' holds until `hotrestart promote`. `hotrestart promote` ends a hold early with the "
                  "cutover, `hotrestart abort` with a rollback in which the old generation was never drained. The "
                  "command stays attached through the hold: 0 promoted, 1 aborted or failed")
      ->option_text("DURATION|manual")
      ->check(CLI::Validator(
          [](std::string& v) {
            auto h = parse_hold(v);
            return h ? std::string() : h.error().text();
          },
          "DURATION|manual"));
}

// The hold the flag asked for (checked by CLI11 already), or none.
Hold hold_flag(const std::string& text) {
  return text.empty() ? Hold{} : parse_hold(text).value();
}

// ---- run

struct RunFlags {
  CommonOptions common;
  std::vector<std::string> listen;
  std::string ready = "notify";
  std::string ready_timeout = "30s";
  std::string min_ready = "0s";
  std::string drain_signal = "SIGTERM";
  std::string drain_timeout = "30s";
  std::string state_timeout = "60s";
  std::string state_dir;
  std::vector<std::string> state_required;
  std::string watch_window = "30s";
  bool no_park = false;
  int max_draining = 3;
  std::string watchdog = "0s";
  std::string health;
  std::string health_interval = "2s";
  int health_failures = 3;
  bool adopt_binds = false;
  bool no_http_drain = false;
  bool fdstore = false;
  std::string preflight;
  std::string preflight_timeout = "60s";
  std::string log_level = "info";
  std::string log_format = "auto";
  std::string metrics;
  std::vector<std::string> configs;
  std::string reload_timeout = "10s";
  bool watch_config = false;
  std::string config_check;
  std::string reload_signal;
  std::uint64_t event_log_size = 1024 * 1024;
  std::vector<std::string> env;
  std::vector<std::string> env_files;
  bool clear_env = false;
  std::string chdir;
};

CLI::App* add_run_command(CLI::App& app, RunFlags& f) {
  auto* run = app.add_subcommand("run", "Run a server behind listening sockets that outlive it.");
  add_common(run, f.common);
  run->add_option("--listen", f.listen,
                  "Listening socket, repeatable: [NAME=]tcp://HOST:PORT (IPv6 as [::1]; port 0 = any) or "
                  "[NAME=]unix:PATH[,mode=0660][,owner=USER][,group=GROUP] (the path ends at the first ','). The "
                  "worker gets them at fd 3.. with LISTEN_FDS/LISTEN_FDNAMES.")
      ->option_text("SPEC");
  run->add_option("--ready", f.ready,
                  "How a new worker shows it is ready: notify (it sends READY=1 to NOTIFY_SOCKET), "
                  "exec:CMD (CMD exits 0; $HOTRESTART_PID is the worker), or delay:DURATION")
      ->option_text("MODE")
      ->capture_default_str();
  run->add_option("--ready-timeout", f.ready_timeout, "How long a new worker may take to become ready")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--min-ready", f.min_ready,
                  "How long a new worker must stay up after it is ready before the old one is drained")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--drain-signal", f.drain_signal, "Signal that tells a worker to drain and exit")
      ->option_text("SIGNAL")
      ->check(CLI::Validator(
          [](std::string& v) {
            auto s = parse_signal(v);
            return s ? std::string() : s.error().text();
          },
          "SIGNAL"))
      ->capture_default_str();
  run->add_option("--drain-timeout", f.drain_timeout,
                  "How long a draining worker may take before SIGKILL, which reaches every process it started "
                  "(those that left its process group too); infinity: never killed, it drains for as long as it "
                  "takes")
      ->option_text("DURATION")
      ->check(duration_check(Infinity::Allowed))
      ->capture_default_str();
  run->add_option("--state-timeout", f.state_timeout,
                  "How long the state transfer from the old generation to an SDK worker may take")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--state-dir", f.state_dir,
                  "Where the release history is kept, across restarts of the supervisor (default: "
                  "$STATE_DIRECTORY/NAME under systemd's StateDirectory=, /var/lib/hotrestart/NAME for root, else "
                  "${XDG_STATE_HOME:-~/.local/state}/hotrestart/NAME)")
      ->option_text("DIR");
  run->add_option("--event-log-size", f.event_log_size,
                  "How large STATE-DIR/events.jsonl grows before it becomes events.jsonl.1 and a new one begins, "
                  "e.g. 512KiB or 4MiB (see `hotrestart events`)")
      ->transform(CLI::AsSizeValue(false))
      ->check(CLI::Range(std::uint64_t{4096}, std::uint64_t{1} << 30))
      ->option_text("SIZE")
      ->default_str("1MiB");
  run->add_option("--state-required", f.state_required,
                  "A state section that must be imported, repeatable: if it cannot be, the upgrade rolls back "
                  "(other sections just start cold)")
      ->option_text("NAME");
  run->add_option("--watch-window", f.watch_window,
                  "After a cutover, how long the new release is watched: if it crashes, misses its --watchdog or "
                  "fails --health within this time, the previous release is brought back automatically (0s: never)")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_flag("--no-park", f.no_park,
                "Let the generation a cutover replaces exit once drained, rather than keep it parked (drained, "
                "alive, its state kept) through the watch window so that a revert resumes it in milliseconds; a "
                "revert then starts the previous release again");
  run->add_option("--max-draining", f.max_draining,
                  "The most old generations that may drain (or wait parked) at once; when an upgrade would make one "
                  "more, the oldest is killed, so that upgrades in quick succession cannot pile up processes")
      ->option_text("N")
      ->check(CLI::Range(1, 1000))
      ->capture_default_str();
  run->add_option("--watchdog", f.watchdog,
                  "Once ready, a worker must send WATCHDOG=1 to NOTIFY_SOCKET at least this often (it gets "
                  "WATCHDOG_USEC, as under systemd); one that stops is killed, or reverted in the watch window "
                  "(0s: no watchdog)")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--health", f.health,
                  "exec:CMD, run every --health-interval once a worker is ready, with $HOTRESTART_PID set to it; "
                  "--health-failures failures in a row make it unhealthy (reverted in the watch window, shown by "
                  "`status --check` after it). Aim it at the worker itself, never at a shared --listen port")
      ->option_text("exec:CMD")
      ->check(CLI::Validator(
          [](std::string& v) {
            auto c = parse_health_command(v);
            return c ? std::string() : c.error().text();
          },
          ""));
  run->add_option("--health-interval", f.health_interval,
                  "How often --health runs; a check that has not exited by the next one has failed")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--health-failures", f.health_failures, "How many --health failures in a row make a worker unhealthy")
      ->option_text("N")
      ->check(CLI::Range(1, 100))
      ->capture_default_str();
  run->add_flag("--adopt-binds", f.adopt_binds,
                "For servers that bind their own port and know nothing of hotrestart: preload a library "
                "(libhotrestart-adopt.so) that hands the server's bind() of a --listen address the supervisor's "
                "socket instead, reports READY=1 when the server first waits on it, and closes it on drain; on "
                "drain it also makes each HTTP/1.x response the server writes next say 'Connection: close', so "
                "that keep-alive clients close first, and the drain signal (even a given --drain-signal) follows "
                "only once the server's connections are done");
  run->add_flag("--no-http-drain", f.no_http_drain,
                "With --adopt-binds: leave the server's responses as they are on drain (for a server that is not "
                "HTTP/1.x, or that drains its keep-alive connections well by itself); a given --drain-signal then "
                "goes as soon as the listeners are closed");
  run->add_flag("--fdstore", f.fdstore,
                "Under systemd (NOTIFY_SOCKET), keep a copy of every listening socket in the service's file "
                "descriptor store (FileDescriptorStoreMax= in the unit), so that after `systemctl restart` or an "
                "automatic restart the new supervisor gets the same sockets back and the port never closes; on by "
                "itself when systemd says the store is available ($FDSTORE)");
  run->add_option("--preflight", f.preflight,
                  "A check run with /bin/sh -c before each release is started (the first, every upgrade, SIGUSR2, "
                  "rollback; not crash restarts or reverts), e.g. 'nginx -t -c /etc/nginx/nginx.conf'. "
                  "$HOTRESTART_COMMAND, $HOTRESTART_EXECUTABLE and $HOTRESTART_RELEASE describe the new release. If "
                  "it fails, nothing is started: the deployment fails (run exits 1) with its output")
      ->option_text("CMD");
  run->add_option("--config", f.configs,
                  "A configuration file the supervisor manages, repeatable: NAME=PATH. Workers that read NAME "
                  "(Worker::add_config) start with its live version; `hotrestart reload` (or SIGHUP) validates a "
                  "new one in every generation and switches all of them or none; every version is kept in "
                  "STATE-DIR/configs/NAME (`hotrestart config history`)")
      ->option_text("NAME=PATH");
  run->add_flag("--watch-config", f.watch_config,
                "Reload a --config file as soon as it is saved (by a rename onto it, or written in place and "
                "closed), with no command; a file that is refused is reported (log, events, status) and the "
                "running version stays");
  run->add_option("--config-check", f.config_check,
                  "For a server that reads a --config file itself: a command that validates a new version before "
                  "it is used ('{file}' is replaced by its path, a file beside the configured one), e.g. "
                  "'nginx -t -c {file}'; run with /bin/sh -c, it must exit 0")
      ->option_text("CMD");
  run->add_option("--reload-signal", f.reload_signal,
                  "For a server that reads a --config file itself: once a new version is accepted it replaces the "
                  "file, and this signal goes to the main process of each generation that does not read it "
                  "through the SDK (nginx: SIGHUP)")
      ->option_text("SIGNAL");
  run->add_option("--reload-timeout", f.reload_timeout,
                  "How long a configuration reload waits for every generation to validate and switch; past it the "
                  "reload is refused and nobody switches")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--preflight-timeout", f.preflight_timeout,
                  "How long the preflight check may take; past it its process group is killed and it fails")
      ->option_text("DURATION")
      ->check(duration_check())
      ->capture_default_str();
  run->add_option("--env", f.env,
                  "A variable for the workers, repeatable: NAME=VALUE, taken as it is; later ones win, and win over "
                  "--env-file. The variables the supervisor sets itself (LISTEN_*, NOTIFY_SOCKET, HOTRESTART_*, "
                  "WATCHDOG_USEC, PWD) cannot be given")
      ->option_text("NAME=VALUE");
  run->add_option("--env-file", f.env_files,
                  "A file of NAME=VALUE lines for the workers, repeatable, in order (systemd's EnvironmentFile= "
                  "format: '#' and ';' comments, optional '...' or \"...\" quotes, no expansion); read when run "
                  "starts. A bad line stops run with FILE:LINE and why")
      ->option_text("PATH");
  run->add_flag("--clear-env", f.clear_env,
                "Start workers, probes and the preflight check from an empty environment, instead of the "
                "supervisor's (less its own LISTEN_*, NOTIFY_SOCKET, WATCHDOG_*, HOTRESTART_*): only --env-file, "
                "--env, PATH (systemd's default unless given) and what the supervisor always sets");
  run->add_option("--chdir", f.chdir,
                  "The directory workers, probes and the preflight check start in (default: the one run was "
                  "started in); the supervisor itself moves to / once it has resolved its relative paths")
      ->option_text("DIR");
  run->add_option("--log-level", f.log_level, "debug, info, warning or error")
      ->option_text("LEVEL")
      ->check(CLI::IsMember(log_level_names()))
      ->capture_default_str();
  run->add_option("--log-format", f.log_format,
                  "How stderr's lines look, the supervisor's and the workers' relayed ones: text (a UTC time, "
                  "then 'hotrestart[PID]: ' or 'genN[PID]: '), journal (a '<N>' priority prefix that the journal "
                  "reads, no time) or json (one object per line); auto is journal when stderr is the journal "
                  "(JOURNAL_STREAM), text otherwise")
      ->option_text("FORMAT")
      ->check(CLI::IsMember({"auto", "text", "journal", "json"}))
      ->capture_default_str();
  run->add_option("--metrics", f.metrics,
                  "Serve Prometheus metrics over HTTP at ADDRESS: tcp://HOST:PORT (GET /metrics) or unix:PATH. "
                  "Anyone who can reach it can read them; bind it to loopback or a private network")
      ->option_text("ADDRESS");
  // The command line after `--` is split off before CLI11 sees argv (see split_command_line), so
  // that a worker's own flags, such as --version, are never taken for ours.
  return run;
}

// Whether systemd's socket activation passed this process its listening sockets (LISTEN_PID is
// ours): then `run` serves those and needs no --listen (ListenerSet::adopt_or_bind).
bool socket_activated() {
  const char* pid = std::getenv("LISTEN_PID");
  const char* fds = std::getenv("LISTEN_FDS");
  return pid != nullptr && fds != nullptr && std::to_string(::getpid()) == pid;
}

// The flags checked by CLI11 (durations, signals) are valid here; the rest are parsed now. Every
// relative path is made absolute against `base` (run_directory()), since the supervisor then moves
// to "/": the state and control directories, unix listeners and --metrics, environment files, the
// command's own path (one with a '/'; a bare name is looked up in PATH) and --chdir.
//
// `after_self_upgrade`: this is the new image of an `upgrade --self`, which takes its sockets from the
// guard, socket-activated or not (the activation's variables were used up by the first image).
Result<RunOptions> run_options(const RunFlags& f, const CLI::App& run, std::vector<std::string> command,
                               const std::string& base, bool after_self_upgrade) {
  if (f.listen.empty() && !socket_activated() && !after_self_upgrade) {
    return Error::message(
        "run needs at least one --listen SPEC (or sockets passed by socket activation): hotrestart run [OPTIONS] "
        "--listen SPEC... -- COMMAND [ARGS...]");
  }
  if (command.empty()) {
    return Error::message(
        "run needs the server's command line after --: hotrestart run [OPTIONS] --listen SPEC... -- COMMAND "
        "[ARGS...]");
  }
  if (base.empty()) {
    return Error::message(
        "cannot tell which directory run is started in (was it deleted?): start it in one that exists");
  }
  RunOptions options;
  options.name = f.common.name;
  options.control_path = absolute_path(base, f.common.serve_path());
  auto specs = parse_listen_specs(f.listen);
  if (!specs) return specs.error();
  options.listen = std::move(specs).value();
  for (ListenSpec& spec : options.listen) {
    if (spec.kind != ListenSpec::Kind::Unix) continue;
    spec.path = absolute_path(base, spec.path);
    if (spec.path.size() >= kMaxUnixPath) {
      return Error::message(fmt::format("invalid --listen '{}': the socket path, {}, is longer than {} bytes",
                                        spec.text, spec.path, kMaxUnixPath - 1));
    }
  }
  options.environment.clear = f.clear_env;
  for (const std::string& file : f.env_files)
    options.environment.files.push_back(absolute_path(base, file));
  options.environment.assignments = f.env;
  auto env = base_worker_environment(options.environment, own_environment());
  if (!env) return env.error();
  options.worker_env = std::move(env).value();
  options.workdir = f.chdir.empty() ? base : absolute_path(base, f.chdir);
  if (command.front().find('/') != std::string::npos) command.front() = absolute_path(base, command.front());
  auto mode = parse_ready_mode(f.ready);
  if (!mode) return mode.error();
  options.ready = mode.value();
  options.ready_timeout = parse_duration(f.ready_timeout).value();
  if (options.ready_timeout.count() == 0) return Error::message("--ready-timeout must be longer than 0s");
  options.min_ready = parse_duration(f.min_ready).value();
  options.drain_timeout = parse_duration(f.drain_timeout, Infinity::Allowed).value();
  options.drain_signal = parse_signal(f.drain_signal).value();
  options.drain_signal_given = run.get_option("--drain-signal")->count() > 0;
  options.state_timeout = parse_duration(f.state_timeout).value();
  options.state_dir = absolute_path(base, f.state_dir);
  options.event_log_bytes = static_cast<std::size_t>(f.event_log_size);
  options.state_required = f.state_required;
  options.watch_window = parse_duration(f.watch_window).value();
  options.park = !f.no_park;
  options.max_draining = f.max_draining;
  options.watchdog = parse_duration(f.watchdog).value();
  if (!f.health.empty()) options.health.command = parse_health_command(f.health).value();
  options.health.interval = parse_duration(f.health_interval).value();
  if (options.health.interval.count() == 0) return Error::message("--health-interval must be longer than 0s");
  options.health.failures = f.health_failures;
  options.adopt_binds = f.adopt_binds;
  options.http_drain = !f.no_http_drain;
  if (f.no_http_drain && !f.adopt_binds) return Error::message("--no-http-drain goes with --adopt-binds only");
  options.fdstore = f.fdstore;
  options.preflight = f.preflight;
  options.preflight_timeout = parse_duration(f.preflight_timeout).value();
  if (!f.metrics.empty()) {
    auto metrics = parse_metrics_address(f.metrics);
    if (!metrics) return metrics.error();
    if (metrics->kind == ListenSpec::Kind::Unix) {
      metrics->path = absolute_path(base, metrics->path);
      if (metrics->path.size() >= kMaxUnixPath) {
        return Error::message(fmt::format("invalid --metrics '{}': the socket path, {}, is longer than {} bytes",
                                          f.metrics, metrics->path, kMaxUnixPath - 1));
      }
    }
    options.metrics = std::move(metrics).value();
  }
  for (const std::string& text : f.configs) {
    auto spec = parse_config_spec(text);
    if (!spec) return spec.error();
    spec->path = absolute_path(base, spec->path);
    for (const ConfigSpec& other : options.configs)
      if (other.name == spec->name) return Error::message(fmt::format("--config {} is given twice", spec->name));
    options.configs.push_back(std::move(spec).value());
  }
  options.reload_timeout = parse_duration(f.reload_timeout).value();
  options.watch_configs = f.watch_config;
  options.config_check = f.config_check;
  if (!f.reload_signal.empty()) {
    auto signo = parse_signal(f.reload_signal);
    if (!signo) return signo.error().context("--reload-signal");
    options.reload_signal = signo.value();
  }
  if ((!f.config_check.empty() || options.reload_signal != 0) && options.configs.empty())
    return Error::message("--config-check and --reload-signal go with --config NAME=PATH");
  if (f.watch_config && options.configs.empty()) return Error::message("--watch-config needs at least one --config");
  if (options.reload_timeout.count() == 0) return Error::message("--reload-timeout must be longer than 0s");
  options.command = std::move(command);
  return options;
}

// ---- upgrade, status, stop

// A relative path to a program ("./server-v2", "bin/server") means this command's working
// directory, not the supervisor's, which may be anywhere; a bare name is looked up in the workers'
// PATH, as before.
std::string from_here(const std::string& program) {
  if (program.empty() || program.front() == '/' || program.find('/') == std::string::npos) return program;
  const std::string cwd = run_directory(false);
  return cwd.empty() ? program : absolute_path(cwd, program);
}

struct UpgradeFlags {
  CommonOptions common;
  std::string exec;
  std::string hold;
  std::string preflight;
  bool json = false;
  bool wait = false;
  bool force = false;
  bool self = false;
};

constexpr const char* kPreflightOverride =
    "The check to run before this deployment instead of the one `run --preflight` gave ('' for none)";

// The flag's value when it was given (an empty one included), else nullopt.
std::optional<std::string> given(const CLI::App& command, const char* flag, const std::string& value) {
  return command.get_option(flag)->count() > 0 ? std::optional<std::string>(value) : std::nullopt;
}

void add_wait_flag(CLI::App* app, bool& wait) {
  app->add_flag("--wait", wait,
                "After a successful cutover, stay through the watch window (run --watch-window) and exit 1 if the "
                "release is reverted in it, 0 once it has served through it");
}

CLI::App* add_upgrade_command(CLI::App& app, UpgradeFlags& f) {
  auto* upgrade = app.add_subcommand(
      "upgrade",
      "Deploy a new generation and wait for the verdict. With no arguments the same command line (which picks up a "
      "binary replaced on disk), --exec swaps only the executable, -- COMMAND replaces the command line.");
  add_common(upgrade, f.common);
  upgrade->add_option("--exec", f.exec, "New executable; the arguments stay the same")->option_text("PATH");
  add_hold_option(upgrade, f.hold);
  upgrade->add_option("--preflight", f.preflight, kPreflightOverride)->option_text("CMD");
  upgrade->add_flag("--json", f.json, "Print one JSON event per line");
  add_wait_flag(upgrade, f.wait);
  upgrade->add_flag("--force", f.force,
                    "Deploy even an executable (same SHA-256) whose release was reverted, which is refused otherwise");
  upgrade->add_flag("--self", f.self,
                    "Upgrade the supervisor itself instead: run the hotrestart binary at its path again (or --exec "
                    "PATH) in place, same pid; the generations serve on, and a new binary that cannot start gives way "
                    "to the old one");
  return upgrade;
}

struct RollbackFlags {
  CommonOptions common;
  std::uint64_t to = 0;
  std::string hold;
  std::string preflight;
  bool json = false;
  bool wait = false;
};

CLI::App* add_rollback_command(CLI::App& app, RollbackFlags& f) {
  auto* rollback =
      app.add_subcommand("rollback",
                         "Run an earlier release again, as an upgrade to it, and wait for the verdict. It runs the "
                         "very executable that release ran, even if the file on disk was replaced or deleted since; "
                         "a downgrade keeps the state as an upgrade does.");
  add_common(rollback, f.common);
  rollback
      ->add_option("--to", f.to,
                   "The release to go back to, one that served (default: the last one before the active one "
                   "that served and runs something else; see `hotrestart history`)")
      ->check(CLI::Validator(
          [](std::string& v) {
            return v.find_first_not_of("0123456789") == std::string::npos &&
                           v.find_first_not_of('0') != std::string::npos
                       ? std::string()
                       : "must be a release number (1, 2, ...; see `hotrestart history`), not '" + v + "'";
          },
          ""))
      ->option_text("N");
  add_hold_option(rollback, f.hold);
  rollback->add_option("--preflight", f.preflight, kPreflightOverride)->option_text("CMD");
  rollback->add_flag("--json", f.json, "Print one JSON event per line");
  add_wait_flag(rollback, f.wait);
  return rollback;
}

// promote and abort: the two ways to end a canary hold (upgrade --hold) before its time.
CLI::App* add_end_hold_command(CLI::App& app, CommonOptions& common, const std::string& name) {
  const bool promote = name == "promote";
  auto* command = app.add_subcommand(
      name, promote ? "End the hold of an `upgrade --hold` now with the cutover: the new generation becomes the "
                      "active one and the old one drains. Exits 0 once done, 3 when no upgrade is holding."
                    : "End the hold of an `upgrade --hold` now with a rollback: the new generation is stopped and the "
                      "old one, which was never told to drain, serves on alone. Exits 0 once the new generation has "
                      "exited, 3 when no upgrade is holding. The upgrade's verdict (and the release history) says who "
                      "aborted it.");
  add_common(command, common);
  return command;
}

struct QueryFlags {
  CommonOptions common;
  bool json = false;        // status, history
  bool check = false;       // status
  bool no_wait = false;     // stop
  std::uint64_t last = 20;  // events
  bool follow = false;      // events
};

CLI::App* add_history_command(CLI::App& app, QueryFlags& f) {
  auto* history = app.add_subcommand("history", "List the releases: what each ran, who asked, and how it ended");
  add_common(history, f.common);
  history->add_flag("--json", f.json, "Print the history as JSON");
  return history;
}

CLI::App* add_events_command(CLI::App& app, QueryFlags& f) {
  auto* events = app.add_subcommand("events",
                                    "Show what happened: each phase of each upgrade, each generation started, ready, "
                                    "draining or exited, each request and who sent it (kept in STATE-DIR/events.jsonl "
                                    "across restarts)");
  add_common(events, f.common);
  events->add_option("-n,--last", f.last, "How many of the newest events to show")
      ->check(CLI::Range(std::uint64_t{0}, std::uint64_t{100'000}))
      ->option_text("N")
      ->capture_default_str();
  events->add_flag("-f,--follow", f.follow, "Then show each new event as it happens, until the supervisor stops");
  events->add_flag("--json", f.json, "Print each event as one JSON object a line");
  return events;
}

CLI::App* add_status_command(CLI::App& app, QueryFlags& f) {
  auto* status = app.add_subcommand("status", "Show listeners, generations, counters and the last error");
  add_common(status, f.common);
  status->add_flag("--json", f.json, "Print the status as JSON");
  status->add_flag("--check", f.check,
                   "Print one line saying whether the service is up, and exit with it: 0 a generation is ready and "
                   "healthy, 4 none is, 5 the worker is crash-looping, 6 a release was just reverted, 7 the active "
                   "generation fails --health or missed --watchdog (8: no supervisor runs). For probes, such "
                   "as Kubernetes' exec probes");
  return status;
}

CLI::App* add_stop_command(CLI::App& app, QueryFlags& f) {
  auto* stop = app.add_subcommand("stop", "Stop gracefully (like SIGTERM): drain every worker, then exit");
  add_common(stop, f.common);
  stop->add_flag("--no-wait", f.no_wait, "Return once the stop has begun instead of when the supervisor has exited");
  return stop;
}

// Our own arguments end at the first `--`; what follows is a worker's command line.
std::pair<int, std::vector<std::string>> split_command_line(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::string_view(argv[i]) == "--") return {i, std::vector<std::string>(argv + i + 1, argv + argc)};
  }
  return {argc, {}};
}

}  // namespace

namespace hotrestart {

int usage_error(const std::string& text) {
  fmt::print(stderr, "hotrestart: {}\n", text);
  return kExitUsage;
}

void add_common(CLI::App* app, CommonOptions& common) {
  app->add_option("--name", common.name,
                  "Supervisor name; picks the default control socket: $RUNTIME_DIRECTORY/NAME.sock under "
                  "systemd's RuntimeDirectory=, /run/hotrestart/NAME.sock for root, else "
                  "$XDG_RUNTIME_DIR/hotrestart/NAME.sock or /tmp/hotrestart-UID/NAME.sock")
      ->option_text("NAME")
      ->check([](const std::string& v) {
        return valid_listener_name(v) ? std::string() : "must be 1-64 letters, digits, '.', '_' or '-'";
      });
  app->add_option("--control", common.control, "Control socket path (overrides --name)")->option_text("PATH");
}

}  // namespace hotrestart

int main(int argc, char** argv) {
  // The supervisor's guard (guard.h): the same binary, started by `run`, never by hand.
  if (argc >= 2 && std::string_view(argv[1]) == "__guard") return hotrestart::run_guard(argc, argv);
  // What `upgrade --self` asks of a binary before it execs it (self_upgrade.h).
  if (argc >= 2 && std::string_view(argv[1]) == "__self-check") {
    fmt::print("{}\n", hotrestart::self_check_line(kVersion));
    return 0;
  }
  CLI::App app{
      "hotrestart: a zero-downtime hot-restart supervisor. It binds a server's listening sockets once, runs the "
      "server behind them, and swaps in a new binary without refusing a single connection, rolling back by itself "
      "when the new one fails.",
      // The name in messages and the usage line, rather than the path it was run by.
      "hotrestart"};
  auto help = std::make_shared<HelpFormatter>();
  help->usage("", "COMMAND [OPTIONS]   (hotrestart COMMAND --help for each)");
  help->usage("run", "[OPTIONS] --listen SPEC... -- COMMAND [ARGS...]");
  help->usage("upgrade", "[OPTIONS] [-- COMMAND [ARGS...]]");
  help->usage("version", "");
  help->usage("reload", "[NAME] [OPTIONS]");
  help->usage("config", "history|show|diff|rollback [OPTIONS]");
  help->usage("config show", "[V] [OPTIONS]");
  help->usage("config diff", "[A B] [OPTIONS]");
  help->usage("config rollback", "[V] [OPTIONS]");
  // Set before the subcommands are added: each takes its parent's formatter.
  app.formatter(help);
  app.set_help_flag("-h,--help", "Print this help and exit");
  app.set_version_flag("--version", version_line(), "Print the version and the commit it was built from, and exit");
  app.require_subcommand(1);
  app.footer(
      "Exit codes: 0 success; 1 failed (run could not start; upgrade or rollback rolled back, or was reverted with "
      "--wait); 2 usage error, or the supervisor refused this user; 3 refused for the supervisor's state (another "
      "upgrade in progress, stopping, a reverted executable without --force, no release to run; promote, abort: no "
      "upgrade is holding); 4-7 status --check: nothing serves, crash-looping, just reverted, unhealthy; 8 no "
      "supervisor runs at the control socket.\n"
      "Signals to `run`: SIGUSR2 upgrade (same command), SIGHUP reload the configurations (run --config; without "
      "one, an upgrade recorded as a reload), SIGTERM/SIGINT graceful stop, SIGQUIT stop now.\n"
      "More: man hotrestart, and docs/operations.md.");
  RunFlags run_flags;
  UpgradeFlags upgrade_flags;
  QueryFlags status_flags;
  QueryFlags stop_flags;
  QueryFlags history_flags;
  QueryFlags events_flags;
  RollbackFlags rollback_flags;
  CommonOptions promote_flags;
  CommonOptions abort_flags;
  auto* run = add_run_command(app, run_flags);
  auto* upgrade = add_upgrade_command(app, upgrade_flags);
  auto* rollback = add_rollback_command(app, rollback_flags);
  auto* promote_command = add_end_hold_command(app, promote_flags, "promote");
  auto* abort_command = add_end_hold_command(app, abort_flags, "abort");
  auto* history = add_history_command(app, history_flags);
  auto* events = add_events_command(app, events_flags);
  auto* status = add_status_command(app, status_flags);
  auto* stop = add_stop_command(app, stop_flags);
  ConfigFlags config_flags;
  const ConfigCommands config = add_config_commands(app, config_flags);
  CLI::App* reload = config.reload;
  auto* version = app.add_subcommand("version", "Print the version and the commit it was built from");

  auto [our_argc, tail] = split_command_line(argc, argv);
  try {
    app.parse(our_argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help, --version.
  } catch (const CLI::ParseError& e) {
    // A mistyped word gets a suggestion; a bad value, CLI11's message (which names the flag).
    if (auto unknown = unknown_word(app, our_argc, argv)) return usage_error(*unknown);
    if (our_argc == 1) return usage_error("which command? hotrestart COMMAND [OPTIONS] (see `hotrestart --help`)");
    std::string help_for = "hotrestart --help";
    std::string innermost;  // "config show", of the commands given.
    for (const CLI::App* command : app.get_subcommands())
      if (full_name(command).size() > innermost.size()) innermost = full_name(command);
    if (!innermost.empty()) help_for = fmt::format("hotrestart {} --help", innermost);
    return usage_error(fmt::format("{} (see `{}`)", e.what(), help_for));
  }

  if (version->parsed()) {
    fmt::print("{}\n", version_line());
    return kExitOk;
  }

  if (run->parsed()) {
    const bool after_self_upgrade = std::getenv(kSelfUpgradeFrom) != nullptr || std::getenv(kSelfUpgradeFailed);
    const std::string base = run_directory(after_self_upgrade);
    auto options = run_options(run_flags, *run, std::move(tail), base, after_self_upgrade);
    if (!options) {
      // The new image of an `upgrade --self` that refuses its command line (an --env-file gone bad,
      // a user that no longer exists): the old binary takes over again, as for any failed start.
      if (const char* from = std::getenv(kSelfUpgradeFrom)) {
        const int old_binary = std::atoi(from);
        if (old_binary >= 3 && ::fcntl(old_binary, F_GETFD) >= 0) {
          log_error(
              "upgrade --self: the new supervisor refused its command line: {}; going back to the previous binary",
              options.error().text());
          ::unsetenv(kSelfUpgradeFrom);
          const Error failed =
              roll_back_to(old_binary, std::vector<std::string>(argv, argv + argc),
                           fmt::format("the new supervisor refused its command line: {}", options.error().text()));
          log_error("{}", failed.text());
        }
      }
      return usage_error(options.error().text());
    }
    set_log_level(log_level_named(run_flags.log_level).value_or(LogLevel::Info));
    set_log_format(log_format_named(run_flags.log_format)
                       .value_or(detect_log_format(std::getenv("JOURNAL_STREAM"), STDERR_FILENO)));
    options->argv.assign(argv, argv + argc);
    // After `upgrade --self`: this image is the new one (the old binary to go back to), or the old
    // one again (why the new one failed). Neither reaches a worker.
    if (const char* from = std::getenv(kSelfUpgradeFrom)) {
      options->self_upgrade_from = std::atoi(from);
      if (options->self_upgrade_from < 3 || ::fcntl(options->self_upgrade_from, F_GETFD) < 0)
        options->self_upgrade_from = -1;
      else
        ::fcntl(options->self_upgrade_from, F_SETFD, FD_CLOEXEC);
    }
    if (const char* failed = std::getenv(kSelfUpgradeFailed)) options->self_upgrade_failed = failed;
    ::unsetenv(kSelfUpgradeFrom);
    ::unsetenv(kSelfUpgradeFailed);
    // Nothing the supervisor holds may be a directory that can vanish: every path it was given is
    // absolute by now, and its workers start in their own directory. The next image of an
    // `upgrade --self` (it starts in "/" then) resolves the same command line against `base`.
    ::setenv(kRunDirectoryVariable, base.c_str(), 1);
    if (const char* library = std::getenv("HOTRESTART_ADOPT_LIBRARY"); library != nullptr && library[0] != '\0')
      ::setenv("HOTRESTART_ADOPT_LIBRARY", absolute_path(base, library).c_str(), 1);
    if (::chdir("/") != 0) log_warn("cannot move to /: {}", std::strerror(errno));
    const int old_binary = options->self_upgrade_from;
    const std::vector<std::string> own_argv = options->argv;
    int rc = kRunExitFailed;
    std::string why;
    {
      Supervisor supervisor(std::move(options).value());
      rc = supervisor.run();
      why = supervisor.start_error();
    }
    if (rc == kRunExitFailed && old_binary >= 0 && !why.empty()) {
      // The new image could not start: the old binary takes over again, from the guard.
      log_error("upgrade --self: the new supervisor could not start; going back to the previous binary");
      const Error failed =
          roll_back_to(old_binary, own_argv, fmt::format("the new supervisor could not start: {}", why));
      log_error("{}", failed.text());
    }
    return rc;
  }
  if (upgrade->parsed() && upgrade_flags.self) {
    if (!tail.empty()) return usage_error("upgrade --self takes --exec PATH, not a command line");
    if (!upgrade_flags.hold.empty() || upgrade_flags.wait || upgrade_flags.force ||
        upgrade->get_option("--preflight")->count() > 0)
      return usage_error("upgrade --self takes only --exec (and --control or --name)");
    return client_self_upgrade(
        upgrade_flags.common.control_path(),
        upgrade_flags.exec.empty() ? std::nullopt : std::optional<std::string>(from_here(upgrade_flags.exec)));
  }
  if (upgrade->parsed()) {
    if (!upgrade_flags.exec.empty() && !tail.empty()) return usage_error("give --exec or -- COMMAND, not both");
    std::optional<std::string> exec;
    std::optional<std::vector<std::string>> command;
    if (!upgrade_flags.exec.empty()) exec = from_here(upgrade_flags.exec);
    if (!tail.empty()) {
      tail.front() = from_here(tail.front());
      command = std::move(tail);
    }
    return client_upgrade(
        upgrade_flags.common.control_path(), exec, command,
        Deploy{upgrade_flags.json ? Output::Json : Output::Human, upgrade_flags.wait, upgrade_flags.force,
               hold_flag(upgrade_flags.hold), given(*upgrade, "--preflight", upgrade_flags.preflight)});
  }
  if (!tail.empty()) return usage_error("only run and upgrade take a command line after --");
  if (rollback->parsed()) {
    return client_rollback(
        rollback_flags.common.control_path(),
        rollback_flags.to == 0 ? std::nullopt : std::optional<std::uint64_t>(rollback_flags.to),
        Deploy{rollback_flags.json ? Output::Json : Output::Human, rollback_flags.wait, false,
               hold_flag(rollback_flags.hold), given(*rollback, "--preflight", rollback_flags.preflight)});
  }
  if (reload->parsed() || config.config->parsed()) return run_config_command(config, config_flags);
  if (promote_command->parsed()) return client_end_hold(promote_flags.control_path(), "promote");
  if (abort_command->parsed()) return client_end_hold(abort_flags.control_path(), "abort");
  if (history->parsed()) {
    return client_history(history_flags.common.control_path(), history_flags.json ? Output::Json : Output::Human);
  }
  if (events->parsed()) {
    return client_events(events_flags.common.control_path(), events_flags.json ? Output::Json : Output::Human,
                         events_flags.last, events_flags.follow);
  }
  if (status->parsed()) {
    return client_status(status_flags.common.control_path(), status_flags.json ? Output::Json : Output::Human,
                         status_flags.check);
  }
  if (stop->parsed()) return client_stop(stop_flags.common.control_path(), !stop_flags.no_wait);
  return kExitUsage;
}
