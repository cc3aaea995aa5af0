// Supervisor: the long-lived process behind `hotrestart run`, and the coordinator of its rooms.
//
// It owns the listening sockets for its whole life and runs one generation of the worker at a
// time behind them, two during an upgrade. Everything happens on one libuv loop. The rooms each
// own one job (docs/architecture.md has the map):
//
//   ListenerSet     listener_set.h     the listening sockets, bound once and held for life
//   ControlServer   control_server.h   the control socket: status, upgrade, stop
//   NotifySocket    notify_socket.h    workers' sd_notify datagrams, and who sent them
//   WorkerLauncher  worker_launcher.h  a worker's environment, descriptors and exec
//   Generation      generation.h       one generation: readiness, channel, drain, end
//   UpgradeDriver   upgrade_driver.h   the upgrade state machine's actions and events
//   StateBroker     state_broker.h     the state transfer from the old generation to the new
//   ReleaseStore    release_store.h    the release history on disk, and executables kept for rollback
//   ReleaseWatch    release_watch.h    the watch window after a cutover, and who waits for its end
//   HealthWatch     health_watch.h     (in each Generation) its watchdog and health check
//   RestartBackoff  crash_restarts.h   the delay between crash restarts
//   EventLog        event_log.h        every transition, phase and request, in STATE-DIR/events.jsonl
//   status.h                           counters, the last error, and status's pieces
//
// The supervisor itself decides what each event means: which generation is active; what a
// generation's readiness, exit or channel message does (to the upgrade in progress, as a crash
// restart, to a stop); and what control requests and signals do.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config_reload.h"
#include "config_watch.h"
#include "control_server.h"
#include "crash_restarts.h"
#include "event_log.h"
#include "generation.h"
#include "guard_link.h"
#include "listener_set.h"
#include "metrics.h"
#include "metrics_server.h"
#include "notify_socket.h"
#include "preflight.h"
#include "reaper.h"
#include "release_store.h"
#include "release_watch.h"
#include "run_options.h"
#include "state_broker.h"
#include "status.h"
#include "takeover.h"
#include "upgrade_driver.h"
#include "uv_handles.h"
#include "worker_launcher.h"

namespace hotrestart {

// The service manager the supervisor itself runs under (systemd, Type=notify), told of the
// supervisor's state through the NOTIFY_SOCKET it was given. Without one, nothing is sent.
class ServiceManager {
 public:
  // Takes NOTIFY_SOCKET out of this process's environment, so that no worker inherits it.
  void take_from_environment();
  void notify(const std::string& message) const;
  // READY=1, the first time a generation serves.
  void ready_once(const std::string& message);
  // NOTIFY_SOCKET as it was given ("": none), for a new image of the supervisor.
  const std::string& socket() const { return socket_; }
  // WatchdogSec=: how often systemd wants WATCHDOG=1 (WATCHDOG_USEC, for this process when
  // WATCHDOG_PID names it); 0 when it does not.
  std::chrono::microseconds watchdog() const { return watchdog_; }
  // The environment a new image of the supervisor needs to go on (NOTIFY_SOCKET, WATCHDOG_USEC,
  // FDSTORE).
  std::vector<std::string> environment() const;
  // Whether systemd said that the service has a file descriptor store ($FDSTORE, systemd 254 and
  // later; 252 says nothing, hence --fdstore).
  bool fdstore_offered() const { return fdstore_max_ > 0; }
  // Keeps a copy of each listener in systemd's fd store, one FDSTORE=1 datagram per listener with
  // FDNAME= its name, after removing the names in `stale` (FDSTOREREMOVE=1): at the next start of
  // the service systemd passes them back in LISTEN_FDS, and the supervisor adopts them. `asked`:
  // the operator gave --fdstore, so its absence of effect is worth a line. Returns whether every
  // listener was stored.
  bool store_listeners(const ListenerSet& listeners, const std::vector<std::string>& stale, bool asked) const;

 private:
  std::string socket_;
  std::chrono::microseconds watchdog_{0};
  unsigned long fdstore_max_ = 0;
  bool told_ready_ = false;
};

class Supervisor final : private Generation::Events, private UpgradeDriver::Host, private ConfigReloads::Host {
 public:
  explicit Supervisor(RunOptions options);
  ~Supervisor() override;
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Runs until stopped; returns the process exit code.
  int run();
  // Why start() failed, when run() returned kRunExitFailed for that.
  const std::string& start_error() const { return start_error_; }

 private:
  using Clock = std::chrono::steady_clock;

  Status start();
  Status start_first_generation(std::uint64_t release);
  // The first release's preflight check has ended: its generation starts, or `run` exits 1.
  void on_first_preflight(std::uint64_t release, PreflightOutcome outcome);
  Status open_control_socket();
  // `upgrade --self`: checks the new binary and execs it (self_upgrade.h); answers only a refusal.
  void on_self_upgrade(ClientId client, const ControlRequest& request);
  // An SDK worker of a generation taken over connects again (HOTRESTART_REJOIN).
  void on_rejoin();
  // Manages the generations a supervisor that died left (takeover.h) as its own.
  Status take_over(Inheritance& inheritance);
  // What release `release` runs, for a generation taken over.
  Generation::Plan plan_to_take_over(std::uint64_t release);
  // A bind that failed because the port is taken, with the pids that hold it.
  Error with_port_holders(const Error& error) const;
  Generation* find(std::uint64_t number);

  // Generation::Events: what a generation's readiness, exit and channel mean.
  void on_ready(Generation& g) override;
  void on_ready_timeout(Generation& g, const std::string& reason) override;
  void on_exit(Generation& g, GenerationState was, ExitStatus status) override;
  void on_channel_message(Generation& g, wire::Message& message, std::vector<Fd>& fds) override;
  void on_channel_closed(Generation& g) override;
  void on_channel_broken(Generation& g, const std::string& why) override;
  void on_unhealthy(Generation& g, HealthFailure kind, const std::string& reason) override;
  void on_hello(Generation& g, const wire::Hello& hello);
  void channel_failed(Generation& g, const std::string& reason);

  // UpgradeDriver::Host.
  Generation* generation(std::uint64_t number) override { return find(number); }
  std::vector<GenerationFacts> generation_facts() const override;
  std::uint64_t active_generation() const override { return active_; }
  std::uint64_t next_generation_number() const override { return next_generation_; }
  std::uint64_t record_release(const UpgradeRequest& request) override;
  Result<Generation*> spawn_generation(std::uint64_t release) override;
  Result<std::unique_ptr<PreflightCheck>> start_preflight(std::uint64_t release, const std::string& check,
                                                          PreflightCheck::Done done) override;
  void promote(std::uint64_t generation) override;
  StateBroker& broker() override { return broker_; }
  void upgrade_started(std::uint64_t state_from) override;
  Millis park_for(const Generation& old) override;
  bool upgrade_finished(std::uint64_t release, bool ok, const std::string& failure) override;
  void wait_for_watch(ClientId client) override { watch_->add_waiter(client); }
  // UpgradeDriver::Host and ConfigReloads::Host.
  void record_event(nlohmann::json event) override;
  // ConfigReloads::Host, and the configurations' requests and messages (supervisor_configs.cpp).
  std::vector<Generation*> config_readers(const std::string& name) override;
  Generation* config_generation(std::uint64_t number) override { return find(number); }
  std::vector<Generation*> signal_targets(const std::string& name) override;
  std::unique_ptr<PreflightCheck> start_config_check(const std::string& command, std::vector<std::string> env,
                                                     PreflightCheck::Done done) override;
  void on_config_request(ClientId client, const ControlRequest& request);
  // SIGHUP with --config: every configuration is reloaded, with no client to answer.
  void reload_on_signal();
  // `hotrestart events`: the newest events, then (with "follow") each new one.
  void on_events_request(ClientId client, const ControlRequest& request);
  // A generation entered `to` (Generation::Context::entered): the event log hears of it.
  void on_generation_entered(const Generation& g, GenerationState to);
  // --metrics (supervisor_events.cpp): binds the endpoint; gauges a worker publishes; what is true
  // at a scrape; and what `status` says of it (null without --metrics).
  Status start_metrics();
  void on_worker_metrics(const Generation& g, const std::vector<std::string>& lines);
  Metrics::Snapshot metrics_snapshot() const;
  nlohmann::json metrics_json() const;

  // Releases.
  // What release `number` runs: its command, and its executable, opened from its path the first
  // time (and recorded in the history), or as kept since.
  Result<Generation::Plan> plan_for(std::uint64_t number);
  Result<Generation*> start_generation(Generation::Plan plan);
  using ImageResult = Result<std::shared_ptr<const ExecutableImage>>;
  // The executable to run release `r` again with, exactly as it ran, or why it cannot be: `pinned`
  // (what the supervisor kept of it, or null) if its bytes are unchanged, else `r`'s file if its
  // hash is still the same. Reads the whole file: safe to call off the loop.
  static ImageResult image_to_run_again(const Release& r, std::shared_ptr<const ExecutableImage> pinned);
  // Starts an upgrade once its executable is read: `read` opens and hashes it on the thread pool (a
  // large binary takes milliseconds that the loop would otherwise not serve in), then `begin` has
  // the result on the loop, unless meanwhile the supervisor began to stop or another upgrade (a
  // revert) started; `client`, who asked, then hears why not. Until then `busy_reason()` refuses
  // other upgrades.
  void read_then_begin(std::string path, std::optional<ClientId> client, std::function<ImageResult()> read,
                       std::function<void(ImageResult)> begin);
  // Why no upgrade can start now, or "" (stopping is told apart by its caller).
  std::string upgrade_busy_reason() const;
  void end_release(std::uint64_t number, ReleaseOutcome outcome, std::string reason);
  void upgrade_reported() override;

  // The release a revert in the next watch window brings back: the last one that served through its
  // own window (or had none), else the one the last cutover replaced.
  std::uint64_t revert_target() const { return last_proven_release_ != 0 ? last_proven_release_ : replaced_release_; }
  // The watch window: brings the previous release back, for `reason`: its parked generation if it
  // can (resume_parked), else a new generation of it (revert_cold).
  void revert(const std::string& reason);
  bool resume_parked(const ReleaseWatch::Watched& w);
  void revert_cold(const ReleaseWatch::Watched& w);
  // The resumed generation serves again, or could not come back (`why`).
  void finish_resume(Generation& g);
  void resume_failed(Generation* g, const std::string& why);
  // --max-draining: kills the oldest draining generations past the limit.
  void limit_draining();
  // Ends the parking of every parked generation but `keep`.
  void unpark_all(std::string_view why, std::uint64_t keep = 0);

  // After every loop iteration: tells the active generation that it is (Generation::tell_active),
  // and the guard what changed.
  void after_events();
  // Tells the guard what changed: at once, whenever a generation's role, state or deadline changes.
  void sync_guard();
  void save_record();

  // Crash restarts.
  void schedule_restart(Clock::duration served_for);
  void restart_now();

  // Requests and signals.
  void on_request(ClientId client, const ControlRequest& request);
  void on_upgrade_request(ClientId client, const ControlRequest& request);
  void on_rollback_request(ClientId client, const ControlRequest& request);
  nlohmann::json history_json() const;
  void on_signal(int signo);
  void begin_stop(bool now);
  void maybe_finish_stop();
  // Ends what outlived its generation: a process of a generation that has exited is killed; a
  // stray is logged once (and killed when the supervisor stops, `final`).
  void sweep_processes(bool final);
  nlohmann::json status_json() const;
  // {"state", "ok", "reason"}: whether the service is up, as `status --check` reports it.
  nlohmann::json health_json() const;

  RunOptions options_;
  uv_loop_t loop_{};
  Clock::time_point started_at_ = Clock::now();
  std::int64_t started_ms_ = 0;  // The same, on the wall clock (status: a client sees an exec by it).
  std::string own_executable_;   // What this image runs (status, and `upgrade --self` without --exec).
  std::string start_error_;
  ServiceManager systemd_;

  ListenerSet listeners_;
  std::unique_ptr<Reaper> reaper_;
  // Which generation each process under the supervisor belongs to (process_table.h), and the
  // sweep that ends the processes of generations that are gone.
  std::unique_ptr<ProcessRoster> roster_;
  std::unique_ptr<Timer> sweep_timer_;
  std::unique_ptr<Timer> watchdog_timer_;  // WATCHDOG=1 to systemd, when it asks for it.
  // The guard, which carries out the death policy if the supervisor dies (guard.h).
  std::unique_ptr<GuardLink> guard_;
  std::unique_ptr<AfterEvents> after_events_;
  // An upgrade's executable being read off the loop (read_then_begin), and its path.
  std::unique_ptr<PoolTask> reading_image_;
  std::string reading_path_;
  Clock::time_point reading_since_{};
  // STATE-DIR/running.json (takeover.h), rewritten whenever the guard's table changes.
  std::unique_ptr<BackgroundFile> record_;
  std::unique_ptr<Timer> record_timer_;  // A record write is due (see sync_guard).
  Clock::time_point record_saved_at_{};
  std::vector<ListenerRecord> listener_records_;
  std::optional<std::vector<GuardGeneration>> recorded_;
  bool record_failed_ = false;
  bool record_ready_ = false;  // What was left behind has been taken over (or nothing was).
  // Something the guard's table is made of may have changed since sync_guard() last ran: a generation
  // came, went or changed state or deadline, or another became active.
  bool guard_dirty_ = true;
  // Where SDK workers of generations taken over connect again.
  Fd rejoin_listener_;
  std::unique_ptr<FdWatch> rejoin_watch_;
  bool finishing_ = false;  // The stop is done; the guard is being released.
  std::set<std::pair<pid_t, std::uint64_t>> strays_logged_;
  std::unique_ptr<ControlServer> control_;
  std::unique_ptr<NotifySocket> notify_;
  std::unique_ptr<WorkerLauncher> launcher_;
  std::unique_ptr<Generation::Context> context_;
  std::vector<std::unique_ptr<SignalWatch>> signals_;

  std::map<std::uint64_t, std::unique_ptr<Generation>> generations_;
  std::uint64_t active_ = 0;  // The generation that serves (0 while none does).
  std::uint64_t next_generation_ = 1;
  Generation::Plan current_;  // What the active generation runs, and what a crash restart runs again.
  std::unique_ptr<UpgradeDriver> upgrade_;
  std::unique_ptr<PreflightCheck> first_preflight_;  // `run --preflight`: the check of the first release.
  StateBroker broker_;
  std::unique_ptr<ReleaseStore> releases_;
  std::unique_ptr<EventLog> events_;
  Metrics metrics_;
  std::unique_ptr<MetricsServer> metrics_server_;
  std::unique_ptr<ReleaseWatch> watch_;
  std::unique_ptr<ConfigReloads> configs_;     // --config
  std::unique_ptr<ConfigWatch> config_watch_;  // --watch-config
  // What the last cutover replaced: the release and generation a revert brings back.
  std::uint64_t replaced_release_ = 0;
  // The last release that served through its watch window (or was not watched): what a revert
  // brings back.
  std::uint64_t last_proven_release_ = 0;
  std::uint64_t replaced_generation_ = 0;
  // What `status --check` reports (health_json).
  Clock::time_point last_revert_{};  // When the last revert began.
  std::string revert_reason_;        // Why ("" if none yet).
  bool reverting_ = false;           // The revert (its upgrade, or a resume) is under way.
  // The parked generation a revert is resuming (0: none), and the watch it reverts.
  std::uint64_t resuming_ = 0;
  // Draining generations --max-draining has killed, until they are gone.
  std::set<std::uint64_t> draining_killed_;
  ReleaseWatch::Watched resume_of_;
  std::string crash_reason_;                // The last crash of the active generation.
  std::uint64_t restarted_generation_ = 0;  // The last generation a crash restart started.

  std::unique_ptr<Timer> restart_timer_;
  RestartBackoff restart_backoff_;

  bool stopping_ = false;
  std::vector<ClientId> stop_waiters_;
  int exit_code_ = kRunExitOk;

  Counters counters_;
  LastError last_error_;
};

}  // namespace hotrestart
