// The canary hold an upgrade may ask for (`--hold D|manual`, the control protocol's "hold"): once
// the new generation is healthy, both generations serve side by side until the hold ends, by its
// time passing or `hotrestart promote` (then cutover), or until `hotrestart abort` or a failure
// of the new generation stops it (then rollback; the old generation was never drained). Parsing
// and naming only; the upgrade machine's `holding` phase is where a hold happens.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include <hotrestart/base/result.h>

#include "duration.h"

namespace hotrestart {

enum class HoldKind : std::uint8_t { None, Timed, Manual };

struct Hold {
  HoldKind kind = HoldKind::None;
  Millis duration{0};  // Timed: how long both generations serve before the new one is promoted.

  bool holds() const { return kind != HoldKind::None; }
  // "30s", "manual" or "none", as the flag is written.
  std::string describe() const;
};

// The longest hold, as for every other duration: a week.
inline constexpr Millis kMaxHold = kMaxDuration;

// "manual" (or "infinity", the same), or a duration of at least 1ms ("500ms", "30s", "1m30s", "1h").
Result<Hold> parse_hold(std::string_view text);

}  // namespace hotrestart
