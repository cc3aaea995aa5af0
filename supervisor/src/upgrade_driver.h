// UpgradeDriver: carries out the upgrade state machine (upgrade_machine.h) on the loop.
//
// Every input of an upgrade (a preflight's and the spawn's outcome, the new worker's hello, readiness and exit, the
// state transfer's end, the one phase timer, a stop) is fed here; the machine answers with the
// action for its new phase, which the driver carries out and publishes as an event to the clients
// that watch the upgrade (`hotrestart upgrade`) and to the log. An action may produce the next
// input itself (promote, then "promoted"): inputs go through a queue, so that an action always
// finishes before the next input is handled, and nothing re-enters the machine.
//
// What the driver needs of the rest of the supervisor (a preflight check, its generations, the state broker, making
// a generation the active one) comes through Host, which the Supervisor implements.
#pragma once

#include <uv.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/message.h>

#include "control_server.h"
#include "executable.h"
#include "generation.h"
#include "hold.h"
#include "preflight.h"
#include "releases.h"
#include "run_options.h"
#include "state_broker.h"
#include "upgrade_machine.h"
#include "uv_handles.h"

namespace hotrestart {

// What an upgrade brings in: a command line, who asked for it, and, for a rollback, the release it
// runs again with that release's executable already opened.
struct UpgradeRequest {
  std::vector<std::string> command;
  ReleaseOrigin origin = ReleaseOrigin::Upgrade;
  std::int64_t uid = -1;  // Who asked (the control socket's peer), when known.
  std::int64_t pid = -1;
  std::uint64_t rollback_of = 0;
  std::shared_ptr<const ExecutableImage> image;  // Null: opened from the command's path at spawn.
  Hold hold;  // Both generations serve for a while before cutover (never for SIGUSR2).
  // The generation the state comes from (0: the active one). A revert after the active generation
  // crashed names the previous one, which may still be alive and draining.
  std::uint64_t state_from = 0;
  bool wait = false;  // `upgrade --wait`: the requester stays connected through the watch window.
  // The check to run before anything is spawned (preflight.h): nullopt, the one `run` was given
  // (--preflight); "", none.
  std::optional<std::string> preflight = std::nullopt;
};

class UpgradeDriver {
 public:
  class Host {
   public:
    virtual ~Host() = default;
    virtual Generation* generation(std::uint64_t number) = 0;
    virtual std::vector<GenerationFacts> generation_facts() const = 0;
    virtual std::uint64_t active_generation() const = 0;
    virtual std::uint64_t next_generation_number() const = 0;
    // Records the release `request` brings in (starting), and returns its number.
    virtual std::uint64_t record_release(const UpgradeRequest& request) = 0;
    virtual Result<Generation*> spawn_generation(std::uint64_t release) = 0;
    // Starts `check`, the preflight of release `release`; `done` tells its outcome, from the loop.
    // An error says that the release's executable cannot be found or opened, as spawning it would.
    virtual Result<std::unique_ptr<PreflightCheck>> start_preflight(std::uint64_t release, const std::string& check,
                                                                    PreflightCheck::Done done) = 0;
    // Makes `generation` the active one (cutover).
    virtual void promote(std::uint64_t generation) = 0;
    virtual StateBroker& broker() = 0;
    // An upgrade began; its state comes from generation `state_from` (0: none).
    virtual void upgrade_started(std::uint64_t state_from) = 0;
    // How long the generation the cutover replaced stays parked after its drain, so that a revert
    // in the new release's watch window can resume it (0: it drains and exits).
    virtual Millis park_for(const Generation& old) = 0;
    // The verdict on `release`, before it is published: `failure` is empty on success. Returns true
    // when the release, now serving, is watched (--watch-window).
    virtual bool upgrade_finished(std::uint64_t release, bool ok, const std::string& failure) = 0;
    // `client` asked to wait (`upgrade --wait`): it hears how the watch of the new release ends.
    virtual void wait_for_watch(ClientId client) = 0;
    // The verdict has been published to the log and the watching clients.
    virtual void upgrade_reported() = 0;
    // Records `event` in the event log (event_log.h).
    virtual void record_event(nlohmann::json event) = 0;
  };

  UpgradeDriver(uv_loop_t* loop, const RunOptions& options, ControlServer& control, Host& host);
  ~UpgradeDriver();
  UpgradeDriver(const UpgradeDriver&) = delete;
  UpgradeDriver& operator=(const UpgradeDriver&) = delete;

  bool in_progress() const { return upgrade_ != nullptr; }
  // The new generation of the upgrade in progress (0: none, or not spawned yet).
  std::uint64_t candidate() const;
  bool is_candidate(const Generation& g) const { return in_progress() && candidate() == g.number(); }
  // {"generation", "release", "phase", "elapsed_ms", "hold"} of the upgrade in progress (and
  // "preflight_pid" while its check runs), or null.
  nlohmann::json status_json() const;
  // The last verdict (the "result" line without "v" and "type"), or null.
  const nlohmann::json& last_verdict() const { return last_verdict_; }
  // Why a second upgrade is refused now.
  std::string busy_reason() const;

  // Starts the upgrade `request`; `client` (if any) watches it.
  void begin(UpgradeRequest request, std::optional<ClientId> client);
  // Called from outside the driver's own actions (a loop callback), the input and every input its
  // action produces are handled before feed() returns; from inside an action, it is queued.
  void feed(Input input, std::string reason = {});
  void forget_watcher(ClientId client);
  // `hotrestart promote` (Input::Promote) or `abort` (Input::Abort) from `client`, whose peer is
  // uid `uid`, pid `pid`: ends the hold with a cutover or a rollback, and answers the client with the
  // verdict. Returns why it cannot when no upgrade is holding; then nothing has changed.
  std::optional<std::string> end_hold(Input input, ClientId client, std::int64_t uid, std::int64_t pid);

  // --- What happens to the generations, as it concerns the upgrade in progress.
  // True when the driver takes this hello: the candidate's, in the handshake (the transfer starts).
  bool take_hello(const Generation& g);
  // Generation `number` (pid `pid`) has exited and is forgotten already; `last_output` is the
  // complete tail of its output. True when it was the candidate: then what its exit means is the
  // upgrade's business alone.
  bool on_generation_exit(std::uint64_t number, pid_t pid, ExitStatus status,
                          const std::vector<std::string>& last_output);
  // The broker recorded a section the candidate imported.
  void on_section_imported(const wire::SectionReport& report);
  // The broker took the candidate's import-finished.
  void on_import_finished(const Generation& g, const wire::TransferTotals& totals);
  // The candidate's channel failed (a bad message, or it closed and the worker stayed alive).
  void on_candidate_channel_failed(const std::string& reason);

 private:
  struct Upgrade;

  void step(Input input, std::string reason);
  void run_preflight(const std::string& check);
  void on_preflight_done(PreflightOutcome outcome);
  void spawn();
  void start_transfer();
  void begin_transfer();
  void wait_ready(Generation* fresh);
  void wait_health();
  void hold();
  nlohmann::json hold_json() const;
  void promote();
  void drain_old();
  void stop_new(Generation* fresh);
  void finish();
  void publish_phase(const std::string& message);
  void send_to_watchers(const nlohmann::json& message, AfterSend after);

  uv_loop_t* loop_;
  const RunOptions& options_;
  ControlServer& control_;
  Host& host_;
  std::unique_ptr<Upgrade> upgrade_;
  std::deque<std::pair<Input, std::string>> inputs_;
  bool feeding_ = false;
  nlohmann::json last_verdict_;
};

}  // namespace hotrestart
