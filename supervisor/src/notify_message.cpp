// The sd_notify datagram format, parsed (see notify_message.h).
#include "notify_message.h"

#include <charconv>

#include <fmt/format.h>

namespace hotrestart {
namespace {

template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || text.empty()) return std::nullopt;
  return value;
}

bool printable(std::string_view text) {
  for (unsigned char c : text) {
    if (c < 0x20 || c == 0x7f) return false;
  }
  return true;
}

}  // namespace

NotifyMessage parse_notify(std::string_view datagram) {
  NotifyMessage m;
  if (datagram.size() > kNotifyMaxDatagram) {
    m.problems.push_back(
        fmt::format("datagram of {} bytes is over the {}-byte limit", datagram.size(), kNotifyMaxDatagram));
    return m;
  }
  std::size_t start = 0;
  while (start < datagram.size()) {
    auto end = datagram.find('\n', start);
    if (end == std::string_view::npos) end = datagram.size();
    std::string_view line = datagram.substr(start, end - start);
    start = end + 1;
    if (line.empty()) continue;
    const auto eq = line.find('=');
    if (eq == std::string_view::npos || eq == 0 || !printable(line)) {
      m.problems.push_back(fmt::format("malformed line '{}'", printable(line) ? line : "<binary>"));
      continue;
    }
    const std::string_view key = line.substr(0, eq);
    const std::string_view value = line.substr(eq + 1);
    if (key == "READY") {
      m.ready = value == "1";
    } else if (key == "STOPPING") {
      m.stopping = value == "1";
    } else if (key == "RELOADING") {
      m.reloading = value == "1";
    } else if (key == "WATCHDOG") {
      m.watchdog = value == "1";
    } else if (key == "X_HOTRESTART_METRIC") {
      m.metrics.emplace_back(value);
    } else if (key == "X_HOTRESTART_ADOPT") {
      m.adopt = value == "1";
    } else if (key == "STATUS") {
      m.status = std::string(value.substr(0, 256));
    } else if (key == "MAINPID") {
      auto pid = parse_number<pid_t>(value);
      if (pid && *pid > 0)
        m.mainpid = *pid;
      else
        m.problems.push_back(fmt::format("MAINPID '{}' is not a pid", value));
    } else if (key == "ERRNO") {
      if (auto e = parse_number<int>(value))
        m.errno_value = *e;
      else
        m.problems.push_back(fmt::format("ERRNO '{}' is not a number", value));
    }
  }
  return m;
}

}  // namespace hotrestart
