// Durations on the command line: "500ms", "5s", "2m", "1h".
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include <hotrestart/base/result.h>

namespace hotrestart {

using Millis = std::chrono::milliseconds;

// Parses a whole number followed by one unit (ms, s, m, h). A bare number is refused
// because "30" could mean seconds or milliseconds; the error says how to write it.
Result<Millis> parse_duration(std::string_view text);

// The shortest exact spelling: 1500ms -> "1.5s", 120000ms -> "2m", 250ms -> "250ms".
std::string format_duration(Millis d);

}  // namespace hotrestart
