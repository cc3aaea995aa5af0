// Supervisor log lines go to stderr, one line each, prefixed so they stand apart from the
// workers' own output, which the supervisor relays to the same stderr (worker_output.h).
//
// Stderr may be full (a reader that stopped reading: a paused terminal, a stuck pipe) or gone.
// Nothing waits on it for long: a log line waits at most kLogLineWait for room, and once one has
// waited in vain the next ones do not wait until a line goes through again; relayed worker lines
// never wait. A line that cannot go is dropped and counted, and the next line that goes is
// preceded by a warning that says how many were dropped.
#pragma once

#include <chrono>
#include <cstddef>
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
// Lines start with `name` and the pid ("hotrestart[PID]: " unless set).
void set_log_name(std::string name);
// The level of that name ("debug", "info", "warning", "error"), or nothing.
std::optional<LogLevel> log_level_named(std::string_view name);
// Every level's name, least severe first.
std::vector<std::string> log_level_names();
void log_line(LogLevel level, std::string_view text);

inline constexpr std::chrono::milliseconds kLogLineWait{1000};
// Relayed worker output: `count` whole lines, at most PIPE_BUF bytes in all, in one write() that
// never waits (see above).
void write_relayed_lines(std::string_view lines, std::size_t count);

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
