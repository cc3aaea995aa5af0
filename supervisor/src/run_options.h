// What `hotrestart run` was asked to do: the parsed command line, and the defaults that follow
// from it (where the control socket goes). Parsing only; nothing here opens anything but the
// control socket's directory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/base/result.h>

#include "config_store.h"
#include "duration.h"
#include "listen_spec.h"
#include "worker_environment.h"

namespace hotrestart {

// How a new generation proves it is ready (--ready).
struct ReadyMode {
  enum class Kind { Notify, Exec, Delay };
  Kind kind = Kind::Notify;
  std::string command;  // Exec
  Millis delay{0};      // Delay
  std::string describe() const;
};
Result<ReadyMode> parse_ready_mode(std::string_view text);

// A periodic check that a ready generation goes on serving (--health exec:CMD): CMD runs every
// `interval` with $HOTRESTART_PID set to the worker, and `failures` failures in a row (a non-zero
// exit, or no exit within the interval) make the generation unhealthy.
struct HealthCheck {
  std::string command;  // Empty: no health check.
  Millis interval{2'000};
  int failures = 3;
  std::string describe() const;
};
// "exec:CMD" -> the command.
Result<std::string> parse_health_command(std::string_view text);

struct RunOptions {
  std::string name = "default";
  std::string control_path;
  std::string state_dir;                      // Empty: default_state_dir(name).
  std::size_t event_log_bytes = 1024 * 1024;  // The bound of STATE-DIR/events.jsonl (event_log.h).
  std::vector<ListenSpec> listen;
  ReadyMode ready;
  Millis ready_timeout{30'000};
  Millis min_ready{0};
  int drain_signal = 15;  // SIGTERM
  // --drain-signal was given: with --adopt-binds and --no-http-drain, it goes at once.
  bool drain_signal_given = false;
  Millis drain_timeout{30'000};
  Millis state_timeout{60'000};
  std::vector<std::string> state_required;  // Sections whose import failure rolls back.
  // After a cutover, how long the new release is watched: if it crashes, misses its watchdog or
  // fails its health check within this time, the previous release comes back (0: never).
  Millis watch_window{30'000};
  // Keep the generation a cutover replaced parked through the watch window, for a revert to resume.
  bool park = true;
  // The most generations that may drain (or be parked) at once; past it the oldest is killed.
  int max_draining = 3;
  Millis watchdog{0};  // WATCHDOG=1 at least this often once ready (0: no watchdog).
  HealthCheck health;
  bool adopt_binds = false;  // Preload libhotrestart-adopt into every worker.
  bool http_drain = true;    // With adopt_binds: the library's HTTP drain (not --no-http-drain).
  // --fdstore: keep the listening sockets in systemd's fd store (FDSTORE=1), for the next supervisor.
  bool fdstore = false;
  std::string preflight;  // Run with /bin/sh -c before each release is spawned (preflight.h).
  Millis preflight_timeout{60'000};
  std::optional<ListenSpec> metrics;  // --metrics: where the Prometheus endpoint listens.
  std::vector<ConfigSpec> configs;    // --config NAME=PATH, the paths absolute.
  Millis reload_timeout{10'000};      // How long a reload waits for every generation's answer.
  bool watch_configs = false;         // --watch-config: a saved file is reloaded with no command.
  std::string config_check;           // --config-check CMD: validates a new version ({file}).
  int reload_signal = 0;              // --reload-signal: tells servers that read the file (0: none).
  std::vector<std::string> command;
  // --clear-env, --env-file, --env as given (the files as absolute paths), and the environment they
  // make (worker_environment.h), read when `run` started; nullopt: the supervisor's environment as
  // it is when the workers' launcher is made.
  EnvironmentFlags environment;
  std::optional<std::vector<std::string>> worker_env;
  // Where workers, probes and the preflight check start (--chdir, absolute; by default the
  // directory `run` started in); empty: the supervisor's own directory.
  std::string workdir;
  // The supervisor's own command line, for `upgrade --self`, which runs it again.
  std::vector<std::string> argv;
  // This process is the new image of a self-upgrade: the old binary's descriptor (O_PATH), to go
  // back to if this one cannot start; -1 otherwise.
  int self_upgrade_from = -1;
  // This process is the old binary again: why the new one could not start ("" otherwise).
  std::string self_upgrade_failed;
};

// Why an exec probe (--ready or --health) looks aimed at a listening address the supervisor shares
// between generations, where it may reach the old generation instead of the one it checks: one
// sentence per probe that does, to print as a warning at start.
std::vector<std::string> shared_port_probe_warnings(const RunOptions& options);

// `path` as an absolute path: as it is when it starts with '/', else under `base` (an absolute
// directory), with its leading "./" components dropped. Only the text is changed: nothing is looked
// up, so that it works for files not yet made and directories since deleted.
std::string absolute_path(const std::string& base, const std::string& path);

// The directory `run` resolves its relative paths against: the one it was started in, or, in the
// new image of an `upgrade --self` (which starts in "/"), the one the first image was started in
// (kRunDirectoryVariable, which `run` sets in its own environment for that). Empty when the current
// directory is gone.
inline constexpr const char* kRunDirectoryVariable = "HOTRESTART_RUN_DIRECTORY";
std::string run_directory(bool after_self_upgrade);

// Exit codes of `hotrestart run`.
inline constexpr int kRunExitOk = 0;      // stopped on request
inline constexpr int kRunExitFailed = 1;  // could not start (bind, control socket, exec)

// Where a supervisor's control socket is, by default, for `name`:
//   $RUNTIME_DIRECTORY/NAME.sock         under systemd with RuntimeDirectory= (the first, if several)
//   /run/hotrestart/NAME.sock            for root otherwise
//   $XDG_RUNTIME_DIR/hotrestart/NAME.sock, else /tmp/hotrestart-UID/NAME.sock, for other users.
inline constexpr const char* kSystemRuntimeDir = "/run/hotrestart";
// Where `run` puts it.
std::string default_control_path(const std::string& name);
// Where a client looks: the first of those places that holds a socket (root tries /run/hotrestart
// before its own XDG_RUNTIME_DIR, another user after its own), else default_control_path(): an
// admin shell finds a service's supervisor whatever its environment.
std::string find_control_path(const std::string& name);
// Creates the directory holding a control socket (mode 0700 when we create it) and checks
// that no other user could replace what is inside it.
Status prepare_runtime_dir(const std::string& socket_path);

}  // namespace hotrestart
