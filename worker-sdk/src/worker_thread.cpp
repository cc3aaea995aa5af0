// The SDK thread (Mode::Supervised): after start() it polls the channel to the supervisor, the
// previous generation's link, the next generation's link and a wake-up eventfd, and runs the
// application's callbacks one at a time: on_drain, on_stop, the export (save, save_arena),
// apply_delta, on_fd, on_previous_gone, on_next_gone. It owns peer_in and reserve_fd; what it
// shares with the application's threads is in HandoverState and SupervisorChannel. The destructor
// stops it, then flushes what the next generation is still owed.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <hotrestart/wire/section.h>
#include "configs.h"
#include "exporter.h"
#include "worker_impl.h"

namespace hotrestart {
namespace {

using sdk::guarded;
using sdk::say;

// A parked worker waits this long past the parking time it was given, so that a supervisor's late
// resume (or end of parking) still finds it.
constexpr std::chrono::seconds kParkingSlack{1};

// An active generation whose supervisor died tries to connect to the one that takes it over after
// this long, then twice as long each time, up to kRejoinMost; each attempt waits at most
// kRejoinAnswer for the welcome.
constexpr std::chrono::milliseconds kRejoinFirst{50};
constexpr std::chrono::milliseconds kRejoinMost{1'000};
constexpr std::chrono::milliseconds kRejoinAnswer{2'000};

// The section a change from the previous generation is for, or nullptr (and the change is
// dropped, with a line on stderr) when no section of that name applies changes.
const Section* section_for_change(const std::vector<Section>& sections, const std::string& name) {
  const Section* section = sdk::find_section(sections, name);
  if (section == nullptr || !section->apply_delta) {
    say("dropped a change to section '%s', which has no apply_delta", name.c_str());
    return nullptr;
  }
  return section;
}

}  // namespace

// The descriptors one turn of run_thread() polls, and where each one is in `fds`.
struct Worker::Impl::PollSet {
  static constexpr nfds_t kNotPolled = 4;
  pollfd fds[4] = {};
  nfds_t count = 0;
  nfds_t channel_at = kNotPolled;
  nfds_t previous_at = kNotPolled;
  nfds_t next_at = kNotPolled;
  std::uint64_t next_link = 0;  // Which link to the next generation was polled (HandoverState).
  bool backoff = false;         // A send to the next generation waits to be retried.

  nfds_t add(int fd, short events) {
    fds[count] = {fd, events, 0};
    return count++;
  }
  short revents(nfds_t at) const { return at < count ? fds[at].revents : 0; }
};

Worker::Impl::PollSet Worker::Impl::poll_set() const {
  PollSet set;
  set.add(wake_fd.get(), POLLIN);
  if (channel.fd() >= 0) set.channel_at = set.add(channel.fd(), POLLIN);
  if (peer_in) set.previous_at = set.add(peer_in.get(), POLLIN);
  const auto next = handover.poll_request();
  set.backoff = next.backoff;
  if (next.fd >= 0) set.next_at = set.add(next.fd, next.events);
  set.next_link = next.link;
  return set;
}

void Worker::Impl::run_thread() {
  for (;;) {
    PollSet set = poll_set();
    int timeout = set.backoff ? 10 : -1;
    if (rejoining) {
      const auto until = std::chrono::ceil<std::chrono::milliseconds>(rejoin_at - Clock::now()).count();
      const int wait = static_cast<int>(std::clamp<long long>(until, 0, 60'000));
      timeout = timeout < 0 ? wait : std::min(timeout, wait);
    }
    if (::poll(set.fds, set.count, timeout) < 0) {
      if (errno == EINTR) continue;
      say("poll failed: %s", std::strerror(errno));
      return;
    }
    if ((set.fds[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto r = ::read(wake_fd.get(), &count, sizeof count);
    }
    if (quitting.load()) return;
    if (set.backoff) handover.retry_after_backoff();
    if (set.revents(set.channel_at) != 0) serve_channel();
    if (rejoining && Clock::now() >= rejoin_at) try_rejoin();
    if (set.revents(set.previous_at) != 0) serve_previous_generation();
    serve_next_generation(set.revents(set.next_at), set.next_link);
    if (handover.take_next_gone_notice() && next_gone_callback) guarded("on_next_gone", next_gone_callback);
  }
}

void Worker::Impl::wake() {
  if (!wake_fd) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd.get(), &one, sizeof one);
}

bool Worker::Impl::send_queued() {
  if (mode == Mode::Stub) return handover.flush();
  wake();
  return true;
}

// ---------------------------------------------------------------------------------------------
// The supervisor's channel

void Worker::Impl::serve_channel() {
  auto r = wire::receive_message(channel.fd(), wire::Blocking::No);
  if (r) {
    on_channel_message(std::move(r).value());
    return;
  }
  const int code = r.error().code();
  if (code == EAGAIN) return;
  // The supervisor is gone, or sent something this SDK cannot trust. Either way the channel is
  // closed, so that the supervisor sees it and falls back to signals for this worker.
  const bool gone = code == EPIPE || code == ECONNRESET;
  if (!gone) {
    say("closing the supervisor channel: %s", r.error().text().c_str());
    channel.send(wire::Refuse{r.error().text().substr(0, wire::kMaxTextLength)});
  } else {
    say("the supervisor channel closed");
  }
  channel.close();
  // Nothing can resume this generation any more.
  end_parking();
  // An active generation keeps serving: it is the one clients reach. A candidate does not serve on
  // its own authority: its supervisor would have cut over to it or rolled it back, and nobody is
  // left to do either, so it drains and the old generation alone serves (docs/architecture.md,
  // "When the supervisor dies").
  if (gone && !active.load() && !draining.load()) {
    say("the supervisor is gone and this generation was never cut over: draining");
    on_drain(wire::Drain{});
    return;
  }
  // The active generation serves on, and connects again once a supervisor takes it over.
  if (gone && active.load() && !draining.load() && !rejoin_path.empty()) {
    say("serving on; connecting again once a supervisor takes this generation over (%s)", rejoin_path.c_str());
    rejoining = true;
    rejoin_every = kRejoinFirst;
    rejoin_at = Clock::now() + rejoin_every;
  }
}

void Worker::Impl::try_rejoin() {
  if (draining.load()) {
    rejoining = false;
    return;
  }
  rejoin_at = Clock::now() + rejoin_every;
  rejoin_every = std::min<Clock::duration>(rejoin_every * 2, kRejoinMost);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (rejoin_path.size() >= sizeof addr.sun_path) {
    rejoining = false;
    return;
  }
  std::memcpy(addr.sun_path, rejoin_path.c_str(), rejoin_path.size() + 1);
  Fd fd(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd || ::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return;  // Not yet.
  if (auto ok = wire::send_message(fd.get(), make_hello(), {}, wire::Blocking::Yes); !ok) return;
  auto answer = sdk::receive_until(fd.get(), Clock::now() + kRejoinAnswer, "the supervisor's welcome");
  if (!answer) {
    say("connecting again to the supervisor: %s", answer.error().text().c_str());
    return;
  }
  if (const auto* refuse = std::get_if<wire::Refuse>(&answer->message)) {
    // Asking again would be refused again: this generation serves on without a channel.
    say("the supervisor taking over refused this generation: %s; no more attempts", refuse->reason.c_str());
    rejoining = false;
    return;
  }
  const auto* welcome = std::get_if<wire::Welcome>(&answer->message);
  if (welcome == nullptr || welcome->generation != generation || welcome->listeners != 0) {
    say("connecting again to the supervisor: its answer is not a welcome of generation %llu",
        static_cast<unsigned long long>(generation));
    return;
  }
  channel.adopt(std::move(fd));
  rejoining = false;
  say("connected again to the supervisor that took this generation over");
}

void Worker::Impl::on_channel_message(wire::Received received) {
  std::visit(
      [&](auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, wire::Drain>) {
          on_drain(m);
        } else if constexpr (std::is_same_v<T, wire::Resume>) {
          on_resume(m);
        } else if constexpr (std::is_same_v<T, wire::Listeners>) {
          on_resumed_listeners(m, received.fds);
        } else if constexpr (std::is_same_v<T, wire::Active>) {
          become_active();
        } else if constexpr (std::is_same_v<T, wire::Stop>) {
          if (stop_callback) {
            guarded("on_stop", stop_callback);
          } else {
            ::kill(::getpid(), SIGKILL);
          }
        } else if constexpr (std::is_same_v<T, wire::BeginExport>) {
          if (received.fds.empty()) return;
          auto totals = export_to(std::move(received.fds[0]), m.to_generation, m.plan,
                                  [this](const wire::SectionReport& r) { channel.send(wire::SectionExported{r}); });
          channel.send(wire::ExportFinished{totals});
          handover.flush();
        } else if constexpr (std::is_same_v<T, wire::ConfigPrepare> || std::is_same_v<T, wire::ConfigCommit> ||
                             std::is_same_v<T, wire::ConfigAbort>) {
          on_config_message(received);
        } else if constexpr (std::is_same_v<T, wire::Refuse>) {
          say("the supervisor refused a message: %s", m.reason.c_str());
        } else {
          say("ignored %s from the supervisor", std::string(wire::type_name(wire::type_of(received.message))).c_str());
        }
      },
      received.message);
}

void Worker::Impl::on_config_message(wire::Received& received) {
  if (const auto* prepare = std::get_if<wire::ConfigPrepare>(&received.message)) {
    channel.send(sdk::prepare_config(configs, *prepare, std::move(received.fds.at(0)), options.max_config_bytes));
  } else if (const auto* commit = std::get_if<wire::ConfigCommit>(&received.message)) {
    channel.send(sdk::commit_config(configs, *commit));
  } else if (const auto* abort = std::get_if<wire::ConfigAbort>(&received.message)) {
    sdk::abort_config(configs, *abort);
  }
}

// ---------------------------------------------------------------------------------------------
// Parking and resume (Options::resumable)

void Worker::Impl::become_active() {
  if (draining.load() || active.exchange(true)) return;
  if (active_callback) guarded("on_active", active_callback);
}

void Worker::Impl::on_drain(const wire::Drain& drain) {
  active.store(false);
  draining.store(true);
  {
    std::lock_guard lock(parking.mutex);
    if (parking.waiting()) {
      // Drained already: a new parking time, or (0) the end of the parking.
      if (drain.park_ms == 0) {
        parking.state = Parking::State::Active;
        parking.listeners.clear();
      } else {
        parking.until = Clock::now() + std::chrono::milliseconds(drain.park_ms) + kParkingSlack;
      }
      parking.changed.notify_all();
      return;
    }
    if (drain.park_ms > 0 && options.resumable) {
      parking.state = Parking::State::Parked;
      parking.until = Clock::now() + std::chrono::milliseconds(drain.park_ms) + kParkingSlack;
    } else {
      parking.state = Parking::State::Active;
    }
  }
  handover.start_draining();
  if (drain_callback) {
    guarded("on_drain", drain_callback);
  } else {
    ::kill(::getpid(), SIGTERM);
  }
}

void Worker::Impl::on_resume(const wire::Resume& resume) {
  std::lock_guard lock(parking.mutex);
  if (parking.state != Parking::State::Parked) {
    say("ignored resume from the supervisor: this generation is not parked");
    return;
  }
  parking.state = Parking::State::Resuming;
  parking.expected = resume.listeners;
  parking.listeners.clear();
  if (resume.listeners == 0) {
    parking.state = Parking::State::Resumed;
    handover.stop_draining();
    draining.store(false);
    parking.changed.notify_all();
  }
}

void Worker::Impl::on_resumed_listeners(const wire::Listeners& names, std::vector<Fd>& fds) {
  std::lock_guard lock(parking.mutex);
  if (parking.state != Parking::State::Resuming) {
    say("ignored listeners from the supervisor: no resume is under way");
    return;  // `fds` close with the message.
  }
  if (parking.listeners.size() + names.names.size() > parking.expected) {
    say("the supervisor sent more listeners than its resume announced; this generation stays parked");
    parking.state = Parking::State::Parked;
    parking.listeners.clear();
    return;
  }
  for (std::size_t i = 0; i < names.names.size(); ++i)
    parking.listeners.emplace_back(names.names[i], std::move(fds[i]));
  if (parking.listeners.size() == parking.expected) {
    parking.state = Parking::State::Resumed;
    handover.stop_draining();
    draining.store(false);
    parking.changed.notify_all();
  }
}

void Worker::Impl::end_parking() {
  std::lock_guard lock(parking.mutex);
  if (!parking.waiting()) return;
  parking.state = Parking::State::Active;
  parking.listeners.clear();
  parking.changed.notify_all();
}

wire::TransferTotals Worker::Impl::export_to(Fd peer, std::uint64_t sequence,
                                             const std::vector<wire::SectionVersions>& plan,
                                             const std::function<void(const wire::SectionReport&)>& report) {
  return sdk::Exporter(sections, generation, handover, options.max_snapshot_copy_bytes)
      .export_to(std::move(peer), sequence, plan, report);
}

// ---------------------------------------------------------------------------------------------
// The previous generation's link: its deltas and descriptors after start()

void Worker::Impl::serve_previous_generation() {
  // A spare descriptor is given up for the receive, so that a process at its fd limit still takes
  // the memfd of a large change (the kernel would drop it, and the change with it).
  reserve_fd.reset();
  auto r = wire::receive_message(peer_in.get(), wire::Blocking::No);
  reserve_fd.reset(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (r) {
    on_peer_in(std::move(r).value());
  } else if (r.error().code() == EPIPE || r.error().code() == ECONNRESET) {
    previous_gone();
  } else if (r.error().code() != EAGAIN) {
    // One bad message (truncated descriptors at the fd limit, say) costs that message, not the
    // link: the previous generation goes on streaming the changes it acknowledges.
    say("dropped a message from the previous generation: %s", r.error().text().c_str());
  }
}

void Worker::Impl::on_peer_in(wire::Received received) {
  if (auto* delta = std::get_if<wire::Delta>(&received.message)) {
    const Section* section = section_for_change(sections, delta->section);
    // A change the imported snapshot holds already is not applied again.
    if (section == nullptr || handover.covered(delta->section, delta->sequence)) return;
    guarded("apply_delta", [&] { section->apply_delta(delta->version, delta->payload); });
    ++deltas_applied;
    return;
  }
  if (auto* large = std::get_if<wire::DeltaMemfd>(&received.message)) {
    const Section* section = section_for_change(sections, large->offer.name);
    if (section == nullptr || handover.covered(large->offer.name, large->offer.sequence)) return;
    auto mapped = wire::open_section(std::move(received.fds.at(0)), large->offer, options.max_delta_bytes);
    if (!mapped) {
      say("section '%s': dropped a change: %s", large->offer.name.c_str(), mapped.error().text().c_str());
      return;
    }
    const auto payload = mapped->payload();
    guarded("apply_delta", [&] {
      section->apply_delta(large->offer.version,
                           std::string_view(reinterpret_cast<const char*>(payload.data()), payload.size()));
    });
    ++deltas_applied;
    return;
  }
  if (auto* fds = std::get_if<wire::Fds>(&received.message)) {
    fds_received += fds->names.size();
    for (std::size_t i = 0; i < fds->names.size(); ++i) {
      if (fd_callback) {
        guarded("on_fd", [&] { fd_callback(fds->names[i], std::move(received.fds[i])); });
      } else {
        say("closed descriptor '%s' from the previous generation: no on_fd callback", fds->names[i].c_str());
      }
    }
    return;
  }
  say("ignored %s from the previous generation", std::string(wire::type_name(wire::type_of(received.message))).c_str());
}

void Worker::Impl::previous_gone() {
  peer_in.reset();
  handover.previous_gone();
  if (previous_gone_callback) guarded("on_previous_gone", previous_gone_callback);
}

// ---------------------------------------------------------------------------------------------
// The next generation's link: what waits for it, and its end

void Worker::Impl::serve_next_generation(short revents, std::uint64_t link) {
  if ((revents & (POLLHUP | POLLERR)) != 0) {
    // The next generation is gone (rolled back, or crashed): nothing more can be handed over.
    handover.link_hung_up(link);
  } else if (revents != 0) {
    handover.flush();
  }
}

Worker::Impl::~Impl() {
  if (thread.joinable()) {
    // The SDK thread stops first, after the callback it may be running, so that no callback runs
    // once the application has begun to shut down. Then what the next generation is owed is sent
    // from here, for at most flush_timeout.
    quitting.store(true);
    wake();
    thread.join();
    handover.flush_until(Clock::now() + options.flush_timeout);
  }
  // A link over which an arena was lent or borrowed is left open, to be closed by the kernel when
  // the process exits (see HandoverState::leave_arena_links_open).
  handover.leave_arena_links_open(peer_in);
}

}  // namespace hotrestart
