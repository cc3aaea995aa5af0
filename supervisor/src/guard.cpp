// The guard process (guard.h): holds what the supervisor hands it, and acts on it once the
// supervisor is gone.
#include "guard.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <uv.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/core.h>

#include "duration.h"
#include "log.h"
#include "process_table.h"
#include "signals.h"
#include "spawn.h"
#include "takeover.h"
#include "uv_handles.h"
#include "worker_output.h"

namespace hotrestart {

namespace {

using Clock = std::chrono::steady_clock;

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

// How long the output of an exited generation is still read, for what its helpers write last.
constexpr Millis kOutputGrace{1'000};
// How often exits are looked for in /proc when the kernel gives no pidfd.
constexpr Millis kExitPoll{200};

class Guard {
 public:
  Guard(int link, std::string name, std::string takeover_path)
      : link_(link), name_(std::move(name)), takeover_path_(std::move(takeover_path)) {
    uv_loop_init(&loop_);
  }
  ~Guard() {
    // Only its own: a newer guard may have bound the path since.
    struct stat st {};
    if (takeover_listener_ && ::lstat(takeover_path_.c_str(), &st) == 0 && st.st_ino == takeover_inode_)
      ::unlink(takeover_path_.c_str());
    taker_watch_.reset();
    takeover_watch_.reset();
    generations_.clear();
    link_watch_.reset();
    signals_.clear();
    uv_run(&loop_, UV_RUN_DEFAULT);  // Close callbacks.
    uv_loop_close(&loop_);
  }
  Guard(const Guard&) = delete;
  Guard& operator=(const Guard&) = delete;

  int run() {
    link_watch_ = std::make_unique<FdWatch>(&loop_, link_.get(), [this] { on_link(); });
    if (!link_watch_->ok()) {
      log_error("cannot watch the supervisor's link");
      return 1;
    }
    for (int signo : {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2})
      signals_.push_back(std::make_unique<SignalWatch>(&loop_, signo, [this](int s) { on_signal(s); }));
    uv_run(&loop_, UV_RUN_DEFAULT);
    return 0;
  }

 private:
  struct Held {
    GuardGeneration g;
    Fd pidfd;
    Fd output;
    bool exited = false;
    std::unique_ptr<FdWatch> exit_watch;
    std::unique_ptr<WorkerOutput> relay;
    std::unique_ptr<Timer> kill_timer;
  };

  void on_link() {
    for (;;) {
      auto m = receive_guard_message(link_.get());
      if (m) {
        // A field of the wrong type throws; the message is dropped, the guard goes on.
        try {
          on_message(std::move(m).value());
        } catch (const nlohmann::json::exception& e) {
          log_warn("ignored a message from the supervisor: {}", e.what());
        }
        if (released_) return;
        continue;
      }
      if (m.error().code() == EAGAIN) return;
      if (m.error().code() == EPIPE || m.error().code() == ECONNRESET) {
        orphaned();
        return;
      }
      log_warn("ignored a message from the supervisor: {}", m.error().text());
    }
  }

  void on_message(GuardMessage m) {
    const std::string op = m.body.value("op", "");
    if (op == "hello") {
      supervisor_ = m.body.value("supervisor", 0);
    } else if (op == "listeners") {
      const auto names = m.body.value("names", nlohmann::json::array());
      if (!names.is_array() || names.size() != m.fds.size()) {
        log_warn("ignored listeners from the supervisor: {} names for {} sockets", names.size(), m.fds.size());
        return;
      }
      for (std::size_t i = 0; i < m.fds.size(); ++i) {
        listener_names_.push_back(names[i].is_string() ? names[i].get<std::string>() : std::string("?"));
        listeners_.push_back(std::move(m.fds[i]));
      }
    } else if (op == "generation") {
      auto g = guard_generation_from_json(m.body.value("generation", nlohmann::json{}));
      if (!g) {
        log_warn("ignored a generation from the supervisor: {}", g.error().text());
        return;
      }
      Fd output = m.fds.empty() ? Fd{} : std::move(m.fds[0]);
      hold(*g, std::move(output));
    } else if (op == "gone") {
      generations_.erase(m.body.value("number", std::uint64_t{0}));
    } else if (op == "release") {
      // The supervisor stops: it has ended every generation itself.
      released_ = true;
      generations_.clear();
      listeners_.clear();
      link_watch_.reset();
      uv_stop(&loop_);
    } else {
      log_warn("ignored a message from the supervisor: unknown op '{}'", op.substr(0, 32));
    }
  }

  void hold(const GuardGeneration& g, Fd output) {
    auto it = generations_.find(g.number);
    if (it != generations_.end()) {
      it->second.g.role = g.role;
      it->second.g.kill_at_ns = g.kill_at_ns;
      return;
    }
    // The pid names the generation only if it is still the process the supervisor started: the
    // pidfd first, then the start time, so that the pidfd names that process.
    const long raw = ::syscall(SYS_pidfd_open, g.pid, 0);
    const int pidfd_errno = errno;
    Fd pidfd(raw < 0 ? -1 : static_cast<int>(raw));
    if (!still_running(g.pid, g.start)) return;  // Gone already.
    Held& held = generations_[g.number];
    held.g = g;
    held.pidfd = std::move(pidfd);
    held.output = std::move(output);
    const std::uint64_t number = g.number;
    if (held.pidfd) {
      held.exit_watch = std::make_unique<FdWatch>(&loop_, held.pidfd.get(), [this, number] { on_exited(number); });
      return;
    }
    // Without pidfds (an old kernel, a sandbox that refuses them), exits are looked for in /proc.
    if (!exit_poll_) {
      log_warn("no pidfd for pid {} ({}); looking for exits in /proc every {}", g.pid, std::strerror(pidfd_errno),
               format_duration(kExitPoll));
      exit_poll_ = std::make_unique<Timer>(&loop_);
      exit_poll_->start_repeating(kExitPoll, [this] { poll_exits(); });
    }
  }

  void poll_exits() {
    std::vector<std::uint64_t> gone;
    for (const auto& [n, held] : generations_) {
      if (held.pidfd || held.exited) continue;
      if (!still_running(held.g.pid, held.g.start)) gone.push_back(n);
    }
    for (std::uint64_t n : gone)
      on_exited(n);
  }

  // The supervisor is gone.
  void orphaned() {
    link_watch_.reset();
    orphaned_ = true;
    if (generations_.empty()) {
      log_info("the supervisor (pid {}) is gone, and no generation is left", supervisor_);
      uv_stop(&loop_);
      return;
    }
    log_warn(
        "the supervisor (pid {}) of '{}' is gone; {} generation(s) left: candidates drain, draining ones "
        "end at their deadline, the active one serves on",
        supervisor_, name_, generations_.size());
    const std::int64_t now = now_ns();
    for (auto& [n, held] : generations_) {
      const GuardGeneration& g = held.g;
      const OrphanPlan plan = plan_for_orphan(g, now);
      if (held.output) held.relay = std::make_unique<WorkerOutput>(&loop_, std::move(held.output), g.number, g.pid);
      // It may have exited a moment before the link's end was seen (the supervisor's death closed
      // its channel): what it said last is still relayed.
      if (held.exited) continue;
      if (plan.drain_now) {
        log_info("generation {} (pid {}) was a candidate: sending {}; SIGKILL after {}", g.number, g.pid,
                 signal_name(g.drain_signal), format_duration(Millis{g.drain_ms}));
        signal_process(entry_of(g), g.drain_signal);
        held.g.role = GuardRole::Draining;
      }
      held.g.kill_at_ns = plan.kill_at_ns;  // What a supervisor that takes over inherits.
      if (plan.kill_at_ns > 0) {
        held.kill_timer = std::make_unique<Timer>(&loop_);
        const auto after = Millis{std::max<std::int64_t>(0, (plan.kill_at_ns - now) / 1'000'000)};
        if (g.role == GuardRole::Draining)
          log_info("generation {} (pid {}) is draining: SIGKILL in {}", g.number, g.pid, format_duration(after));
        const std::uint64_t number = n;
        held.kill_timer->start(after, [this, number] { kill(number); });
      } else {
        log_info("generation {} (pid {}) is active: it serves on", g.number, g.pid);
      }
    }
    std::vector<std::uint64_t> exited;
    for (const auto& [n, held] : generations_)
      if (held.exited) exited.push_back(n);
    for (std::uint64_t n : exited)
      end_of(n);
    if (!generations_.empty()) listen_for_takeover();
  }

  // --- Takeover: a supervisor of the same name, started while generations are left, asks for what
  // the guard holds (protocol.md, "Guard link"), and the guard exits once it confirms.
  void listen_for_takeover() {
    if (takeover_path_.empty()) return;
    auto fd = listen_seqpacket(takeover_path_);
    if (!fd) {
      log_warn("cannot wait for a supervisor to take over: {}", fd.error().text());
      return;
    }
    takeover_listener_ = std::move(fd).value();
    struct stat st {};
    if (::lstat(takeover_path_.c_str(), &st) == 0) takeover_inode_ = st.st_ino;
    takeover_watch_ = std::make_unique<FdWatch>(&loop_, takeover_listener_.get(), [this] { on_taker_connected(); });
    log_info("a `hotrestart run` with the same name and listeners takes them over (it finds this guard at {})",
             takeover_path_);
  }

  void on_taker_connected() {
    Fd conn(::accept4(takeover_listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn) return;
    ucred cred{};
    socklen_t len = sizeof cred;
    if (::getsockopt(conn.get(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 ||
        (cred.uid != ::getuid() && cred.uid != 0)) {
      log_warn("refused a takeover from pid {} (uid {}): only uid {} or root may take over", cred.pid, cred.uid,
               ::getuid());
      return;
    }
    if (taker_) {
      log_warn("refused a takeover from pid {}: pid {} is taking over already", cred.pid, taker_pid_);
      return;
    }
    taker_ = std::move(conn);
    taker_pid_ = cred.pid;
    taker_watch_ = std::make_unique<FdWatch>(&loop_, taker_.get(), [this] { on_taker(); });
  }

  void drop_taker(std::string_view why) {
    log_warn("the takeover by pid {} did not complete ({}); guarding on", taker_pid_, why);
    taker_watch_.reset();
    taker_.reset();
    taker_pid_ = 0;
    resume_relays();
  }

  void on_taker() {
    for (;;) {
      auto m = receive_guard_message(taker_.get());
      if (!m) {
        if (m.error().code() == EAGAIN) return;
        drop_taker(m.error().text());
        return;
      }
      const std::string op = m->body["op"].get<std::string>();  // receive_guard_message checked it.
      if (op == "takeover") {
        if (auto ok = hand_over(); !ok) {
          drop_taker(ok.error().text());
          return;
        }
      } else if (op == "taken") {
        log_info("supervisor pid {} took over {} generation(s) of '{}'; this guard exits", taker_pid_,
                 generations_.size(), name_);
        // Its listeners and pipes are the new supervisor's now; the generations are its to end.
        generations_.clear();
        listeners_.clear();
        uv_stop(&loop_);
        return;
      } else {
        drop_taker(fmt::format("unknown op '{}'", op.substr(0, 32)));
        return;
      }
    }
  }

  // Sends the table, then the listeners, then each generation's output pipe.
  Status hand_over() {
    nlohmann::json generations = nlohmann::json::array();
    for (const auto& [n, held] : generations_) {
      if (held.exited) continue;
      generations.push_back(to_json(held.g));
    }
    const int sock = taker_.get();
    if (auto ok = send_guard_message(
            sock,
            {{"op", "state"}, {"supervisor", supervisor_}, {"names", listener_names_}, {"generations", generations}});
        !ok)
      return ok;
    for (std::size_t at = 0; at < listeners_.size(); at += kGuardMaxFds) {
      std::vector<int> fds;
      for (std::size_t i = at; i < listeners_.size() && i < at + kGuardMaxFds; ++i)
        fds.push_back(listeners_[i].get());
      if (auto ok = send_guard_message(sock, {{"op", "listeners"}}, fds); !ok) return ok;
    }
    for (auto& [n, held] : generations_) {
      if (held.exited) continue;
      // One reader at a time: this guard stops relaying (keeping the pipe, in case the takeover
      // does not complete) before the new supervisor starts.
      if (held.relay) {
        held.output.reset(::fcntl(held.relay->read_fd(), F_DUPFD_CLOEXEC, 3));
        held.relay.reset();
      }
      if (!held.output) continue;
      const int fds[] = {held.output.get()};
      if (auto ok = send_guard_message(sock, {{"op", "output"}, {"number", n}}, fds); !ok) return ok;
    }
    return send_guard_message(sock, {{"op", "end"}});
  }

  // The takeover did not complete: this guard reads the pipes again.
  void resume_relays() {
    for (auto& [n, held] : generations_) {
      if (!held.relay && held.output)
        held.relay = std::make_unique<WorkerOutput>(&loop_, std::move(held.output), held.g.number, held.g.pid);
    }
  }

  static ProcessEntry entry_of(const GuardGeneration& g) {
    ProcessEntry e;
    e.pid = g.pid;
    e.pgid = g.pid;
    e.start = g.start;
    return e;
  }

  void kill(std::uint64_t number) {
    auto it = generations_.find(number);
    if (it == generations_.end()) return;
    const GuardGeneration& g = it->second.g;
    log_warn("generation {} (pid {}) did not exit in time; sending SIGKILL to its process group", g.number, g.pid);
    signal_process(entry_of(g), SIGKILL);
    kill_group(g);
  }

  // SIGKILL to the generation's process group. The group's id is the main process's pid, and stays
  // in use while any process of the group lives; only a process that now has that pid with another
  // start time could mean that the group is gone and the id another's.
  static void kill_group(const GuardGeneration& g) {
    const auto now = read_process(g.pid);
    if (!now || now->start == g.start) ::kill(-g.pid, SIGKILL);
  }

  void on_exited(std::uint64_t number) {
    auto it = generations_.find(number);
    if (it == generations_.end()) return;
    Held& held = it->second;
    held.exited = true;
    held.exit_watch.reset();
    // While the supervisor lives, it tells of the end (op gone); orphaned() ends what exited before.
    if (orphaned_) end_of(number);
  }

  // A generation's main process has exited, and the supervisor is gone.
  void end_of(std::uint64_t number) {
    Held& held = generations_.at(number);
    held.kill_timer.reset();
    log_info("generation {} (pid {}) has exited", held.g.number, held.g.pid);
    // What it started goes with it, as under the supervisor.
    kill_group(held.g);
    if (held.relay) {
      held.relay->when_ended(kOutputGrace, [this, number] { forget(number); });
    } else {
      forget(number);
    }
  }

  void forget(std::uint64_t number) {
    generations_.erase(number);
    if (orphaned_ && generations_.empty()) {
      log_info("every generation of '{}' has exited; closing its listeners", name_);
      listeners_.clear();
      uv_stop(&loop_);
    }
  }

  void on_signal(int signo) {
    if (!orphaned_ || signo != SIGTERM) return;
    log_info("SIGTERM: leaving {} generation(s) as they are and closing the listeners", generations_.size());
    uv_stop(&loop_);
  }

  uv_loop_t loop_{};
  Fd link_;
  std::string name_;
  std::string takeover_path_;
  Fd takeover_listener_;
  ino_t takeover_inode_ = 0;
  std::unique_ptr<FdWatch> takeover_watch_;
  Fd taker_;
  pid_t taker_pid_ = 0;
  std::unique_ptr<FdWatch> taker_watch_;
  std::vector<std::string> listener_names_;
  std::unique_ptr<Timer> exit_poll_;
  pid_t supervisor_ = 0;
  bool orphaned_ = false;
  bool released_ = false;
  std::unique_ptr<FdWatch> link_watch_;
  std::vector<std::unique_ptr<SignalWatch>> signals_;
  std::vector<Fd> listeners_;
  std::map<std::uint64_t, Held> generations_;
};

}  // namespace

OrphanPlan plan_for_orphan(const GuardGeneration& g, std::int64_t now_ns) {
  const std::int64_t drain_ns = g.drain_ms * 1'000'000;
  switch (g.role) {
    case GuardRole::Active:
      return {};
    case GuardRole::Candidate:
      return {true, now_ns + drain_ns};
    case GuardRole::Draining:
      // Without a deadline of its own (a resumed generation that was not serving again yet), the
      // drain timeout counts from now.
      return {false, g.kill_at_ns > 0 ? g.kill_at_ns : now_ns + drain_ns};
  }
  return {};
}

int run_guard(int argc, char** argv) {
  set_log_name("hotrestart guard");
  if (const char* format = std::getenv(kGuardLogFormat)) {
    if (auto f = log_format_named(format)) set_log_format(*f);
  }
  ::unsetenv(kGuardLogFormat);
  const std::string name = argc > 2 ? argv[2] : "default";
  const std::string takeover_path = argc > 3 ? argv[3] : "";
  // Its link is fd 3, a seqpacket socket; anything else means it was started by hand.
  int type = 0;
  socklen_t len = sizeof type;
  if (::getsockopt(3, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_SEQPACKET) {
    fmt::print(stderr, "hotrestart: __guard is the supervisor's own helper process; `hotrestart run` starts it\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  // It holds every listener and every generation's pipe, as the supervisor does.
  (void)raise_fd_limit();
  return Guard(3, name, takeover_path).run();
}

}  // namespace hotrestart
