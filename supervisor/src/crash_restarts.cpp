// The delay before a crash restart (see crash_restarts.h).
#include "crash_restarts.h"

#include <algorithm>

namespace hotrestart {

Millis RestartBackoff::next(std::chrono::steady_clock::duration served_for) {
  if (served_for >= kHealthy || delay_.count() == 0) {
    delay_ = kFirst;
  } else {
    delay_ = std::min(delay_ * 2, kMost);
  }
  return delay_;
}

}  // namespace hotrestart
