// Signal names for flags and messages: "SIGTERM", "TERM" and "15" all name signal 15.
#pragma once

#include <string>
#include <string_view>

#include <hotrestart/base/result.h>

namespace hotrestart {

Result<int> parse_signal(std::string_view text);
std::string signal_name(int signo);  // "SIGTERM", or "signal 42" for unnamed ones.

}  // namespace hotrestart
