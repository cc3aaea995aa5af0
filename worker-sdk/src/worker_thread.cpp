// The SDK thread (Mode::Supervised): after start() it polls the channel to the supervisor, the
// previous generation's link, the next generation's link and a wake-up eventfd, and runs the
// application's callbacks one at a time: on_drain, on_stop, the export (save, save_arena),
// apply_delta, on_fd, on_previous_gone, on_next_gone. It also sends what is queued for the next
// generation, and the destructor stops it, then flushes what the next generation is still owed.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <hotrestart/wire/section.h>
#include "worker_impl.h"

namespace hotrestart {
namespace {

using sdk::find_section;
using sdk::guarded;
using sdk::ms_until;
using sdk::say;

// Errors on a send that pass: the kernel is short of memory or of room for descriptors in flight.
bool transient_send_error(int code) {
  return code == ENOBUFS || code == ENOMEM || code == ETOOMANYREFS;
}
}  // namespace

void Worker::Impl::next_gone_locked(bool peer_closed) {
  Fd link = std::move(peer_out);
  streaming.clear();
  peer_queue.clear();
  peer_queue_bytes = 0;
  if (!peer_closed) {
    // This side gave up on the link (a send failed), but the next generation may still be alive
    // and map arenas lent over it: the link stays open, so that it cannot take this for an exit,
    // and the arenas stay lent.
    if (!lent_to_next.empty()) parked_links.push_back(std::move(link));
    return;
  }
  // The next generation closed its end: an SDK closes a link over which it borrowed an arena only
  // by exiting (see ~Impl), and a process's memory is unmapped before its descriptors are closed.
  // The arenas lent over it are this generation's alone again.
  for (auto& flag : lent_to_next)
    flag->store(false);
  lent_to_next.clear();
  next_gone_notice.store(true);
}

bool Worker::Impl::flush_peer_out() {
  std::unique_lock lock(mutex);
  if (!peer_out) return false;
  if (!snapshot_sent) return true;
  while (!peer_queue.empty()) {
    Outgoing& next = peer_queue.front();
    std::vector<int> fds;
    for (const auto& fd : next.fds)
      fds.push_back(fd.get());
    auto ok = wire::send_message(peer_out.get(), next.message, fds, wire::Blocking::No);
    if (!ok && ok.error().code() == EAGAIN) return true;
    if (!ok && transient_send_error(ok.error().code())) {
      // Nothing is dropped: run_thread() tries again shortly, without spinning on POLLOUT.
      peer_backoff = true;
      return true;
    }
    if (!ok) {
      say("the next generation is gone (%s); %zu queued change(s) dropped", ok.error().text().c_str(),
          peer_queue.size());
      next_gone_locked(ok.error().code() == EPIPE || ok.error().code() == ECONNRESET);
      return false;
    }
    peer_queue_bytes -= next.bytes;
    peer_queue.pop_front();
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// After start: the previous generation's deltas and descriptors

void Worker::Impl::on_peer_in(wire::Received received) {
  if (auto* delta = std::get_if<wire::Delta>(&received.message)) {
    const Section* section = find_section(sections, delta->section);
    if (section == nullptr || !section->apply_delta) {
      say("dropped a change to section '%s', which has no apply_delta", delta->section.c_str());
      return;
    }
    guarded("apply_delta", [&] { section->apply_delta(delta->version, delta->payload); });
    return;
  }
  if (auto* large = std::get_if<wire::DeltaMemfd>(&received.message)) {
    const Section* section = find_section(sections, large->offer.name);
    if (section == nullptr || !section->apply_delta) {
      say("dropped a change to section '%s', which has no apply_delta", large->offer.name.c_str());
      return;
    }
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
    return;
  }
  if (auto* fds = std::get_if<wire::Fds>(&received.message)) {
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
  {
    // Its process has exited (the link closes after its memory is unmapped): the arenas it lent
    // are this generation's alone.
    std::lock_guard lock(mutex);
    for (auto& flag : borrowed_from_previous)
      flag->store(false);
    borrowed_from_previous.clear();
  }
  if (previous_gone_callback) guarded("on_previous_gone", previous_gone_callback);
}

// ---------------------------------------------------------------------------------------------
// The SDK thread

void Worker::Impl::send_channel(const wire::Message& m) {
  std::lock_guard lock(channel_mutex);
  if (!channel) return;
  if (auto ok = wire::send_message(channel.get(), m, {}, wire::Blocking::Yes); !ok) {
    say("cannot tell the supervisor (%s): %s", std::string(wire::type_name(wire::type_of(m))).c_str(),
        ok.error().text().c_str());
  }
}

void Worker::Impl::wake() {
  if (!wake_fd) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(wake_fd.get(), &one, sizeof one);
}

void Worker::Impl::on_channel_message(wire::Received received) {
  std::visit(
      [&](auto& m) {
        using T = std::decay_t<decltype(m)>;
        if constexpr (std::is_same_v<T, wire::Drain>) {
          {
            std::lock_guard lock(mutex);
            draining = true;
          }
          if (drain_callback) {
            guarded("on_drain", drain_callback);
          } else {
            ::kill(::getpid(), SIGTERM);
          }
        } else if constexpr (std::is_same_v<T, wire::Stop>) {
          if (stop_callback) {
            guarded("on_stop", stop_callback);
          } else {
            ::kill(::getpid(), SIGKILL);
          }
        } else if constexpr (std::is_same_v<T, wire::BeginExport>) {
          if (received.fds.empty()) return;
          auto totals = export_to(std::move(received.fds[0]), m.to_generation, m.plan,
                                  [this](const wire::SectionReport& r) { send_channel(wire::SectionExported{r}); });
          send_channel(wire::ExportFinished{totals});
          flush_peer_out();
        } else if constexpr (std::is_same_v<T, wire::Refuse>) {
          say("the supervisor refused a message: %s", m.reason.c_str());
        } else {
          say("ignored %s from the supervisor", std::string(wire::type_name(wire::type_of(received.message))).c_str());
        }
      },
      received.message);
}

void Worker::Impl::run_thread() {
  bool channel_open = true;
  for (;;) {
    pollfd fds[4];
    nfds_t n = 0;
    fds[n++] = {wake_fd.get(), POLLIN, 0};
    const nfds_t channel_at = channel_open ? n : 99;
    if (channel_open) fds[n++] = {channel.get(), POLLIN, 0};
    const nfds_t peer_in_at = peer_in ? n : 99;
    if (peer_in) fds[n++] = {peer_in.get(), POLLIN, 0};
    nfds_t peer_out_at = 99;
    bool backoff = false;
    {
      std::lock_guard lock(mutex);
      backoff = peer_backoff;
      if (peer_out) {
        peer_out_at = n;
        // POLLOUT only while something waits, so that an idle link does not spin.
        const bool waiting = !peer_queue.empty() && snapshot_sent && !backoff;
        fds[n++] = {peer_out.get(), static_cast<short>(waiting ? POLLOUT : 0), 0};
      }
    }
    if (::poll(fds, n, backoff ? 10 : -1) < 0) {
      if (errno == EINTR) continue;
      say("poll failed: %s", std::strerror(errno));
      return;
    }
    if ((fds[0].revents & POLLIN) != 0) {
      std::uint64_t count = 0;
      [[maybe_unused]] auto r = ::read(wake_fd.get(), &count, sizeof count);
    }
    if (quitting.load()) return;
    if (backoff) {
      {
        std::lock_guard lock(mutex);
        peer_backoff = false;
      }
      flush_peer_out();
    }
    if (channel_at != 99 && fds[channel_at].revents != 0) {
      auto r = wire::receive_message(channel.get(), wire::Blocking::No);
      if (r) {
        on_channel_message(std::move(r).value());
      } else if (r.error().code() != EAGAIN) {
        // The supervisor is gone, or sent something this SDK cannot trust. Either way the channel
        // is closed, so that the supervisor sees it and falls back to signals for this worker;
        // the generation keeps serving meanwhile.
        const int code = r.error().code();
        if (code != EPIPE && code != ECONNRESET) {
          say("closing the supervisor channel: %s", r.error().text().c_str());
          send_channel(wire::Refuse{r.error().text().substr(0, wire::kMaxTextLength)});
        } else {
          say("the supervisor channel closed");
        }
        std::lock_guard lock(channel_mutex);
        channel.reset();
        channel_open = false;
      }
    }
    if (peer_in_at != 99 && fds[peer_in_at].revents != 0) {
      // A spare descriptor is given up for the receive, so that a process at its fd limit still
      // takes the memfd of a large change (the kernel would drop it, and the change with it).
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
    if (peer_out_at != 99 && (fds[peer_out_at].revents & (POLLHUP | POLLERR)) != 0) {
      // The next generation is gone (rolled back, or crashed): nothing more can be handed over.
      std::lock_guard lock(mutex);
      next_gone_locked(true);
    } else if (peer_out_at != 99 && fds[peer_out_at].revents != 0) {
      flush_peer_out();
    }
    if (next_gone_notice.exchange(false) && next_gone_callback) guarded("on_next_gone", next_gone_callback);
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
    const auto deadline = Clock::now() + options.flush_timeout;
    for (;;) {
      bool pending = false;
      {
        std::lock_guard lock(mutex);
        pending = peer_out && snapshot_sent && !peer_queue.empty();
      }
      if (!pending || !flush_peer_out()) break;
      if (Clock::now() >= deadline) {
        std::lock_guard lock(mutex);
        say("%zu change(s) for the next generation were not sent within the flush timeout", peer_queue.size());
        break;
      }
      pollfd p{};
      {
        std::lock_guard lock(mutex);
        if (!peer_out) break;
        p = {peer_out.get(), POLLOUT, 0};
        peer_backoff = false;
      }
      ::poll(&p, 1, std::clamp(ms_until(deadline), 1, 10));
    }
  }
  // A link over which an arena was lent or borrowed is left open, to be closed by the kernel when
  // the process exits: the other generation takes its closing for this process's exit, after which
  // it makes the arena's memory its own (Arena::reclaim), and this process may still map it.
  std::lock_guard lock(mutex);
  if (!lent_to_next.empty()) (void)peer_out.release();
  if (!borrowed_from_previous.empty()) (void)peer_in.release();
  for (Fd& link : parked_links)
    (void)link.release();
}

}  // namespace hotrestart
