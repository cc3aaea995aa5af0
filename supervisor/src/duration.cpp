// Durations as written on the command line (see duration.h).
#include "duration.h"

#include <charconv>
#include <cstdint>
#include <limits>

#include <fmt/format.h>

namespace hotrestart {

Result<Millis> parse_duration(std::string_view text) {
  const auto bad = [&](std::string_view why) {
    return Error::message(fmt::format("invalid duration '{}': {} (write it like 500ms, 5s, 2m or 1h)", text, why));
  };
  if (text.empty()) return bad("empty");
  std::uint64_t number = 0;
  const char* begin = text.data();
  const char* end = text.data() + text.size();
  auto [rest, ec] = std::from_chars(begin, end, number);
  if (ec == std::errc::result_out_of_range) return bad("too large");
  if (ec != std::errc() || rest == begin) return bad("it must start with a whole number");
  std::string_view unit(rest, static_cast<std::size_t>(end - rest));
  std::uint64_t scale = 0;
  if (unit == "ms")
    scale = 1;
  else if (unit == "s")
    scale = 1000;
  else if (unit == "m")
    scale = 60'000;
  else if (unit == "h")
    scale = 3'600'000;
  else if (unit.empty())
    return bad("a unit is missing");
  else
    return bad(fmt::format("unknown unit '{}'", unit));
  // A week is far beyond any sensible timeout and keeps every sum below overflow.
  constexpr std::uint64_t max_ms = 7ULL * 24 * 3'600'000;
  if (number > max_ms / scale) return bad("longer than a week");
  return Millis(static_cast<Millis::rep>(number * scale));
}

std::string format_duration(Millis d) {
  const auto ms = d.count();
  if (ms < 0) return fmt::format("-{}", format_duration(Millis(-ms)));
  if (ms < 1000) return fmt::format("{}ms", ms);
  if (ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
  if (ms % 60'000 == 0 && ms >= 60'000) return fmt::format("{}m", ms / 60'000);
  if (ms % 1000 == 0) return fmt::format("{}s", ms / 1000);
  if (ms < 60'000) return fmt::format("{:.3g}s", static_cast<double>(ms) / 1000.0);
  return fmt::format("{}m{}s", ms / 60'000, (ms % 60'000) / 1000);
}

}  // namespace hotrestart
