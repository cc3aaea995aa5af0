// Durations as written on the command line (see duration.h).
#include "duration.h"

#include <array>
#include <charconv>
#include <cstdint>

#include <fmt/format.h>

namespace hotrestart {
namespace {

struct Unit {
  std::string_view name;
  std::uint64_t ms;
};

// Largest first: the order the parts of a duration must come in.
constexpr std::array<Unit, 4> kUnits{{{"h", 3'600'000}, {"m", 60'000}, {"s", 1000}, {"ms", 1}}};

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

}  // namespace

Result<Millis> parse_duration(std::string_view text, Infinity infinity) {
  const auto bad = [&](std::string_view why) {
    return Error::message(
        fmt::format("invalid duration '{}': {} (write it like 250ms, 5s, 1.5s, 2m, 1m30s or 1h)", text, why));
  };
  if (text == "infinity" || text == "inf") {
    if (infinity == Infinity::Allowed) return kInfinity;
    return Error::message(
        fmt::format("'{}' is not allowed here: this wait must end; give a duration such as 30s "
                    "(only --drain-timeout and --hold take infinity)",
                    text));
  }
  if (text.empty()) return bad("empty");
  constexpr std::uint64_t max_ms = static_cast<std::uint64_t>(kMaxDuration.count());
  std::uint64_t total = 0;
  std::size_t next_unit = 0;  // The parts' units must come after the previous part's.
  std::string_view rest = text;
  while (!rest.empty()) {
    // A number: digits, then maybe a point and more digits.
    std::size_t i = 0;
    while (i < rest.size() && is_digit(rest[i]))
      ++i;
    const std::string_view whole = rest.substr(0, i);
    std::string_view fraction;
    if (i < rest.size() && rest[i] == '.') {
      const std::size_t start = ++i;
      while (i < rest.size() && is_digit(rest[i]))
        ++i;
      fraction = rest.substr(start, i - start);
      if (fraction.empty()) return bad("a decimal point must be followed by digits");
    }
    if (whole.empty()) return bad(rest.front() == '-' ? "it cannot be negative" : "each part must start with a number");
    // The unit: the letters up to the next digit.
    std::size_t u = i;
    while (u < rest.size() && !is_digit(rest[u]) && rest[u] != '.')
      ++u;
    const std::string_view unit_name = rest.substr(i, u - i);
    if (unit_name.empty()) {
      if (u < rest.size()) return bad("a number can have one decimal point only");
      return bad(rest.size() == text.size() ? "a unit is missing" : "the last number has no unit");
    }
    std::size_t k = 0;
    while (k < kUnits.size() && kUnits[k].name != unit_name)
      ++k;
    if (k == kUnits.size()) return bad(fmt::format("unknown unit '{}'", unit_name));
    if (k < next_unit) return bad("the units must go from the largest to the smallest, each once");
    next_unit = k + 1;
    const std::uint64_t scale = kUnits[k].ms;

    std::uint64_t number = 0;
    auto [end, ec] = std::from_chars(whole.data(), whole.data() + whole.size(), number);
    if (ec == std::errc::result_out_of_range || number > max_ms / scale) return bad("longer than a week");
    std::uint64_t part = number * scale;
    if (!fraction.empty()) {
      // Exact arithmetic: the fraction's digits times the unit must be whole milliseconds.
      if (fraction.size() > 9) return bad("finer than a millisecond");
      std::uint64_t digits = 0;
      std::from_chars(fraction.data(), fraction.data() + fraction.size(), digits);
      std::uint64_t denominator = 1;
      for (std::size_t d = 0; d < fraction.size(); ++d)
        denominator *= 10;
      if ((digits * scale) % denominator != 0) return bad("finer than a millisecond");
      part += digits * scale / denominator;
    }
    total += part;
    if (total > max_ms) return bad("longer than a week");
    rest = rest.substr(u);
  }
  return Millis(static_cast<Millis::rep>(total));
}

std::string format_duration(Millis d) {
  if (d == kInfinity) return "infinity";
  const auto ms = d.count();
  if (ms < 0) return fmt::format("-{}", format_duration(Millis(-ms)));
  if (ms < 1000) return fmt::format("{}ms", ms);
  if (ms % 3'600'000 == 0) return fmt::format("{}h", ms / 3'600'000);
  if (ms % 60'000 == 0 && ms >= 60'000) return fmt::format("{}m", ms / 60'000);
  // Seconds with the milliseconds as decimals, without trailing zeros: 30s, 1.5s, 12.345s.
  const auto seconds = [](long long s_ms) {
    std::string text = fmt::format("{}", s_ms / 1000);
    if (s_ms % 1000 != 0) {
      std::string decimals = fmt::format("{:03}", s_ms % 1000);
      while (decimals.back() == '0')
        decimals.pop_back();
      text += "." + decimals;
    }
    return text + "s";
  };
  if (ms % 1000 == 0 || ms < 60'000) return seconds(ms);
  return fmt::format("{}m{}", ms / 60'000, seconds(ms % 60'000));
}

}  // namespace hotrestart
