// `hotrestart upgrade --self`: the supervisor runs a new binary in place (the same pid, so systemd
// and container runtimes see nothing), by the path its own death takes (docs/architecture.md,
// "Upgrading the supervisor"). Before the exec, the new binary is checked (`__self-check`: it starts,
// and speaks the same guard link). At the exec every descriptor of the supervisor closes; its
// guard keeps the listeners, pipes and deadlines as it does when the supervisor dies, and the new
// image takes them over from it (takeover.h) as a `run` started in its place would. A new image that
// cannot start execs the old binary again, which takes over in turn.
#pragma once

#include <string>
#include <vector>

#include <hotrestart/base/result.h>

namespace hotrestart {

// The environment that tells a new image it is one (the old binary's descriptor, O_PATH), and the
// old one that the new one failed (why).
inline constexpr const char* kSelfUpgradeFrom = "HOTRESTART_SELF_UPGRADE_FROM";
inline constexpr const char* kSelfUpgradeFailed = "HOTRESTART_SELF_UPGRADE_FAILED";

// What `__self-check` prints: the version, and the protocols a takeover needs.
std::string self_check_line(const std::string& version);

// Runs `path __self-check` (at most a few seconds) and returns its line, or why `path` cannot be the
// supervisor's next binary.
Result<std::string> check_new_supervisor(const std::string& path);

// This process's executable as a path (without " (deleted)" when the file was replaced since).
std::string own_executable();

// Execs `path` with `argv` and this process's environment plus `extra` ("NAME=value"). Returns only
// when the exec failed, with why.
Error exec_supervisor(const std::string& path, const std::vector<std::string>& argv,
                      const std::vector<std::string>& extra);

// The new image failed to start: execs the old binary (`old_exe`, an O_PATH descriptor) with `argv`,
// telling it why. Returns only when that failed too.
Error roll_back_to(int old_exe, const std::vector<std::string>& argv, const std::string& why);

}  // namespace hotrestart
