// The upgrade state machine, with no process and no socket.
#include <doctest/doctest.h>

#include <string_view>
#include <utility>

#include "upgrade_machine.h"

using namespace hotrestart;

namespace {

constexpr Phase kAll[] = {Phase::Preflight,   Phase::Spawning,       Phase::Handshake,   Phase::TransferringState,
                          Phase::Warming,     Phase::HealthChecking, Phase::Holding,     Phase::Cutover,
                          Phase::DrainingOld, Phase::Done,           Phase::RollingBack, Phase::RolledBack};
constexpr Input kInputs[] = {Input::PreflightPassed, Input::PreflightFailed, Input::Spawned,      Input::SpawnFailed,
                             Input::Hello,           Input::Refused,         Input::TransferDone, Input::TransferFailed,
                             Input::Ready,           Input::HealthPassed,    Input::Promoted,     Input::DrainStarted,
                             Input::NewExited,       Input::Timeout,         Input::Cancel,       Input::NewGone,
                             Input::HoldEnded,       Input::Promote,         Input::Abort,        Input::Unhealthy};
constexpr HoldKind kHolds[] = {HoldKind::Timed, HoldKind::Manual};

// Drives a fresh machine (holding as `hold` says) through `inputs`, requiring each to be accepted.
UpgradeMachine drive(std::initializer_list<Input> inputs, HoldKind hold = HoldKind::None) {
  UpgradeMachine m(hold);
  for (Input i : inputs)
    REQUIRE(m.handle(i, "because").accepted);
  return m;
}

}  // namespace

TEST_CASE("the happy path visits every phase in order with the right actions") {
  UpgradeMachine m;
  CHECK(m.phase() == Phase::Spawning);
  CHECK(m.handle(Input::Spawned).action == Action::WaitHandshake);
  CHECK(m.phase() == Phase::Handshake);
  CHECK(m.handle(Input::Hello).action == Action::StartTransfer);
  CHECK(m.phase() == Phase::TransferringState);
  CHECK(m.handle(Input::TransferDone).action == Action::WaitReady);
  CHECK(m.phase() == Phase::Warming);
  CHECK(m.handle(Input::Ready).action == Action::WaitHealth);
  CHECK(m.handle(Input::HealthPassed).action == Action::Promote);
  CHECK(m.past_cutover());
  CHECK(m.handle(Input::Promoted).action == Action::DrainOld);
  CHECK(m.handle(Input::DrainStarted).action == Action::Finish);
  CHECK(m.phase() == Phase::Done);
  CHECK(m.succeeded());
  CHECK(m.finished());
  CHECK(m.timeline().size() == 8);
  CHECK(m.failure().empty());
}

TEST_CASE("a worker without the SDK goes from handshake to health-checking on its readiness") {
  UpgradeMachine m;
  m.handle(Input::Spawned);
  const Step s = m.handle(Input::Ready);
  CHECK(s.accepted);
  CHECK(s.action == Action::WaitHealth);
  CHECK(m.phase() == Phase::HealthChecking);
  // Having skipped the transfer, it cannot be sent back to it.
  CHECK_FALSE(m.handle(Input::Hello).accepted);
  CHECK_FALSE(m.handle(Input::TransferDone).accepted);
  CHECK(m.phase() == Phase::HealthChecking);
}

TEST_CASE("every failure before cutover rolls back and keeps the first reason") {
  struct Case {
    std::initializer_list<Input> before;
    Input failure;
  };
  const Case cases[] = {
      {{}, Input::SpawnFailed},
      {{}, Input::Cancel},
      {{Input::Spawned}, Input::NewExited},
      {{Input::Spawned}, Input::Timeout},
      {{Input::Spawned}, Input::Cancel},
      {{Input::Spawned}, Input::Refused},
      {{Input::Spawned, Input::Hello}, Input::TransferFailed},
      {{Input::Spawned, Input::Hello}, Input::NewExited},
      {{Input::Spawned, Input::Hello}, Input::Timeout},
      {{Input::Spawned, Input::Hello}, Input::Cancel},
      {{Input::Spawned, Input::Hello, Input::TransferDone}, Input::NewExited},
      {{Input::Spawned, Input::Hello, Input::TransferDone}, Input::Timeout},
      {{Input::Spawned, Input::Hello, Input::TransferDone}, Input::Cancel},
      {{Input::Spawned, Input::Ready}, Input::NewExited},
      {{Input::Spawned, Input::Ready}, Input::Timeout},
      {{Input::Spawned, Input::Ready}, Input::Cancel},
      {{Input::Spawned, Input::Ready}, Input::Unhealthy},
  };
  for (const auto& c : cases) {
    UpgradeMachine m = drive(c.before);
    const Step step = m.handle(c.failure, "first reason");
    CHECK(step.accepted);
    CHECK(step.action == Action::StopNew);
    CHECK(m.phase() == Phase::RollingBack);
    // A later failure (the worker dying while being stopped) does not overwrite the cause.
    CHECK_FALSE(m.handle(Input::NewExited, "second reason").accepted);
    CHECK(m.handle(Input::NewGone).action == Action::Finish);
    CHECK(m.phase() == Phase::RolledBack);
    CHECK_FALSE(m.succeeded());
    CHECK(m.failure() == "first reason");
  }
}

TEST_CASE("a held upgrade serves from holding between health-checking and cutover") {
  for (HoldKind hold : kHolds) {
    UpgradeMachine m = drive({Input::Spawned, Input::Ready}, hold);
    const Step held = m.handle(Input::HealthPassed);
    CHECK(held.accepted);
    CHECK(held.action == Action::Hold);
    CHECK(m.phase() == Phase::Holding);
    CHECK_FALSE(m.past_cutover());
    CHECK(m.handle(Input::Promote).action == Action::Promote);
    CHECK(m.phase() == Phase::Cutover);
    CHECK(m.handle(Input::Promoted).action == Action::DrainOld);
    CHECK(m.handle(Input::DrainStarted).action == Action::Finish);
    CHECK(m.succeeded());
    CHECK(m.failure().empty());
    CHECK(m.timeline().at(3).phase == Phase::Holding);
  }
}

TEST_CASE("a timed hold ends by itself in cutover and a manual hold only by promote") {
  UpgradeMachine timed = drive({Input::Spawned, Input::Ready, Input::HealthPassed}, HoldKind::Timed);
  const Step s = timed.handle(Input::HoldEnded);
  CHECK(s.accepted);
  CHECK(s.action == Action::Promote);
  CHECK(timed.phase() == Phase::Cutover);

  // A manual hold has no timer, so a hold-ended cannot come from it and moves nothing.
  UpgradeMachine manual = drive({Input::Spawned, Input::Ready, Input::HealthPassed}, HoldKind::Manual);
  CHECK_FALSE(manual.handle(Input::HoldEnded).accepted);
  CHECK(manual.phase() == Phase::Holding);
}

TEST_CASE("abort, an exit of the new worker or a stop during the hold rolls back with its reason") {
  for (HoldKind hold : kHolds) {
    for (Input failure : {Input::Abort, Input::NewExited, Input::Cancel, Input::Unhealthy}) {
      UpgradeMachine m =
          drive({Input::Spawned, Input::Hello, Input::TransferDone, Input::Ready, Input::HealthPassed}, hold);
      REQUIRE(m.phase() == Phase::Holding);
      const Step step = m.handle(failure, "aborted by `hotrestart abort` (uid 1000, pid 1234)");
      CHECK(step.accepted);
      CHECK(step.action == Action::StopNew);
      CHECK(m.phase() == Phase::RollingBack);
      // The hold is over: neither a late promote nor the hold's end brings the new generation back.
      CHECK_FALSE(m.handle(Input::Promote).accepted);
      CHECK_FALSE(m.handle(Input::HoldEnded).accepted);
      CHECK(m.handle(Input::NewGone).action == Action::Finish);
      CHECK(m.phase() == Phase::RolledBack);
      CHECK(m.failure() == "aborted by `hotrestart abort` (uid 1000, pid 1234)");
    }
  }
}

TEST_CASE("the hold's inputs move nothing outside the hold, and a hold takes no timeout") {
  // Without a hold, health-passed goes straight to the cutover, and promote and abort mean nothing.
  UpgradeMachine plain = drive({Input::Spawned, Input::Ready});
  for (Input i : {Input::HoldEnded, Input::Promote, Input::Abort})
    CHECK_FALSE(plain.handle(i, "x").accepted);
  CHECK(plain.handle(Input::HealthPassed).action == Action::Promote);
  CHECK(plain.phase() == Phase::Cutover);

  // With one, they wait for the hold: a promote or an abort before it is not remembered.
  for (HoldKind hold : kHolds) {
    UpgradeMachine m(hold);
    for (Input step : {Input::Spawned, Input::Ready}) {
      for (Input i : {Input::HoldEnded, Input::Promote, Input::Abort})
        CHECK_FALSE(m.handle(i, "x").accepted);
      REQUIRE(m.handle(step).accepted);
    }
    for (Input i : {Input::HoldEnded, Input::Promote, Input::Abort})
      CHECK_FALSE(m.handle(i, "x").accepted);
    REQUIRE(m.handle(Input::HealthPassed).accepted);
    // The hold has its own end; the phase deadlines belong to the phases before it.
    CHECK_FALSE(m.handle(Input::Timeout, "x").accepted);
    CHECK_FALSE(m.handle(Input::Ready).accepted);
    CHECK(m.phase() == Phase::Holding);
  }
}

TEST_CASE("nothing rolls back after cutover") {
  UpgradeMachine m = drive({Input::Spawned, Input::Ready, Input::HealthPassed});
  for (Input i : {Input::NewExited, Input::Timeout, Input::Cancel, Input::SpawnFailed}) {
    CHECK_FALSE(m.handle(i, "late").accepted);
    CHECK(m.phase() == Phase::Cutover);
  }
}

TEST_CASE("terminal phases accept nothing") {
  UpgradeMachine done =
      drive({Input::Spawned, Input::Ready, Input::HealthPassed, Input::Promoted, Input::DrainStarted});
  UpgradeMachine rolled = drive({Input::SpawnFailed, Input::NewGone});
  for (Input i : kInputs) {
    CHECK_FALSE(done.handle(i).accepted);
    CHECK_FALSE(rolled.handle(i).accepted);
  }
}

TEST_CASE("inputs out of order are ignored and not acted upon") {
  UpgradeMachine m;
  CHECK_FALSE(m.handle(Input::Ready).accepted);  // READY before the exec result
  CHECK_FALSE(m.handle(Input::HealthPassed).accepted);
  CHECK_FALSE(m.handle(Input::NewGone).accepted);
  CHECK(m.phase() == Phase::Spawning);
  m.handle(Input::Spawned);
  CHECK_FALSE(m.handle(Input::TransferDone).accepted);  // no transfer before the hello
  CHECK(m.handle(Input::Hello).accepted);
  CHECK_FALSE(m.handle(Input::Hello).accepted);  // a second hello changes nothing
  CHECK_FALSE(m.handle(Input::Ready).accepted);  // ready during the transfer waits for its end
  CHECK(m.phase() == Phase::TransferringState);
  CHECK(m.handle(Input::TransferDone).accepted);
  CHECK(m.handle(Input::Ready).accepted);
  CHECK_FALSE(m.handle(Input::Ready).accepted);  // a second READY=1 changes nothing
}

TEST_CASE("an upgrade with a preflight check starts in preflight and spawns only once it passed") {
  UpgradeMachine m(Phase::Preflight);
  CHECK(m.phase() == Phase::Preflight);
  REQUIRE(m.timeline().size() == 1);
  CHECK(m.timeline().front().phase == Phase::Preflight);
  // Nothing of a new generation can happen before it exists.
  for (Input i : {Input::Spawned, Input::Hello, Input::Ready, Input::NewExited, Input::Timeout, Input::NewGone}) {
    CHECK_FALSE(m.handle(i, "early").accepted);
    CHECK(m.phase() == Phase::Preflight);
  }
  const Step passed = m.handle(Input::PreflightPassed);
  CHECK(passed.accepted);
  CHECK(passed.action == Action::Spawn);
  CHECK(m.phase() == Phase::Spawning);
  CHECK_FALSE(m.handle(Input::PreflightFailed, "late").accepted);  // the check is over
  CHECK(m.handle(Input::Spawned).action == Action::WaitHandshake);
  CHECK(m.handle(Input::Ready).action == Action::WaitHealth);
  CHECK(m.handle(Input::HealthPassed).action == Action::Promote);
  CHECK(m.handle(Input::Promoted).action == Action::DrainOld);
  CHECK(m.handle(Input::DrainStarted).action == Action::Finish);
  CHECK(m.succeeded());
  CHECK(m.timeline().size() == 7);
}

TEST_CASE("a failed preflight, an executable that cannot be found, or a stop ends the upgrade with nothing to stop") {
  for (Input failure : {Input::PreflightFailed, Input::SpawnFailed, Input::Cancel}) {
    UpgradeMachine m(Phase::Preflight);
    const Step step = m.handle(failure, "preflight failed (exit status 1): bad directive");
    CHECK(step.accepted);
    // Straight to the verdict: no generation was started, so there is none to stop.
    CHECK(step.action == Action::Finish);
    CHECK(m.phase() == Phase::RolledBack);
    CHECK(m.finished());
    CHECK_FALSE(m.succeeded());
    CHECK(m.failure() == "preflight failed (exit status 1): bad directive");
    CHECK_FALSE(m.handle(Input::PreflightPassed).accepted);
    REQUIRE(m.timeline().size() == 2);
    CHECK(m.timeline().back().phase == Phase::RolledBack);
  }
  // Without a reason, the input names itself.
  UpgradeMachine m(Phase::Preflight);
  m.handle(Input::PreflightFailed);
  CHECK(m.failure() == "preflight-failed");
}

TEST_CASE("an upgrade without a preflight check never sees the preflight inputs") {
  UpgradeMachine m;
  CHECK(m.phase() == Phase::Spawning);
  CHECK_FALSE(m.handle(Input::PreflightPassed).accepted);
  CHECK_FALSE(m.handle(Input::PreflightFailed, "x").accepted);
  CHECK(m.phase() == Phase::Spawning);
  CHECK(m.failure().empty());
  for (Phase p : kAll)
    CHECK_FALSE(transition_allowed(p, Phase::Preflight));
}

TEST_CASE("every transition the machine makes is in the table and the table has no way back") {
  // Exhaustive: from every reachable phase, every input either is ignored or moves along
  // an allowed edge.
  // An upgrade with a preflight check starts in preflight, held or not.
  for (HoldKind hold : {HoldKind::None, HoldKind::Timed, HoldKind::Manual}) {
    for (Input i : kInputs) {
      UpgradeMachine m(Phase::Preflight, hold);
      const Step s = m.handle(i, "x");
      if (s.accepted)
        CHECK(transition_allowed(Phase::Preflight, s.phase));
      else
        CHECK(m.phase() == Phase::Preflight);
    }
  }
  const auto check_from = [](std::initializer_list<Input> path, HoldKind hold) {
    for (Input i : kInputs) {
      UpgradeMachine m = drive(path, hold);
      const Phase before = m.phase();
      const Step s = m.handle(i, "x");
      if (s.accepted)
        CHECK(transition_allowed(before, s.phase));
      else
        CHECK(m.phase() == before);
    }
  };
  // The same inputs lead to the cutover without a hold, and to the hold with one.
  const std::initializer_list<Input> paths[] = {{},
                                                {Input::Spawned},
                                                {Input::Spawned, Input::Hello},
                                                {Input::Spawned, Input::Hello, Input::TransferDone},
                                                {Input::Spawned, Input::Ready},
                                                {Input::Spawned, Input::Ready, Input::HealthPassed},
                                                {Input::Cancel}};
  for (HoldKind hold : {HoldKind::None, HoldKind::Timed, HoldKind::Manual}) {
    for (const auto& path : paths)
      check_from(path, hold);
  }
  check_from({Input::Spawned, Input::Ready, Input::HealthPassed, Input::Promoted}, HoldKind::None);
  // A held upgrade reaches the cutover from the hold, by a promote.
  for (HoldKind hold : kHolds) {
    check_from({Input::Spawned, Input::Ready, Input::HealthPassed, Input::Promote}, hold);
    check_from({Input::Spawned, Input::Ready, Input::HealthPassed, Input::Promote, Input::Promoted}, hold);
  }
  for (Phase p : kAll) {
    // Spawning is entered only from the preflight, which nothing enters: an upgrade starts there.
    CHECK(transition_allowed(p, Phase::Spawning) == (p == Phase::Preflight));
    CHECK_FALSE(transition_allowed(Phase::Done, p));
    CHECK_FALSE(transition_allowed(Phase::RolledBack, p));
  }
  CHECK_FALSE(transition_allowed(Phase::Cutover, Phase::RollingBack));
  CHECK_FALSE(transition_allowed(Phase::DrainingOld, Phase::RollingBack));
  CHECK_FALSE(transition_allowed(Phase::Holding, Phase::HealthChecking));
  CHECK_FALSE(transition_allowed(Phase::Warming, Phase::Holding));
}

TEST_CASE("phase names are the documented ones") {
  CHECK(phase_name(Phase::Preflight) == "preflight");
  CHECK(phase_name(Phase::Handshake) == "handshake");
  CHECK(phase_name(Phase::TransferringState) == "transferring-state");
  CHECK(phase_name(Phase::Warming) == "warming");
  CHECK(phase_name(Phase::HealthChecking) == "health-checking");
  CHECK(phase_name(Phase::DrainingOld) == "draining-old");
  CHECK(phase_name(Phase::RolledBack) == "rolled-back");
}

TEST_CASE("every phase, input and action keeps the name the protocol and the logs use") {
  // Written out in full, so that an edit to a name list in upgrade_machine.h shows up here.
  const std::string_view phases[] = {"preflight",       "spawning",   "handshake", "transferring-state", "warming",
                                     "health-checking", "holding",    "cutover",   "draining-old",       "done",
                                     "rolling-back",    "rolled-back"};
  REQUIRE(std::size(kAll) == kPhaseCount);
  for (std::size_t i = 0; i < std::size(kAll); ++i)
    CHECK(phase_name(kAll[i]) == phases[i]);

  const std::string_view inputs[] = {
      "preflight-passed", "preflight-failed", "spawned",         "spawn-failed", "hello",
      "refused",          "transfer-done",    "transfer-failed", "ready",        "health-passed",
      "promoted",         "drain-started",    "new-exited",      "timeout",      "cancel",
      "new-gone",         "hold-ended",       "promote",         "abort",        "unhealthy"};
  REQUIRE(std::size(kInputs) == std::size(inputs));
  for (std::size_t i = 0; i < std::size(kInputs); ++i)
    CHECK(input_name(kInputs[i]) == inputs[i]);

  const std::pair<Action, std::string_view> actions[] = {{Action::None, "none"},
                                                         {Action::Spawn, "spawn"},
                                                         {Action::WaitHandshake, "wait-handshake"},
                                                         {Action::StartTransfer, "start-transfer"},
                                                         {Action::WaitReady, "wait-ready"},
                                                         {Action::WaitHealth, "wait-health"},
                                                         {Action::Hold, "hold"},
                                                         {Action::Promote, "promote"},
                                                         {Action::DrainOld, "drain-old"},
                                                         {Action::StopNew, "stop-new"},
                                                         {Action::Finish, "finish"}};
  for (const auto& [action, name] : actions)
    CHECK(action_name(action) == name);
  CHECK(phase_name(static_cast<Phase>(200)) == "?");
}
