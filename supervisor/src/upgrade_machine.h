// The upgrade lifecycle, as one enum and one transition table.
//
//   preflight ──► spawning ──► handshake ──► transferring-state ──► warming ──► health-checking ──► cutover ──►
//   draining-old ──► done
//       │            │            │  └──(no SDK: ready)───────────────────────────►│     │            ▲
//       │            │            │              │                     │           │     └──► holding ┘ (--hold)
//       │            │            │              │                     │           │             │
//       │            └────────────┴──────────────┴─────────────────────┴───────────┴─────────────┴──► rolling-back ──►
//       rolled-back └──────────────────────────────────────(nothing to
//       stop)─────────────────────────────────────────────────────► rolled-back
//
// preflight           the operator's check (--preflight) runs before anything is spawned; only an
//                     upgrade that has one starts here, every other starts in spawning. Its failure
//                     ends the upgrade at once: there is no new generation to stop.
// spawning            the new generation's process is being started (exec errors end here).
// handshake           waiting for the new worker's first word: an SDK worker's hello on its
//                     channel, or, from a worker without the SDK, its readiness (which then
//                     leads straight to health-checking: it has no state to receive).
// transferring-state  the state broker moves the old generation's sections to the new one.
// warming             waiting for the *new* worker to report ready (READY=1, exec probe or delay);
//                     never a probe of the shared port, which the old generation also serves.
// health-checking  the new worker must stay alive for --min-ready before it is trusted.
// holding          only for an upgrade with a hold (hold.h): both generations serve, until the
//                  hold's time passes or `promote` (cutover), or `abort` or a failure (rollback).
// cutover          the new generation becomes the active one.
// draining-old     the old generation has been told to drain (drain signal sent).
// done             the verdict: the new generation serves. The old one drains on its own.
// rolling-back     the new generation is being stopped; the old one never stopped serving.
// rolled-back      the verdict: the new generation is gone, the old one serves.
//
// The machine is pure: the supervisor feeds it inputs (from the exec pipe, the notify
// socket, its one phase timer, the child reaper and, to end a hold, the control socket) and
// carries out the action it returns.
// Every transition is checked against the table; an input that makes no sense in the
// current phase is ignored and reported, never acted upon.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "hold.h"

namespace hotrestart {

// The lists below give each enumerator of Phase, Input and Action its name, which the control
// protocol's events and status JSON (docs/protocol.md) and the log lines use: X(enumerator, name).
#define HOTRESTART_UPGRADE_ENUMERATOR(enumerator, name) enumerator,
#define HOTRESTART_UPGRADE_ONE(enumerator, name) +1

#define HOTRESTART_UPGRADE_PHASES(X)         \
  X(Preflight, "preflight")                  \
  X(Spawning, "spawning")                    \
  X(Handshake, "handshake")                  \
  X(TransferringState, "transferring-state") \
  X(Warming, "warming")                      \
  X(HealthChecking, "health-checking")       \
  X(Holding, "holding")                      \
  X(Cutover, "cutover")                      \
  X(DrainingOld, "draining-old")             \
  X(Done, "done")                            \
  X(RollingBack, "rolling-back")             \
  X(RolledBack, "rolled-back")
enum class Phase : std::uint8_t { HOTRESTART_UPGRADE_PHASES(HOTRESTART_UPGRADE_ENUMERATOR) };
inline constexpr std::size_t kPhaseCount = 0 HOTRESTART_UPGRADE_PHASES(HOTRESTART_UPGRADE_ONE);

std::string_view phase_name(Phase p);
bool is_terminal(Phase p);
// True when `from -> to` is in the transition table.
bool transition_allowed(Phase from, Phase to);

// What the supervisor feeds the machine.
#define HOTRESTART_UPGRADE_INPUTS(X)                                                                                \
  X(PreflightPassed, "preflight-passed") /* the preflight check exited 0. */                                        \
  X(PreflightFailed, "preflight-failed") /* it failed, timed out or could not run (reason given). */                \
  X(Spawned, "spawned")                  /* exec succeeded. */                                                      \
  X(SpawnFailed, "spawn-failed")         /* exec failed (reason given). */                                          \
  X(Hello, "hello")                      /* an SDK worker said hello; the state transfer begins. */                 \
  X(Refused, "refused")                  /* the worker's hello was refused (reason given: protocol version). */     \
  X(TransferDone, "transfer-done")       /* the new worker imported what it could, and every required section. */   \
  X(TransferFailed, "transfer-failed")   /* a required section could not be imported (reason given). */             \
  X(Ready, "ready")                      /* the new worker reported ready. */                                       \
  X(HealthPassed, "health-passed")       /* the new worker stayed healthy for the required time. */                 \
  X(Promoted, "promoted")                /* the supervisor made the new generation the active one. */               \
  X(DrainStarted, "drain-started")       /* the drain signal was sent to the old generation (or there was none). */ \
  X(NewExited, "new-exited")             /* the new worker's main process exited (reason given). */                 \
  X(Timeout, "timeout")                  /* the current phase's deadline passed (reason given). */                  \
  X(Cancel, "cancel")                    /* the supervisor is stopping (reason given). */                           \
  X(NewGone, "new-gone")                 /* the new generation has fully exited after a rollback. */                \
  X(HoldEnded, "hold-ended")             /* a timed hold's time has passed with the new worker healthy. */          \
  X(Promote, "promote")                  /* `hotrestart promote`: end the hold with a cutover. */                   \
  X(Abort, "abort")                      /* `hotrestart abort`: end the hold with a rollback (reason given). */     \
  X(Unhealthy, "unhealthy")              /* the ready new worker missed its watchdog or failed --health. */
enum class Input : std::uint8_t { HOTRESTART_UPGRADE_INPUTS(HOTRESTART_UPGRADE_ENUMERATOR) };
std::string_view input_name(Input i);

// What the supervisor must do after a transition.
#define HOTRESTART_UPGRADE_ACTIONS(X)                                                                                \
  X(None, "none")                                                                                                    \
  X(Spawn, "spawn")                  /* start the new generation, then feed Spawned or SpawnFailed. */               \
  X(WaitHandshake, "wait-handshake") /* wait for hello or readiness, within the ready deadline. */                   \
  X(StartTransfer, "start-transfer") /* start the state transfer and its deadline, then feed TransferDone/Failed. */ \
  X(WaitReady, "wait-ready")         /* arm the readiness wait and the ready deadline. */                            \
  X(WaitHealth, "wait-health")       /* arm the health window. */                                                    \
  X(Hold, "hold")                    /* announce that both generations serve; arm a timed hold's timer. */           \
  X(Promote, "promote")              /* make the new generation active, then feed Promoted. */                       \
  X(DrainOld, "drain-old")           /* send the drain signal to the previous generation, then feed DrainStarted. */ \
  X(StopNew, "stop-new")             /* stop the new generation (drain signal, then SIGKILL), then feed NewGone. */  \
  X(Finish, "finish")                /* report the verdict to the requester. */
enum class Action : std::uint8_t { HOTRESTART_UPGRADE_ACTIONS(HOTRESTART_UPGRADE_ENUMERATOR) };
std::string_view action_name(Action a);

#undef HOTRESTART_UPGRADE_ENUMERATOR
#undef HOTRESTART_UPGRADE_ONE

struct Step {
  bool accepted = false;  // false: the input was ignored in this phase.
  Phase phase = Phase::Spawning;
  Action action = Action::None;
};

struct PhaseRecord {
  Phase phase;
  std::chrono::steady_clock::duration at;  // since the upgrade began.
};

class UpgradeMachine {
 public:
  using Clock = std::chrono::steady_clock;

  explicit UpgradeMachine(Clock::time_point started = Clock::now());
  // An upgrade that holds (HoldKind::Timed or Manual) passes through `holding` before cutover.
  explicit UpgradeMachine(HoldKind hold, Clock::time_point started = Clock::now());
  // `first` is Phase::Preflight for an upgrade with a preflight check, else Phase::Spawning.
  explicit UpgradeMachine(Phase first, HoldKind hold = HoldKind::None, Clock::time_point started = Clock::now());

  Step handle(Input input, std::string reason = {}, Clock::time_point now = Clock::now());

  Phase phase() const { return phase_; }
  bool finished() const { return is_terminal(phase_); }
  bool succeeded() const { return phase_ == Phase::Done; }
  // Why the upgrade rolled back ("exec failed: ...", "not ready within 30s").
  const std::string& failure() const { return failure_; }
  // The input that failed it (meaningful once failure() is not empty): a word for metrics, where the
  // sentence of failure() would make a label value per upgrade.
  Input cause() const { return cause_; }
  const std::vector<PhaseRecord>& timeline() const { return timeline_; }
  Clock::time_point started() const { return started_; }
  // True once the new generation is the active one: from here on, it is never rolled back.
  bool past_cutover() const;

 private:
  void enter(Phase to, Clock::time_point now);

  Clock::time_point started_;
  HoldKind hold_ = HoldKind::None;
  Phase phase_ = Phase::Spawning;
  std::string failure_;
  Input cause_ = Input::Cancel;
  std::vector<PhaseRecord> timeline_;
};

}  // namespace hotrestart
