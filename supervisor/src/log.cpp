#include "log.h"

#include <unistd.h>

#include <string>

namespace hotrestart {
namespace {
LogLevel g_level = LogLevel::Info;
}

void set_log_level(LogLevel level) {
  g_level = level;
}

void log_line(LogLevel level, std::string_view text) {
  if (level < g_level) return;
  const char* tag = "";
  switch (level) {
    case LogLevel::Debug:
      tag = "debug: ";
      break;
    case LogLevel::Info:
      break;
    case LogLevel::Warning:
      tag = "warning: ";
      break;
    case LogLevel::Error:
      tag = "error: ";
      break;
  }
  // One write per line, so lines from the supervisor and its workers never interleave
  // mid-line on a shared stderr.
  std::string line = fmt::format("hotrestart[{}]: {}{}\n", ::getpid(), tag, text);
  std::string_view rest = line;
  while (!rest.empty()) {
    ssize_t n = ::write(STDERR_FILENO, rest.data(), rest.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    rest.remove_prefix(static_cast<std::size_t>(n));
  }
}

}  // namespace hotrestart
