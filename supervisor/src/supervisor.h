// Supervisor: the long-lived process behind `hotrestart run`.
//
// It owns the listening sockets for its whole life and runs one generation of the worker at
// a time behind them, two during an upgrade. Everything happens on one libuv loop: child
// exits (Reaper), readiness datagrams (notify socket), control requests, signals and timers
// all feed either a Generation's readiness or the one UpgradeMachine.
#pragma once

#include <sys/types.h>
#include <uv.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/fd.h>
#include <hotrestart/wire/message.h>
#include "control_server.h"
#include "duration.h"
#include "listener_set.h"
#include "reaper.h"
#include "upgrade_machine.h"
#include "uv_handles.h"

namespace hotrestart {

struct ReadyMode {
  enum class Kind { Notify, Exec, Delay };
  Kind kind = Kind::Notify;
  std::string command;  // Exec
  Millis delay{0};      // Delay
  std::string describe() const;
};
Result<ReadyMode> parse_ready_mode(std::string_view text);

struct RunOptions {
  std::string name = "default";
  std::string control_path;
  std::vector<ListenSpec> listen;
  ReadyMode ready;
  Millis ready_timeout{30'000};
  Millis min_ready{0};
  int drain_signal = 15;            // SIGTERM
  bool drain_signal_given = false;  // --drain-signal was given: with --adopt-binds, it goes at once.
  Millis drain_timeout{30'000};
  Millis state_timeout{60'000};
  std::vector<std::string> state_required;  // Sections whose import failure rolls back.
  bool adopt_binds = false;                 // Preload libhotrestart-adopt into every worker.
  std::vector<std::string> command;
};

// Exit codes of `hotrestart run`.
inline constexpr int kRunExitOk = 0;      // stopped on request
inline constexpr int kRunExitFailed = 1;  // could not start (bind, control socket, exec)

class Supervisor {
 public:
  explicit Supervisor(RunOptions options);
  ~Supervisor();
  Supervisor(const Supervisor&) = delete;
  Supervisor& operator=(const Supervisor&) = delete;

  // Runs until stopped; returns the process exit code.
  int run();

 private:
  using Clock = std::chrono::steady_clock;
  enum class GenState { Starting, Ready, Draining };

  struct Generation {
    std::uint64_t number = 0;
    pid_t pid = 0;
    std::vector<std::string> command;
    GenState state = GenState::Starting;
    Clock::time_point started;
    Clock::time_point ready_at;
    std::unique_ptr<Timer> ready_deadline;  // Ready within --ready-timeout.
    std::unique_ptr<Timer> ready_timer;     // delay: mode, and exec-probe retries.
    std::unique_ptr<Timer> kill_timer;      // SIGKILL at the end of a drain.
    pid_t probe_pid = 0;                    // Running exec readiness probe.
    std::string status_text;                // Last STATUS= from the worker.
    bool stopped_accepting = false;         // Sent STOPPING=1.
    // The worker channel (docs/protocol.md). Every worker gets one; only SDK workers say hello.
    Fd channel;
    std::unique_ptr<FdWatch> channel_watch;
    std::unique_ptr<Timer> channel_grace;      // After the channel closed mid-upgrade; see on_channel_readable.
    std::optional<wire::Hello> hello;          // Set once an SDK worker has said hello.
    bool import_finished = false;              // Its import-finished arrived: Worker::start() is over.
    bool adopt_loaded = false;                 // --adopt-binds: the preload library said it is in.
    std::unique_ptr<Timer> connections_timer;  // --adopt-binds drain: polls its connections.
  };

  // One state transfer, from its start to its end; the last one is kept for `status`.
  struct Transfer {
    std::uint64_t from = 0;  // 0: no previous generation spoke the SDK.
    std::uint64_t to = 0;
    Clock::time_point started;
    std::string note;
    std::vector<wire::SectionVersions> plan;
    std::vector<wire::SectionReport> imported;
    std::vector<wire::SectionReport> exported;
    std::optional<wire::TransferTotals> import_totals;
    std::optional<wire::TransferTotals> export_totals;
    std::string outcome;  // "", "done", or why it failed.
    nlohmann::json to_json() const;
    bool planned(const std::string& section) const {
      return std::any_of(plan.begin(), plan.end(), [&](const auto& p) { return p.name == section; });
    }
    static bool reported(const std::vector<wire::SectionReport>& list, const std::string& section) {
      return std::any_of(list.begin(), list.end(), [&](const auto& r) { return r.name == section; });
    }
  };

  struct Upgrade {
    explicit Upgrade(uv_loop_t* loop) : phase_timer(loop) {}
    UpgradeMachine machine;
    std::vector<std::string> command;
    std::uint64_t generation = 0;  // The new one (0 until spawned).
    std::uint64_t previous = 0;    // The one it replaces (0 if none was running).
    std::vector<ClientId> watchers;
    Timer phase_timer;
    std::string origin;             // "control" or "SIGUSR2".
    std::uint64_t waiting_for = 0;  // A draining generation the transfer waits for.
  };

  Status start();
  std::vector<std::string> worker_environment(std::uint64_t generation) const;
  Result<Generation*> spawn_generation(const std::vector<std::string>& command);
  void start_readiness(Generation& g);
  void arm_readiness(Generation& g);  // The --ready check itself, without the deadline.
  void start_probe(std::uint64_t number);
  void on_generation_ready(Generation& g);
  void on_ready_timeout(std::uint64_t number);
  void on_leader_exit(std::uint64_t number, ExitStatus status);
  // How an SDK worker is asked to end: `drain` (finish what it serves) or `stop` (it never served,
  // or must go now). Others get the drain signal either way. SIGKILL follows --drain-timeout.
  enum class Ending { Drain, Stop };
  void stop_generation(Generation& g, int signo, std::string_view why, Ending ending = Ending::Drain);
  void kill_group(pid_t pgid, int signo);
  // --adopt-binds: the library closes the generation's listeners; the drain signal follows once
  // its connections on our ports are done.
  void adopt_drain(Generation& g, int signo, std::string_view why);
  std::string listener_addresses() const;  // "127.0.0.1:8080 or [::1]:8080"
  void cancel_readiness(Generation& g);
  Generation* find(std::uint64_t number);
  // The generation a notify sender belongs to: its main process, or a process whose parent chain
  // leads to it, or (`by_group`) a member of its process group.
  Generation* find_by_sender(pid_t pid, bool by_group = true);

  // Crash restarts.
  void schedule_restart(Clock::duration lived);
  void restart_now();

  // Upgrades.
  void begin_upgrade(std::vector<std::string> command, std::optional<ClientId> client, std::string origin);
  void feed(Input input, std::string reason = {});
  void publish_phase(const std::string& message);
  void finish_upgrade();

  // Inputs.
  void on_notify_readable();
  // The worker channel and the state broker.
  void on_channel_readable(std::uint64_t number);
  void on_channel_message(Generation& g, wire::Message& message, std::vector<Fd>& fds);
  void on_hello(Generation& g, const wire::Hello& hello);
  void channel_failed(Generation& g, const std::string& reason);
  bool send_to(Generation& g, const wire::Message& message, std::span<const int> fds = {});
  void start_transfer();
  void begin_transfer();
  void on_import_finished(Generation& g, const wire::TransferTotals& totals);
  void publish_state(const wire::SectionReport& report);
  void on_request(ClientId client, const ControlRequest& request);
  void on_client_gone(ClientId client);
  void on_signal(int signo);

  void begin_stop(bool now);
  void maybe_finish_stop();
  void note_error(std::string message);
  void notify_systemd(const std::string& message) const;
  nlohmann::json status_json() const;

  RunOptions options_;
  uv_loop_t loop_{};
  Clock::time_point started_at_ = Clock::now();
  std::string systemd_notify_socket_;

  ListenerSet listeners_;
  std::unique_ptr<Reaper> reaper_;
  std::unique_ptr<ControlServer> control_;
  Fd notify_fd_;
  std::string adopt_library_;  // --adopt-binds: the preload library's absolute path.
  std::string notify_path_;
  std::unique_ptr<FdWatch> notify_watch_;
  std::vector<std::unique_ptr<SignalWatch>> signals_;
  std::vector<std::string> base_env_;

  std::map<std::uint64_t, std::unique_ptr<Generation>> generations_;
  std::uint64_t active_ = 0;  // The generation that serves (0 while none does).
  std::uint64_t next_generation_ = 1;
  std::vector<std::string> current_command_;
  std::unique_ptr<Upgrade> upgrade_;
  std::optional<Transfer> transfer_;  // The current or last state transfer.

  std::unique_ptr<Timer> restart_timer_;
  Millis restart_backoff_{0};
  bool told_systemd_ready_ = false;

  bool stopping_ = false;
  std::vector<ClientId> stop_waiters_;
  int exit_code_ = kRunExitOk;

  struct Counters {
    std::uint64_t upgrades_done = 0;
    std::uint64_t upgrades_rolled_back = 0;
    std::uint64_t crashes = 0;
    std::uint64_t restarts = 0;
  } counters_;
  std::string last_error_;
  Clock::time_point last_error_at_;
  nlohmann::json last_upgrade_;
};

// The default control socket path for a supervisor name:
// $XDG_RUNTIME_DIR/hotrestart/NAME.sock, else /tmp/hotrestart-UID/NAME.sock.
std::string default_control_path(const std::string& name);
// Creates the directory holding a control socket (mode 0700 when we create it) and checks
// that no other user could replace what is inside it.
Status prepare_runtime_dir(const std::string& socket_path);

}  // namespace hotrestart
