// The canary hold as written on the command line (see hold.h).
#include "hold.h"

#include <fmt/format.h>

namespace hotrestart {

std::string Hold::describe() const {
  switch (kind) {
    case HoldKind::Timed:
      return format_duration(duration);
    case HoldKind::Manual:
      return "manual";
    case HoldKind::None:
      break;
  }
  return "none";
}

Result<Hold> parse_hold(std::string_view text) {
  // A hold with no end is a manual one: it lasts until `promote` or `abort`.
  if (text == "manual" || text == "infinity" || text == "inf") return Hold{HoldKind::Manual, Millis(0)};
  auto duration = parse_duration(text);
  if (!duration)
    return Error::message(
        fmt::format("{}; or write manual (or infinity) to hold until promoted", duration.error().text()));
  // A hold of nothing would be an upgrade without one, under a name that says otherwise.
  if (duration.value().count() == 0) {
    return Error::message(fmt::format("invalid hold '{}': a hold must last at least 1ms (or be manual)", text));
  }
  return Hold{HoldKind::Timed, duration.value()};
}

}  // namespace hotrestart
