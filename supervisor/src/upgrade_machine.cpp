#include "upgrade_machine.h"

#include <array>
#include <cassert>

namespace hotrestart {
namespace {

constexpr std::size_t idx(Phase p) {
  return static_cast<std::size_t>(p);
}

// kAllowed[from][to]: the whole transition table. Rolling back is reachable from every
// phase before cutover and from none after it.
constexpr auto kAllowed = [] {
  std::array<std::array<bool, kPhaseCount>, kPhaseCount> t{};
  const auto allow = [&t](Phase from, Phase to) { t[idx(from)][idx(to)] = true; };
  allow(Phase::Spawning, Phase::Handshake);
  allow(Phase::Spawning, Phase::RollingBack);
  allow(Phase::Handshake, Phase::TransferringState);
  allow(Phase::Handshake, Phase::HealthChecking);  // A worker without the SDK reported ready.
  allow(Phase::Handshake, Phase::RollingBack);
  allow(Phase::TransferringState, Phase::Warming);
  allow(Phase::TransferringState, Phase::RollingBack);
  allow(Phase::Warming, Phase::HealthChecking);
  allow(Phase::Warming, Phase::RollingBack);
  allow(Phase::HealthChecking, Phase::Cutover);
  allow(Phase::HealthChecking, Phase::RollingBack);
  allow(Phase::Cutover, Phase::DrainingOld);
  allow(Phase::DrainingOld, Phase::Done);
  allow(Phase::RollingBack, Phase::RolledBack);
  return t;
}();

}  // namespace

std::string_view phase_name(Phase p) {
  switch (p) {
    case Phase::Spawning:
      return "spawning";
    case Phase::Handshake:
      return "handshake";
    case Phase::TransferringState:
      return "transferring-state";
    case Phase::Warming:
      return "warming";
    case Phase::HealthChecking:
      return "health-checking";
    case Phase::Cutover:
      return "cutover";
    case Phase::DrainingOld:
      return "draining-old";
    case Phase::Done:
      return "done";
    case Phase::RollingBack:
      return "rolling-back";
    case Phase::RolledBack:
      return "rolled-back";
  }
  return "?";
}

std::string_view input_name(Input i) {
  switch (i) {
    case Input::Spawned:
      return "spawned";
    case Input::SpawnFailed:
      return "spawn-failed";
    case Input::Hello:
      return "hello";
    case Input::Refused:
      return "refused";
    case Input::TransferDone:
      return "transfer-done";
    case Input::TransferFailed:
      return "transfer-failed";
    case Input::Ready:
      return "ready";
    case Input::HealthPassed:
      return "health-passed";
    case Input::Promoted:
      return "promoted";
    case Input::DrainStarted:
      return "drain-started";
    case Input::NewExited:
      return "new-exited";
    case Input::Timeout:
      return "timeout";
    case Input::Cancel:
      return "cancel";
    case Input::NewGone:
      return "new-gone";
  }
  return "?";
}

std::string_view action_name(Action a) {
  switch (a) {
    case Action::None:
      return "none";
    case Action::WaitHandshake:
      return "wait-handshake";
    case Action::StartTransfer:
      return "start-transfer";
    case Action::WaitReady:
      return "wait-ready";
    case Action::WaitHealth:
      return "wait-health";
    case Action::Promote:
      return "promote";
    case Action::DrainOld:
      return "drain-old";
    case Action::StopNew:
      return "stop-new";
    case Action::Finish:
      return "finish";
  }
  return "?";
}

bool is_terminal(Phase p) {
  return p == Phase::Done || p == Phase::RolledBack;
}

bool transition_allowed(Phase from, Phase to) {
  return kAllowed[idx(from)][idx(to)];
}

UpgradeMachine::UpgradeMachine(Clock::time_point started) : started_(started) {
  timeline_.push_back({Phase::Spawning, Clock::duration::zero()});
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
  // (phase, input) -> (next phase, action). Anything not listed is ignored.
  struct Rule {
    Phase from;
    Input input;
    Phase to;
    Action action;
  };
  static constexpr Rule kRules[] = {
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
      {Phase::HealthChecking, Input::HealthPassed, Phase::Cutover, Action::Promote},
      {Phase::HealthChecking, Input::NewExited, Phase::RollingBack, Action::StopNew},
      {Phase::HealthChecking, Input::Timeout, Phase::RollingBack, Action::StopNew},
      {Phase::HealthChecking, Input::Cancel, Phase::RollingBack, Action::StopNew},
      {Phase::Cutover, Input::Promoted, Phase::DrainingOld, Action::DrainOld},
      {Phase::DrainingOld, Input::DrainStarted, Phase::Done, Action::Finish},
      {Phase::RollingBack, Input::NewGone, Phase::RolledBack, Action::Finish},
  };
  for (const auto& rule : kRules) {
    if (rule.from != phase_ || rule.input != input) continue;
    if (rule.to == Phase::RollingBack && failure_.empty()) {
      failure_ = reason.empty() ? std::string(input_name(input)) : std::move(reason);
    }
    enter(rule.to, now);
    return Step{true, phase_, rule.action};
  }
  return Step{false, phase_, Action::None};
}

}  // namespace hotrestart
