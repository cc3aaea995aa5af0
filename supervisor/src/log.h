// Supervisor log lines go to stderr, one line each, prefixed so they stand apart from the
// workers' own output (which shares the terminal or the journal).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

namespace hotrestart {

// The levels, least severe first (set_log_level() drops the levels before the one it is given),
// each with its name (--log-level) and the prefix its lines carry after "hotrestart[PID]: ":
// X(enumerator, name, prefix).
#define HOTRESTART_LOG_LEVELS(X)     \
  X(Debug, "debug", "debug: ")       \
  X(Info, "info", "")                \
  X(Warning, "warning", "warning: ") \
  X(Error, "error", "error: ")
#define HOTRESTART_LOG_ENUMERATOR(enumerator, name, prefix) enumerator,
enum class LogLevel { HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_ENUMERATOR) };
#undef HOTRESTART_LOG_ENUMERATOR

void set_log_level(LogLevel level);
// The level of that name ("debug", "info", "warning", "error"), or nothing.
std::optional<LogLevel> log_level_named(std::string_view name);
// Every level's name, least severe first.
std::vector<std::string> log_level_names();
void log_line(LogLevel level, std::string_view text);

template <class... Args>
void log_info(fmt::format_string<Args...> f, Args&&... args) {
  log_line(LogLevel::Info, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void log_warn(fmt::format_string<Args...> f, Args&&... args) {
  log_line(LogLevel::Warning, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void log_error(fmt::format_string<Args...> f, Args&&... args) {
  log_line(LogLevel::Error, fmt::format(f, std::forward<Args>(args)...));
}
template <class... Args>
void log_debug(fmt::format_string<Args...> f, Args&&... args) {
  log_line(LogLevel::Debug, fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace hotrestart
