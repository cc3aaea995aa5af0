// The backoff between crash restarts. A worker that crashes is started again after a delay that
// starts at 100 ms and doubles with every crash, up to 10 s; a worker that served for 10 s before
// it crashed was healthy, and its replacement starts over with the shortest delay. Pure: the
// supervisor owns the timer.
#pragma once

#include <chrono>

#include "duration.h"

namespace hotrestart {

class RestartBackoff {
 public:
  static constexpr Millis kFirst{100};
  static constexpr Millis kMost{10'000};
  static constexpr Millis kHealthy{10'000};

  // The delay before the next restart, for a worker that served for `served_for` (zero if it never
  // became ready, or never started).
  Millis next(std::chrono::steady_clock::duration served_for);
  // A new generation replaced the crashing one (an upgrade): the next crash starts over.
  void reset() { delay_ = Millis(0); }

 private:
  Millis delay_{0};
};

}  // namespace hotrestart
