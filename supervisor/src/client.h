// The client side of the control protocol: `hotrestart upgrade | rollback | promote | abort | history | events |
// status | stop`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "hold.h"

namespace hotrestart {

// Exit codes of the client commands (docs/operations.md lists them all).
inline constexpr int kExitOk = 0;
inline constexpr int kExitRolledBack = 1;  // upgrade: rolled back; the old generation serves
inline constexpr int kExitInvalid = 1;     // reload, config rollback: refused (the file, or a generation's
                                           // parser); nothing changed
inline constexpr int kExitUsage = 2;       // usage error, or the supervisor refused this user
inline constexpr int kExitRefused = 3;     // upgrade, rollback: refused (another upgrade in progress, stopping,
                                           // a reverted executable without --force, or, for a rollback, no
                                           // release that can run); promote, abort: no upgrade is holding
// status --check, when the service is not up (0 when it is):
inline constexpr int kExitNotServing = 4;    // no generation is ready (or the supervisor is stopping)
inline constexpr int kExitCrashLooping = 5;  // the worker crashed and is being restarted
inline constexpr int kExitReverted = 6;      // a release was just reverted (for the watch window, at least 10 s)
inline constexpr int kExitUnhealthy = 7;     // the active generation fails --health or missed --watchdog
// Any client command: no supervisor runs at the control socket (no socket file there, or one that no
// process listens on). Apart from 2, so that a script can tell "not running" from a mistake.
inline constexpr int kExitNoSupervisor = 8;

enum class Output { Human, Json };

// How to follow an upgrade or a rollback.
struct Deploy {
  Output output = Output::Human;
  bool wait = false;   // Through the watch window: exit 1 if the release is reverted in it.
  bool force = false;  // upgrade: even to an executable that was reverted.
  Hold hold;           // Both generations serve for a while before the cutover.
  // The check for this deployment instead of the one `run` was given ("": none; nullopt: run's).
  std::optional<std::string> preflight = std::nullopt;
};

// `check`: exit with the code above that says whether the service is up (status --check).
int client_status(const std::string& control_path, Output output, bool check = false);
int client_upgrade(const std::string& control_path, std::optional<std::string> exec,
                   std::optional<std::vector<std::string>> command, const Deploy& deploy);
int client_rollback(const std::string& control_path, std::optional<std::uint64_t> to, const Deploy& deploy);
// `promote` or `abort` (`command`): ends the hold of the upgrade in progress and prints the verdict.
int client_end_hold(const std::string& control_path, std::string_view command);
int client_history(const std::string& control_path, Output output);
// The newest `last` events; with `follow`, then each new one until the supervisor stops.
int client_events(const std::string& control_path, Output output, std::uint64_t last, bool follow);
int client_stop(const std::string& control_path, bool wait);

// Configurations (client_config.cpp). `name`: which one (nullopt: each, for reload; else the only one).
int client_reload(const std::string& control_path, std::optional<std::string> name, std::optional<std::string> file,
                  Output output);
int client_config_history(const std::string& control_path, std::optional<std::string> name, Output output);
// The live version's bytes, or those of versions[0].
int client_config_show(const std::string& control_path, std::optional<std::string> name,
                       const std::vector<std::uint64_t>& versions);
// diff -u of versions[0] and versions[1] (none given: the applied one before the live one, and the live one).
int client_config_diff(const std::string& control_path, std::optional<std::string> name,
                       const std::vector<std::uint64_t>& versions);
int client_config_rollback(const std::string& control_path, std::optional<std::string> name,
                           std::optional<std::uint64_t> version, Output output);
// `upgrade --self`: asks the supervisor to exec `exec` (nullopt: its own path) in place, then waits
// for the new image to answer; 0 when it does, 1 when the old binary came back instead.
int client_self_upgrade(const std::string& control_path, std::optional<std::string> exec);

}  // namespace hotrestart
