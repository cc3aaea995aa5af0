// HOTRESTART_TEST_DIE_AT (fault.h).
#include "fault.h"

#include <csignal>
#include <cstdlib>
#include <string>

#include <fmt/core.h>

#include "log.h"

namespace hotrestart {

void die_if_asked(std::string_view point) {
  static const std::string wanted = [] {
    const char* v = std::getenv("HOTRESTART_TEST_DIE_AT");
    return std::string(v != nullptr ? v : "");
  }();
  if (wanted.empty() || wanted != point) return;
  log_warn("HOTRESTART_TEST_DIE_AT={}: the supervisor kills itself here", wanted);
  std::raise(SIGKILL);
}

Status fail_if_asked(std::string_view point) {
  const char* wanted = std::getenv("HOTRESTART_TEST_FAIL_AT");
  if (wanted == nullptr || point != wanted) return {};
  return Error::message(fmt::format("HOTRESTART_TEST_FAIL_AT={}", point));
}

}  // namespace hotrestart
