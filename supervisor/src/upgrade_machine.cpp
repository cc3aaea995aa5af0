// The upgrade state machine's tables and rules (see upgrade_machine.h).
#include "upgrade_machine.h"

#include "lifecycle.h"

#include <array>
#include <cassert>
#include <cstddef>
#include <string_view>

namespace hotrestart {
namespace {

// The whole transition table. Rolling back is reachable from every phase before cutover and from
// none after it; a failed preflight is rolled back at once, since nothing was started.
constexpr TransitionTable<Phase, kPhaseCount> kAllowed = {
    {Phase::Preflight, Phase::Spawning},
    {Phase::Preflight, Phase::RolledBack},
    {Phase::Spawning, Phase::Handshake},
    {Phase::Spawning, Phase::RollingBack},
    {Phase::Handshake, Phase::TransferringState},
    {Phase::Handshake, Phase::HealthChecking},  // A worker without the SDK reported ready.
    {Phase::Handshake, Phase::RollingBack},
    {Phase::TransferringState, Phase::Warming},
    {Phase::TransferringState, Phase::RollingBack},
    {Phase::Warming, Phase::HealthChecking},
    {Phase::Warming, Phase::RollingBack},
    {Phase::HealthChecking, Phase::Cutover},
    {Phase::HealthChecking, Phase::Holding},  // The upgrade asked for a hold.
    {Phase::HealthChecking, Phase::RollingBack},
    {Phase::Holding, Phase::Cutover},
    {Phase::Holding, Phase::RollingBack},
    {Phase::Cutover, Phase::DrainingOld},
    {Phase::DrainingOld, Phase::Done},
    {Phase::RollingBack, Phase::RolledBack},
};

// Each enum's names, indexed by enumerator (upgrade_machine.h lists both together).
#define HOTRESTART_UPGRADE_NAME(enumerator, name) name,
constexpr std::string_view kPhaseNames[] = {HOTRESTART_UPGRADE_PHASES(HOTRESTART_UPGRADE_NAME)};
constexpr std::string_view kInputNames[] = {HOTRESTART_UPGRADE_INPUTS(HOTRESTART_UPGRADE_NAME)};
constexpr std::string_view kActionNames[] = {HOTRESTART_UPGRADE_ACTIONS(HOTRESTART_UPGRADE_NAME)};
#undef HOTRESTART_UPGRADE_NAME

static_assert(std::size(kPhaseNames) == kPhaseCount && named_apart(kPhaseNames), "every phase needs a name of its own");
static_assert(named_apart(kInputNames), "every input needs a name of its own");
static_assert(named_apart(kActionNames), "every action needs a name of its own");

}  // namespace

std::string_view phase_name(Phase p) {
  return name_in(kPhaseNames, p);
}

std::string_view input_name(Input i) {
  return name_in(kInputNames, i);
}

std::string_view action_name(Action a) {
  return name_in(kActionNames, a);
}

bool is_terminal(Phase p) {
  return p == Phase::Done || p == Phase::RolledBack;
}

bool transition_allowed(Phase from, Phase to) {
  return kAllowed.allows(from, to);
}

UpgradeMachine::UpgradeMachine(Clock::time_point started) : UpgradeMachine(Phase::Spawning, HoldKind::None, started) {}

UpgradeMachine::UpgradeMachine(HoldKind hold, Clock::time_point started)
    : UpgradeMachine(Phase::Spawning, hold, started) {}

UpgradeMachine::UpgradeMachine(Phase first, HoldKind hold, Clock::time_point started)
    : started_(started), hold_(hold), phase_(first) {
  assert(first == Phase::Spawning || first == Phase::Preflight);
  timeline_.push_back({first, Clock::duration::zero()});
}

bool UpgradeMachine::past_cutover() const {
  return phase_ == Phase::Cutover || phase_ == Phase::DrainingOld || phase_ == Phase::Done;
}

void UpgradeMachine::enter(Phase to, Clock::time_point now) {
  assert(transition_allowed(phase_, to));
  phase_ = to;
  timeline_.push_back({to, now - started_});
}

Step UpgradeMachine::handle(Input input, std::string reason, Clock::time_point now) {
  // (phase, input) -> (next phase, action), for the upgrades `when` names. Anything not listed is
  // ignored.
  enum class When : std::uint8_t { Always, Unheld, Held, TimedHold };
  struct Rule {
    Phase from;
    Input input;
    Phase to;
    Action action;
    When when = When::Always;
  };
  static constexpr Rule kRules[] = {
      {Phase::Preflight, Input::PreflightPassed, Phase::Spawning, Action::Spawn},
      {Phase::Preflight, Input::PreflightFailed, Phase::RolledBack, Action::Finish},
      // The executable cannot be found or opened: what spawning it would have said.
      {Phase::Preflight, Input::SpawnFailed, Phase::RolledBack, Action::Finish},
      {Phase::Preflight, Input::Cancel, Phase::RolledBack, Action::Finish},
      {Phase::Spawning, Input::Spawned, Phase::Handshake, Action::WaitHandshake},
      {Phase::Spawning, Input::SpawnFailed, Phase::RollingBack, Action::StopNew},
      {Phase::Spawning, Input::Cancel, Phase::RollingBack, Action::StopNew},
      {Phase::Handshake, Input::Hello, Phase::TransferringState, Action::StartTransfer},
      {Phase::Handshake, Input::Ready, Phase::HealthChecking, Action::WaitHealth},
      {Phase::Handshake, Input::Refused, Phase::RollingBack, Action::StopNew},
      {Phase::Handshake, Input::NewExited, Phase::RollingBack, Action::StopNew},
      {Phase::Handshake, Input::Timeout, Phase::RollingBack, Action::StopNew},
      {Phase::Handshake, Input::Cancel, Phase::RollingBack, Action::StopNew},
      {Phase::TransferringState, Input::TransferDone, Phase::Warming, Action::WaitReady},
      {Phase::TransferringState, Input::TransferFailed, Phase::RollingBack, Action::StopNew},
      {Phase::TransferringState, Input::NewExited, Phase::RollingBack, Action::StopNew},
      {Phase::TransferringState, Input::Timeout, Phase::RollingBack, Action::StopNew},
      {Phase::TransferringState, Input::Cancel, Phase::RollingBack, Action::StopNew},
      {Phase::Warming, Input::Ready, Phase::HealthChecking, Action::WaitHealth},
      {Phase::Warming, Input::NewExited, Phase::RollingBack, Action::StopNew},
      {Phase::Warming, Input::Timeout, Phase::RollingBack, Action::StopNew},
      {Phase::Warming, Input::Cancel, Phase::RollingBack, Action::StopNew},
      {Phase::HealthChecking, Input::HealthPassed, Phase::Cutover, Action::Promote, When::Unheld},
      {Phase::HealthChecking, Input::HealthPassed, Phase::Holding, Action::Hold, When::Held},
      {Phase::HealthChecking, Input::NewExited, Phase::RollingBack, Action::StopNew},
      {Phase::HealthChecking, Input::Unhealthy, Phase::RollingBack, Action::StopNew},
      {Phase::HealthChecking, Input::Timeout, Phase::RollingBack, Action::StopNew},
      {Phase::HealthChecking, Input::Cancel, Phase::RollingBack, Action::StopNew},
      // A manual hold has no timer: only `promote` ends it with a cutover.
      {Phase::Holding, Input::HoldEnded, Phase::Cutover, Action::Promote, When::TimedHold},
      {Phase::Holding, Input::Promote, Phase::Cutover, Action::Promote},
      {Phase::Holding, Input::Abort, Phase::RollingBack, Action::StopNew},
      {Phase::Holding, Input::NewExited, Phase::RollingBack, Action::StopNew},
      {Phase::Holding, Input::Unhealthy, Phase::RollingBack, Action::StopNew},
      {Phase::Holding, Input::Cancel, Phase::RollingBack, Action::StopNew},
      {Phase::Cutover, Input::Promoted, Phase::DrainingOld, Action::DrainOld},
      {Phase::DrainingOld, Input::DrainStarted, Phase::Done, Action::Finish},
      {Phase::RollingBack, Input::NewGone, Phase::RolledBack, Action::Finish},
  };
  const auto applies = [this](When when) {
    switch (when) {
      case When::Unheld:
        return hold_ == HoldKind::None;
      case When::Held:
        return hold_ != HoldKind::None;
      case When::TimedHold:
        return hold_ == HoldKind::Timed;
      case When::Always:
        break;
    }
    return true;
  };
  for (const auto& rule : kRules) {
    if (rule.from != phase_ || rule.input != input || !applies(rule.when)) continue;
    const bool fails = rule.to == Phase::RollingBack || rule.to == Phase::RolledBack;
    if (fails && failure_.empty()) {
      failure_ = reason.empty() ? std::string(input_name(input)) : std::move(reason);
      cause_ = input;
    }
    enter(rule.to, now);
    return Step{true, phase_, rule.action};
  }
  return Step{false, phase_, Action::None};
}

}  // namespace hotrestart
