// The watchdog and the periodic health probe of a ready generation (see health_watch.h).
#include "health_watch.h"

#include <signal.h>

#include <fmt/format.h>

#include "duration.h"
#include "log.h"
#include "status.h"

namespace hotrestart {

using nlohmann::json;

HealthWatch::HealthWatch(uv_loop_t* loop, Reaper& reaper, const RunOptions& options, ProbeEnvironment environment,
                         OnFailed on_failed)
    : reaper_(reaper),
      options_(options),
      environment_(std::move(environment)),
      on_failed_(std::move(on_failed)),
      watchdog_timer_(loop),
      probe_timer_(loop) {}

HealthWatch::~HealthWatch() {
  *self_ = nullptr;
  stop();
}

void HealthWatch::start() {
  if (running_) return;
  running_ = true;
  if (options_.watchdog.count() > 0) {
    last_pet_ = Clock::now();
    arm_watchdog();
  }
  if (!options_.health.command.empty()) run_probe();
}

void HealthWatch::stop() {
  running_ = false;
  watchdog_timer_.stop();
  probe_timer_.stop();
  if (probe_) {
    probe_.signal_group(SIGKILL);
    probe_ = ChildProcess();  // The reaper still collects it; its callback finds it cancelled.
  }
}

void HealthWatch::pet() {
  last_pet_ = Clock::now();
  if (running_ && !watchdog_failed_ && options_.watchdog.count() > 0) arm_watchdog();
}

void HealthWatch::arm_watchdog() {
  watchdog_timer_.start(options_.watchdog, [this] {
    watchdog_failed_ = true;
    on_failed_(HealthFailure::Watchdog,
               fmt::format("no WATCHDOG=1 for {} (--watchdog {})",
                           format_duration(std::chrono::duration_cast<Millis>(Clock::now() - last_pet_)),
                           format_duration(options_.watchdog)));
  });
}

void HealthWatch::run_probe() {
  if (!running_) return;
  if (probe_) {
    // Still running at the next run's time: that run has failed, and this one must not pile up.
    probe_.signal_group(SIGKILL);
    probe_ = ChildProcess();
    probe_ended(false, fmt::format("did not exit within {}", format_duration(options_.health.interval)));
    if (!running_) return;
  }
  ++runs_;
  SpawnRequest request{"/bin/sh", {"/bin/sh", "-c", options_.health.command}, environment_(), {}, ListenPid::Omit};
  request.cwd = options_.workdir;
  // Not waited for: an exec that fails comes back with the probe's exit.
  PendingExec exec;
  auto pid = start_process(request, exec);
  if (!pid) {
    probe_ended(false, pid.error().text());
  } else {
    probe_ = ChildProcess(pid.value());
    reaper_.watch(
        pid.value(),
        [self = self_, probe = pid.value()](pid_t, ExitStatus status) {
          HealthWatch* w = *self;
          if (w == nullptr || w->probe_.pid() != probe) return;  // Cancelled: killed or stopped.
          w->probe_ = ChildProcess();
          w->probe_ended(status.success(), status.describe());
        },
        std::move(exec));
  }
  if (running_) probe_timer_.start(options_.health.interval, [this] { run_probe(); });
}

void HealthWatch::probe_ended(bool ok, const std::string& what) {
  if (ok) {
    if (failures_in_a_row_ > 0) log_info("health check passes again after {} failure(s)", failures_in_a_row_);
    failures_in_a_row_ = 0;
    health_reported_ = false;
    return;
  }
  ++failures_in_a_row_;
  last_failure_ = what;
  if (failures_in_a_row_ < options_.health.failures || health_reported_) return;
  health_reported_ = true;
  on_failed_(HealthFailure::Health, fmt::format("--health exec:{} failed {} times in a row (last: {})",
                                                options_.health.command, failures_in_a_row_, what));
}

std::string HealthWatch::problem() const {
  if (watchdog_failed_)
    return fmt::format("it sent no WATCHDOG=1 within --watchdog {}", format_duration(options_.watchdog));
  if (failures_in_a_row_ >= options_.health.failures) {
    return fmt::format("--health exec:{} failed {} times in a row (last: {})", options_.health.command,
                       failures_in_a_row_, last_failure_);
  }
  return {};
}

json HealthWatch::to_json() const {
  json j{{"healthy", healthy()}};
  if (options_.watchdog.count() > 0) {
    j["watchdog_ms"] = options_.watchdog.count();
    j["last_watchdog_ms_ago"] = running_ || watchdog_failed_ ? json(ms_since(last_pet_)) : json(nullptr);
  }
  if (!options_.health.command.empty()) {
    j["health_runs"] = runs_;
    j["failures_in_a_row"] = failures_in_a_row_;
    j["last_failure"] = last_failure_;
  }
  return j;
}

}  // namespace hotrestart
