// The upgrade driver: the queue of inputs, the machine's actions, and the events they publish
// (see upgrade_driver.h).
#include "upgrade_driver.h"

#include <chrono>
#include <ctime>

#include <fmt/format.h>

#include <hotrestart/base/text.h>

#include "control_protocol.h"
#include "fault.h"
#include "log.h"
#include "output_lines.h"
#include "release_store.h"
#include "signals.h"

namespace hotrestart {
namespace {

using nlohmann::json;

std::int64_t ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - t).count();
}

// Inputs that fail the upgrade because of what the new worker did or did not do while it lives,
// whose reason therefore ends with what it said last (an exit's reason gets it where it is built).
bool blames_living_candidate(Input input) {
  return input == Input::Timeout || input == Input::Refused || input == Input::TransferFailed ||
         input == Input::Unhealthy;
}

// "14:03:07", the supervisor's local time of a wall clock instant in milliseconds since the epoch.
std::string time_of_day(std::int64_t ms) {
  const auto t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  ::localtime_r(&t, &tm);
  char out[16];
  std::strftime(out, sizeof out, "%H:%M:%S", &tm);
  return out;
}

}  // namespace

struct UpgradeDriver::Upgrade {
  Upgrade(uv_loop_t* loop, Phase first, Hold h) : machine(first, h.kind), hold(h), phase_timer(loop) {}
  UpgradeMachine machine;
  Hold hold;
  std::int64_t hold_ends_ms = 0;  // A timed hold in progress: when it ends (wall clock), else 0.
  std::vector<std::string> command;
  std::uint64_t release = 0;     // The release it brings in.
  std::uint64_t generation = 0;  // The new one (0 until spawned).
  std::uint64_t previous = 0;    // The one it replaces (0 if none was running).
  std::vector<ClientId> watchers;
  bool wait = false;  // The watchers stay through the watch window (`upgrade --wait`).
  // The clients that ended the hold (`promote`, `abort`): each is answered with the verdict.
  std::vector<ClientId> enders;
  Timer phase_timer;
  std::string origin;     // For the log: "control", "SIGUSR2", "SIGHUP", "rollback to release N".
  std::int64_t uid = -1;  // Who asked (the control socket's peer), when known.
  std::int64_t pid = -1;
  std::uint64_t waiting_for = 0;  // A draining generation the transfer waits for.
  // The new generation's last output when it failed, and once more when it has exited: what the
  // rollback's events and the result show.
  std::vector<std::string> last_output;
  std::unique_ptr<PreflightCheck> preflight;  // The check, from its start until the upgrade ends.
};

UpgradeDriver::UpgradeDriver(uv_loop_t* loop, const RunOptions& options, ControlServer& control, Host& host)
    : loop_(loop), options_(options), control_(control), host_(host) {}

UpgradeDriver::~UpgradeDriver() = default;

std::uint64_t UpgradeDriver::candidate() const {
  return upgrade_ ? upgrade_->generation : 0;
}

json UpgradeDriver::status_json() const {
  if (!upgrade_) return nullptr;
  json status{{"generation", upgrade_->generation},
              {"release", upgrade_->release},
              {"phase", phase_name(upgrade_->machine.phase())},
              {"elapsed_ms", ms_since(upgrade_->machine.started())},
              {"hold", hold_json()}};
  if (upgrade_->machine.phase() == Phase::Preflight && upgrade_->preflight) {
    status["preflight_pid"] = upgrade_->preflight->pid();
  }
  return status;
}

json UpgradeDriver::hold_json() const {
  const Hold& hold = upgrade_->hold;
  if (!hold.holds()) return nullptr;
  const bool timed = hold.kind == HoldKind::Timed;
  const bool holding = upgrade_->machine.phase() == Phase::Holding;
  return {{"mode", timed ? "timed" : "manual"},
          {"duration_ms", timed ? json(hold.duration.count()) : json(nullptr)},
          {"holding", holding},
          {"ends_at_ms", timed && holding ? json(upgrade_->hold_ends_ms) : json(nullptr)}};
}

std::string UpgradeDriver::busy_reason() const {
  if (upgrade_->generation == 0) {
    return fmt::format("upgrade in progress: release {} is in phase {} since {} ms; try again when it has finished",
                       upgrade_->release, phase_name(upgrade_->machine.phase()), ms_since(upgrade_->machine.started()));
  }
  const bool holding = upgrade_->machine.phase() == Phase::Holding;
  return fmt::format("upgrade in progress: generation {} is in phase {} since {} ms; try again when it has finished{}",
                     upgrade_->generation, phase_name(upgrade_->machine.phase()), ms_since(upgrade_->machine.started()),
                     holding ? " (end the hold with `hotrestart promote` or `hotrestart abort`)" : "");
}

void UpgradeDriver::forget_watcher(ClientId client) {
  if (!upgrade_) return;
  std::erase(upgrade_->watchers, client);
  std::erase(upgrade_->enders, client);
}

std::optional<std::string> UpgradeDriver::end_hold(Input input, ClientId client, std::int64_t uid, std::int64_t pid) {
  const std::string_view command = input == Input::Promote ? "promote" : "abort";
  if (!upgrade_) return fmt::format("no upgrade is in progress, so there is no hold to {}", command);
  const Phase phase = upgrade_->machine.phase();
  if (phase != Phase::Holding) {
    const char* why = !upgrade_->hold.holds()       ? " (it was started without --hold)"
                      : phase == Phase::RollingBack ? " (it is rolling back)"
                                                    : " yet (it holds once the new generation is healthy)";
    return fmt::format("the upgrade to generation {} is in phase {}, not holding: there is no hold to {}{}",
                       upgrade_->generation, phase_name(phase), command, why);
  }
  const std::string who = fmt::format("`hotrestart {}` (uid {}, pid {})", command, uid, pid);
  upgrade_->enders.push_back(client);
  if (input == Input::Promote) {
    publish_phase(fmt::format("promoted by {}", who));
    feed(Input::Promote);
  } else {
    feed(Input::Abort, "aborted by " + who);
  }
  return std::nullopt;
}

void UpgradeDriver::send_to_watchers(const json& message, AfterSend after) {
  // A copy: a client that does not read its replies is dropped inside send(), and its watcher
  // entry with it.
  const std::vector<ClientId> watchers = upgrade_->watchers;
  for (ClientId id : watchers)
    control_.send(id, message, after);
}

// ---------------------------------------------------------------------------------------------
// Inputs

void UpgradeDriver::begin(UpgradeRequest request, std::optional<ClientId> client) {
  const std::string check = request.preflight.value_or(options_.preflight);
  upgrade_ = std::make_unique<Upgrade>(loop_, check.empty() ? Phase::Spawning : Phase::Preflight, request.hold);
  upgrade_->command = request.command;
  upgrade_->uid = request.uid;
  upgrade_->pid = request.pid;
  switch (request.origin) {
    case ReleaseOrigin::Signal:
    case ReleaseOrigin::Reload:
      upgrade_->origin = std::string(release_origin_name(request.origin));
      break;
    case ReleaseOrigin::Rollback:
      upgrade_->origin = fmt::format("rollback to release {}", request.rollback_of);
      break;
    case ReleaseOrigin::Revert:
      upgrade_->origin = fmt::format("revert to release {}", request.rollback_of);
      break;
    default:
      upgrade_->origin = "control";
      break;
  }
  upgrade_->previous = request.state_from != 0 ? request.state_from : host_.active_generation();
  upgrade_->wait = request.wait;
  upgrade_->release = host_.record_release(request);
  if (client) upgrade_->watchers.push_back(*client);
  host_.upgrade_started(upgrade_->previous);
  log_info("upgrade ({}) to: {}", upgrade_->origin, shell_words(upgrade_->command));
  if (check.empty()) {
    spawn();
  } else {
    run_preflight(check);
  }
}

void UpgradeDriver::run_preflight(const std::string& check) {
  auto started = host_.start_preflight(upgrade_->release, check,
                                       [this](PreflightOutcome outcome) { on_preflight_done(std::move(outcome)); });
  if (!started) {
    feed(Input::SpawnFailed, started.error().text());
    return;
  }
  upgrade_->preflight = std::move(started).value();
  publish_phase(fmt::format("checking release {} before anything is started: preflight (pid {}): {} (timeout {})",
                            upgrade_->release, upgrade_->preflight->pid(), check,
                            format_duration(options_.preflight_timeout)));
}

void UpgradeDriver::on_preflight_done(PreflightOutcome outcome) {
  if (!upgrade_ || upgrade_->machine.phase() != Phase::Preflight) return;
  const pid_t pid = upgrade_->preflight ? upgrade_->preflight->pid() : 0;
  if (outcome.passed) {
    publish_phase(fmt::format("preflight (pid {}) passed in {}", pid, format_duration(outcome.took)));
    feed(Input::PreflightPassed);
    return;
  }
  upgrade_->last_output = std::move(outcome.last_output);
  publish_phase(
      fmt::format("preflight (pid {}) failed after {}; nothing was started", pid, format_duration(outcome.took)));
  feed(Input::PreflightFailed, std::move(outcome.reason));
}

void UpgradeDriver::spawn() {
  publish_phase(fmt::format("starting generation {} (release {}): {}", host_.next_generation_number(),
                            upgrade_->release, shell_words(upgrade_->command)));
  auto g = host_.spawn_generation(upgrade_->release);
  if (!g) {
    feed(Input::SpawnFailed, g.error().text());
    return;
  }
  upgrade_->generation = g.value()->number();
  feed(Input::Spawned);
}

void UpgradeDriver::feed(Input input, std::string reason) {
  if (!upgrade_) return;
  inputs_.emplace_back(input, std::move(reason));
  if (feeding_) return;  // The loop below takes it once the current action is done.
  feeding_ = true;
  while (upgrade_ && !inputs_.empty()) {
    auto [next, why] = std::move(inputs_.front());
    inputs_.pop_front();
    step(next, std::move(why));
  }
  inputs_.clear();  // Inputs that arrived after the verdict have nothing left to act on.
  feeding_ = false;
}

bool UpgradeDriver::take_hello(const Generation& g) {
  if (!is_candidate(g) || upgrade_->machine.phase() != Phase::Handshake) return false;
  feed(Input::Hello);  // StartTransfer: the broker takes it from here.
  return true;
}

bool UpgradeDriver::on_generation_exit(std::uint64_t number, pid_t pid, ExitStatus status,
                                       const std::vector<std::string>& last_output) {
  if (!upgrade_) return false;
  if (upgrade_->waiting_for == number && upgrade_->machine.phase() == Phase::TransferringState) begin_transfer();
  if (!upgrade_ || upgrade_->generation != number) return false;
  upgrade_->last_output = last_output;
  if (upgrade_->machine.phase() == Phase::RollingBack) {
    feed(Input::NewGone);
    return true;
  }
  const Phase phase = upgrade_->machine.phase();
  const char* before = phase == Phase::Holding          ? "during the hold"
                       : phase == Phase::HealthChecking ? "before cutover"
                                                        : "before it was ready";
  feed(Input::NewExited,
       with_last_output(fmt::format("generation {} (pid {}) {} {}", number, pid, status.describe(), before),
                        last_output));
  return true;
}

void UpgradeDriver::on_candidate_channel_failed(const std::string& reason) {
  if (!upgrade_) return;
  feed(upgrade_->machine.phase() == Phase::Handshake ? Input::Refused : Input::TransferFailed, reason);
}

void UpgradeDriver::on_section_imported(const wire::SectionReport& report) {
  const Transfer* t = host_.broker().current();
  if (!upgrade_ || t == nullptr) return;
  std::uint64_t bytes = 0;
  std::size_t ok = 0;
  for (const auto& r : t->imported) {
    bytes += r.ok ? r.bytes : 0;
    ok += r.ok ? 1 : 0;
  }
  const auto& m = upgrade_->machine;
  json event{{"v", kControlProtocolVersion},
             {"type", "state"},
             {"phase", phase_name(m.phase())},
             {"elapsed_ms", ms_since(m.started())},
             {"generation", t->to},
             {"from_generation", t->from},
             {"section", report.name},
             {"ok", report.ok},
             {"version", report.version},
             {"bytes", report.bytes},
             {"micros", report.micros},
             {"reason", report.reason},
             {"sections_done", t->imported.size()},
             {"sections_imported", ok},
             {"sections_total", t->plan.size()},
             {"bytes_done", bytes},
             {"transfer_ms", ms_since(t->started)}};
  log_info("upgrade: section {} {}", report.name,
           report.ok
               ? fmt::format("imported: schema {}, {} bytes in {} us", report.version, report.bytes, report.micros)
               : "starts cold: " + report.reason);
  send_to_watchers(event, AfterSend::KeepOpen);
  host_.record_event({{"type", "upgrade.state"},
                      {"generation", t->to},
                      {"from_generation", t->from},
                      {"release", upgrade_->release},
                      {"section", report.name},
                      {"ok", report.ok},
                      {"version", report.version},
                      {"bytes", report.bytes},
                      {"micros", report.micros},
                      {"reason", report.reason}});
}

void UpgradeDriver::on_import_finished(const Generation& g, const wire::TransferTotals& totals) {
  Transfer* t = host_.broker().current();
  if (!is_candidate(g) || t == nullptr || upgrade_->machine.phase() != Phase::TransferringState) return;
  upgrade_->phase_timer.stop();
  if (auto missing = missing_required_section(options_.state_required, *t)) {
    t->outcome = *missing;
    feed(Input::TransferFailed, t->outcome + " (--state-required)");
    return;
  }
  t->outcome = "done";
  const double secs = static_cast<double>(totals.micros) / 1e6;
  publish_phase(fmt::format("state transfer finished: {} of {} section(s) imported, {} bytes in {:.3f} s", totals.done,
                            t->plan.size(), totals.bytes, secs));
  feed(Input::TransferDone);
}

// ---------------------------------------------------------------------------------------------
// Actions

void UpgradeDriver::step(Input input, std::string reason) {
  Generation* fresh = host_.generation(upgrade_->generation);
  if (fresh != nullptr && blames_living_candidate(input)) {
    upgrade_->last_output = fresh->output().tail().lines();
    reason = with_last_output(std::move(reason), upgrade_->last_output);
  }
  const Step step = upgrade_->machine.handle(input, std::move(reason));
  if (!step.accepted) {
    log_debug("upgrade: input {} ignored in phase {}", input_name(input), phase_name(upgrade_->machine.phase()));
    return;
  }
  switch (step.action) {
    case Action::None:
      break;
    case Action::Spawn:
      spawn();
      break;
    case Action::WaitHandshake:
      publish_phase(fmt::format(
          "generation {} (pid {}) started; waiting for its hello (SDK) or for it to report ready (--ready {}, "
          "timeout {})",
          upgrade_->generation, fresh ? fresh->pid() : 0, options_.ready.describe(),
          format_duration(options_.ready_timeout)));
      break;
    case Action::StartTransfer:
      start_transfer();
      break;
    case Action::WaitReady:
      wait_ready(fresh);
      break;
    case Action::WaitHealth:
      wait_health();
      break;
    case Action::Hold:
      hold();
      break;
    case Action::Promote:
      promote();
      break;
    case Action::DrainOld:
      drain_old();
      break;
    case Action::StopNew:
      stop_new(fresh);
      break;
    case Action::Finish:
      finish();
      break;
  }
}

void UpgradeDriver::start_transfer() {
  Generation* fresh = host_.generation(upgrade_->generation);
  if (fresh == nullptr || fresh->sdk() == SdkState::None) return;
  // The readiness checks stop while the state moves (WaitReady starts them over); --state-timeout
  // bounds the transfer, including any wait in begin_transfer().
  fresh->pause_readiness();
  upgrade_->phase_timer.start(options_.state_timeout, [this] {
    feed(Input::Timeout, fmt::format("the state transfer did not finish within {} (--state-timeout)",
                                     format_duration(options_.state_timeout)));
  });
  begin_transfer();
}

void UpgradeDriver::begin_transfer() {
  Generation* fresh = host_.generation(upgrade_->generation);
  if (fresh == nullptr) return;
  const auto facts = host_.generation_facts();
  const TransferPlan plan = plan_transfer(facts, upgrade_->previous, fresh->number());
  if (plan.kind == TransferPlan::Kind::WaitForDrain) {
    if (upgrade_->waiting_for != plan.generation) {
      upgrade_->waiting_for = plan.generation;
      publish_phase(
          fmt::format("waiting for generation {} to finish draining, so that the changes it still "
                      "streams to generation {} reach generation {} too",
                      plan.generation, upgrade_->previous, fresh->number()));
    }
    return;
  }
  upgrade_->waiting_for = 0;
  StateBroker& broker = host_.broker();
  if (auto ok = broker.begin(plan, *fresh, host_.generation(upgrade_->previous)); !ok) {
    feed(Input::TransferFailed, ok.error().text());
    return;
  }
  const Transfer& t = *broker.transfer();
  std::string names;
  for (const auto& p : t.plan)
    names += (names.empty() ? "" : ", ") + p.name;
  if (t.plan.empty()) {
    publish_phase(fmt::format("generation {} imports no state", fresh->number()));
  } else if (t.from != 0) {
    publish_phase(fmt::format("moving {} section(s) from generation {} to generation {}: {}", t.plan.size(), t.from,
                              fresh->number(), names));
  } else {
    publish_phase(fmt::format("{}: section(s) {} start cold", t.note, names));
  }
}

void UpgradeDriver::wait_ready(Generation* fresh) {
  publish_phase(fmt::format("waiting for generation {} to report ready (--ready {}, timeout {})", upgrade_->generation,
                            options_.ready.describe(), format_duration(options_.ready_timeout)));
  if (fresh == nullptr) return;
  if (fresh->state() == GenerationState::Ready) {
    feed(Input::Ready);  // It reported ready (SDK or READY=1) before the transfer ended.
    return;
  }
  // The ready deadline and a delay or exec readiness check were stopped for the transfer; they
  // start over now, so that the worker is judged on what it does with its state.
  fresh->restart_readiness();
}

void UpgradeDriver::wait_health() {
  if (options_.min_ready.count() == 0) {
    publish_phase(fmt::format("generation {} is ready", upgrade_->generation));
    feed(Input::HealthPassed);
    return;
  }
  publish_phase(fmt::format("generation {} is ready; it must stay up for {} (--min-ready)", upgrade_->generation,
                            format_duration(options_.min_ready)));
  upgrade_->phase_timer.start(options_.min_ready, [this] { feed(Input::HealthPassed); });
}

void UpgradeDriver::hold() {
  const std::uint64_t number = upgrade_->generation;
  const Generation* fresh = host_.generation(number);
  const Generation* old = host_.generation(host_.active_generation());
  const pid_t pid = fresh != nullptr ? fresh->pid() : 0;
  const std::string serving =
      old != nullptr
          ? fmt::format("generations {} (pid {}) and {} (pid {}) both serve", old->number(), old->pid(), number, pid)
          : fmt::format("generation {} (pid {}) serves alone (no previous generation is running)", number, pid);
  const std::string ends =
      fmt::format("`hotrestart promote` (generation {} takes over) or `hotrestart abort` (generation {} stops{})",
                  number, number, old != nullptr ? fmt::format(", generation {} serves on", old->number()) : "");
  if (upgrade_->hold.kind != HoldKind::Timed) {
    publish_phase(fmt::format("{} until the hold is ended with {}", serving, ends));
    return;
  }
  const Millis duration = upgrade_->hold.duration;
  upgrade_->hold_ends_ms = wall_clock_ms() + duration.count();
  upgrade_->phase_timer.start(duration, [this, duration] {
    // An abort or a failure ended the hold already, and the rollback may still be under way.
    if (upgrade_->machine.phase() != Phase::Holding) return;
    publish_phase(fmt::format("the hold of {} is over and generation {} stayed up", format_duration(duration),
                              upgrade_->generation));
    feed(Input::HoldEnded);
  });
  publish_phase(fmt::format("{} for {}, until {}; then generation {} is promoted. End the hold now with {}", serving,
                            format_duration(duration), time_of_day(upgrade_->hold_ends_ms), number, ends));
}

void UpgradeDriver::promote() {
  upgrade_->previous = host_.active_generation();
  host_.promote(upgrade_->generation);
  publish_phase(fmt::format("generation {} is now the active generation", upgrade_->generation));
  feed(Input::Promoted);
}

void UpgradeDriver::drain_old() {
  Generation* old = host_.generation(upgrade_->previous);
  if (old != nullptr) {
    const Millis park = host_.park_for(*old);
    if (park > Millis{0}) {
      publish_phase(
          fmt::format("draining generation {} (pid {}), then keeping it parked for {} so that a revert can "
                      "resume it (run --no-park: it exits once drained)",
                      old->number(), old->pid(), format_duration(park)));
    } else {
      const std::string how = old->sdk() != SdkState::None ? std::string("a drain request on its channel")
                                                           : signal_name(options_.drain_signal);
      publish_phase(fmt::format("draining generation {} (pid {}) with {}; SIGKILL after {}", old->number(), old->pid(),
                                how, format_duration(options_.drain_timeout)));
    }
    old->stop("replaced by generation " + std::to_string(upgrade_->generation), Ending::Drain, park);
  } else {
    publish_phase("no previous generation was running, nothing to drain");
  }
  feed(Input::DrainStarted);
}

void UpgradeDriver::stop_new(Generation* fresh) {
  publish_phase(fmt::format("rolling back: {}", upgrade_->machine.failure()));
  if (fresh != nullptr) {
    fresh->stop("rolled back", Ending::Stop);
  } else {
    feed(Input::NewGone);
  }
}

void UpgradeDriver::finish() {
  const auto& m = upgrade_->machine;
  const bool ok = m.succeeded();
  const bool watched = host_.upgrade_finished(upgrade_->release, ok, ok ? std::string() : m.failure());
  const std::uint64_t active = host_.active_generation();
  const Generation* serving = host_.generation(active);
  std::string message;
  if (ok) {
    message = fmt::format("generation {} (pid {}) serves", active, serving ? serving->pid() : 0);
  } else {
    message = serving != nullptr ? fmt::format("rolled back: {}; generation {} (pid {}) still serves", m.failure(),
                                               serving->number(), serving->pid())
                                 : fmt::format("rolled back: {}; no generation is serving now", m.failure());
  }
  json timeline = json::array();
  for (const auto& rec : m.timeline()) {
    timeline.push_back(
        {{"phase", phase_name(rec.phase)}, {"at_ms", std::chrono::duration_cast<Millis>(rec.at).count()}});
  }
  json result{{"v", kControlProtocolVersion},
              {"type", "result"},
              {"ok", ok},
              {"outcome", phase_name(m.phase())},
              {"generation", ok ? active : upgrade_->generation},
              {"release", upgrade_->release},
              {"serving_generation", active},
              {"serving_pid", serving != nullptr ? serving->pid() : 0},
              {"elapsed_ms", ms_since(m.started())},
              {"reason", ok ? "" : m.failure()},
              {"last_output", ok ? json::array() : json(upgrade_->last_output)},
              {"message", message},
              {"watch_window_ms", watched ? options_.watch_window.count() : 0},
              {"timeline", timeline}};
  publish_phase(message);
  json recorded{{"type", "upgrade.result"},
                {"ok", ok},
                {"outcome", phase_name(m.phase())},
                {"generation", ok ? active : upgrade_->generation},
                {"release", upgrade_->release},
                {"origin", upgrade_->origin},
                {"elapsed_ms", ms_since(m.started())},
                {"reason", ok ? "" : m.failure()},
                {"cause", ok ? "" : input_name(m.cause())},
                {"message", message},
                {"timeline", timeline}};
  if (upgrade_->uid >= 0) recorded["uid"] = upgrade_->uid;
  if (upgrade_->pid >= 0) recorded["pid"] = upgrade_->pid;
  host_.record_event(std::move(recorded));
  if (watched && upgrade_->wait) {
    // The requester hears the watch's end too; the watch closes its connection then.
    send_to_watchers(result, AfterSend::KeepOpen);
    for (ClientId id : upgrade_->watchers)
      host_.wait_for_watch(id);
  } else {
    send_to_watchers(result, AfterSend::Close);
  }
  // Whoever ended the hold hears the verdict too: for `abort`, once the new generation is gone.
  for (ClientId id : std::vector<ClientId>(upgrade_->enders)) {
    control_.send(id,
                  json{{"v", kControlProtocolVersion},
                       {"type", "ok"},
                       {"outcome", phase_name(m.phase())},
                       {"serving_generation", active},
                       {"message", message}},
                  AfterSend::Close);
  }
  last_verdict_ = result;
  last_verdict_.erase("v");
  last_verdict_.erase("type");
  upgrade_.reset();
  host_.upgrade_reported();
}

void UpgradeDriver::publish_phase(const std::string& message) {
  const auto& m = upgrade_->machine;
  const Generation* fresh = host_.generation(upgrade_->generation);
  const auto elapsed = ms_since(m.started());
  json event{{"v", kControlProtocolVersion},
             {"type", "event"},
             {"phase", phase_name(m.phase())},
             {"elapsed_ms", elapsed},
             {"generation", upgrade_->generation},
             {"pid", fresh != nullptr ? fresh->pid() : 0},
             {"message", message}};
  if (m.phase() == Phase::RollingBack || m.phase() == Phase::RolledBack) event["last_output"] = upgrade_->last_output;
  if (m.phase() == Phase::Holding) event["hold"] = hold_json();
  log_info("upgrade: {} ({} ms): {}", phase_name(m.phase()), elapsed, message);
  json recorded{{"type", "upgrade.phase"},
                {"phase", phase_name(m.phase())},
                {"generation", upgrade_->generation},
                {"release", upgrade_->release},
                {"origin", upgrade_->origin},
                {"elapsed_ms", elapsed},
                {"message", message}};
  if (upgrade_->uid >= 0) recorded["uid"] = upgrade_->uid;
  if (upgrade_->pid >= 0) recorded["pid"] = upgrade_->pid;
  host_.record_event(std::move(recorded));
  send_to_watchers(event, AfterSend::KeepOpen);
  die_if_asked(phase_name(m.phase()));
}

}  // namespace hotrestart
