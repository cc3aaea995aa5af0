// Supervisor log lines go to stderr, one line each, prefixed so they stand apart from the
// workers' own output, which the supervisor relays to the same stderr (worker_output.h).
//
// Every line, the supervisor's and each relayed one, is written in one format (--log-format):
//   text     "2026-12-06T22:30:44.123Z hotrestart[PID]: warning: ..." and
//            "2026-12-06T22:30:44.123Z gen3[PID]: ...": the time in UTC, to the millisecond.
//   journal  "<4>hotrestart[PID]: warning: ...": the journal's priority prefix (sd-daemon(3)) and no
//            time, which the journal keeps itself. A relayed line that starts with its own "<N>"
//            keeps that priority; any other is <6>, info.
//   json     one object per line: {"time", "level", "source", "pid", "message"}, and "generation"
//            on a generation's lines. "source" is "hotrestart", "hotrestart guard", "worker" or
//            "preflight".
// The default is journal when stderr is the journal's stream (JOURNAL_STREAM names it), text
// otherwise.
//
// Stderr may be full (a reader that stopped reading: a paused terminal, a stuck pipe) or gone.
// Nothing waits on it for long: a log line waits at most kLogLineWait for room, and once one has
// waited in vain the next ones do not wait until a line goes through again; relayed worker lines
// never wait. A line that cannot go is dropped and counted, and the next line that goes is
// preceded by a warning that says how many were dropped.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
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

enum class LogFormat { Text, Journal, Json };
// The format of that name ("text", "journal", "json"), or nothing.
std::optional<LogFormat> log_format_named(std::string_view name);
std::string_view log_format_name(LogFormat format);
// Journal when `journal_stream` ("DEV:INODE", from $JOURNAL_STREAM; null when unset) names the
// file `stderr_fd` is, text otherwise.
LogFormat detect_log_format(const char* journal_stream, int stderr_fd);
void set_log_format(LogFormat format);
LogFormat log_format();

// "2026-12-06T22:30:44.123Z": now, in UTC, to the millisecond (log lines, events).
std::string utc_timestamp();

void set_log_level(LogLevel level);
// Lines start with `name` and the pid ("hotrestart[PID]: " unless set).
void set_log_name(std::string name);
// The level of that name ("debug", "info", "warning", "error"), or nothing.
std::optional<LogLevel> log_level_named(std::string_view name);
// Every level's name, least severe first.
std::vector<std::string> log_level_names();
void log_line(LogLevel level, std::string_view text);

// Who wrote a relayed line: "gen3" with its generation's number and its main pid, or another
// helper ("preflight") with its pid.
struct RelaySource {
  std::string name;  // "gen3", "preflight": text and journal lines start "NAME[PID]: ".
  pid_t pid = 0;
  std::optional<std::uint64_t> generation;
};
// The most a text or journal line adds before a relayed line: a time, "gen" and "[", a generation
// number and a pid of at most 20 digits each, and "]: ".
inline constexpr std::size_t kMaxRelayPrefix = 25 + 3 + 20 + 1 + 20 + 3;
// Appends `line` (without its "\n"), relayed from `source`, in the log format and with its "\n".
void append_relayed_line(std::string& out, const RelaySource& source, std::string_view line);

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
