// The client side of the control protocol: `hotrestart upgrade | status | stop`.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace hotrestart {

// Exit codes of the client commands (docs/operations.md lists them all).
inline constexpr int kExitOk = 0;
inline constexpr int kExitRolledBack = 1;  // upgrade: rolled back; the old generation serves
inline constexpr int kExitUsage = 2;       // usage error, or no supervisor reachable
inline constexpr int kExitRefused = 3;     // upgrade, rollback: refused (another upgrade in progress, stopping,
                                           // or, for a rollback, no release that can run)

enum class Output { Human, Json };

int client_status(const std::string& control_path, Output output);
int client_upgrade(const std::string& control_path, std::optional<std::string> exec,
                   std::optional<std::vector<std::string>> command, Output output);
int client_rollback(const std::string& control_path, std::optional<std::uint64_t> to, Output output);
int client_history(const std::string& control_path, Output output);
int client_stop(const std::string& control_path, bool wait);

}  // namespace hotrestart
