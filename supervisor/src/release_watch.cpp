// The watch window after a cutover (see release_watch.h).
#include "release_watch.h"

#include <fmt/format.h>

#include "control_protocol.h"
#include "log.h"
#include "status.h"

namespace hotrestart {

using nlohmann::json;

ReleaseWatch::ReleaseWatch(uv_loop_t* loop, ControlServer& control) : control_(control), timer_(loop) {}

bool ReleaseWatch::start(const Watched& watched, Millis window, std::function<void()> on_kept) {
  end(Ending::Superseded, fmt::format("release {} replaced it", watched.release));
  if (window.count() == 0) return false;
  watched_ = watched;
  window_ = window;
  started_ = Clock::now();
  failure_.clear();
  log_info(
      "watching release {} (generation {}) for {}: a crash, a missed watchdog or a failed health check in "
      "that time brings release {} back",
      watched.release, watched.generation, format_duration(window), watched.previous_release);
  timer_.start(window, [this, on_kept = std::move(on_kept)] {
    on_kept();
    end(Ending::Kept, fmt::format("it served through its watch window of {}", format_duration(window_)));
  });
  return true;
}

void ReleaseWatch::end(Ending ending, const std::string& reason) {
  if (!watched_) return;
  timer_.stop();
  const Watched w = *watched_;
  watched_.reset();
  const char* outcome = ending == Ending::Kept         ? "kept"
                        : ending == Ending::Superseded ? "superseded"
                        : ending == Ending::Reverted   ? "reverted"
                                                       : "stopped";
  if (ending == Ending::Kept || ending == Ending::Superseded) {
    log_info("release {}: watch over ({})", w.release, reason);
  }
  const bool ok = ending == Ending::Kept || ending == Ending::Superseded;
  std::string message;
  switch (ending) {
    case Ending::Kept:
      message = fmt::format("release {} kept: {}", w.release, reason);
      break;
    case Ending::Superseded:
      message = fmt::format("release {} is no longer watched: {}", w.release, reason);
      break;
    case Ending::Reverted:
      message = fmt::format("release {} reverted: {}; release {} comes back", w.release, reason, w.previous_release);
      break;
    case Ending::Stopped:
      message = fmt::format("release {}: the supervisor is stopping", w.release);
      break;
  }
  const json verdict{{"v", kControlProtocolVersion},
                     {"type", "watch"},
                     {"ok", ok},
                     {"outcome", outcome},
                     {"release", w.release},
                     {"generation", w.generation},
                     {"previous_release", w.previous_release},
                     {"watched_ms", ms_since(started_)},
                     {"reason", ok ? std::string() : reason},
                     {"message", message}};
  // A revert that is still being carried out when the next watch ends (the supervisor stopping)
  // is over as far as its waiters can tell.
  if (!revert_waiters_.empty()) revert_done(fmt::format("then: {}", message));
  if (ending == Ending::Reverted) {
    revert_verdict_ = verdict;
    revert_waiters_ = std::move(waiters_);
    waiters_.clear();
    return;
  }
  for (ClientId client : waiters_)
    control_.send(client, verdict, AfterSend::Close);
  waiters_.clear();
}

void ReleaseWatch::revert_done(const std::string& how) {
  if (revert_waiters_.empty()) return;
  json verdict = revert_verdict_;
  verdict["message"] = fmt::format("{}; {}", verdict.value("message", ""), how);
  verdict["watched_ms"] = ms_since(started_);
  for (ClientId client : revert_waiters_)
    control_.send(client, verdict, AfterSend::Close);
  revert_waiters_.clear();
}

json ReleaseWatch::status_json() const {
  if (!watched_) return nullptr;
  const auto left = window_.count() - ms_since(started_);
  return {{"release", watched_->release},
          {"generation", watched_->generation},
          {"previous_release", watched_->previous_release},
          {"window_ms", window_.count()},
          {"ends_in_ms", left > 0 ? left : 0}};
}

}  // namespace hotrestart
