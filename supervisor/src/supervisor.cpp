// The coordinator: what each event means for the generations, the upgrade, a crash restart or a stop
// (see supervisor.h).
#include "supervisor.h"

#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdlib>

#include <fmt/format.h>

#include <hotrestart/base/sd_notify.h>
#include <hotrestart/base/text.h>

#include "adopt.h"
#include "fault.h"
#include "log.h"
#include "output_lines.h"
#include "self_upgrade.h"
#include "signals.h"
#include "takeover.h"

namespace hotrestart {
namespace {

using nlohmann::json;

// How long a candidate whose channel closed may stay alive before that counts as a failure (one
// that rolls back in the handshake or the state transfer; later, the worker no longer needs it).
constexpr Millis kChannelGrace{1000};
// How often the supervisor looks for processes that outlived their generation.
constexpr Millis kSweepInterval{2000};
// The most of a rollback's reason that STATUS= carries.
constexpr std::size_t kStatusReasonMax = 200;
// How often at most the running record (running.json) is written.
constexpr Millis kRecordEvery{100};

// Why an upgrade cannot begin while `run --preflight` still checks the first release: there is no
// generation yet to upgrade from.
constexpr const char* kFirstPreflightBusy =
    "the first release's preflight check is still running; try again once its generation has started";

// The socket beside the control socket `control_path` ("NAME.sock") named NAME.`suffix`: the notify
// socket ("notify"), where the guard waits for a takeover ("guard"), where SDK workers connect again
// after their supervisor died ("workers").
std::string beside_control(const std::string& control_path, std::string_view suffix) {
  std::string base = control_path;
  if (base.ends_with(".sock")) base.resize(base.size() - 5);
  return base + "." + std::string(suffix);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// The service manager

void ServiceManager::take_from_environment() {
  if (const char* ns = std::getenv("NOTIFY_SOCKET"); ns != nullptr) {
    socket_ = ns;
    ::unsetenv("NOTIFY_SOCKET");
  }
  const char* usec = std::getenv("WATCHDOG_USEC");
  const char* pid = std::getenv("WATCHDOG_PID");
  // WATCHDOG_PID, when set, names the process the watchdog is for: a variable inherited by a
  // child of the service's main process is not meant for it.
  const bool ours = pid == nullptr || std::strtoll(pid, nullptr, 10) == ::getpid();
  if (usec != nullptr && ours) {
    char* end = nullptr;
    const long long value = std::strtoll(usec, &end, 10);
    if (end != usec && *end == '\0' && value > 0) watchdog_ = std::chrono::microseconds(value);
  }
  ::unsetenv("WATCHDOG_USEC");
  ::unsetenv("WATCHDOG_PID");
  if (const char* max = std::getenv("FDSTORE"); max != nullptr) {
    char* end = nullptr;
    const unsigned long long value = std::strtoull(max, &end, 10);
    if (end != max && *end == '\0') fdstore_max_ = static_cast<unsigned long>(value);
    ::unsetenv("FDSTORE");
  }
}

std::vector<std::string> ServiceManager::environment() const {
  std::vector<std::string> env;
  if (!socket_.empty()) env.push_back("NOTIFY_SOCKET=" + socket_);
  // The new image has this pid too.
  if (watchdog_.count() > 0) env.push_back(fmt::format("WATCHDOG_USEC={}", watchdog_.count()));
  if (fdstore_max_ > 0) env.push_back(fmt::format("FDSTORE={}", fdstore_max_));
  return env;
}

bool ServiceManager::store_listeners(const ListenerSet& listeners, const std::vector<std::string>& stale,
                                     bool asked) const {
  if (socket_.empty()) {
    if (asked) log_info("--fdstore: not under systemd (no NOTIFY_SOCKET); the listening sockets are not stored");
    return false;
  }
  // Removals first: systemd handles the datagrams in order, so a name removed and stored again
  // (a socket that replaces a stale one) ends up stored.
  for (const auto& name : stale)
    notify("FDSTOREREMOVE=1\nFDNAME=" + name);
  std::string stored;
  bool all = true;
  for (const auto& l : listeners.listeners()) {
    const int fd = l.fd.get();
    // One datagram per name: FDNAME= names every descriptor of its datagram. systemd keeps one
    // copy of a socket it already holds, so storing again after a restart adds nothing.
    if (auto ok = sd_notify_with_fds(socket_, "FDSTORE=1\nFDNAME=" + l.spec.name, std::span<const int>(&fd, 1)); !ok) {
      log_warn("could not store listener {} in systemd's fd store: {}", l.spec.name, ok.error().text());
      all = false;
      continue;
    }
    stored += (stored.empty() ? "" : ", ") + l.spec.name;
  }
  if (!stored.empty()) {
    log_info("listeners kept in systemd's fd store: {} (FileDescriptorStoreMax= must allow them)", stored);
  }
  return all;
}

void ServiceManager::notify(const std::string& message) const {
  if (socket_.empty()) return;
  if (auto ok = sd_notify_to(socket_, message); !ok) log_warn("could not notify systemd: {}", ok.error().text());
}

void ServiceManager::ready_once(const std::string& message) {
  if (told_ready_) return;
  told_ready_ = true;
  notify(message);
}

// ---------------------------------------------------------------------------------------------
// Life cycle

Supervisor::Supervisor(RunOptions options) : options_(std::move(options)) {
  // One malloc arena: the loop allocates, and the few thread-pool jobs (hashing an executable,
  // rendering the release history) are seldom; an arena per pool thread would only add to the RSS.
  ::mallopt(M_ARENA_MAX, 1);
  uv_loop_init(&loop_);
}

Supervisor::~Supervisor() {
  after_events_.reset();
  reading_image_.reset();
  rejoin_watch_.reset();
  if (rejoin_listener_) ::unlink(beside_control(options_.control_path, "workers").c_str());
  // Generations first: they use the reaper, the launcher and the loop.
  generations_.clear();
  guard_.reset();
  record_timer_.reset();  // Its write needs the guard; what it would write is gone too.
  upgrade_.reset();
  first_preflight_.reset();
  control_.reset();
  metrics_server_.reset();
  notify_.reset();
  signals_.clear();
  reaper_.reset();
  restart_timer_.reset();
  sweep_timer_.reset();
  watchdog_timer_.reset();
  watch_.reset();
  config_watch_.reset();
  configs_.reset();
  // Let every close callback run, so that the loop can be closed with nothing in it.
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

int Supervisor::run() {
  if (auto ok = start(); !ok) {
    start_error_ = ok.error().text();
    log_error("{}", start_error_);
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
  // Listeners and live generations cost descriptors; the workers get the usual limit back.
  log_debug("open-file limit: {}", static_cast<unsigned long long>(raise_fd_limit()));
  systemd_.take_from_environment();

  std::string adopt_library;
  if (options_.adopt_binds) {
    auto library = find_adopt_library();
    if (!library) return library.error();
    adopt_library = std::move(library).value();
  }
  if (auto ok = open_control_socket(); !ok) return ok.error();
  if (options_.state_dir.empty()) options_.state_dir = default_state_dir(options_.name);
  releases_ = std::make_unique<ReleaseStore>(&loop_, options_.state_dir);
  if (auto ok = releases_->open(); !ok) return ok.error();
  events_ = std::make_unique<EventLog>(options_.state_dir, options_.event_log_bytes);

  started_ms_ = wall_clock_ms();
  own_executable_ = own_executable();
  if (options_.self_upgrade_from >= 0) {
    if (auto ok = fail_if_asked("self-upgrade-start"); !ok) return ok.error();
  }
  if (!options_.self_upgrade_failed.empty()) {
    last_error_.note(fmt::format("upgrade --self: {}; the previous binary serves again", options_.self_upgrade_failed));
    log_warn("upgrade --self: {}; this is the previous binary again, taking over", options_.self_upgrade_failed);
  }
  // A supervisor of this name that died may have left generations serving: they are taken over,
  // with the listening sockets they serve, rather than fail to bind the port they hold. After an
  // exec of `upgrade --self`, the guard is certainly there, if not yet listening: it is waited for.
  const bool after_exec = options_.self_upgrade_from >= 0 || !options_.self_upgrade_failed.empty();
  auto asked = ask_guard(beside_control(options_.control_path, "guard"));
  for (int tries = 0; after_exec && asked && !*asked && tries < 150; ++tries) {
    ::usleep(20'000);
    asked = ask_guard(beside_control(options_.control_path, "guard"));
  }
  if (!asked) return asked.error();
  std::optional<Inheritance> inheritance = std::move(asked).value();
  ListenerSet::Activation activation;
  if (!inheritance) {
    // No guard answers (it died too): the record names what may still serve.
    auto taken = take_from_generations(options_.state_dir);
    if (!taken) return taken.error();
    inheritance = std::move(taken).value();
  }
  if (inheritance) {
    auto inherited =
        ListenerSet::inherit(options_.listen, inheritance->listener_names, std::move(inheritance->listeners));
    if (!inherited)
      return inherited.error().context(fmt::format("cannot take over from supervisor pid {}", inheritance->supervisor));
    listeners_ = std::move(inherited).value();
  } else {
    auto listeners = ListenerSet::adopt_or_bind(options_.listen, &activation);
    if (!listeners) return with_port_holders(listeners.error());
    listeners_ = std::move(listeners).value();
  }
  if (listeners_.empty()) return Error::message("no listeners: give at least one --listen");
  if (auto ok = start_metrics(); !ok) return ok.error();
  // Before any worker starts: a supervisor that dies from here on leaves the sockets in the store
  // for the one systemd starts next.
  if ((options_.fdstore || systemd_.fdstore_offered()) &&
      systemd_.store_listeners(listeners_, activation.discarded, options_.fdstore))
    listeners_.keep_unix_files();
  record_event({{"type", "supervisor.started"},
                {"supervisor_pid", ::getpid()},
                {"took_over", inheritance.has_value()},
                {"self_upgraded", after_exec}});
  configs_ = std::make_unique<ConfigReloads>(&loop_, options_.state_dir, options_.configs, options_.reload_timeout,
                                             ConfigReloads::ForServers{options_.config_check, options_.reload_signal},
                                             static_cast<ConfigReloads::Host&>(*this));
  if (auto ok = configs_->open(inheritance.has_value()); !ok) return ok.error();
  if (options_.watch_configs) {
    config_watch_ = std::make_unique<ConfigWatch>(&loop_, [this](const std::string& name) {
      if (!stopping_) configs_->saved(name);
    });
    for (const ConfigSpec& spec : options_.configs)
      if (auto ok = config_watch_->add(spec.name, spec.path); !ok) return ok.error();
  }

  notify_ = std::make_unique<NotifySocket>(
      &loop_,
      [this](pid_t pid) -> std::uint64_t {
        for (const auto& [n, g] : generations_) {
          if (g->pid() == pid) return n;
        }
        return 0;
      },
      [this](std::uint64_t generation, pid_t sender, const NotifyMessage& message) {
        Generation* g = find(generation);
        if (g == nullptr) return;
        g->apply_notify(message, sender);
        if (!message.metrics.empty()) on_worker_metrics(*g, message.metrics);
      });
  if (auto ok = notify_->bind(beside_control(options_.control_path, "notify")); !ok) return ok.error();

  reaper_ = std::make_unique<Reaper>(&loop_);
  // Which generation a pid is the main process of. An exited generation's pid may be reaped, and
  // then be another process's: it names nothing.
  auto main_of = [this](pid_t pid) -> std::optional<std::uint64_t> {
    for (const auto& [n, g] : generations_)
      if (g->pid() == pid && g->state() != GenerationState::Exited) return n;
    return std::nullopt;
  };
  auto generation_of_pipe = [this](std::uint64_t inode) -> std::optional<std::uint64_t> {
    for (const auto& [n, g] : generations_)
      if (inode != 0 && g->output_inode() == inode) return n;
    return std::nullopt;
  };
  auto mains = [this] {
    std::vector<pid_t> pids;
    for (const auto& [n, g] : generations_)
      if (g->state() != GenerationState::Exited) pids.push_back(g->pid());
    return pids;
  };
  roster_ = std::make_unique<ProcessRoster>(ProcessRoster::Hooks{
      ::getpid(), main_of, [this](pid_t pid) { return reaper_->watching(pid); }, generation_of_pipe, mains});
  sweep_timer_ = std::make_unique<Timer>(&loop_);
  record_timer_ = std::make_unique<Timer>(&loop_);
  sweep_timer_->start_repeating(kSweepInterval, [this] {
    sweep_processes(false);
    // A change that reached the guard's table by no path that marks it (none is known) would wait
    // for the next one: this bounds how long.
    guard_dirty_ = true;
  });
  if (systemd_.watchdog().count() > 0) {
    // Twice per interval, as sd_watchdog_enabled(3) advises: a loop that stops turning (stuck in
    // a call) stops the pings, and systemd acts as WatchdogSec= says.
    watchdog_timer_ = std::make_unique<Timer>(&loop_);
    const auto every = std::max(Millis(1), std::chrono::duration_cast<Millis>(systemd_.watchdog() / 2));
    systemd_.notify("WATCHDOG=1");
    watchdog_timer_->start_repeating(every, [this] { systemd_.notify("WATCHDOG=1"); });
  }
  restart_timer_ = std::make_unique<Timer>(&loop_);
  for (int signo : {SIGTERM, SIGINT, SIGQUIT, SIGUSR2, SIGHUP}) {
    signals_.push_back(std::make_unique<SignalWatch>(&loop_, signo, [this](int s) { on_signal(s); }));
  }
  for (const auto& l : listeners_.listeners()) {
    struct stat st {};
    const std::uint64_t inode = ::fstat(l.fd.get(), &st) == 0 ? st.st_ino : 0;
    listener_records_.push_back({l.spec.name, l.address, inode});
  }
  record_ = std::make_unique<BackgroundFile>(&loop_, options_.state_dir + "/" + kRunningRecord, [this](Status ok) {
    if (!ok && !record_failed_) log_warn("{}; a supervisor that takes over cannot count on it", ok.error().text());
    record_failed_ = !ok;
    if (!ok) recorded_.reset();  // Written again with the next sync, changed or not.
  });
  guard_ = std::make_unique<GuardLink>(&loop_, *reaper_, listeners_, options_.name,
                                       beside_control(options_.control_path, "guard"));
  guard_->on_started([this] { sync_guard(); });
  if (auto ok = guard_->start(); !ok) log_error("{}; the supervisor serves on without one", ok.error().text());
  after_events_ = std::make_unique<AfterEvents>(&loop_, [this] { after_events(); });
  reading_image_ = std::make_unique<PoolTask>(&loop_);
  launcher_ =
      std::make_unique<WorkerLauncher>(listeners_, notify_->path(), options_.control_path, std::move(adopt_library));
  if (options_.worker_env) launcher_->set_environment(*options_.worker_env);
  launcher_->set_workdir(options_.workdir);
  launcher_->set_watchdog(options_.watchdog);
  launcher_->set_http_drain(options_.http_drain);
  if (auto rejoin = listen_seqpacket(beside_control(options_.control_path, "workers"))) {
    rejoin_listener_ = std::move(rejoin).value();
    rejoin_watch_ = std::make_unique<FdWatch>(&loop_, rejoin_listener_.get(), [this] { on_rejoin(); });
    launcher_->set_rejoin_path(beside_control(options_.control_path, "workers"));
  } else {
    log_warn("rejoin socket: {}; SDK workers cannot connect again to a supervisor that takes over",
             rejoin.error().text());
  }
  watch_ = std::make_unique<ReleaseWatch>(&loop_, *control_);
  for (const auto& warning : shared_port_probe_warnings(options_))
    log_warn("{}", warning);
  context_ = std::make_unique<Generation::Context>(
      Generation::Context{&loop_, *reaper_, options_, listeners_, *launcher_, *roster_, [this] { sync_guard(); },
                          [this](const Generation& g, GenerationState to) { on_generation_entered(g, to); }});
  UpgradeDriver::Host& host = *this;  // (A private base: converted here, where it is accessible.)
  upgrade_ = std::make_unique<UpgradeDriver>(&loop_, options_, *control_, host);

  for (const auto& l : listeners_.listeners()) {
    log_info("listener {} on {}{}", l.spec.name, l.address,
             l.adopted     ? " (from socket activation)"
             : l.inherited ? " (taken over)"
                           : "");
  }
  if (inheritance) {
    if (auto ok = take_over(*inheritance); !ok) return ok.error();
    record_ready_ = true;  // From here on the record is this supervisor's.
    sync_guard();
    if (active_ != 0) return {};
    log_warn("no generation taken over serves; starting the command of this run");
  }
  record_ready_ = true;
  const std::uint64_t release = record_release({options_.command, ReleaseOrigin::Run, -1, -1, 0, nullptr, {}});
  current_.release = release;
  if (options_.preflight.empty()) return start_first_generation(release);
  // The first release is checked like any other before it is spawned; the loop runs meanwhile, so
  // that status answers (with no generation yet).
  auto check = start_preflight(release, options_.preflight, [this, release](PreflightOutcome outcome) {
    on_first_preflight(release, std::move(outcome));
  });
  if (!check) {
    end_release(release, ReleaseOutcome::Stopped, check.error().text());
    return check.error();
  }
  first_preflight_ = std::move(check).value();
  return {};
}

Status Supervisor::start_first_generation(std::uint64_t release) {
  auto first = spawn_generation(release);
  if (!first) {
    end_release(release, ReleaseOutcome::Stopped, first.error().text());
    return first.error();
  }
  active_ = first.value()->number();
  sync_guard();
  current_ = {release, first.value()->command(), first.value()->image()};
  last_proven_release_ = release;
  log_info("supervisor pid {} started generation {} (pid {}); control socket {}", ::getpid(), active_,
           first.value()->pid(), options_.control_path);
  return {};
}

void Supervisor::on_first_preflight(std::uint64_t release, PreflightOutcome outcome) {
  const pid_t pid = first_preflight_->pid();
  first_preflight_.reset();  // Its last act was to call this.
  if (outcome.passed) {
    log_info("preflight (pid {}) passed in {}", pid, format_duration(outcome.took));
    auto started = start_first_generation(release);
    if (started) return;
    log_error("{}", started.error().text());
  } else {
    end_release(release, ReleaseOutcome::Stopped, outcome.reason);
    log_error("{}; nothing was started", outcome.reason);
  }
  exit_code_ = kRunExitFailed;
  stopping_ = true;
  uv_stop(&loop_);
}

Status Supervisor::open_control_socket() {
  if (options_.control_path.empty()) options_.control_path = default_control_path(options_.name);
  if (auto ok = prepare_runtime_dir(options_.control_path); !ok) return ok.error().context("control socket");
  control_ = std::make_unique<ControlServer>(
      &loop_, [this](ClientId id, const ControlRequest& r) { on_request(id, r); },
      [this](ClientId id) {
        if (events_) events_->unfollow(id);
        if (upgrade_) upgrade_->forget_watcher(id);
        if (watch_) watch_->forget_waiter(id);
        std::erase(stop_waiters_, id);
      });
  return control_->listen(options_.control_path);
}

Generation* Supervisor::find(std::uint64_t number) {
  auto it = generations_.find(number);
  return it == generations_.end() ? nullptr : it->second.get();
}

// ---------------------------------------------------------------------------------------------
// Generations

Result<Generation*> Supervisor::start_generation(Generation::Plan plan) {
  const std::uint64_t number = next_generation_;
  const std::uint64_t release = plan.release;
  auto g = Generation::start(*context_, *this, number, std::move(plan));
  if (!g) return g.error();
  ++next_generation_;
  Generation* raw = g.value().get();
  generations_.emplace(number, std::move(g).value());
  sync_guard();  // Before anything else happens to it, the guard knows it (as a candidate).
  record_event({{"type", "generation.started"},
                {"generation", number},
                {"release", release},
                {"pid", raw->pid()},
                {"command", raw->command()}});
  if (Release* r = releases_->history().find(release)) {
    r->generation = number;
    releases_->save();
  }
  return raw;
}

Result<Generation*> Supervisor::spawn_generation(std::uint64_t release) {
  auto plan = plan_for(release);
  if (!plan) return plan.error();
  return start_generation(std::move(plan).value());
}

Result<std::unique_ptr<PreflightCheck>> Supervisor::start_preflight(std::uint64_t release, const std::string& check,
                                                                    PreflightCheck::Done done) {
  // The executable is found and opened (and kept for the spawn) first, so that the check is told
  // the file that will run.
  auto plan = plan_for(release);
  if (!plan) return plan.error();
  return PreflightCheck::start({&loop_, *reaper_, options_.preflight_timeout}, check,
                               launcher_->preflight_environment(plan->command, plan->image->path(), release),
                               std::move(done), launcher_->workdir());
}

std::vector<GenerationFacts> Supervisor::generation_facts() const {
  std::vector<GenerationFacts> facts;
  for (const auto& [n, g] : generations_)
    facts.push_back(facts_of(*g));
  return facts;
}

void Supervisor::on_ready(Generation& g) {
  if (g.number() == resuming_) {
    finish_resume(g);
    return;
  }
  if (upgrade_->is_candidate(g)) {
    upgrade_->feed(Input::Ready);
    return;
  }
  if (g.number() == active_) {
    // The first generation of `run` (or a crash restart's, of a release that never served yet).
    if (const Release* r = releases_->history().find(g.release());
        r != nullptr && r->outcome == ReleaseOutcome::Starting) {
      releases_->history().set_outcome(g.release(), ReleaseOutcome::Serving, {}, wall_clock_ms());
      releases_->save();
    }
    systemd_.ready_once(fmt::format("READY=1\nSTATUS=generation {} serving\nMAINPID={}", g.number(), ::getpid()));
  }
}

void Supervisor::on_ready_timeout(Generation& g, const std::string& reason) {
  if (g.number() == resuming_) {
    resume_failed(&g, reason);
    return;
  }
  if (upgrade_->is_candidate(g)) {
    upgrade_->feed(Input::Timeout, reason);
    return;
  }
  last_error_.note(with_last_output(reason + "; stopping it", g.output().tail().lines()));
  g.stop("not ready in time", Ending::Stop);
}

void Supervisor::on_exit(Generation& g, GenerationState was, ExitStatus status) {
  const std::uint64_t number = g.number();
  configs_->on_gone(number);
  const pid_t pid = g.pid();
  const auto served_for = g.served_for();
  const auto last_output = g.output().tail().lines();
  record_event({{"type", "generation.exited"},
                {"generation", number},
                {"release", g.release()},
                {"pid", pid},
                {"was", generation_state_name(was)},
                {"status", status.describe()},
                {"forced", g.killed_at_deadline()},
                {"active", number == active_}});
  generations_.erase(number);  // `g` is gone from here on.
  guard_dirty_ = true;
  draining_killed_.erase(number);
  if (upgrade_->on_generation_exit(number, pid, status, last_output)) {
    // The candidate: its exit is the upgrade's business.
  } else if (number == active_) {
    active_ = 0;
    guard_dirty_ = true;
    if (!stopping_) {
      ++counters_.crashes;
      std::string what =
          with_last_output(fmt::format("generation {} (pid {}) {}", number, pid, status.describe()), last_output);
      last_error_.note(what);
      crash_reason_ = what;
      if (watch_->covers(number)) {
        // In its watch window: the previous release comes back instead of this one again.
        const std::string noted = watch_->noted_failure();
        revert(noted.empty() ? what : noted);
      } else {
        schedule_restart(served_for);
      }
    }
  } else if (number == resuming_) {
    resume_failed(nullptr, with_last_output(fmt::format("generation {} (pid {}) {} while it was being resumed", number,
                                                        pid, status.describe()),
                                            last_output));
  } else if (was == GenerationState::Draining) {
    log_info("generation {} (pid {}) {} after draining", number, pid, status.describe());
  }
  maybe_finish_stop();
}

// ---------------------------------------------------------------------------------------------
// The worker channel (docs/protocol.md, "Worker channel")

void Supervisor::on_channel_message(Generation& g, wire::Message& message, std::vector<Fd>& fds) {
  const auto type = wire::type_name(wire::type_of(message));
  if (g.sdk() == SdkState::None && !std::holds_alternative<wire::Hello>(message)) {
    channel_failed(g, fmt::format("generation {} sent {} before its hello", g.number(), type));
    return;
  }
  if (!fds.empty()) {
    // No message from a worker carries descriptors; the decoder has already refused any that did.
    channel_failed(g, fmt::format("generation {} sent descriptors the supervisor does not take", g.number()));
    return;
  }
  std::visit(
      [&](auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, wire::Hello>) {
          on_hello(g, m);
        } else if constexpr (std::is_same_v<T, wire::Ready>) {
          // A resumed generation says it serves again with `ready`, whatever --ready says: its
          // readiness was checked when it started.
          if (g.resuming()) {
            g.mark_resumed();
          } else if (options_.ready.kind == ReadyMode::Kind::Notify) {
            g.mark_ready();
          }
        } else if constexpr (std::is_same_v<T, wire::StatusLine>) {
          g.set_status_text(printable(m.text.substr(0, 256)));
        } else if constexpr (std::is_same_v<T, wire::SectionImported>) {
          if (const auto* r = broker_.on_section_imported(g, m.report)) upgrade_->on_section_imported(*r);
        } else if constexpr (std::is_same_v<T, wire::ImportFinished>) {
          g.finish_import();
          if (broker_.on_import_finished(g, m.totals)) upgrade_->on_import_finished(g, m.totals);
        } else if constexpr (std::is_same_v<T, wire::SectionExported>) {
          if (const auto* r = broker_.on_section_exported(g, m.report)) {
            log_info("generation {} exported section {}: {}", g.number(), r->name,
                     r->ok ? fmt::format("{} bytes, schema {}, in {} us", r->bytes, r->version, r->micros) : r->reason);
          }
        } else if constexpr (std::is_same_v<T, wire::ExportFinished>) {
          broker_.on_export_finished(g, m.totals);
        } else if constexpr (std::is_same_v<T, wire::ConfigPrepared>) {
          if (auto refused = configs_->on_prepared(g, m)) channel_failed(g, *refused);
        } else if constexpr (std::is_same_v<T, wire::ConfigCommitted>) {
          configs_->on_committed(g, m);
        } else {
          // Only the supervisor sends these: a worker that does is broken or hostile.
          channel_failed(g, fmt::format("generation {} sent {}, which only the supervisor sends", g.number(), type));
        }
      },
      message);
}

void Supervisor::on_hello(Generation& g, const wire::Hello& hello) {
  if (g.sdk() != SdkState::None) {
    channel_failed(g, fmt::format("generation {} said hello twice", g.number()));
    return;
  }
  if (hello.pid != g.pid()) {
    // The kernel said the main process sent it (WorkerChannel); a hello naming another pid is not
    // one the SDK sends.
    channel_failed(g, fmt::format("generation {} (pid {}) said hello as pid {}", g.number(), g.pid(), hello.pid));
    return;
  }
  if (hello.min_version > wire::kProtocolVersion || hello.max_version < wire::kProtocolVersion) {
    channel_failed(g, fmt::format("generation {} speaks worker channel protocol {} to {}, and this supervisor "
                                  "speaks version {}: upgrade the SDK or the supervisor so that they share one",
                                  g.number(), hello.min_version, hello.max_version, wire::kProtocolVersion));
    return;
  }
  g.accept_hello(hello);
  if (g.adopted()) {
    // Its supervisor died; it serves on and has its listeners: nothing to send but the welcome.
    g.finish_import();
    log_info("generation {} (pid {}) uses the SDK ({}) again: exports {} section(s)", g.number(), g.pid(),
             quote(hello.sdk), hello.exports.size());
    if (!g.channel().send(wire::Welcome{wire::kProtocolVersion, g.number(), 0}))
      channel_failed(g, fmt::format("generation {} does not read its channel", g.number()));
    else
      configs_->on_hello(g, hello, true);
    return;
  }
  log_info("generation {} (pid {}) uses the SDK ({}): imports {} section(s), exports {}", g.number(), g.pid(),
           quote(hello.sdk), hello.imports.size(), hello.exports.size());
  if (!g.send_listeners(wire::Welcome{wire::kProtocolVersion, g.number(), g.listener_count()})) {
    channel_failed(g, fmt::format("generation {} does not read its channel", g.number()));
    return;
  }
  // The configurations it starts with come before its plan, so that start() returns with them.
  configs_->on_hello(g, hello, false);
  if (upgrade_->is_candidate(g)) die_if_asked("fds-sent");
  if (upgrade_->take_hello(g)) return;
  // Every hello gets its begin-import, so that no worker waits in start() for one; the note says
  // truthfully why nothing comes.
  const std::string note = cold_start_note(facts_of(g), generations_.size(), options_.ready);
  if (g.state() != GenerationState::Starting) log_warn("{}", note);
  g.channel().send(wire::BeginImport{0, {}, note});
  // A first or crash-restarted generation is the active one from its start: told so at once, so
  // that no instant exists in which its supervisor could die with it still a candidate.
  if (g.number() == active_) g.tell_active(true);
}

void Supervisor::on_channel_closed(Generation& g) {
  if (!upgrade_->is_candidate(g) || g.sdk() == SdkState::None) return;
  // A worker that crashes closes its channel a moment before the reaper hears of its exit, and the
  // exit status is the better reason. Only a worker that stays alive without its channel is failed
  // for closing it.
  Generation* candidate = &g;  // The timer is the generation's: it never outlives it.
  g.channel_grace().start(kChannelGrace, [this, candidate] {
    channel_failed(*candidate, fmt::format("generation {} closed its channel", candidate->number()));
  });
}

void Supervisor::on_channel_broken(Generation& g, const std::string& why) {
  channel_failed(g, fmt::format("generation {} sent a bad channel message: {}", g.number(), why));
}

void Supervisor::on_unhealthy(Generation& g, HealthFailure kind, const std::string& reason) {
  const std::string what = fmt::format("generation {} (pid {}): {}", g.number(), g.pid(), reason);
  if (upgrade_->is_candidate(g)) {
    upgrade_->feed(Input::Unhealthy, what);
    return;
  }
  if (g.number() != active_) return;  // A draining generation is on its way out already.
  if (kind == HealthFailure::Watchdog) {
    // Hung, as far as anyone can tell: killed, as systemd does. Its exit then reverts (in its watch
    // window) or restarts it, as a crash would.
    if (watch_->covers(g.number())) watch_->note_failure(what);
    last_error_.note(what + "; killing it");
    g.kill_all();
    return;
  }
  if (watch_->covers(g.number())) {
    revert(what);
    return;
  }
  last_error_.note(what + "; `hotrestart status --check` fails until it passes again");
}

void Supervisor::channel_failed(Generation& g, const std::string& reason) {
  log_warn("{}; closing its channel", reason);
  g.channel().refuse_and_close(reason);
  configs_->on_gone(g.number());
  if (upgrade_->is_candidate(g)) upgrade_->on_candidate_channel_failed(reason);
}

// ---------------------------------------------------------------------------------------------
// Upgrades (the driver's host)

void Supervisor::promote(std::uint64_t generation) {
  Generation* g = find(generation);
  if (g == nullptr) return;
  const std::uint64_t previous = current_.release;
  replaced_release_ = previous;
  replaced_generation_ = active_;
  active_ = generation;
  // Both hear of it before the old generation is asked to drain: should the supervisor die in
  // between, the new generation serves on and the guard drains the old one, never both or neither.
  g->tell_active();
  sync_guard();
  current_ = {g->release(), g->command(), g->image()};
  // The new generation replaces whatever crash restart was pending.
  restart_timer_->stop();
  restart_backoff_.reset();
  ReleaseHistory& history = releases_->history();
  history.set_outcome(current_.release, ReleaseOutcome::Serving, {}, wall_clock_ms());
  if (previous != current_.release) {
    history.set_outcome(previous, ReleaseOutcome::Retired, fmt::format("replaced by release {}", current_.release),
                        wall_clock_ms());
  }
  releases_->trim_pins(current_.release);
  releases_->save();
}

void Supervisor::upgrade_started(std::uint64_t state_from) {
  // The release on watch is not the newest any more: whatever this upgrade brings is judged instead.
  watch_->end(ReleaseWatch::Ending::Superseded, "a newer upgrade began");
  // Nothing will resume a parked generation now; the one the state comes from stays until the
  // upgrade ends, so that it is there to export.
  unpark_all("an upgrade began", state_from);
  systemd_.notify(fmt::format("RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading", uv_hrtime() / 1000));
}

bool Supervisor::upgrade_finished(std::uint64_t release, bool ok, const std::string& failure) {
  const Release* r = releases_->history().find(release);
  const bool reverting = r != nullptr && r->origin == ReleaseOrigin::Revert;
  if (reverting) {
    reverting_ = false;
    // The generation a cold revert took the state from has given it: it may go.
    unpark_all("the revert that took its state ended");
    watch_->revert_done(ok ? fmt::format("release {} serves again", current_.release)
                           : fmt::format("bringing it back failed: {}", failure));
  }
  if (!ok) {
    ++counters_.upgrades_rolled_back;
    last_error_.note(fmt::format("upgrade rolled back: {}", failure));
    end_release(release, ReleaseOutcome::RolledBack, failure);
    if (reverting && active_ == 0 && !stopping_) {
      // The revert's generation failed, and nothing serves: the previous release is restarted as a
      // crashed one would be, from its own executable; never the release that was reverted.
      if (auto plan = plan_for(release); plan) {
        current_ = std::move(plan).value();
        schedule_restart(Clock::duration::zero());
      }
    }
    return false;
  }
  ++counters_.upgrades_done;
  limit_draining();
  // A release deployed after a revert is what serves now: the revert is no longer news.
  if (!reverting) revert_reason_.clear();
  // A revert is not watched: the release it would go back to is the one that just failed. It runs
  // the proven release again, and is proven as that one was.
  const std::uint64_t back_to = revert_target();
  if (reverting || back_to == 0 || back_to == release) {
    last_proven_release_ = release;
    return false;
  }
  // Back to the last release that served through its watch window (or had none), not to one whose
  // window a newer upgrade cut short.
  const ReleaseWatch::Watched watched{release, active_, back_to, replaced_generation_};
  const bool watching = watch_->start(watched, options_.watch_window, [this, release] {
    last_proven_release_ = release;
    unpark_all(fmt::format("release {} served through its watch window", release));
  });
  if (!watching) last_proven_release_ = release;
  return watching;
}

void Supervisor::limit_draining() {
  std::vector<Generation*> draining;  // Oldest first: the map is ordered by number.
  for (auto& [n, g] : generations_) {
    if (g->state() == GenerationState::Draining && n != resuming_ && draining_killed_.count(n) == 0) {
      draining.push_back(g.get());
    }
  }
  const auto limit = static_cast<std::size_t>(options_.max_draining);
  for (std::size_t i = 0; i + limit < draining.size(); ++i) {
    Generation& g = *draining[i];
    ++counters_.draining_stopped;
    log_warn(
        "generation {} (pid {}): killed before the end of its drain: {} generations are draining, more than "
        "--max-draining {}",
        g.number(), g.pid(), draining.size(), limit);
    draining_killed_.insert(g.number());
    g.kill_all();
  }
}

void Supervisor::upgrade_reported() {
  // `systemctl status` shows STATUS=: a rollback must be seen there too, with its reason, since a
  // SIGUSR2 upgrade has no client to hear it.
  const json& verdict = upgrade_->last_verdict();
  std::string status = fmt::format("generation {} serving", active_);
  if (!verdict.value("ok", true)) {
    std::string reason = verdict.value("reason", "");
    std::replace(reason.begin(), reason.end(), '\n', ' ');
    if (reason.size() > kStatusReasonMax) reason = reason.substr(0, kStatusReasonMax) + "...";
    status += fmt::format("; release {} rolled back: {}", verdict.value("release", std::uint64_t{0}), reason);
  }
  systemd_.notify(fmt::format("READY=1\nSTATUS={}", status));
}

// ---------------------------------------------------------------------------------------------
// Crash restarts

void Supervisor::schedule_restart(Clock::duration served_for) {
  const Millis delay = restart_backoff_.next(served_for);
  log_info("restarting the worker in {} (crash {}); listeners stay open, so clients wait in the backlog",
           format_duration(delay), counters_.crashes);
  restart_timer_->start(delay, [this] { restart_now(); });
}

void Supervisor::restart_now() {
  if (stopping_ || active_ != 0) return;
  if (const Release* r = releases_->history().find(current_.release);
      r != nullptr && r->outcome == ReleaseOutcome::Reverted) {
    return;  // Never again by itself: a revert brings the previous release back instead.
  }
  // The release that crashed, from the executable it ran (not whatever its path holds now).
  auto g = start_generation(current_);
  if (!g) {
    ++counters_.crashes;
    last_error_.note(g.error().text());
    schedule_restart(Clock::duration::zero());
    return;
  }
  ++counters_.restarts;
  active_ = g.value()->number();
  sync_guard();
  restarted_generation_ = active_;
  if (Release* r = releases_->history().find(current_.release)) {
    ++r->restarts;
    releases_->save();
  }
}

// ---------------------------------------------------------------------------------------------
// Requests and signals

void Supervisor::on_request(ClientId client, const ControlRequest& request) {
  // Who asked for a change is recorded; reading (status, history, events) is not.
  if (request.command != ControlRequest::Command::ShowStatus && request.command != ControlRequest::Command::History &&
      request.command != ControlRequest::Command::Events && request.command != ControlRequest::Command::ConfigHistory) {
    json asked{{"type", "request"}, {"command", control_command_name(request.command)}};
    if (request.peer_uid >= 0) asked["uid"] = request.peer_uid;
    if (request.peer_pid >= 0) asked["pid"] = request.peer_pid;
    record_event(std::move(asked));
  }
  metrics_.count_request(control_command_name(request.command));
  switch (request.command) {
    case ControlRequest::Command::Events:
      on_events_request(client, request);
      return;
    case ControlRequest::Command::ShowStatus:
      roster_->refresh();  // So that every process each generation has now is shown.
      control_->send(client, status_json(), AfterSend::Close);
      return;
    case ControlRequest::Command::Stop:
      control_->send(client, json{{"v", kControlProtocolVersion}, {"type", "stopping"}, {"pid", ::getpid()}},
                     AfterSend::KeepOpen);
      stop_waiters_.push_back(client);
      begin_stop(false);
      return;
    case ControlRequest::Command::History:
      control_->send(client, history_json(), AfterSend::Close);
      return;
    case ControlRequest::Command::SelfUpgrade:
      on_self_upgrade(client, request);
      return;
    case ControlRequest::Command::Reload:
    case ControlRequest::Command::ConfigRollback:
    case ControlRequest::Command::ConfigHistory:
      on_config_request(client, request);
      return;
    case ControlRequest::Command::Promote:
    case ControlRequest::Command::Abort: {
      const Input input = request.command == ControlRequest::Command::Promote ? Input::Promote : Input::Abort;
      if (auto why = upgrade_->end_hold(input, client, request.peer_uid, request.peer_pid)) {
        control_->send(client, control_error("unavailable", *why), AfterSend::Close);
      }
      return;
    }
    case ControlRequest::Command::Upgrade:
    case ControlRequest::Command::Rollback: {
      if (stopping_) {
        control_->send(client, control_error("stopping", "the supervisor is stopping; no upgrade can start"),
                       AfterSend::Close);
        return;
      }
      if (auto busy = upgrade_busy_reason(); !busy.empty()) {
        control_->send(client, control_error("busy", busy), AfterSend::Close);
        return;
      }
      if (request.command == ControlRequest::Command::Rollback) {
        on_rollback_request(client, request);
      } else {
        on_upgrade_request(client, request);
      }
      return;
    }
  }
}

std::string Supervisor::upgrade_busy_reason() const {
  if (upgrade_->in_progress()) return upgrade_->busy_reason();
  if (reading_image_->busy()) {
    return fmt::format("an upgrade is starting: its executable {} is being read; try again when it has finished",
                       reading_path_);
  }
  if (resuming_ != 0) {
    return fmt::format("generation {} is being resumed by a revert; try again once it serves (see `hotrestart status`)",
                       resuming_);
  }
  if (first_preflight_) return kFirstPreflightBusy;
  return {};
}

void Supervisor::on_signal(int signo) {
  record_event({{"type", "signal"}, {"signal", signal_name(signo)}});
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
    case SIGHUP: {
      // SIGHUP is nginx's reload. With --config it reloads the configurations; without, the
      // configuration is the server's own business, and it is a new generation of the current
      // release (workers that read their files again), as SIGUSR2 starts, recorded as a reload.
      if (signo == SIGHUP && !configs_->empty()) {
        if (!stopping_) reload_on_signal();
        break;
      }
      const std::string_view name = signo == SIGHUP ? "SIGHUP" : "SIGUSR2";
      if (stopping_) break;
      if (auto busy = upgrade_busy_reason(); !busy.empty()) {
        log_warn("{} ignored: {}", name, busy);
        break;
      }
      log_info("{}: {} with the same command line", name, signo == SIGHUP ? "reload, a new generation" : "upgrade");
      // Signal upgrades never hold: a signal carries no --hold, and no client follows it.
      UpgradeRequest upgrade{
          current_.command, signo == SIGHUP ? ReleaseOrigin::Reload : ReleaseOrigin::Signal, -1, -1, 0, nullptr, {}};
      // The executable on disk now, which may be a new one: that is what a signal upgrade is for.
      auto path = launcher_->resolve(upgrade.command);
      if (!path) {
        upgrade_->begin(std::move(upgrade), std::nullopt);  // Fails at spawn, with the usual verdict.
        break;
      }
      read_then_begin(
          path.value(), std::nullopt,
          [file = path.value()]() -> ImageResult { return ExecutableImage::open_shared(file); },
          [this, upgrade](ImageResult image) mutable {
            if (image) upgrade.image = std::move(image).value();
            upgrade_->begin(std::move(upgrade), std::nullopt);
          });
      break;
    }
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
  record_event({{"type", "supervisor.stopping"}, {"now", now}});
  systemd_.notify("STOPPING=1");
  watch_->end(ReleaseWatch::Ending::Stopped, "the supervisor is stopping");
  watch_->revert_done("the supervisor is stopping");
  restart_timer_->stop();
  first_preflight_.reset();  // Killed: its release never starts.
  // Handled before feed() returns (this is a loop callback, not an action of the driver): the
  // candidate is stopped as a rolled-back one (an importing SDK worker at once) before the loop
  // below would ask it to drain.
  upgrade_->feed(Input::Cancel, "the supervisor is stopping");
  resuming_ = 0;
  unpark_all("the supervisor is stopping");
  for (auto& [n, g] : generations_) {
    if (now) {
      g->kill_all();
    } else {
      g->stop("supervisor stopping");
    }
  }
  maybe_finish_stop();
}

void Supervisor::maybe_finish_stop() {
  if (!stopping_ || finishing_ || !generations_.empty() || upgrade_->in_progress()) return;
  finishing_ = true;
  end_release(current_.release, ReleaseOutcome::Stopped, "the supervisor stopped");
  sweep_processes(true);
  log_info("stopped: every generation has exited");
  record_event({{"type", "supervisor.stopped"}});
  guard_->release([this] { uv_stop(&loop_); });
}

void Supervisor::after_events() {
  if (Generation* g = find(active_)) g->tell_active();
  // Only when something changed: the table is as long as there are generations, and a loop turn
  // comes with every datagram, connection and output line.
  if (guard_dirty_) sync_guard();
}

void Supervisor::sync_guard() {
  guard_dirty_ = false;
  if (!guard_) return;
  std::vector<GuardLink::Entry> table;
  for (const auto& [n, g] : generations_) {
    // An exited generation's processes were killed with it: the guard has nothing left to do.
    if (g->state() == GenerationState::Exited) continue;
    GuardGeneration e;
    e.number = n;
    e.release = g->release();
    e.pid = g->pid();
    e.start = g->start_ticks();
    e.role = g->state() == GenerationState::Draining ? GuardRole::Draining
             : n == active_                          ? GuardRole::Active
                                                     : GuardRole::Candidate;
    if (const auto at = g->kill_deadline(); at && e.role == GuardRole::Draining)
      e.kill_at_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(at->time_since_epoch()).count();
    e.drain_signal = options_.drain_signal;
    e.drain_ms = options_.drain_timeout.count();
    table.push_back({e, g->output_fd()});
  }
  // What could not be sent is sent after the next loop turn.
  if (!guard_->sync(table)) guard_dirty_ = true;
  std::vector<GuardGeneration> facts;
  for (const auto& entry : table)
    facts.push_back(entry.generation);
  // Not before what is left behind was taken over: until then the old record is the one that counts.
  if (record_ && record_ready_ && recorded_ != facts) {
    // Which generations there are and who is active is what a takeover acts on: written at once.
    // Other changes (deadlines) are written at most once every kRecordEvery, together: with
    // hundreds of generations, a record per change would cost each upgrade a dump of them all
    // several times over.
    const auto roles = [](const std::vector<GuardGeneration>& generations) {
      std::vector<std::pair<std::uint64_t, GuardRole>> out;
      for (const auto& g : generations)
        out.emplace_back(g.number, g.role);
      return out;
    };
    // While stopping, generations only go, each of them soon: a takeover finds the ones gone
    // dead by their start times, and writing the whole record at each exit would cost a stop of
    // hundreds of generations the square of their number.
    const bool who_changed = !stopping_ && (!recorded_ || roles(*recorded_) != roles(facts));
    recorded_ = std::move(facts);
    if (who_changed) {
      record_timer_->stop();
      save_record();
    } else if (!record_timer_->active()) {
      const auto since = Clock::now() - record_saved_at_;
      if (since >= kRecordEvery) {
        save_record();
      } else {
        record_timer_->start(kRecordEvery - std::chrono::duration_cast<Millis>(since), [this] { save_record(); });
      }
    }
  }
}

void Supervisor::save_record() {
  if (!record_ || !recorded_ || !guard_) return;
  record_saved_at_ = Clock::now();
  static const std::uint64_t self_start = [] {
    const auto self = read_process(::getpid());
    return self ? self->start : 0;
  }();
  ProcessRecord guard;
  if (guard_->pid() > 0) {
    guard.pid = guard_->pid();
    if (const auto p = read_process(guard.pid)) guard.start = p->start;
  }
  record_->save(running_record({::getpid(), self_start}, guard, listener_records_, *recorded_).dump() + "\n");
}

json Supervisor::status_json() const {
  json generations = json::array();
  for (const auto& [n, g] : generations_) {
    const char* role = n == active_ ? "active" : upgrade_->is_candidate(*g) ? "candidate" : "old";
    json entry = generation_json(*g, role);
    // Its processes that left its process group (as of the last sweep; `status` sweeps first).
    json escaped = json::array();
    const auto members = roster_->members(n);
    for (const ProcessEntry& p : members)
      if (p.pgid != g->pid()) escaped.push_back({{"pid", p.pid}, {"pgid", p.pgid}});
    entry["processes"] = members.size() + (g->state() == GenerationState::Exited ? 0 : 1);
    entry["escaped"] = std::move(escaped);
    generations.push_back(std::move(entry));
  }
  json strays = json::array();
  for (const ProcessEntry& p : roster_->strays())
    strays.push_back(p.pid);
  const auto& verdict = upgrade_->last_verdict();
  const auto& transfer = broker_.transfer();
  json upgrade_status = upgrade_->status_json();
  if (upgrade_status.is_null() && reading_image_->busy()) {
    // Not begun yet: its executable is being read (read_then_begin).
    upgrade_status = {{"generation", 0},
                      {"release", 0},
                      {"phase", "reading-executable"},
                      {"executable", reading_path_},
                      {"elapsed_ms", ms_since(reading_since_)}};
  }
  return json{{"v", kControlProtocolVersion},
              {"type", "status"},
              {"name", options_.name},
              {"pid", ::getpid()},
              {"uptime_ms", ms_since(started_at_)},
              {"started_ms", started_ms_},
              {"executable", own_executable_},
              {"stopping", stopping_},
              {"control", options_.control_path},
              {"listeners", listeners_json(listeners_)},
              {"active_generation", active_},
              {"generations", generations},
              {"strays", strays},
              {"command", current_.command},
              {"release", current_.release},
              {"releases", releases_->status_json()},
              {"ready", ready_json(options_)},
              {"drain", drain_json(options_)},
              {"adopt_binds", launcher_->adopting()},
              {"http_drain", launcher_->http_drain()},
              {"upgrade", upgrade_status},
              {"health", health_json()},
              {"watch", watch_->status_json()},
              {"last_upgrade", verdict.is_null() ? json(nullptr) : verdict},
              {"last_transfer", transfer ? transfer->to_json() : json(nullptr)},
              {"state", state_json(options_)},
              {"counters", counters_.to_json()},
              {"metrics", metrics_json()},
              {"configs", configs_ && !configs_->empty() ? configs_->status_json() : json(nullptr)},
              {"last_error", last_error_.to_json()}};
}

}  // namespace hotrestart
