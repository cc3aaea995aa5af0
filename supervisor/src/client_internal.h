// What the client commands share beyond client.h: one request and its first answer, the error line,
// and times as the CLI prints them. For client.cpp and client_config.cpp.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include <nlohmann/json.hpp>

namespace hotrestart {

// Sends `request` and hands the first answer to `handle`, whose return is the exit code. An error
// answer, no supervisor or no answer within `timeout` (nullopt: none) is printed and mapped to its
// exit code instead.
int client_ask(const std::string& control_path, const nlohmann::json& request,
               const std::function<int(const nlohmann::json& answer)>& handle,
               std::optional<std::chrono::milliseconds> timeout = std::chrono::milliseconds(10'000));
// "hotrestart: TEXT" on stderr.
void client_say_error(const std::string& text);
// "2026-12-06 14:03:07", local time.
std::string client_time_text(std::int64_t ms);

}  // namespace hotrestart
