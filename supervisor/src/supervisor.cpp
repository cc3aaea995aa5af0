#include "supervisor.h"
#include "adopt.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <hotrestart/base/text.h>
#include <hotrestart/wire/channel.h>

#include "log.h"
#include "notify_message.h"
#include "signals.h"

extern char** environ;

namespace hotrestart {
namespace {

using nlohmann::json;

constexpr Millis kRestartBackoffFirst{100};
// --adopt-binds: how often a draining generation's connections are counted.
constexpr Millis kAdoptPollInterval{100};
constexpr Millis kRestartBackoffMax{10'000};
// A worker that served this long before it crashed was healthy; its replacement starts
// over with the shortest backoff.
constexpr Millis kHealthyPeriod{10'000};
constexpr Millis kProbeRetry{250};

std::int64_t ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - t).count();
}

std::string elapsed_text(std::chrono::steady_clock::duration d) {
  return format_duration(std::chrono::duration_cast<Millis>(d));
}

// The parent pid of `pid` from /proc/PID/stat ("pid (comm) state ppid ..."); comm may
// contain spaces and parentheses, so the fields are read after the last ')'.
pid_t parent_of(pid_t pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(')');
  // After ") " come the state letter, a space, and the parent pid.
  if (close == std::string::npos || close + 4 >= stat.size()) return 0;
  const char* begin = stat.data() + close + 4;
  pid_t ppid = 0;
  std::from_chars(begin, stat.data() + stat.size(), ppid);
  return ppid;
}

bool is_worker_variable(std::string_view entry) {
  for (std::string_view prefix : {"LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES=", "NOTIFY_SOCKET=", "HOTRESTART_"}) {
    if (entry.starts_with(prefix)) return true;
  }
  return false;
}

// A report a worker sent, made safe for logs and events.
wire::SectionReport printable(wire::SectionReport r) {
  r.reason = hotrestart::printable(r.reason);
  return r;
}

std::string notify_path_for(const std::string& control_path) {
  std::string base = control_path;
  if (base.ends_with(".sock")) base.resize(base.size() - 5);
  return base + ".notify";
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Options

std::string ReadyMode::describe() const {
  switch (kind) {
    case Kind::Notify:
      return "notify";
    case Kind::Exec:
      return "exec:" + command;
    case Kind::Delay:
      return "delay:" + format_duration(delay);
  }
  return "?";
}

Result<ReadyMode> parse_ready_mode(std::string_view text) {
  ReadyMode mode;
  if (text == "notify") return mode;
  if (text.starts_with("exec:")) {
    mode.kind = ReadyMode::Kind::Exec;
    mode.command = std::string(text.substr(5));
    if (mode.command.empty()) return Error::message("--ready exec: needs a command, like exec:'curl -fs http://...'");
    return mode;
  }
  if (text.starts_with("delay:")) {
    auto d = parse_duration(text.substr(6));
    if (!d) return d.error().context("--ready delay");
    mode.kind = ReadyMode::Kind::Delay;
    mode.delay = d.value();
    return mode;
  }
  return Error::message(fmt::format("invalid --ready '{}' (expected notify, exec:COMMAND or delay:DURATION)", text));
}

std::string default_control_path(const std::string& name) {
  const char* xdg = std::getenv("XDG_RUNTIME_DIR");
  if (xdg != nullptr && xdg[0] == '/') return fmt::format("{}/hotrestart/{}.sock", xdg, name);
  return fmt::format("/tmp/hotrestart-{}/{}.sock", ::geteuid(), name);
}

Status prepare_runtime_dir(const std::string& socket_path) {
  const auto slash = socket_path.rfind('/');
  if (slash == std::string::npos || slash == 0) return {};
  const std::string dir = socket_path.substr(0, slash);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return Error::from_errno(fmt::format("mkdir {}", dir));
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) return Error::from_errno(fmt::format("stat {}", dir));
  if (!S_ISDIR(st.st_mode)) return Error::message(fmt::format("{} is not a directory", dir));
  return {};
}

// ---------------------------------------------------------------------------------------
// Life cycle

Supervisor::Supervisor(RunOptions options) : options_(std::move(options)) {
  uv_loop_init(&loop_);
}

Supervisor::~Supervisor() {
  generations_.clear();
  upgrade_.reset();
  control_.reset();
  notify_watch_.reset();
  signals_.clear();
  reaper_.reset();
  restart_timer_.reset();
  // Let every close callback run, so that the loop can be closed with nothing in it.
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
  if (!notify_path_.empty()) ::unlink(notify_path_.c_str());
}

int Supervisor::run() {
  if (auto ok = start(); !ok) {
    log_error("{}", ok.error().text());
    return kRunExitFailed;
  }
  uv_run(&loop_, UV_RUN_DEFAULT);
  return exit_code_;
}

Status Supervisor::start() {
  // Writes to a client that hung up must fail with EPIPE, not kill the supervisor.
  ::signal(SIGPIPE, SIG_IGN);
  // Orphans of our workers are re-parented to us, so that we reap them (and so that no
  // process a worker started outlives its generation unnoticed).
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);

  if (const char* ns = std::getenv("NOTIFY_SOCKET"); ns != nullptr) {
    systemd_notify_socket_ = ns;
    ::unsetenv("NOTIFY_SOCKET");
  }

  if (options_.adopt_binds) {
    auto library = find_adopt_library();
    if (!library) return library.error();
    adopt_library_ = std::move(library).value();
  }
  if (options_.control_path.empty()) options_.control_path = default_control_path(options_.name);
  if (auto ok = prepare_runtime_dir(options_.control_path); !ok) return ok.error().context("control socket");
  control_ = std::make_unique<ControlServer>(
      &loop_, [this](ClientId id, const ControlRequest& r) { on_request(id, r); },
      [this](ClientId id) { on_client_gone(id); });
  if (auto ok = control_->listen(options_.control_path); !ok) return ok.error();

  bool activated = false;
  auto listeners = ListenerSet::adopt_or_bind(options_.listen, &activated);
  if (!listeners) return listeners.error();
  listeners_ = std::move(listeners).value();
  if (listeners_.empty()) return Error::message("no listeners: give at least one --listen");

  // The notify socket receives READY=1 and friends from workers. Its sender is identified
  // by the kernel-attached credentials (SO_PASSCRED), never by anything in the datagram.
  notify_path_ = notify_path_for(options_.control_path);
  if (notify_path_.size() >= sizeof(sockaddr_un{}.sun_path)) {
    return Error::message(fmt::format("notify socket path '{}' is too long; choose a shorter --control", notify_path_));
  }
  notify_fd_.reset(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!notify_fd_) return Error::from_errno("notify socket: socket");
  const int one = 1;
  if (::setsockopt(notify_fd_.get(), SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
    return Error::from_errno("notify socket: setsockopt SO_PASSCRED");
  }
  ::unlink(notify_path_.c_str());
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, notify_path_.c_str(), notify_path_.size() + 1);
  if (::bind(notify_fd_.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Error::from_errno(fmt::format("notify socket: bind {}", notify_path_));
  }
  notify_watch_ = std::make_unique<FdWatch>(&loop_, notify_fd_.get(), [this] { on_notify_readable(); });

  reaper_ = std::make_unique<Reaper>(&loop_);
  restart_timer_ = std::make_unique<Timer>(&loop_);
  for (int signo : {SIGTERM, SIGINT, SIGQUIT, SIGUSR2, SIGHUP}) {
    signals_.push_back(std::make_unique<SignalWatch>(&loop_, signo, [this](int s) { on_signal(s); }));
  }

  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (!is_worker_variable(*e)) base_env_.emplace_back(*e);
  }

  for (const auto& l : listeners_.listeners()) {
    log_info("listener {} on {}{}", l.spec.name, l.address, l.adopted ? " (from socket activation)" : "");
  }
  current_command_ = options_.command;
  auto first = spawn_generation(current_command_);
  if (!first) return first.error();
  active_ = first.value()->number;
  log_info("supervisor pid {} started generation {} (pid {}); control socket {}", ::getpid(), active_,
           first.value()->pid, options_.control_path);
  return {};
}

// ---------------------------------------------------------------------------------------
// Generations

std::vector<std::string> Supervisor::worker_environment(std::uint64_t generation) const {
  std::vector<std::string> env = base_env_;
  env.push_back(fmt::format("LISTEN_FDS={}", listeners_.listeners().size()));
  env.push_back(fmt::format("LISTEN_FDNAMES={}", listeners_.fdnames()));
  env.push_back(fmt::format("NOTIFY_SOCKET={}", notify_path_));
  env.push_back(fmt::format("HOTRESTART_GENERATION={}", generation));
  env.push_back(fmt::format("HOTRESTART_CONTROL={}", options_.control_path));
  // The channel comes right after the listeners (see spawn_generation).
  env.push_back(fmt::format("HOTRESTART_CHANNEL_FD={}", 3 + listeners_.listeners().size()));
  if (!adopt_library_.empty()) {
    // First in LD_PRELOAD, before whatever the operator preloads as well.
    std::string preload = adopt_library_;
    for (auto& e : env) {
      if (e.starts_with("LD_PRELOAD=") && e.size() > 11) {
        preload += ":" + e.substr(11);
        e.clear();
      }
    }
    std::erase(env, std::string());
    env.push_back("LD_PRELOAD=" + preload);
    env.push_back(fmt::format("HOTRESTART_ADOPT_SIGNAL={}", adopt_drain_signal()));
  }
  return env;
}

Result<Supervisor::Generation*> Supervisor::spawn_generation(const std::vector<std::string>& command) {
  const std::uint64_t number = next_generation_;
  auto env = worker_environment(number);
  std::string path_env = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& e : env) {
    if (e.starts_with("PATH=")) path_env = e.substr(5);
  }
  auto executable = resolve_executable(command.front(), path_env);
  if (!executable) return executable.error().context("cannot start the worker");
  if (!adopt_library_.empty()) {
    if (auto ok = check_preloadable(executable.value()); !ok) return ok.error().context("cannot start the worker");
  }
  // Every worker gets a channel; a worker without the SDK never reads it. The supervisor's end
  // stays close-on-exec, so no other worker inherits it.
  auto channel = wire::seqpacket_pair();
  if (!channel) return channel.error().context("cannot start the worker: channel");
  std::vector<int> fds;
  for (const auto& l : listeners_.listeners())
    fds.push_back(l.fd.get());
  fds.push_back(channel->second.get());
  SpawnRequest request{executable.value(), command, std::move(env), std::move(fds), ListenPid::Set};
  auto pid = spawn_process(request);
  if (!pid) return pid.error().context("cannot start the worker");
  channel->second.reset();  // The worker's end lives on in the worker only.

  ++next_generation_;
  auto g = std::make_unique<Generation>();
  g->number = number;
  g->pid = pid.value();
  g->command = command;
  g->started = Clock::now();
  g->ready_deadline = std::make_unique<Timer>(&loop_);
  g->ready_timer = std::make_unique<Timer>(&loop_);
  g->kill_timer = std::make_unique<Timer>(&loop_);
  g->connections_timer = std::make_unique<Timer>(&loop_);
  g->channel = std::move(channel->first);
  g->channel_watch =
      std::make_unique<FdWatch>(&loop_, g->channel.get(), [this, number] { on_channel_readable(number); });
  Generation* raw = g.get();
  generations_.emplace(number, std::move(g));
  reaper_->watch(raw->pid, [this, number](pid_t, ExitStatus status) { on_leader_exit(number, status); });
  log_info("generation {} started: pid {}: {}", number, raw->pid, shell_words(command));
  start_readiness(*raw);
  return raw;
}

void Supervisor::start_readiness(Generation& g) {
  const std::uint64_t n = g.number;
  g.ready_deadline->start(options_.ready_timeout, [this, n] { on_ready_timeout(n); });
  arm_readiness(g);
}

void Supervisor::arm_readiness(Generation& g) {
  const std::uint64_t n = g.number;
  switch (options_.ready.kind) {
    case ReadyMode::Kind::Notify:
      break;  // READY=1 arrives on the notify socket.
    case ReadyMode::Kind::Delay:
      g.ready_timer->start(options_.ready.delay, [this, n] {
        if (auto* gen = find(n)) on_generation_ready(*gen);
      });
      break;
    case ReadyMode::Kind::Exec:
      start_probe(n);
      break;
  }
}

void Supervisor::start_probe(std::uint64_t number) {
  Generation* g = find(number);
  if (g == nullptr || g->state != GenState::Starting) return;
  std::vector<std::string> env = base_env_;
  env.push_back(fmt::format("HOTRESTART_PID={}", g->pid));
  env.push_back(fmt::format("HOTRESTART_GENERATION={}", number));
  SpawnRequest request{"/bin/sh", {"/bin/sh", "-c", options_.ready.command}, std::move(env), {}, ListenPid::Omit};
  auto pid = spawn_process(request);
  if (!pid) {
    g->status_text = pid.error().text();
    g->ready_timer->start(kProbeRetry, [this, number] { start_probe(number); });
    return;
  }
  g->probe_pid = pid.value();
  reaper_->watch(pid.value(), [this, number](pid_t, ExitStatus status) {
    Generation* gen = find(number);
    if (gen == nullptr) return;
    gen->probe_pid = 0;
    if (gen->state != GenState::Starting) return;
    if (status.success()) {
      on_generation_ready(*gen);
      return;
    }
    gen->status_text = fmt::format("readiness probe {}", status.describe());
    gen->ready_timer->start(kProbeRetry, [this, number] { start_probe(number); });
  });
}

void Supervisor::cancel_readiness(Generation& g) {
  g.ready_deadline->stop();
  g.ready_timer->stop();
  if (g.probe_pid != 0) {
    kill_group(g.probe_pid, SIGKILL);
    g.probe_pid = 0;  // The reaper still collects it; its callback finds the state changed.
  }
}

void Supervisor::on_generation_ready(Generation& g) {
  if (g.state != GenState::Starting) return;
  g.state = GenState::Ready;
  g.ready_at = Clock::now();
  cancel_readiness(g);
  log_info("generation {} (pid {}) is ready after {}", g.number, g.pid, elapsed_text(g.ready_at - g.started));
  if (upgrade_ && upgrade_->generation == g.number) {
    feed(Input::Ready);
    return;
  }
  if (g.number == active_ && !told_systemd_ready_) {
    told_systemd_ready_ = true;
    notify_systemd(fmt::format("READY=1\nSTATUS=generation {} serving\nMAINPID={}", g.number, ::getpid()));
  }
}

void Supervisor::on_ready_timeout(std::uint64_t number) {
  Generation* g = find(number);
  if (g == nullptr || g->state != GenState::Starting) return;
  std::string reason = fmt::format("generation {} was not ready within {} (--ready {})", number,
                                   format_duration(options_.ready_timeout), options_.ready.describe());
  if (!g->status_text.empty()) reason += fmt::format("; last status: {}", g->status_text);
  if (!adopt_library_.empty() && options_.ready.kind == ReadyMode::Kind::Notify) {
    reason += g->adopt_loaded
                  ? fmt::format("; it never waited on a listener given with --listen (does it bind {}?)",
                                listener_addresses())
                  : std::string("; the preload library never loaded in it (does the server clear LD_PRELOAD?)");
  }
  if (upgrade_ && upgrade_->generation == number) {
    feed(Input::Timeout, reason);
    return;
  }
  note_error(reason + "; stopping it");
  stop_generation(*g, options_.drain_signal, "not ready in time", Ending::Stop);
}

void Supervisor::on_leader_exit(std::uint64_t number, ExitStatus status) {
  Generation* g = find(number);
  if (g == nullptr) return;
  // Whatever the worker started dies with it (systemd's KillMode=mixed does the same).
  kill_group(g->pid, SIGKILL);
  cancel_readiness(*g);
  const pid_t pid = g->pid;
  const GenState state = g->state;
  const auto ready_for = state == GenState::Starting ? Clock::duration::zero() : Clock::now() - g->ready_at;
  generations_.erase(number);
  if (upgrade_ && upgrade_->waiting_for == number && upgrade_->machine.phase() == Phase::TransferringState) {
    begin_transfer();
  }

  if (upgrade_ && upgrade_->generation == number) {
    if (upgrade_->machine.phase() == Phase::RollingBack) {
      feed(Input::NewGone);
    } else {
      const char* before =
          upgrade_->machine.phase() == Phase::HealthChecking ? "before cutover" : "before it was ready";
      feed(Input::NewExited, fmt::format("generation {} (pid {}) {} {}", number, pid, status.describe(), before));
    }
  } else if (number == active_) {
    active_ = 0;
    if (!stopping_) {
      ++counters_.crashes;
      note_error(fmt::format("generation {} (pid {}) {}", number, pid, status.describe()));
      schedule_restart(ready_for);
    }
  } else if (state == GenState::Draining) {
    log_info("generation {} (pid {}) {} after draining", number, pid, status.describe());
  }
  maybe_finish_stop();
}

void Supervisor::stop_generation(Generation& g, int signo, std::string_view why, Ending ending) {
  if (g.state == GenState::Draining) return;
  g.state = GenState::Draining;
  cancel_readiness(g);
  // An SDK worker is asked over its channel; any other gets the drain signal, which goes to the
  // main process only: it decides how to stop its helpers. The final SIGKILL goes to the whole
  // process group either way.
  if (ending == Ending::Stop && g.hello && !g.import_finished) {
    // It is still in Worker::start(), where nothing reads the channel: it has served nothing, and
    // a stop request would wait unread until the drain timeout.
    log_info("generation {} (pid {}): stopping it at once with SIGKILL ({}; it had not finished its import)", g.number,
             g.pid, why);
    kill_group(g.pid, SIGKILL);
    return;
  }
  const bool asked = g.hello && (ending == Ending::Stop ? send_to(g, wire::Stop{}) : send_to(g, wire::Drain{}));
  if (asked) {
    log_info("generation {} (pid {}): asked to {} over its channel ({}); SIGKILL after {}", g.number, g.pid,
             ending == Ending::Stop ? "stop" : "drain", why, format_duration(options_.drain_timeout));
  } else if (!adopt_library_.empty()) {
    adopt_drain(g, signo, why);
  } else {
    log_info("generation {} (pid {}): sending {} ({}); SIGKILL after {}", g.number, g.pid, signal_name(signo), why,
             format_duration(options_.drain_timeout));
    ::kill(g.pid, signo);
  }
  const std::uint64_t n = g.number;
  g.kill_timer->start(options_.drain_timeout, [this, n] {
    if (Generation* gen = find(n)) {
      log_warn("generation {} (pid {}) did not exit within the drain timeout of {}; sending SIGKILL", n, gen->pid,
               format_duration(options_.drain_timeout));
      kill_group(gen->pid, SIGKILL);
    }
  });
}

std::string Supervisor::listener_addresses() const {
  std::string out;
  for (const auto& l : listeners_.listeners())
    out += (out.empty() ? "" : " or ") + l.address;
  return out;
}

void Supervisor::adopt_drain(Generation& g, int signo, std::string_view why) {
  kill_group(g.pid, adopt_drain_signal());
  if (options_.drain_signal_given) {
    // The server drains by itself on the signal the operator named (nginx: SIGQUIT); the library
    // has closed its listeners as well.
    log_info("generation {} (pid {}): closing its listeners and sending {} ({}); SIGKILL after {}", g.number, g.pid,
             signal_name(signo), why, format_duration(options_.drain_timeout));
    ::kill(g.pid, signo);
    return;
  }
  // The library in each of its processes closes the listeners; the connections it accepted are
  // then served to the end, and only then does the drain signal stop it.
  log_info("generation {} (pid {}): closing its listeners ({}); {} once its connections are done, SIGKILL after {}",
           g.number, g.pid, why, signal_name(signo), format_duration(options_.drain_timeout));
  std::vector<std::uint16_t> ports;
  for (const auto& l : listeners_.listeners()) {
    // "127.0.0.1:41234", "[::1]:80"; unix: listeners have no port, and their connections are not
    // counted.
    const auto colon = l.address.rfind(':');
    if (l.address.starts_with("unix:") || colon == std::string::npos) continue;
    const unsigned long port = std::strtoul(l.address.c_str() + colon + 1, nullptr, 10);
    if (port > 0 && port < 65536) ports.push_back(static_cast<std::uint16_t>(port));
  }
  const std::uint64_t n = g.number;
  const auto since = Clock::now();
  g.connections_timer->start_repeating(kAdoptPollInterval, [this, n, signo, ports, since] {
    Generation* gen = find(n);
    if (gen == nullptr) return;
    // A moment for the signal to land in every process, then no connection left on our ports.
    if (Clock::now() - since < kAdoptPollInterval) return;
    const int open = count_connections(gen->pid, ports);
    if (open < 0) {
      // Not knowing is not "none": the drain timeout decides.
      gen->connections_timer->stop();
      log_warn(
          "generation {} (pid {}): its connections cannot be counted (/proc); it is stopped at the drain "
          "timeout",
          n, gen->pid);
      return;
    }
    if (open > 0) return;
    gen->connections_timer->stop();
    log_info("generation {} (pid {}): its connections are done; sending {}", n, gen->pid, signal_name(signo));
    ::kill(gen->pid, signo);
  });
}

void Supervisor::kill_group(pid_t pgid, int signo) {
  // Only pids still registered with the reaper are ours for sure; a pgid stays reserved by
  // the kernel while any member of the group exists.
  if (pgid > 0) ::kill(-pgid, signo);
}

Supervisor::Generation* Supervisor::find(std::uint64_t number) {
  auto it = generations_.find(number);
  return it == generations_.end() ? nullptr : it->second.get();
}

Supervisor::Generation* Supervisor::find_by_sender(pid_t pid, bool by_group) {
  if (pid <= 0) return nullptr;
  // A worker's own processes share its process group unless they made their own; the
  // parent chain covers those. (Any process of the session may join a process group, so the
  // group counts only for senders of our own uid.)
  const pid_t pgid = by_group ? ::getpgid(pid) : -1;
  pid_t cursor = pid;
  for (int depth = 0; depth < 32 && cursor > 1; ++depth) {
    for (auto& [n, g] : generations_) {
      if (g->pid == cursor || (depth == 0 && g->pid == pgid)) return g.get();
    }
    cursor = parent_of(cursor);
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------
// Crash restarts

void Supervisor::schedule_restart(Clock::duration ready_for) {
  if (ready_for >= kHealthyPeriod || restart_backoff_.count() == 0) {
    restart_backoff_ = kRestartBackoffFirst;
  } else {
    restart_backoff_ = std::min(restart_backoff_ * 2, kRestartBackoffMax);
  }
  log_info("restarting the worker in {} (crash {}); listeners stay open, so clients wait in the backlog",
           format_duration(restart_backoff_), counters_.crashes);
  restart_timer_->start(restart_backoff_, [this] { restart_now(); });
}

void Supervisor::restart_now() {
  if (stopping_ || active_ != 0) return;
  auto g = spawn_generation(current_command_);
  if (!g) {
    ++counters_.crashes;
    note_error(g.error().text());
    schedule_restart(Clock::duration::zero());
    return;
  }
  ++counters_.restarts;
  active_ = g.value()->number;
}

// ---------------------------------------------------------------------------------------
// Upgrades

void Supervisor::begin_upgrade(std::vector<std::string> command, std::optional<ClientId> client, std::string origin) {
  upgrade_ = std::make_unique<Upgrade>(&loop_);
  upgrade_->command = std::move(command);
  upgrade_->origin = std::move(origin);
  upgrade_->previous = active_;
  if (client) upgrade_->watchers.push_back(*client);
  notify_systemd(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading", uv_hrtime() / 1000));
  log_info("upgrade ({}) to: {}", upgrade_->origin, shell_words(upgrade_->command));
  publish_phase(fmt::format("starting generation {}: {}", next_generation_, shell_words(upgrade_->command)));
  auto g = spawn_generation(upgrade_->command);
  if (!g) {
    feed(Input::SpawnFailed, g.error().text());
    return;
  }
  upgrade_->generation = g.value()->number;
  feed(Input::Spawned);
}

void Supervisor::feed(Input input, std::string reason) {
  if (!upgrade_) return;
  const Step step = upgrade_->machine.handle(input, std::move(reason));
  if (!step.accepted) {
    log_debug("upgrade: input {} ignored in phase {}", input_name(input), phase_name(upgrade_->machine.phase()));
    return;
  }
  Generation* fresh = find(upgrade_->generation);
  switch (step.action) {
    case Action::None:
      break;
    case Action::WaitHandshake:
      publish_phase(fmt::format(
          "generation {} (pid {}) started; waiting for its hello (SDK) or for it to report ready (--ready {}, "
          "timeout {})",
          upgrade_->generation, fresh ? fresh->pid : 0, options_.ready.describe(),
          format_duration(options_.ready_timeout)));
      break;
    case Action::StartTransfer:
      start_transfer();
      break;
    case Action::WaitReady:
      publish_phase(fmt::format("waiting for generation {} to report ready (--ready {}, timeout {})",
                                upgrade_->generation, options_.ready.describe(),
                                format_duration(options_.ready_timeout)));
      if (fresh != nullptr) {
        // The ready deadline and a delay or exec readiness check were stopped for the transfer;
        // they start over now, so that the worker is judged on what it does with its state.
        const std::uint64_t n = fresh->number;
        if (fresh->state == GenState::Ready) {
          feed(Input::Ready);  // It reported ready (SDK or READY=1) before the transfer ended.
        } else {
          fresh->ready_deadline->start(options_.ready_timeout, [this, n] { on_ready_timeout(n); });
          arm_readiness(*fresh);
        }
      }
      break;
    case Action::WaitHealth:
      if (options_.min_ready.count() == 0) {
        publish_phase(fmt::format("generation {} is ready", upgrade_->generation));
        feed(Input::HealthPassed);
        break;
      }
      publish_phase(fmt::format("generation {} is ready; it must stay up for {} (--min-ready)", upgrade_->generation,
                                format_duration(options_.min_ready)));
      upgrade_->phase_timer.start(options_.min_ready, [this] { feed(Input::HealthPassed); });
      break;
    case Action::Promote: {
      upgrade_->previous = active_;
      active_ = upgrade_->generation;
      current_command_ = upgrade_->command;
      // The new generation replaces whatever crash restart was pending.
      restart_timer_->stop();
      restart_backoff_ = Millis(0);
      publish_phase(fmt::format("generation {} is now the active generation", active_));
      feed(Input::Promoted);
      break;
    }
    case Action::DrainOld: {
      Generation* old = find(upgrade_->previous);
      if (old != nullptr) {
        const std::string how = old->hello ? std::string("a drain request on its channel")
                                           : std::string(signal_name(options_.drain_signal));
        publish_phase(fmt::format("draining generation {} (pid {}) with {}; SIGKILL after {}", old->number, old->pid,
                                  how, format_duration(options_.drain_timeout)));
        stop_generation(*old, options_.drain_signal, "replaced by generation " + std::to_string(active_));
      } else {
        publish_phase("no previous generation was running, nothing to drain");
      }
      feed(Input::DrainStarted);
      break;
    }
    case Action::StopNew:
      publish_phase(fmt::format("rolling back: {}", upgrade_->machine.failure()));
      if (fresh != nullptr) {
        stop_generation(*fresh, options_.drain_signal, "rolled back", Ending::Stop);
      } else {
        feed(Input::NewGone);
      }
      break;
    case Action::Finish:
      finish_upgrade();
      break;
  }
}

void Supervisor::publish_phase(const std::string& message) {
  const auto& m = upgrade_->machine;
  const Generation* fresh = find(upgrade_->generation);
  const auto elapsed = ms_since(m.started());
  json event{{"v", kControlProtocolVersion},
             {"type", "event"},
             {"phase", phase_name(m.phase())},
             {"elapsed_ms", elapsed},
             {"generation", upgrade_->generation},
             {"pid", fresh != nullptr ? fresh->pid : 0},
             {"message", message}};
  log_info("upgrade: {} ({} ms): {}", phase_name(m.phase()), elapsed, message);
  for (ClientId id : upgrade_->watchers)
    control_->send(id, event, AfterSend::KeepOpen);
}

void Supervisor::finish_upgrade() {
  const auto& m = upgrade_->machine;
  const bool ok = m.succeeded();
  const Generation* serving = find(active_);
  std::string message;
  if (ok) {
    ++counters_.upgrades_done;
    message = fmt::format("generation {} (pid {}) serves", active_, serving ? serving->pid : 0);
  } else {
    ++counters_.upgrades_rolled_back;
    note_error(fmt::format("upgrade rolled back: {}", m.failure()));
    message = serving != nullptr
                  ? fmt::format("rolled back: {}; generation {} (pid {}) still serves", m.failure(), serving->number,
                                serving->pid)
                  : fmt::format("rolled back: {}; no generation is serving (a restart is scheduled)", m.failure());
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
              {"generation", ok ? active_ : upgrade_->generation},
              {"serving_generation", active_},
              {"serving_pid", serving != nullptr ? serving->pid : 0},
              {"elapsed_ms", ms_since(m.started())},
              {"reason", ok ? "" : m.failure()},
              {"message", message},
              {"timeline", timeline}};
  publish_phase(message);
  for (ClientId id : upgrade_->watchers)
    control_->send(id, result, AfterSend::Close);
  last_upgrade_ = result;
  last_upgrade_.erase("v");
  last_upgrade_.erase("type");
  notify_systemd(fmt::format("READY=1\nSTATUS=generation {} serving", active_));
  upgrade_.reset();
}

// ---------------------------------------------------------------------------------------
// Inputs

void Supervisor::on_notify_readable() {
  // A bounded number of datagrams per wake-up keeps a flooding sender from starving the loop.
  for (int i = 0; i < 64; ++i) {
    char data[kNotifyMaxDatagram + 1];
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred)) + CMSG_SPACE(sizeof(int) * 16)];
    iovec iov{data, sizeof data};
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(notify_fd_.get(), &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC | MSG_TRUNC);
    if (n < 0) return;  // EAGAIN: drained.
    const ucred* cred = nullptr;
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS && c->cmsg_len == CMSG_LEN(sizeof(ucred))) {
        cred = reinterpret_cast<const ucred*>(CMSG_DATA(c));
      } else if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
        // We keep no fds from workers (no FDSTORE): close every one that arrived.
        const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (std::size_t k = 0; k < count; ++k) {
          int fd = -1;
          std::memcpy(&fd, CMSG_DATA(c) + k * sizeof(int), sizeof fd);
          if (fd >= 0) ::close(fd);
        }
      }
    }
    if (static_cast<std::size_t>(n) > kNotifyMaxDatagram || (msg.msg_flags & MSG_TRUNC) != 0) {
      log_warn("notify: dropped a datagram of {} bytes (limit {})", n, kNotifyMaxDatagram);
      continue;
    }
    if ((msg.msg_flags & MSG_CTRUNC) != 0) {
      log_warn("notify: dropped a datagram whose ancillary data was truncated");
      continue;
    }
    if (cred == nullptr) {
      log_warn("notify: dropped a datagram without sender credentials");
      continue;
    }
    // Membership in a generation's process tree is what counts: a worker may run its helpers as
    // another user (nginx's workers), found through their parent chain, which no process outside
    // the tree can fake. Anyone else, of any user, is dropped.
    Generation* g = find_by_sender(cred->pid, cred->uid == ::geteuid() || cred->uid == 0);
    if (g == nullptr) {
      log_warn("notify: dropped a datagram from pid {} (uid {}), which belongs to no worker generation", cred->pid,
               cred->uid);
      continue;
    }
    const NotifyMessage m = parse_notify(std::string_view(data, static_cast<std::size_t>(n)));
    for (const auto& p : m.problems)
      log_warn("notify: generation {}: {}", g->number, p);
    if (m.status) g->status_text = *m.status;
    if (m.adopt && !g->adopt_loaded) {
      g->adopt_loaded = true;
      log_debug("generation {}: the preload library is in pid {}", g->number, cred->pid);
    }
    if (m.stopping && !g->stopped_accepting) {
      g->stopped_accepting = true;
      log_info("generation {} (pid {}) reports it is stopping", g->number, g->pid);
    }
    if (m.ready && options_.ready.kind == ReadyMode::Kind::Notify) on_generation_ready(*g);
  }
}

// ---------------------------------------------------------------------------------------
// The worker channel and the state broker (docs/protocol.md, "Worker channel")

void Supervisor::on_channel_readable(std::uint64_t number) {
  // A bounded number of messages per wake-up keeps one chatty worker from starving the loop.
  for (int i = 0; i < 32; ++i) {
    Generation* g = find(number);
    if (g == nullptr || !g->channel) return;
    auto received = wire::receive_message(g->channel.get(), wire::Blocking::No);
    if (!received) {
      if (received.error().code() == EAGAIN) return;
      // End of file, or a reset because the worker exited with messages of ours unread.
      if (received.error().code() == EPIPE || received.error().code() == ECONNRESET) {
        // The worker closed its end, usually because it is exiting; the reaper reports the rest.
        log_debug("generation {}: channel closed by the worker", number);
        g->channel_watch.reset();
        g->channel.reset();
        if (upgrade_ && upgrade_->generation == number && g->hello) {
          // A worker that crashes closes its channel a moment before the reaper hears of its
          // exit, and the exit status is the better reason. Only a worker that stays alive
          // without its channel is failed for closing it.
          g->channel_grace = std::make_unique<Timer>(&loop_);
          g->channel_grace->start(Millis(1000), [this, number] {
            if (Generation* gen = find(number))
              channel_failed(*gen, fmt::format("generation {} closed its channel", number));
          });
        }
        return;
      }
      channel_failed(*g, fmt::format("generation {} sent a bad channel message: {}", number, received.error().text()));
      return;
    }
    on_channel_message(*g, received->message, received->fds);
  }
}

void Supervisor::channel_failed(Generation& g, const std::string& reason) {
  log_warn("{}; closing its channel", reason);
  if (g.channel) send_to(g, wire::Refuse{reason.substr(0, wire::kMaxTextLength)});
  g.channel_watch.reset();
  g.channel.reset();
  if (upgrade_ && upgrade_->generation == g.number) {
    feed(upgrade_->machine.phase() == Phase::Handshake ? Input::Refused : Input::TransferFailed, reason);
  }
}

bool Supervisor::send_to(Generation& g, const wire::Message& message, std::span<const int> fds) {
  if (!g.channel) return false;
  // Never block the loop on a worker: what it has not read stays in its socket buffer, and a
  // worker that lets that fill up has stopped listening to us.
  if (auto ok = wire::send_message(g.channel.get(), message, fds, wire::Blocking::No); !ok) {
    log_warn("generation {}: cannot send {}: {}", g.number, wire::type_name(wire::type_of(message)), ok.error().text());
    return false;
  }
  return true;
}

void Supervisor::on_channel_message(Generation& g, wire::Message& message, std::vector<Fd>& fds) {
  if (!g.hello && !std::holds_alternative<wire::Hello>(message)) {
    channel_failed(
        g, fmt::format("generation {} sent {} before its hello", g.number, wire::type_name(wire::type_of(message))));
    return;
  }
  if (!fds.empty()) {
    // No message from a worker carries descriptors; the decoder has already refused any that did.
    channel_failed(g, fmt::format("generation {} sent descriptors the supervisor does not take", g.number));
    return;
  }
  std::visit(
      [&](auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, wire::Hello>) {
          on_hello(g, m);
        } else if constexpr (std::is_same_v<T, wire::Ready>) {
          if (options_.ready.kind == ReadyMode::Kind::Notify) on_generation_ready(g);
        } else if constexpr (std::is_same_v<T, wire::StatusLine>) {
          g.status_text = printable(m.text.substr(0, 256));
        } else if constexpr (std::is_same_v<T, wire::SectionImported>) {
          // One report per planned section, at most: a worker cannot grow the supervisor's memory
          // by repeating itself.
          if (transfer_ && transfer_->to == g.number && !transfer_->import_totals &&
              transfer_->planned(m.report.name) && !transfer_->reported(transfer_->imported, m.report.name)) {
            transfer_->imported.push_back(printable(m.report));
            publish_state(transfer_->imported.back());
          }
        } else if constexpr (std::is_same_v<T, wire::ImportFinished>) {
          on_import_finished(g, m.totals);
        } else if constexpr (std::is_same_v<T, wire::SectionExported>) {
          if (transfer_ && transfer_->from == g.number && transfer_->planned(m.report.name) &&
              !transfer_->reported(transfer_->exported, m.report.name)) {
            const auto& r = transfer_->exported.emplace_back(printable(m.report));
            log_info("generation {} exported section {}: {}", g.number, r.name,
                     r.ok ? fmt::format("{} bytes, schema {}, in {} us", r.bytes, r.version, r.micros) : r.reason);
          }
        } else if constexpr (std::is_same_v<T, wire::ExportFinished>) {
          if (transfer_ && transfer_->from == g.number) transfer_->export_totals = m.totals;
        } else {
          // Only the supervisor sends these: a worker that does is broken or hostile.
          channel_failed(g, fmt::format("generation {} sent {}, which only the supervisor sends", g.number,
                                        wire::type_name(wire::type_of(message))));
        }
      },
      message);
}

void Supervisor::on_hello(Generation& g, const wire::Hello& hello) {
  if (g.hello) {
    channel_failed(g, fmt::format("generation {} said hello twice", g.number));
    return;
  }
  if (hello.min_version > wire::kProtocolVersion || hello.max_version < wire::kProtocolVersion) {
    channel_failed(g, fmt::format("generation {} speaks worker channel protocol {} to {}, and this supervisor "
                                  "speaks version {}: upgrade the SDK or the supervisor so that they share one",
                                  g.number, hello.min_version, hello.max_version, wire::kProtocolVersion));
    return;
  }
  g.hello = hello;
  log_info("generation {} (pid {}) uses the SDK ({}): imports {} section(s), exports {}", g.number, g.pid,
           quote(hello.sdk), hello.imports.size(), hello.exports.size());
  std::vector<std::string> names;
  std::vector<int> fds;
  for (const auto& l : listeners_.listeners()) {
    names.push_back(l.spec.name);
    fds.push_back(l.fd.get());
  }
  const auto count = static_cast<std::uint32_t>(names.size());
  bool sent = send_to(g, wire::Welcome{wire::kProtocolVersion, g.number, count});
  if (sent) {
    auto ok = wire::send_named_fds(g.channel.get(), wire::Type::Listeners, names, fds, wire::Blocking::No);
    if (!ok) log_warn("generation {}: cannot send its listeners: {}", g.number, ok.error().text());
    sent = ok.ok();
  }
  if (!sent) {
    channel_failed(g, fmt::format("generation {} does not read its channel", g.number));
    return;
  }
  if (upgrade_ && upgrade_->generation == g.number && upgrade_->machine.phase() == Phase::Handshake) {
    feed(Input::Hello);  // StartTransfer: the broker takes it from here.
    return;
  }
  // Every hello gets its begin-import, so that no worker waits in start() for one; the note
  // says truthfully why nothing comes.
  std::string note;
  if (g.state != GenState::Starting) {
    note = fmt::format(
        "generation {} reported ready (--ready {}) before it said hello, so no state was moved to it: "
        "call Worker::start() before anything slow",
        g.number, options_.ready.describe());
    log_warn("{}", note);
  } else if (g.number == 1) {
    note = "first generation";
  } else if (generations_.size() == 1) {
    note = "no previous generation is running";
  } else {
    note = "started outside an upgrade (after a crash): no state is moved";
  }
  send_to(g, wire::BeginImport{0, {}, note});
}

void Supervisor::start_transfer() {
  Generation* fresh = find(upgrade_->generation);
  if (fresh == nullptr || !fresh->hello) return;
  // The readiness checks stop while the state moves (WaitReady starts them over); --state-timeout
  // bounds the transfer, including any wait in begin_transfer().
  cancel_readiness(*fresh);
  upgrade_->phase_timer.start(options_.state_timeout, [this] {
    feed(Input::Timeout, fmt::format("the state transfer did not finish within {} (--state-timeout)",
                                     format_duration(options_.state_timeout)));
  });
  begin_transfer();
}

void Supervisor::begin_transfer() {
  Generation* fresh = find(upgrade_->generation);
  if (fresh == nullptr) return;
  Generation* source = find(upgrade_->previous);
  // A generation still draining into the source streams changes to it that the source would not
  // pass on after its snapshot. The transfer waits until that generation has exited (its drain
  // is bounded by --drain-timeout), so that none of the changes it acknowledged is lost.
  for (const auto& [n, g] : generations_) {
    if (source != nullptr && source->hello && n != source->number && n != fresh->number && g->hello &&
        g->state == GenState::Draining && n < source->number) {
      if (upgrade_->waiting_for != n) {
        upgrade_->waiting_for = n;
        publish_phase(
            fmt::format("waiting for generation {} to finish draining, so that the changes it still "
                        "streams to generation {} reach generation {} too",
                        n, source->number, fresh->number));
      }
      return;
    }
  }
  upgrade_->waiting_for = 0;
  Transfer t;
  t.to = fresh->number;
  t.started = Clock::now();
  t.plan = fresh->hello->imports;

  Generation* old = source;
  if (old == nullptr) {
    t.note = "no previous generation is running";
  } else if (!old->hello || !old->channel) {
    t.note = fmt::format("generation {} does not use the SDK", old->number);
  } else if (old->state != GenState::Ready) {
    t.note = fmt::format("generation {} is not serving", old->number);
  } else {
    auto link = wire::seqpacket_pair();
    if (!link) {
      t.note = link.error().context("peer link").text();
    } else {
      const int old_end = link->second.get();
      if (send_to(*old, wire::BeginExport{fresh->number, t.plan}, std::span<const int>(&old_end, 1))) {
        t.from = old->number;
      } else {
        t.note = fmt::format("generation {} did not take the export request", old->number);
      }
    }
    if (t.from != 0) {
      const int new_end = link->first.get();
      if (!send_to(*fresh, wire::BeginImport{t.from, t.plan, {}}, std::span<const int>(&new_end, 1))) {
        transfer_ = std::move(t);
        feed(Input::TransferFailed, fmt::format("generation {} did not take the import request", fresh->number));
        return;
      }
      // Both ends are in the workers now; the supervisor keeps none, so that the link ends when
      // either generation does.
    }
  }
  if (t.from == 0) {
    if (!send_to(*fresh, wire::BeginImport{0, {}, t.note})) {
      transfer_ = std::move(t);
      feed(Input::TransferFailed, fmt::format("generation {} did not take the import request", fresh->number));
      return;
    }
  }
  std::string names;
  for (const auto& p : t.plan)
    names += (names.empty() ? "" : ", ") + p.name;
  if (t.plan.empty()) {
    publish_phase(fmt::format("generation {} imports no state", fresh->number));
  } else if (t.from != 0) {
    publish_phase(fmt::format("moving {} section(s) from generation {} to generation {}: {}", t.plan.size(), t.from,
                              fresh->number, names));
  } else {
    publish_phase(fmt::format("{}: section(s) {} start cold", t.note, names));
  }
  transfer_ = std::move(t);
}

void Supervisor::on_import_finished(Generation& g, const wire::TransferTotals& totals) {
  g.import_finished = true;
  if (!transfer_ || transfer_->to != g.number || transfer_->import_totals) return;
  transfer_->import_totals = totals;
  if (!upgrade_ || upgrade_->generation != g.number || upgrade_->machine.phase() != Phase::TransferringState) return;
  upgrade_->phase_timer.stop();
  for (const auto& name : options_.state_required) {
    const auto& reports = transfer_->imported;
    auto it = std::find_if(reports.begin(), reports.end(), [&](const auto& r) { return r.name == name; });
    std::string why;
    if (it != reports.end() && it->ok) continue;
    if (it != reports.end()) {
      why = it->reason;
    } else if (std::none_of(transfer_->plan.begin(), transfer_->plan.end(),
                            [&](const auto& p) { return p.name == name; })) {
      why = fmt::format("generation {} does not import it", g.number);
    } else {
      why = transfer_->note.empty() ? "it was not sent" : transfer_->note;
    }
    transfer_->outcome = fmt::format("required section '{}' was not imported: {}", name, why);
    feed(Input::TransferFailed, transfer_->outcome + " (--state-required)");
    return;
  }
  transfer_->outcome = "done";
  const double secs = static_cast<double>(totals.micros) / 1e6;
  publish_phase(fmt::format("state transfer finished: {} of {} section(s) imported, {} bytes in {:.3f} s", totals.done,
                            transfer_->plan.size(), totals.bytes, secs));
  feed(Input::TransferDone);
}

void Supervisor::publish_state(const wire::SectionReport& report) {
  if (!upgrade_ || !transfer_) return;
  std::uint64_t bytes = 0;
  std::size_t ok = 0;
  for (const auto& r : transfer_->imported) {
    bytes += r.ok ? r.bytes : 0;
    ok += r.ok ? 1 : 0;
  }
  const auto& m = upgrade_->machine;
  json event{{"v", kControlProtocolVersion},
             {"type", "state"},
             {"phase", phase_name(m.phase())},
             {"elapsed_ms", ms_since(m.started())},
             {"generation", transfer_->to},
             {"from_generation", transfer_->from},
             {"section", report.name},
             {"ok", report.ok},
             {"version", report.version},
             {"bytes", report.bytes},
             {"micros", report.micros},
             {"reason", report.reason},
             {"sections_done", transfer_->imported.size()},
             {"sections_imported", ok},
             {"sections_total", transfer_->plan.size()},
             {"bytes_done", bytes},
             {"transfer_ms", ms_since(transfer_->started)}};
  log_info("upgrade: section {} {}", report.name,
           report.ok
               ? fmt::format("imported: schema {}, {} bytes in {} us", report.version, report.bytes, report.micros)
               : "starts cold: " + report.reason);
  for (ClientId id : upgrade_->watchers)
    control_->send(id, event, AfterSend::KeepOpen);
}

json Supervisor::Transfer::to_json() const {
  auto reports = [](const std::vector<wire::SectionReport>& list) {
    json out = json::array();
    for (const auto& r : list) {
      out.push_back({{"section", r.name},
                     {"ok", r.ok},
                     {"version", r.version},
                     {"bytes", r.bytes},
                     {"micros", r.micros},
                     {"reason", r.reason}});
    }
    return out;
  };
  auto totals = [](const std::optional<wire::TransferTotals>& t) -> json {
    if (!t) return nullptr;
    return {{"sections", t->sections}, {"done", t->done}, {"bytes", t->bytes}, {"micros", t->micros}};
  };
  return {{"from_generation", from},
          {"to_generation", to},
          {"note", note},
          {"outcome", outcome},
          {"imported", reports(imported)},
          {"exported", reports(exported)},
          {"import", totals(import_totals)},
          {"export", totals(export_totals)}};
}

void Supervisor::on_request(ClientId client, const ControlRequest& request) {
  switch (request.command) {
    case ControlRequest::Command::ShowStatus:
      control_->send(client, status_json(), AfterSend::Close);
      return;
    case ControlRequest::Command::Stop:
      control_->send(client, json{{"v", kControlProtocolVersion}, {"type", "stopping"}, {"pid", ::getpid()}},
                     AfterSend::KeepOpen);
      stop_waiters_.push_back(client);
      begin_stop(false);
      return;
    case ControlRequest::Command::Upgrade: {
      if (stopping_) {
        control_->send(client, control_error("stopping", "the supervisor is stopping; no upgrade can start"),
                       AfterSend::Close);
        return;
      }
      if (upgrade_) {
        control_->send(
            client,
            control_error("busy", fmt::format("upgrade in progress: generation {} is in phase {} since {} ms; "
                                              "try again when it has finished",
                                              upgrade_->generation, phase_name(upgrade_->machine.phase()),
                                              ms_since(upgrade_->machine.started()))),
            AfterSend::Close);
        return;
      }
      std::vector<std::string> command = current_command_;
      if (request.exec) command.front() = *request.exec;
      if (request.argv) command = *request.argv;
      begin_upgrade(std::move(command), client, "control");
      return;
    }
  }
}

void Supervisor::on_client_gone(ClientId client) {
  if (upgrade_) std::erase(upgrade_->watchers, client);
  std::erase(stop_waiters_, client);
}

void Supervisor::on_signal(int signo) {
  switch (signo) {
    case SIGTERM:
    case SIGINT:
      log_info("{}: graceful stop", signal_name(signo));
      begin_stop(false);
      break;
    case SIGQUIT:
      log_info("SIGQUIT: stopping now");
      begin_stop(true);
      break;
    case SIGUSR2:
      if (stopping_) break;
      if (upgrade_) {
        log_warn("SIGUSR2 ignored: an upgrade is already in progress");
        break;
      }
      begin_upgrade(current_command_, std::nullopt, "SIGUSR2");
      break;
    case SIGHUP:
      log_warn("SIGHUP ignored: configuration reload is not available; use SIGUSR2 or `hotrestart upgrade`");
      break;
    default:
      break;
  }
}

void Supervisor::begin_stop(bool now) {
  if (stopping_ && !now) {
    log_info("already stopping; send SIGQUIT to stop at once");
    return;
  }
  stopping_ = true;
  notify_systemd("STOPPING=1");
  restart_timer_->stop();
  if (upgrade_) feed(Input::Cancel, "the supervisor is stopping");
  for (auto& [n, g] : generations_) {
    if (now) {
      kill_group(g->pid, SIGKILL);
    } else {
      stop_generation(*g, options_.drain_signal, "supervisor stopping");
    }
  }
  maybe_finish_stop();
}

void Supervisor::maybe_finish_stop() {
  if (!stopping_ || !generations_.empty() || upgrade_) return;
  log_info("stopped: every generation has exited");
  uv_stop(&loop_);
}

void Supervisor::note_error(std::string message) {
  log_error("{}", message);
  last_error_ = std::move(message);
  last_error_at_ = Clock::now();
}

void Supervisor::notify_systemd(const std::string& message) const {
  if (systemd_notify_socket_.empty()) return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (systemd_notify_socket_.size() >= sizeof addr.sun_path) return;
  std::memcpy(addr.sun_path, systemd_notify_socket_.data(), systemd_notify_socket_.size());
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + systemd_notify_socket_.size());
  if (addr.sun_path[0] == '@')
    addr.sun_path[0] = '\0';  // Abstract namespace.
  else
    ++len;
  Fd fd(::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  if (!fd) return;
  if (::sendto(fd.get(), message.data(), message.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len) < 0) {
    log_warn("could not notify systemd: {}", std::strerror(errno));
  }
}

json Supervisor::status_json() const {
  json listeners = json::array();
  for (const auto& l : listeners_.listeners()) {
    listeners.push_back({{"name", l.spec.name}, {"spec", l.spec.text}, {"address", l.address}, {"adopted", l.adopted}});
  }
  json generations = json::array();
  for (const auto& [n, g] : generations_) {
    const char* state = g->state == GenState::Starting ? "starting"
                        : g->state == GenState::Ready  ? "ready"
                                                       : "draining";
    std::string role = n == active_ ? "active" : (upgrade_ && upgrade_->generation == n) ? "candidate" : "old";
    generations.push_back({{"generation", n},
                           {"pid", g->pid},
                           {"state", state},
                           {"role", role},
                           {"age_ms", ms_since(g->started)},
                           {"command", g->command},
                           {"sdk", g->hello.has_value()},
                           {"status", g->status_text}});
  }
  json upgrade = nullptr;
  if (upgrade_) {
    upgrade = {{"generation", upgrade_->generation},
               {"phase", phase_name(upgrade_->machine.phase())},
               {"elapsed_ms", ms_since(upgrade_->machine.started())}};
  }
  json last_error = nullptr;
  if (!last_error_.empty()) last_error = {{"message", last_error_}, {"age_ms", ms_since(last_error_at_)}};
  return json{
      {"v", kControlProtocolVersion},
      {"type", "status"},
      {"name", options_.name},
      {"pid", ::getpid()},
      {"uptime_ms", ms_since(started_at_)},
      {"stopping", stopping_},
      {"control", options_.control_path},
      {"listeners", listeners},
      {"active_generation", active_},
      {"generations", generations},
      {"command", current_command_},
      {"ready", {{"mode", options_.ready.describe()}, {"timeout_ms", options_.ready_timeout.count()}}},
      {"drain", {{"signal", signal_name(options_.drain_signal)}, {"timeout_ms", options_.drain_timeout.count()}}},
      {"adopt_binds", !adopt_library_.empty()},
      {"upgrade", upgrade},
      {"last_upgrade", last_upgrade_.is_null() ? json(nullptr) : last_upgrade_},
      {"last_transfer", transfer_ ? transfer_->to_json() : json(nullptr)},
      {"state", {{"required", options_.state_required}, {"timeout_ms", options_.state_timeout.count()}}},
      {"counters",
       {{"upgrades_done", counters_.upgrades_done},
        {"upgrades_rolled_back", counters_.upgrades_rolled_back},
        {"crashes", counters_.crashes},
        {"restarts", counters_.restarts}}},
      {"last_error", last_error}};
}

}  // namespace hotrestart
