// The sd_notify datagram format, as workers send it to NOTIFY_SOCKET:
// newline-separated KEY=VALUE assignments in one datagram, e.g. "READY=1\nSTATUS=serving".
// Unknown keys are ignored (systemd does the same); malformed lines are reported.
#pragma once

#include <sys/types.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace hotrestart {

// One datagram is at most this long; longer ones are rejected whole, not truncated.
inline constexpr std::size_t kNotifyMaxDatagram = 4096;

struct NotifyMessage {
  bool ready = false;
  bool stopping = false;
  bool reloading = false;
  bool watchdog = false;
  bool adopt = false;  // X_HOTRESTART_ADOPT=1: hotrestart's preload library is in the process.
  std::optional<std::string> status;
  std::optional<pid_t> mainpid;
  std::optional<int> errno_value;
  // X_HOTRESTART_METRIC=NAME VALUE: a gauge the worker publishes (metrics.h), each "NAME VALUE".
  std::vector<std::string> metrics;
  std::vector<std::string> problems;  // Lines that could not be understood.
};

NotifyMessage parse_notify(std::string_view datagram);

}  // namespace hotrestart
