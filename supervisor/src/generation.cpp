// One generation of the worker from spawn to exit: its lifecycle table, readiness, reports and
// ending (see generation.h).
#include "generation.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <signal.h>

#include <algorithm>
#include <cstdlib>

#include <fmt/format.h>

#include <hotrestart/base/text.h>

#include "adopt.h"
#include "lifecycle.h"
#include "log.h"
#include "signals.h"

namespace hotrestart {
namespace {

// How old a reading of the process table may be when a generation signals its processes.
constexpr std::chrono::milliseconds kRosterFreshness{20};

// --adopt-binds: how often a draining generation's connections are counted.
constexpr Millis kAdoptPollInterval{100};
// A failed exec probe is tried again after this long, until the ready deadline.
constexpr Millis kProbeRetry{250};
// How long the supervisor waits, after a main process exited, for its stderr to reach end of file
// before it acts on the exit. The last lines are often still in the pipe when the exit is seen;
// a helper that escaped the process group's SIGKILL and holds the pipe open cannot delay a verdict
// or a crash restart for longer than this.
constexpr Millis kOutputGrace{200};

std::string elapsed_text(std::chrono::steady_clock::duration d) {
  return format_duration(std::chrono::duration_cast<Millis>(d));
}

// The whole table of a generation's lifecycle (generation.h draws it).
constexpr TransitionTable<GenerationState, kGenerationStateCount> kLifecycle = {
    {GenerationState::Starting, GenerationState::Ready},  {GenerationState::Starting, GenerationState::Draining},
    {GenerationState::Starting, GenerationState::Exited}, {GenerationState::Ready, GenerationState::Draining},
    {GenerationState::Ready, GenerationState::Exited},    {GenerationState::Draining, GenerationState::Exited},
    {GenerationState::Draining, GenerationState::Ready},
};
constexpr TransitionTable<SdkState, kSdkStateCount> kHandshake = {
    {SdkState::None, SdkState::Importing},
    {SdkState::Importing, SdkState::Serving},
};

// The names `status` shows.
constexpr std::string_view kStateNames[] = {"starting", "ready", "draining", "exited"};
static_assert(std::size(kStateNames) == kGenerationStateCount && named_apart(kStateNames),
              "every generation state needs a name of its own");

// The ports of the TCP listeners ("127.0.0.1:41234", "[::1]:80"); unix: listeners have none, and
// their connections are not counted.
std::vector<std::uint16_t> listener_ports(const ListenerSet& listeners) {
  std::vector<std::uint16_t> ports;
  for (const auto& l : listeners.listeners()) {
    const auto colon = l.address.rfind(':');
    if (l.address.starts_with("unix:") || colon == std::string::npos) continue;
    const unsigned long port = std::strtoul(l.address.c_str() + colon + 1, nullptr, 10);
    if (port > 0 && port < 65536) ports.push_back(static_cast<std::uint16_t>(port));
  }
  return ports;
}

std::string listener_addresses(const ListenerSet& listeners) {
  std::string out;
  for (const auto& l : listeners.listeners())
    out += (out.empty() ? "" : " or ") + l.address;
  return out;
}

}  // namespace

std::string_view generation_state_name(GenerationState state) {
  return name_in(kStateNames, state);
}

bool transition_allowed(GenerationState from, GenerationState to) {
  return kLifecycle.allows(from, to);
}

bool transition_allowed(SdkState from, SdkState to) {
  return kHandshake.allows(from, to);
}

// ---------------------------------------------------------------------------------------------
// Start and exit

Result<std::unique_ptr<Generation>> Generation::start(Context& context, Events& events, std::uint64_t number,
                                                      Plan plan) {
  if (!plan.image) return Error::message(fmt::format("release {}'s executable is not known", plan.release));
  auto launched = context.launcher.launch(number, plan.command, *plan.image);
  if (!launched) return launched.error();
  std::unique_ptr<Generation> g(new Generation(context, events, number, std::move(plan), std::move(launched->process)));
  const std::string label = fmt::format("generation {}", number);
  Generation* raw = g.get();
  g->channel_ = std::make_unique<WorkerChannel>(
      context.loop, std::move(launched->channel), label,
      WorkerChannel::Handler{
          [raw](wire::Message& m, std::vector<Fd>& fds) { raw->events_.on_channel_message(*raw, m, fds); },
          [raw] { raw->events_.on_channel_closed(*raw); },
          [raw](const std::string& why) { raw->events_.on_channel_broken(*raw, why); }});
  g->channel_->set_owner(g->pid());
  struct stat pipe_stat {};
  if (::fstat(launched->output.get(), &pipe_stat) == 0) g->output_inode_ = pipe_stat.st_ino;
  // Its child has not been reaped, so the pid is still its own.
  if (const auto seen = read_process(g->pid())) g->start_ticks_ = seen->start;
  g->output_ = std::make_unique<WorkerOutput>(context.loop, std::move(launched->output), number, g->pid());
  g->adopt_page_ = std::move(launched->adopt_page);
  context.reaper.watch(g->pid(), [self = g->self_](pid_t, ExitStatus status) {
    if (Generation* gen = *self) gen->on_main_exit(status);
  });
  log_info("generation {} started: pid {}: {}", number, g->pid(), shell_words(g->command()));
  g->exec_ = std::move(launched->exec);
  g->exec_watch_ = std::make_unique<FdWatch>(context.loop, g->exec_.fd(), [raw] { raw->check_exec(); });
  if (!g->exec_watch_->ok()) {
    // Cannot be watched (nothing else here would fail so): readiness is looked for at once, and an
    // exec failure is still found at its exit.
    g->exec_watch_.reset();
    g->restart_readiness();
  }
  return g;
}

void Generation::check_exec() {
  auto outcome = exec_.outcome();
  if (!outcome) return;
  exec_watch_.reset();
  exec_ = PendingExec{};
  if (!*outcome) {
    not_started_ = outcome->error().text();  // Its exit comes next, and says so.
    return;
  }
  if (state_ == GenerationState::Starting) restart_readiness();
}

Result<std::unique_ptr<Generation>> Generation::adopt(Context& context, Events& events, std::uint64_t number, Plan plan,
                                                      pid_t pid, std::uint64_t start_ticks, Fd output, bool serving,
                                                      Clock::time_point kill_at) {
  // The pidfd first, then the start time: if the start time matches, the pidfd names that process.
  const long raw = ::syscall(SYS_pidfd_open, pid, 0);
  Fd exit_pidfd(raw < 0 ? -1 : static_cast<int>(raw));
  if (!still_running(pid, start_ticks)) return std::unique_ptr<Generation>{};  // Gone.
  std::unique_ptr<Generation> g(new Generation(context, events, number, std::move(plan), ChildProcess(pid)));
  Generation* raw_g = g.get();
  g->adopted_ = true;
  g->start_ticks_ = start_ticks;
  g->attach_channel(Fd{});  // None until its SDK (if it has one) connects again.
  if (!output) {
    // Its stderr is unknown: an output that has ended already.
    auto pipe = WorkerOutput::open_pipe();
    if (!pipe) return pipe.error();
    output = std::move(pipe->first);
  }
  struct stat pipe_stat {};
  if (::fstat(output.get(), &pipe_stat) == 0) g->output_inode_ = pipe_stat.st_ino;
  (void)::fcntl(output.get(), F_SETFL, ::fcntl(output.get(), F_GETFL) | O_NONBLOCK);
  g->output_ = std::make_unique<WorkerOutput>(context.loop, std::move(output), number, pid);
  if (context.launcher.adopting()) {
    // Its command page, where its main process was given it.
    auto page = AdoptPage::find(pid, context.launcher.adopt_page_fd());
    if (page) {
      g->adopt_page_ = std::move(page).value();
    } else {
      log_warn(
          "generation {} (pid {}): {}: its listeners cannot be closed for it, and its drain is its drain signal "
          "alone",
          number, pid, page.error().text());
    }
  }
  const auto exited = [raw_g] {
    raw_g->exit_watch_.reset();
    raw_g->exit_poll_.reset();
    ExitStatus unknown;
    unknown.known = false;
    raw_g->on_main_exit(unknown);
  };
  g->exit_pidfd_ = std::move(exit_pidfd);
  if (g->exit_pidfd_) {
    g->exit_watch_ = std::make_unique<FdWatch>(context.loop, g->exit_pidfd_.get(), exited);
  } else {
    // Without a pidfd (an old kernel, a sandbox), its exit is looked for in /proc.
    g->exit_poll_ = std::make_unique<Timer>(context.loop);
    g->exit_poll_->start_repeating(Millis{200}, [raw_g, exited] {
      if (!still_running(raw_g->pid(), raw_g->start_ticks_)) exited();
    });
  }
  if (serving) {
    g->enter(GenerationState::Ready);
  } else {
    g->enter(GenerationState::Draining);
    const auto left = std::chrono::duration_cast<Millis>(kill_at - Clock::now());
    g->arm_kill_timer(std::max(left, Millis{0}));
  }
  return g;
}

void Generation::attach_channel(Fd fd) {
  // A new connection is a new handshake: the worker says hello on it again.
  sdk_ = SdkState::None;
  hello_ = {};
  told_active_ = false;
  channel_ = std::make_unique<WorkerChannel>(
      context_.loop, std::move(fd), fmt::format("generation {}", number_),
      WorkerChannel::Handler{
          [this](wire::Message& m, std::vector<Fd>& fds) { events_.on_channel_message(*this, m, fds); },
          [this] { events_.on_channel_closed(*this); },
          [this](const std::string& why) { events_.on_channel_broken(*this, why); }});
}

Generation::Generation(Context& context, Events& events, std::uint64_t number, Plan plan, ChildProcess process)
    : context_(context),
      events_(events),
      number_(number),
      plan_(std::move(plan)),
      process_(std::move(process)),
      ready_deadline_(context.loop),
      readiness_timer_(context.loop),
      kill_timer_(context.loop),
      connections_timer_(context.loop),
      channel_grace_(context.loop) {
  health_ = std::make_unique<HealthWatch>(
      context.loop, context.reaper, context.options,
      [this] { return context_.launcher.probe_environment(pid(), number_); },
      [this](HealthFailure kind, const std::string& reason) {
        log_warn("generation {} (pid {}): {}", number_, pid(), reason);
        events_.on_unhealthy(*this, kind, reason);
      });
}

Generation::~Generation() {
  *self_ = nullptr;
  // A probe still running is ended with the generation; the reaper collects it.
  if (probe_) probe_.signal_group(SIGKILL);
}

void Generation::on_main_exit(ExitStatus status) {
  // Whatever it wrote before it exited is there to read now.
  if (exec_.fd() >= 0) check_exec();
  if (!not_started_.empty()) status.not_started = not_started_;
  // Whatever the worker started dies with it (systemd's KillMode=mixed does the same). The main
  // process is not reaped yet, so its group is still this generation's.
  kill_all();
  pause_readiness();
  kill_timer_.stop();
  connections_timer_.stop();
  channel_grace_.stop();
  // Nothing it queued on its channel is acted on any more: a dead worker's hello or ready must not
  // move an upgrade along while its output ends.
  channel_->close();
  const GenerationState was = state_;
  enter(GenerationState::Exited);
  // The reaper reaps the main process as soon as this returns; the supervisor hears of the exit
  // once the output has ended, from the loop, and destroys the generation then.
  output_->when_ended(kOutputGrace, [this, was, status] { events_.on_exit(*this, was, status); });
}

std::vector<ProcessEntry> Generation::escaped() const {
  // A table read a moment ago will do: a process it misses is found by the next sweep.
  context_.roster.refresh(kRosterFreshness);
  std::vector<ProcessEntry> out = context_.roster.members(number_);
  std::erase_if(out, [this](const ProcessEntry& p) { return p.pgid == pid(); });
  return out;
}

bool Generation::signal_main(int signo) const {
  if (state_ == GenerationState::Exited) return false;
  if (adopted_) {
    const auto now = read_process(pid());
    if (!now || now->start != start_ticks_) return false;
  }
  process_.signal(signo);
  return true;
}

void Generation::signal_all(int signo) const {
  // A generation taken over is not this process's child: its group id stays its own while any
  // process of the group lives, unless its pid now names another process (with another start time).
  const auto now = adopted_ ? read_process(pid()) : std::nullopt;
  if (!adopted_ || !now || now->start == start_ticks_) process_.signal_group(signo);
  for (const ProcessEntry& p : escaped()) {
    if (signal_process(p, signo) && signo == SIGKILL) {
      log_warn("generation {}: pid {} had left its process group (to group {}); SIGKILL to it as well", number_, p.pid,
               p.pgid);
    }
  }
}

bool Generation::send_adopt(AdoptMode mode) {
  if (!adopt_page_) return false;
  adopt_page_.set(mode);
  return true;
}

void Generation::enter(GenerationState to) {
  if (!transition_allowed(state_, to)) {
    log_warn("generation {}: no transition from {} to {}", number_, generation_state_name(state_),
             generation_state_name(to));
    return;
  }
  state_ = to;
  if (context_.changed) context_.changed();
  if (context_.entered) context_.entered(*this, to);
  if (to == GenerationState::Ready) {
    ready_at_ = Clock::now();
    health_->start();
  } else {
    health_->stop();
  }
}

Generation::Clock::duration Generation::served_for() const {
  return ready_at_ == Clock::time_point{} ? Clock::duration::zero() : Clock::now() - ready_at_;
}

// ---------------------------------------------------------------------------------------------
// Readiness

void Generation::restart_readiness() {
  ready_deadline_.start(context_.options.ready_timeout, [this] {
    if (state_ == GenerationState::Starting) events_.on_ready_timeout(*this, ready_timeout_reason());
  });
  arm_readiness_check();
}

void Generation::arm_readiness_check() {
  switch (context_.options.ready.kind) {
    case ReadyMode::Kind::Notify:
      break;  // READY=1 arrives on the notify socket, or `ready` on the channel.
    case ReadyMode::Kind::Delay:
      readiness_timer_.start(context_.options.ready.delay, [this] { mark_ready(); });
      break;
    case ReadyMode::Kind::Exec:
      start_probe();
      break;
  }
}

void Generation::start_probe() {
  if (state_ != GenerationState::Starting) return;
  SpawnRequest request{"/bin/sh",
                       {"/bin/sh", "-c", context_.options.ready.command},
                       context_.launcher.probe_environment(pid(), number_),
                       {},
                       ListenPid::Omit};
  request.cwd = context_.launcher.workdir();
  // Not waited for: an exec that fails comes back with the probe's exit.
  PendingExec exec;
  auto probe_pid = start_process(request, exec);
  if (!probe_pid) {
    status_text_ = probe_pid.error().text();
    readiness_timer_.start(kProbeRetry, [this] { start_probe(); });
    return;
  }
  probe_ = ChildProcess(probe_pid.value());
  context_.reaper.watch(
      probe_pid.value(),
      [self = self_, probe = probe_pid.value()](pid_t, ExitStatus status) {
        Generation* g = *self;
        if (g == nullptr || g->probe_.pid() != probe) return;  // Cancelled: the generation moved on.
        g->probe_ = ChildProcess();
        if (g->state_ != GenerationState::Starting) return;
        if (status.success()) {
          g->mark_ready();
          return;
        }
        g->status_text_ = fmt::format("readiness probe {}", status.describe());
        g->readiness_timer_.start(kProbeRetry, [g] { g->start_probe(); });
      },
      std::move(exec));
}

void Generation::pause_readiness() {
  ready_deadline_.stop();
  readiness_timer_.stop();
  if (probe_) {
    probe_.signal_group(SIGKILL);
    probe_ = ChildProcess();  // The reaper still collects it; its callback finds it cancelled.
  }
}

void Generation::mark_ready() {
  if (state_ != GenerationState::Starting) return;
  enter(GenerationState::Ready);
  pause_readiness();
  log_info("generation {} (pid {}) is ready after {}", number_, pid(), elapsed_text(ready_at_ - started_));
  events_.on_ready(*this);
}

std::string Generation::ready_timeout_reason() const {
  const RunOptions& options = context_.options;
  std::string reason = fmt::format("generation {} was not ready within {} (--ready {})", number_,
                                   format_duration(options.ready_timeout), options.ready.describe());
  if (!status_text_.empty()) reason += fmt::format("; last status: {}", status_text_);
  if (sdk_ == SdkState::Serving && options.ready.kind == ReadyMode::Kind::Notify) {
    // Its Worker::start() returned, so the SDK is in place: ready() is what is missing (a server
    // that waits for on_active before it calls ready() waits for ever: the cutover waits for it).
    reason +=
        "; its Worker::start() finished, but it never called Worker::ready() (call it after start(), not in "
        "on_active)";
  }
  if (context_.launcher.adopting() && options.ready.kind == ReadyMode::Kind::Notify) {
    reason += adopt_loaded_
                  ? fmt::format("; it never waited on a listener given with --listen (does it bind {}?)",
                                listener_addresses(context_.listeners))
                  : std::string("; the preload library never loaded in it (does the server clear LD_PRELOAD?)");
  }
  return reason;
}

// ---------------------------------------------------------------------------------------------
// What the worker reports

void Generation::apply_notify(const NotifyMessage& m, pid_t sender) {
  // Its processes are gone: a datagram now was sent before it died, or by a stranger who was given
  // its reaped pid; neither says anything about this generation any more.
  if (state_ == GenerationState::Exited) return;
  for (const auto& p : m.problems)
    log_warn("notify: generation {}: {}", number_, p);
  if (m.status) status_text_ = *m.status;
  if (m.adopt && !adopt_loaded_) {
    adopt_loaded_ = true;
    log_debug("generation {}: the preload library is in pid {}", number_, sender);
  }
  if (m.stopping && !reported_stopping_) {
    reported_stopping_ = true;
    log_info("generation {} (pid {}) reports it is stopping", number_, pid());
  }
  if (m.watchdog) health_->pet();
  if (m.ready && resuming()) {
    mark_resumed();  // --adopt-binds: the library has put the listeners back.
  } else if (m.ready && context_.options.ready.kind == ReadyMode::Kind::Notify) {
    mark_ready();
  }
}

void Generation::accept_hello(wire::Hello hello) {
  if (!transition_allowed(sdk_, SdkState::Importing)) return;
  hello_ = std::move(hello);
  sdk_ = SdkState::Importing;
}

bool Generation::send_listeners(const wire::Message& announce) {
  if (!channel_->send(announce)) return false;
  std::vector<std::string> names;
  std::vector<int> fds;
  for (const auto& l : context_.listeners.listeners()) {
    names.push_back(l.spec.name);
    fds.push_back(l.fd.get());
  }
  if (auto sent = channel_->send_listeners(names, fds); !sent) {
    log_warn("generation {}: cannot send its listeners: {}", number_, sent.error().text());
    return false;
  }
  return true;
}

void Generation::finish_import() {
  if (transition_allowed(sdk_, SdkState::Serving)) sdk_ = SdkState::Serving;
}

// ---------------------------------------------------------------------------------------------
// Ending

void Generation::tell_active(bool importing) {
  const bool handshake_done = sdk_ == SdkState::Serving || (importing && sdk_ == SdkState::Importing);
  if (told_active_ || !handshake_done || state_ == GenerationState::Draining || state_ == GenerationState::Exited)
    return;
  // Not told unless it went: the next loop iteration tries again.
  told_active_ = channel_->send(wire::Active{});
}

void Generation::stop(std::string_view why, Ending ending, Millis park) {
  if (state_ == GenerationState::Draining || state_ == GenerationState::Exited) return;
  enter(GenerationState::Draining);
  told_active_ = false;
  pause_readiness();
  parked_ = false;
  const RunOptions& options = context_.options;
  // An SDK worker is asked over its channel; any other gets the drain signal, which goes to the
  // main process only: it decides how to stop its helpers. The final SIGKILL goes to the whole
  // process group either way.
  if (ending == Ending::Stop && sdk_ == SdkState::Importing) {
    // It is still in Worker::start(), where nothing reads the channel: it has served nothing, and
    // a stop request would wait unread until the drain timeout.
    log_info("generation {} (pid {}): stopping it at once with SIGKILL ({}; it had not finished its import)", number_,
             pid(), why);
    kill_all();
    return;
  }
  const bool park_it = ending == Ending::Drain && park > Millis{0} && resumable();
  const bool asked =
      sdk_ != SdkState::None &&
      (ending == Ending::Stop ? channel_->send(wire::Stop{})
                              : channel_->send(wire::Drain{static_cast<std::uint64_t>(park_it ? park.count() : 0)}));
  if (asked && park_it) {
    parked_ = true;
    log_info(
        "generation {} (pid {}): asked to drain over its channel ({}), then to stay parked for {} in case it is "
        "resumed; SIGKILL {} after that",
        number_, pid(), why, format_duration(park), format_duration(options.drain_timeout));
    arm_kill_timer(park + options.drain_timeout);
    return;
  }
  if (asked) {
    log_info("generation {} (pid {}): asked to {} over its channel ({}); SIGKILL after {}", number_, pid(),
             ending == Ending::Stop ? "stop" : "drain", why, format_duration(options.drain_timeout));
  } else if (context_.launcher.adopting() && park_it && send_adopt(AdoptMode::Park)) {
    // The library in each of its processes closes the adopted listeners and keeps the inherited
    // sockets for a resume; the server itself is not told: it goes on serving the connections it
    // has, and gets its drain signal only when the parking ends (unpark).
    parked_ = true;
    log_info(
        "generation {} (pid {}): closing its listeners ({}), then parked for {} in case it is resumed; its "
        "drain follows the parking",
        number_, pid(), why, format_duration(park));
    arm_kill_timer(park + options.drain_timeout);
    return;
  } else if (context_.launcher.adopting()) {
    adopt_drain(why);
  } else {
    log_info("generation {} (pid {}): sending {} ({}); SIGKILL after {}", number_, pid(),
             signal_name(options.drain_signal), why, format_duration(options.drain_timeout));
    process_.signal(options.drain_signal);
  }
  arm_kill_timer(options.drain_timeout);
}

void Generation::arm_kill_timer(Millis after) {
  kill_at_ = Clock::now() + after;
  if (context_.changed) context_.changed();
  kill_timer_.start(after, [this] {
    log_warn("generation {} (pid {}) did not exit within the drain timeout of {}; sending SIGKILL", number_, pid(),
             format_duration(context_.options.drain_timeout));
    killed_at_deadline_ = true;
    kill_all();
  });
}

void Generation::unpark(std::string_view why) {
  if (!parked()) return;
  parked_ = false;
  resuming_ = false;
  ready_deadline_.stop();
  if (sdk_ == SdkState::None) {
    // --adopt-binds: the drain it was spared; the library's drain signal ends the parking too.
    adopt_drain(why);
  } else if (!channel_->send(wire::Drain{0})) {
    log_warn("generation {} (pid {}): cannot end its parking over its channel; SIGKILL after {}", number_, pid(),
             format_duration(context_.options.drain_timeout));
  } else {
    log_info("generation {} (pid {}): parking ended ({}); it exits once drained, SIGKILL after {}", number_, pid(), why,
             format_duration(context_.options.drain_timeout));
  }
  arm_kill_timer(context_.options.drain_timeout);
}

bool Generation::resume() {
  if (!parked() || resuming_) return false;
  // --adopt-binds: the library puts the shared sockets back, and says READY=1.
  const bool told =
      sdk_ == SdkState::None ? send_adopt(AdoptMode::Serve) : send_listeners(wire::Resume{listener_count()});
  if (!told) return false;
  resuming_ = true;
  // Its drain's SIGKILL waits while it comes back; the deadline is --ready-timeout, as for a start.
  kill_timer_.stop();
  kill_at_.reset();
  if (context_.changed) context_.changed();
  ready_deadline_.start(context_.options.ready_timeout, [this] {
    if (!resuming()) return;
    events_.on_ready_timeout(*this, fmt::format("generation {} was not serving again within {} of being resumed",
                                                number_, format_duration(context_.options.ready_timeout)));
  });
  log_info("generation {} (pid {}): resumed, with its listeners; waiting for it to serve again", number_, pid());
  return true;
}

void Generation::mark_resumed() {
  if (!resuming()) return;
  resuming_ = false;
  parked_ = false;
  ready_deadline_.stop();
  enter(GenerationState::Ready);
  log_info("generation {} (pid {}) serves again", number_, pid());
  events_.on_ready(*this);
}

void Generation::abandon_resume(std::string_view why) {
  if (!resuming()) return;
  resuming_ = false;
  parked_ = true;  // So that unpark() ends it: a resume it took late is drained again.
  unpark(why);
}

void Generation::adopt_drain(std::string_view why) {
  const RunOptions& options = context_.options;
  const int signo = options.drain_signal;
  if (!send_adopt(AdoptMode::Drain)) {
    log_warn("generation {} (pid {}): no command page to close its listeners with; sending {} ({}); SIGKILL after {}",
             number_, pid(), signal_name(signo), why, format_duration(options.drain_timeout));
    process_.signal(signo);
    return;
  }
  const bool http = context_.launcher.http_drain();
  if (options.drain_signal_given && !http) {
    // The server drains by itself on the signal the operator named (nginx: SIGQUIT); the library
    // has closed its listeners as well.
    log_info("generation {} (pid {}): closing its listeners and sending {} ({}); SIGKILL after {}", number_, pid(),
             signal_name(signo), why, format_duration(options.drain_timeout));
    process_.signal(signo);
    return;
  }
  // The library in each of its processes closes the listeners, and with the HTTP drain closes each
  // HTTP/1.x connection after its next response; the connections it accepted are served to the end,
  // and only then does the drain signal stop it (whatever the signal means to the server).
  log_info("generation {} (pid {}): closing its listeners{} ({}); {} once its connections are done, SIGKILL after {}",
           number_, pid(), http ? ", and each HTTP connection after its next response" : "", why, signal_name(signo),
           format_duration(options.drain_timeout));
  const auto since = Clock::now();
  connections_timer_.start_repeating(
      kAdoptPollInterval, [this, signo, ports = listener_ports(context_.listeners), since] {
        // A moment for the signal to land in every process, then no connection left on our ports.
        if (Clock::now() - since < kAdoptPollInterval) return;
        const int open = count_connections(pid(), ports);
        if (open < 0) {
          // Not knowing is not "none": the drain timeout decides.
          connections_timer_.stop();
          log_warn(
              "generation {} (pid {}): its connections cannot be counted (/proc); it is stopped at the drain "
              "timeout",
              number_, pid());
          return;
        }
        if (open > 0) return;
        connections_timer_.stop();
        log_info("generation {} (pid {}): its connections are done; sending {}", number_, pid(), signal_name(signo));
        process_.signal(signo);
      });
}

}  // namespace hotrestart
