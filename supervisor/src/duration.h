// Durations on the command line: "500ms", "5s", "2m", "1h", "1m30s", "1.5s", and for the flags
// that have no need of a bound, "infinity".
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <hotrestart/base/result.h>

namespace hotrestart {

using Millis = std::chrono::milliseconds;

// Whether a flag takes "infinity". Most durations bound a wait that must end (readiness, a state
// transfer, a preflight check), so only those that say otherwise take it.
enum class Infinity : std::uint8_t { Refused, Allowed };

// What "infinity" stands for: ten years. It is finite so that a deadline computed from it (now + it
// in nanoseconds, a libuv timer, the guard's copy of the drain timeout, which takes up to 2^40 ms)
// never overflows, and it is far beyond any worker's life.
inline constexpr Millis kInfinity{10LL * 365 * 24 * 3'600'000};

// The longest finite duration: a week, far beyond any sensible timeout, and small enough that
// sums of a few durations never overflow.
inline constexpr Millis kMaxDuration{7LL * 24 * 3'600'000};

// Parses one or more parts, each a number (decimals allowed) followed by a unit (ms, s, m, h),
// the units from largest to smallest, each once: "1h30m", "1m30s", "1.5s", "250ms". The result
// must be whole milliseconds and at most kMaxDuration. A bare number is refused because "30" could
// mean seconds or milliseconds; every error says how to write a duration.
Result<Millis> parse_duration(std::string_view text, Infinity infinity = Infinity::Refused);

// The shortest exact spelling, one that parse_duration reads back: 1500ms -> "1.5s",
// 120000ms -> "2m", 250ms -> "250ms", 90500ms -> "1m30.5s", kInfinity -> "infinity".
std::string format_duration(Millis d);

}  // namespace hotrestart
