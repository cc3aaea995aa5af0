// HealthWatch: the checks that a ready generation goes on serving, after readiness has let it in.
//
//   watchdog  (--watchdog D) the worker sends WATCHDOG=1 at least every D, as under systemd's
//             WatchdogSec=; the first deadline runs from readiness.
//   health    (--health exec:CMD) CMD runs every --health-interval with $HOTRESTART_PID set to
//             the worker; --health-failures failures in a row (a non-zero exit, or no exit by the
//             next run, when the probe's process group is killed) make the generation unhealthy.
//
// Each check reports its failure once, through OnFailed, and then stops; a health check that passes
// again afterwards clears the unhealthy mark (status shows it) but reports nothing. What a failure
// means (a revert in the watch window, a restart after a missed watchdog) is the supervisor's
// business.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "reaper.h"
#include "run_options.h"
#include "spawn.h"
#include "uv_handles.h"

namespace hotrestart {

enum class HealthFailure { Watchdog, Health };

class HealthWatch {
 public:
  using OnFailed = std::function<void(HealthFailure kind, const std::string& reason)>;
  // The environment of one health probe run.
  using ProbeEnvironment = std::function<std::vector<std::string>()>;

  HealthWatch(uv_loop_t* loop, Reaper& reaper, const RunOptions& options, ProbeEnvironment environment,
              OnFailed on_failed);
  ~HealthWatch();
  HealthWatch(const HealthWatch&) = delete;
  HealthWatch& operator=(const HealthWatch&) = delete;

  // The generation became ready: the watchdog's first deadline, and the first health probe.
  void start();
  // The generation drains or has exited: nothing is checked any more (a running probe is killed).
  void stop();
  // WATCHDOG=1 arrived from the generation.
  void pet();

  // True while neither check has failed (or the health check passed again since).
  bool healthy() const { return !watchdog_failed_ && failures_in_a_row_ < options_.health.failures; }
  // Why it is not healthy, as a sentence ("" while it is).
  std::string problem() const;
  // {"healthy", "watchdog_ms", "last_watchdog_ms_ago", "health", "failures_in_a_row", "last_failure"}.
  nlohmann::json to_json() const;

 private:
  using Clock = std::chrono::steady_clock;

  void arm_watchdog();
  void run_probe();
  void probe_ended(bool ok, const std::string& what);

  Reaper& reaper_;
  const RunOptions& options_;
  ProbeEnvironment environment_;
  OnFailed on_failed_;
  bool running_ = false;

  Timer watchdog_timer_;
  Clock::time_point last_pet_{};
  bool watchdog_failed_ = false;

  Timer probe_timer_;  // The next run, which is also the running probe's deadline.
  ChildProcess probe_;
  int failures_in_a_row_ = 0;
  bool health_reported_ = false;
  std::string last_failure_;
  std::uint64_t runs_ = 0;

  // Reaper callbacks can outlive this watch (a probe reaped after its generation is gone); they
  // hold this and find it null once the watch is destroyed.
  std::shared_ptr<HealthWatch*> self_ = std::make_shared<HealthWatch*>(this);
};

}  // namespace hotrestart
