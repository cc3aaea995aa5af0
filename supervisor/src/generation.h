// Generation: one generation of the worker, from its spawn to its exit: its processes, its
// readiness check, its channel, its stderr (worker_output.h), its drain and its end.
//
// Its lifecycle is one enum with one transition table, checked at every change:
//
//   starting ──► ready ──► draining ──► exited
//       │          ▲          ▲  ▲         ▲
//       └──────────┼──────────┘  │         │     (asked to stop before it was ready)
//       └──────────┼─────────────┼─────────┘     (its main process exited: crash, or done)
//                  │  ready ─────┴─────────┘
//                  └── draining                  (a parked SDK worker resumed, and ready again)
//
// starting  spawned; its readiness check (--ready notify, exec probe or delay) runs under
//           --ready-timeout.
// ready     it reported READY=1 (or the SDK's ready), passed its probe, or waited out its delay.
//           From here until it drains, its watchdog and health check run (health_watch.h).
// draining  asked to end: the drain signal, or `drain` / `stop` on its channel; SIGKILL to its
//           whole process group after --drain-timeout. A resumable SDK worker may be *parked*: it
//           drains, then stays alive for a given time (the next release's watch window), and can
//           be *resumed* (`resume` with its listeners); its `ready` then takes it back to ready.
// exited    its main process has exited (and the rest of its process group was killed). The
//           supervisor is told once its output has ended too (worker_output.h: end of file, or a
//           short grace), so that what it said last is in the verdict, and then forgets it.
//
// An SDK worker's handshake is a second, smaller lifecycle beside it: none (no hello; a worker
// without the SDK stays here) ──► importing (hello accepted: Worker::start() is importing) ──►
// serving (import-finished arrived). What the worker reports of itself (STATUS=, STOPPING=1, the
// preload library's presence) are facts, not states.
//
// What the generation means to the supervisor (active, candidate, old) is the supervisor's
// business: a Generation tells it of readiness, exit and channel messages through Events.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>

#include "adopt.h"
#include "executable.h"
#include "health_watch.h"
#include "listener_set.h"
#include "notify_message.h"
#include "process_table.h"
#include "reaper.h"
#include "run_options.h"
#include "spawn.h"
#include "uv_handles.h"
#include "worker_channel.h"
#include "worker_launcher.h"
#include "worker_output.h"

namespace hotrestart {

enum class GenerationState : std::uint8_t { Starting, Ready, Draining, Exited };
inline constexpr std::size_t kGenerationStateCount = 4;
std::string_view generation_state_name(GenerationState state);
bool transition_allowed(GenerationState from, GenerationState to);

enum class SdkState : std::uint8_t { None, Importing, Serving };
inline constexpr std::size_t kSdkStateCount = 3;
bool transition_allowed(SdkState from, SdkState to);

// How a generation is asked to end. An SDK worker gets `drain` (finish what it serves) or `stop`
// (it never served, or must go now) on its channel; any other worker gets the drain signal either
// way. SIGKILL follows --drain-timeout.
enum class Ending { Drain, Stop };

class Generation {
 public:
  using Clock = std::chrono::steady_clock;

  // What every generation shares, owned by the supervisor and outliving every generation.
  struct Context {
    uv_loop_t* loop;
    Reaper& reaper;
    const RunOptions& options;
    const ListenerSet& listeners;
    const WorkerLauncher& launcher;
    ProcessRoster& roster;
    // Called when a generation's state or its SIGKILL deadline changes, so that the guard hears of
    // it before anything else can happen (guard_link.h).
    std::function<void()> changed;
    // Called when a generation enters a state (after `changed`): the event log hears of it.
    std::function<void(const Generation&, GenerationState)> entered;
  };

  // What a generation tells the supervisor. Each call comes from the loop; none destroys the
  // generation synchronously except on_exit, after which the generation must be destroyed.
  class Events {
   public:
    virtual ~Events() = default;
    virtual void on_ready(Generation& g) = 0;
    virtual void on_ready_timeout(Generation& g, const std::string& reason) = 0;
    // Its main process exited, in state `was`, and its output has ended (its tail is complete).
    // The process may have been reaped by now: nothing may signal its pid or its group any more.
    virtual void on_exit(Generation& g, GenerationState was, ExitStatus status) = 0;
    virtual void on_channel_message(Generation& g, wire::Message& message, std::vector<Fd>& fds) = 0;
    virtual void on_channel_closed(Generation& g) = 0;
    virtual void on_channel_broken(Generation& g, const std::string& why) = 0;
    // Once ready, it missed its watchdog or failed its health check (health_watch.h); reported once
    // per check.
    virtual void on_unhealthy(Generation& g, HealthFailure kind, const std::string& reason) = 0;
  };

  // What a generation runs: release `release`'s command, from `image` (its executable, opened).
  struct Plan {
    std::uint64_t release = 0;
    std::vector<std::string> command;
    std::shared_ptr<const ExecutableImage> image;
  };
  // Starts generation `number` running `plan`, and its readiness check.
  static Result<std::unique_ptr<Generation>> start(Context& context, Events& events, std::uint64_t number, Plan plan);
  // Takes over generation `number`, which a supervisor that died left running (takeover.h): its main
  // process `pid` (started at `start_ticks`) is not this process's child, so its exit is seen through
  // a pidfd (or, without one, in /proc), and its exit status is unknown. `output` is its stderr pipe's
  // read end, if known. It serves (ready) or, unless `serving`, drains and is killed at `kill_at`.
  // Null when the process has exited already.
  static Result<std::unique_ptr<Generation>> adopt(Context& context, Events& events, std::uint64_t number, Plan plan,
                                                   pid_t pid, std::uint64_t start_ticks, Fd output, bool serving,
                                                   Clock::time_point kill_at);
  ~Generation();
  Generation(const Generation&) = delete;
  Generation& operator=(const Generation&) = delete;

  std::uint64_t number() const { return number_; }
  pid_t pid() const { return process_.pid(); }
  const std::vector<std::string>& command() const { return plan_.command; }
  std::uint64_t release() const { return plan_.release; }
  const std::shared_ptr<const ExecutableImage>& image() const { return plan_.image; }
  GenerationState state() const { return state_; }
  Clock::time_point started() const { return started_; }
  // How long it has served: zero unless it became ready.
  Clock::duration served_for() const;
  const std::string& status_text() const { return status_text_; }
  // Its stderr: the tail of what it wrote.
  const WorkerOutput& output() const { return *output_; }
  // The inode of its stderr pipe: a process that writes to it is the generation's.
  std::uint64_t output_inode() const { return output_inode_; }
  // Its main process's start time (/proc/PID/stat): with the pid, what names it to another process.
  std::uint64_t start_ticks() const { return start_ticks_; }
  // Taken over from a supervisor that died (adopt()).
  bool adopted() const { return adopted_; }
  // A generation taken over: its SDK worker connected again (HOTRESTART_REJOIN), on `fd`.
  void attach_channel(Fd fd);
  // When its drain ends in SIGKILL, if that is set.
  std::optional<Clock::time_point> kill_deadline() const { return kill_at_; }
  // Its processes were killed because it outlived its drain timeout (the event log and the metrics
  // tell such an end from the others).
  bool killed_at_deadline() const { return killed_at_deadline_; }
  // The read end of its output pipe, while it is read (-1 after the end of its output).
  int output_fd() const { return output_->read_fd(); }
  // Its watchdog and health check, which run while it is ready.
  const HealthWatch& health() const { return *health_; }

  // --- Readiness.
  // The --ready check itself (notify: nothing to do; delay: a timer; exec: the probe), without the
  // deadline. The state transfer pauses the check, and the upgrade arms it again afterwards.
  void arm_readiness_check();
  // --ready-timeout from now, and the check.
  void restart_readiness();
  void pause_readiness();
  // starting ──► ready, and the supervisor is told. Anything else is ignored.
  void mark_ready();
  // Why it was not ready in time, with what it last reported.
  std::string ready_timeout_reason() const;

  // --- What the worker reports.
  void apply_notify(const NotifyMessage& message, pid_t sender);
  void set_status_text(std::string text) { status_text_ = std::move(text); }

  // --- The SDK handshake and the channel.
  SdkState sdk() const { return sdk_; }
  // The worker's hello, once accepted (sdk() is not None).
  const wire::Hello& hello() const { return hello_; }
  void accept_hello(wire::Hello hello);
  // Sends `announce` (`welcome` or `resume`, which say how many listeners follow), then every
  // listening socket, named. False, with a warning in the log, if the worker does not take them.
  bool send_listeners(const wire::Message& announce);
  std::uint32_t listener_count() const { return static_cast<std::uint32_t>(context_.listeners.listeners().size()); }
  void finish_import();
  // Sends `active` (this generation is the one that serves now) to an SDK worker that has finished
  // its import (or, with `importing`, has been sent its begin-import: the SDK reads what follows
  // once its import is done) and has not been told since it last drained; nothing otherwise.
  void tell_active(bool importing = false);
  WorkerChannel& channel() { return *channel_; }
  const WorkerChannel& channel() const { return *channel_; }
  // A timer for the supervisor's grace period after the channel closed (see Supervisor).
  Timer& channel_grace() { return channel_grace_; }

  // --- Ending.
  // Asks it to end (see Ending); starting or ready ──► draining. `why` goes to the log. With
  // `park` > 0, a resumable worker (resumable()) is asked to stay alive for that long after its
  // drain, in case it is resumed; SIGKILL then follows --drain-timeout after the parking ends.
  void stop(std::string_view why, Ending ending = Ending::Drain, Millis park = Millis{0});
  // An SDK worker that said it can be resumed after its drain (Worker::Options::resumable), or a
  // server under --adopt-binds whose preload library said it is in (and no SDK; and the HTTP drain,
  // or no --drain-signal).
  bool resumable() const {
    // With --drain-signal and no HTTP drain the server drains by itself at once, so nothing would
    // be left to resume; the HTTP drain holds the signal back until the connections are done.
    return sdk_ == SdkState::Serving
               ? hello_.resumable
               : sdk_ == SdkState::None && context_.launcher.adopting() && adopt_loaded_ && adopt_page_ &&
                     (context_.launcher.http_drain() || !context_.options.drain_signal_given);
  }
  // Parked: draining, alive, and able to be resumed.
  bool parked() const { return parked_ && state_ == GenerationState::Draining; }
  // Ends its parking: it exits once drained; SIGKILL after --drain-timeout from now.
  void unpark(std::string_view why);
  // Takes a parked generation back into service: sends `resume` with the listeners (under
  // --adopt-binds, the library's resume command); its `ready` (mark_resumed) then makes it ready,
  // or on_ready_timeout follows --ready-timeout. False when it is not parked or cannot be told.
  bool resume();
  bool resuming() const { return resuming_ && state_ == GenerationState::Draining; }
  // Its `ready` after resume(): draining ──► ready, and the supervisor is told (on_ready).
  void mark_resumed();
  // Gives up a resume that did not complete: it drains again and exits.
  void abandon_resume(std::string_view why);
  // Its processes outside its main process's group (see process_table.h), as of now.
  std::vector<ProcessEntry> escaped() const;
  // SIGKILL to its whole process group and to its processes outside it, now; nothing once it has
  // exited (they were killed then, and the group's id may belong to others once the main process
  // is reaped).
  // `signo` to its main process alone (a configuration reload's --reload-signal), as systemd's
  // `kill -HUP $MAINPID` does; a generation taken over whose pid now names another process is not
  // signalled. False when nothing was sent.
  bool signal_main(int signo) const;
  void kill_all() const {
    if (state_ != GenerationState::Exited) signal_all(SIGKILL);
  }

 private:
  Generation(Context& context, Events& events, std::uint64_t number, Plan plan, ChildProcess process);

  void enter(GenerationState to);
  void start_probe();
  // `signo` to its process group, and to each of its processes that left the group.
  void signal_all(int signo) const;
  // The preload library's `command` to every process of the generation.
  // Writes the command page (--adopt-binds); false when there is none (a generation taken over
  // whose page could not be found).
  bool send_adopt(AdoptMode mode);
  // --adopt-binds: the library closes the generation's listeners; the drain signal follows once
  // its connections on our ports are done.
  void adopt_drain(std::string_view why);
  void arm_kill_timer(Millis after);
  void on_main_exit(ExitStatus status);
  // Reads how its exec went, once that is in. Readiness is looked for from when it became the
  // program; an exec that failed is its exit's reason (it exits with status 127).
  void check_exec();

  Context& context_;
  Events& events_;
  const std::uint64_t number_;
  const Plan plan_;
  ChildProcess process_;
  GenerationState state_ = GenerationState::Starting;
  SdkState sdk_ = SdkState::None;
  wire::Hello hello_;
  Clock::time_point started_ = Clock::now();
  Clock::time_point ready_at_;

  std::uint64_t output_inode_ = 0;
  std::string status_text_;         // The last STATUS= (or the SDK's status line), or a probe's failure.
  bool reported_stopping_ = false;  // It sent STOPPING=1.
  bool adopt_loaded_ = false;       // --adopt-binds: the preload library said it is in.
  AdoptPage adopt_page_;            // --adopt-binds: its command page.
  bool parked_ = false;             // Asked to drain with a parking time that has not ended.
  bool resuming_ = false;           // Sent `resume`; its `ready` has not arrived yet.
  bool told_active_ = false;        // Sent `active`, and no drain since.
  std::uint64_t start_ticks_ = 0;
  std::optional<Clock::time_point> kill_at_;
  bool killed_at_deadline_ = false;
  bool adopted_ = false;
  PendingExec exec_;  // start(): whether the main process became the program.
  std::unique_ptr<FdWatch> exec_watch_;
  std::string not_started_;  // Why it did not.
  Fd exit_pidfd_;            // adopt(): readable once the main process has exited.
  std::unique_ptr<FdWatch> exit_watch_;
  std::unique_ptr<Timer> exit_poll_;  // adopt() without a pidfd: its exit, from /proc.

  ChildProcess probe_;  // The running exec readiness probe, if any.
  std::unique_ptr<WorkerChannel> channel_;
  std::unique_ptr<WorkerOutput> output_;
  std::unique_ptr<HealthWatch> health_;
  Timer ready_deadline_;     // Ready within --ready-timeout.
  Timer readiness_timer_;    // The delay: mode, and exec-probe retries.
  Timer kill_timer_;         // SIGKILL at the end of a drain.
  Timer connections_timer_;  // --adopt-binds drain: polls its connections.
  Timer channel_grace_;

  // Reaper callbacks can outlive the generation (a probe reaped after the generation is gone);
  // they hold this and find it null once the generation is destroyed.
  std::shared_ptr<Generation*> self_ = std::make_shared<Generation*>(this);
};

}  // namespace hotrestart
