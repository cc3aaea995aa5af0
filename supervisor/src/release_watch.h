// ReleaseWatch: the watch window after a cutover (--watch-window).
//
// For a while after an upgrade's cutover, the new release is on probation: if its generation
// crashes, misses its watchdog or fails its health check (health_watch.h) before the window ends,
// the supervisor reverts to the previous release (Supervisor::revert). This room keeps what is
// watched, the window's timer, and the clients of `hotrestart upgrade --wait`, which stay connected
// until the watch ends and then hear how: kept (the window passed, or a newer upgrade began) or
// reverted, with the reason.
#pragma once

#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "control_server.h"
#include "duration.h"
#include "uv_handles.h"

namespace hotrestart {

class ReleaseWatch {
 public:
  struct Watched {
    std::uint64_t release = 0;     // The new release, on probation.
    std::uint64_t generation = 0;  // The generation that runs it.
    std::uint64_t previous_release = 0;
    std::uint64_t previous_generation = 0;  // It drains, and may still be alive.
  };
  enum class Ending { Kept, Superseded, Reverted, Stopped };

  ReleaseWatch(uv_loop_t* loop, ControlServer& control);

  // Watches `watched` for `window` (a watch in progress ends as superseded). At the window's end the
  // watch ends as kept, after on_kept has run. Returns false, and watches nothing, for a window of 0.
  bool start(const Watched& watched, Millis window, std::function<void()> on_kept);
  // `client` (`upgrade --wait`) hears how the watch ends.
  void add_waiter(ClientId client) { waiters_.push_back(client); }
  bool active() const { return watched_.has_value(); }
  bool covers(std::uint64_t generation) const { return watched_ && watched_->generation == generation; }
  const Watched& watched() const { return *watched_; }

  // A failure seen before the generation has exited (a missed watchdog: it is killed, and its exit
  // then reverts with this reason rather than "killed by SIGKILL").
  void note_failure(std::string reason) { failure_ = std::move(reason); }
  const std::string& noted_failure() const { return failure_; }

  // Ends the watch, if one runs: the waiters get {"type":"watch",...} and are disconnected. On a
  // revert they hear it only once the previous release serves again, or could not be brought back
  // (revert_done), so that `upgrade --wait` returns when what it says is true.
  void end(Ending ending, const std::string& reason);
  // The revert that ended the last watch is over: `how` says how it went ("release 3 serves
  // again", or why it could not come back). Nothing if no one waits for it.
  void revert_done(const std::string& how);
  void forget_waiter(ClientId client) {
    std::erase(waiters_, client);
    std::erase(revert_waiters_, client);
  }

  // {"release", "generation", "previous_release", "window_ms", "ends_in_ms"} while watching, or null.
  nlohmann::json status_json() const;

 private:
  using Clock = std::chrono::steady_clock;

  ControlServer& control_;
  Timer timer_;
  std::optional<Watched> watched_;
  Millis window_{0};
  Clock::time_point started_;
  std::vector<ClientId> waiters_;
  std::string failure_;
  // A revert's verdict, and who waits for it until the revert is over.
  nlohmann::json revert_verdict_;
  std::vector<ClientId> revert_waiters_;
};

}  // namespace hotrestart
