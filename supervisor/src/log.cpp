// The supervisor's log lines on stderr (see log.h).
#include "log.h"

#include <unistd.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace hotrestart {
namespace {

LogLevel g_level = LogLevel::Info;

#define HOTRESTART_LOG_PREFIX(enumerator, name, prefix) prefix,
#define HOTRESTART_LOG_NAME(enumerator, name, prefix) name,
constexpr std::string_view kPrefixes[] = {HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_PREFIX)};
constexpr std::string_view kNames[] = {HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_NAME)};
#undef HOTRESTART_LOG_PREFIX
#undef HOTRESTART_LOG_NAME

}  // namespace

void set_log_level(LogLevel level) {
  g_level = level;
}

std::optional<LogLevel> log_level_named(std::string_view name) {
  for (std::size_t i = 0; i < std::size(kNames); ++i) {
    if (kNames[i] == name) return static_cast<LogLevel>(i);
  }
  return std::nullopt;
}

std::vector<std::string> log_level_names() {
  return {std::begin(kNames), std::end(kNames)};
}

void log_line(LogLevel level, std::string_view text) {
  if (level < g_level) return;
  auto index = static_cast<std::size_t>(level);
  std::string_view prefix = index < std::size(kPrefixes) ? kPrefixes[index] : "";
  // One write per line, so lines from the supervisor and its workers never interleave
  // mid-line on a shared stderr.
  std::string line = fmt::format("hotrestart[{}]: {}{}\n", ::getpid(), prefix, text);
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
}

}  // namespace hotrestart
