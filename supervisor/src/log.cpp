#include "log.h"

#include <unistd.h>

#include <cstddef>
#include <string>
#include <string_view>

namespace hotrestart {
namespace {

LogLevel g_level = LogLevel::Info;

#define HOTRESTART_LOG_PREFIX(enumerator, prefix) prefix,
constexpr std::string_view kPrefixes[] = {HOTRESTART_LOG_LEVELS(HOTRESTART_LOG_PREFIX)};
#undef HOTRESTART_LOG_PREFIX

}  // namespace

void set_log_level(LogLevel level) {
  g_level = level;
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
