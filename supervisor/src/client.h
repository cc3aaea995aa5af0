// The client side of the control protocol: `hotrestart upgrade | status | stop`.
#pragma once

#include <optional>
#include <string>
#include <vector>

namespace hotrestart {

// Exit codes of the client commands (docs/operations.md lists them all).
inline constexpr int kExitOk = 0;
inline constexpr int kExitRolledBack = 1;  // upgrade: rolled back; the old generation serves
inline constexpr int kExitUsage = 2;       // usage error, or no supervisor reachable
inline constexpr int kExitRefused = 3;     // upgrade: refused (another upgrade in progress, stopping)

enum class Output { Human, Json };

int client_status(const std::string& control_path, Output output);
int client_upgrade(const std::string& control_path, std::optional<std::string> exec,
                   std::optional<std::vector<std::string>> command, Output output);
int client_stop(const std::string& control_path, bool wait);

}  // namespace hotrestart
