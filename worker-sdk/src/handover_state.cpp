// What a worker hands to the next generation and borrows from the previous one, under one lock
// (see handover_state.h for the rules it keeps).
#include "handover_state.h"

#include <fcntl.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <ostream>

#include <hotrestart/wire/channel.h>
#include <hotrestart/wire/section.h>

namespace hotrestart::sdk {
namespace {

// Errors on a send that pass: the kernel is short of memory or of room for descriptors in flight.
bool transient_send_error(int code) {
  return code == ENOBUFS || code == ENOMEM || code == ETOOMANYREFS;
}

std::size_t message_bytes(const wire::Message& m) {
  if (const auto* d = std::get_if<wire::Delta>(&m)) return d->payload.size() + d->section.size() + 64;
  return 256;
}

}  // namespace

LinkEnd link_end_for(int error_code) {
  return error_code == EPIPE || error_code == ECONNRESET ? LinkEnd::PeerClosed : LinkEnd::SendFailed;
}

// ---------------------------------------------------------------------------------------------
// The export

int HandoverState::begin_transfer(Fd link) {
  std::lock_guard lock(mutex_);
  const int fd = link.get();
  next_link_ = std::move(link);
  ++link_number_;
  passed_fds_taken_ = false;
  snapshot_sent_ = false;
  streaming_.clear();
  forget_queue_locked();
  return fd;
}

void HandoverState::start_streaming(const std::string& section, std::uint32_t version) {
  std::lock_guard lock(mutex_);
  streaming_[section] = version;
}

void HandoverState::lend_arena(ArenaShare share) {
  std::lock_guard lock(mutex_);
  lent_to_next_.push_back(std::move(share));
}

HandoverState::PassedFds HandoverState::take_passed_fds_for_snapshot() {
  PassedFds passed;
  std::lock_guard lock(mutex_);
  passed_fds_taken_ = true;
  for (const auto& [name, fd] : passed_fds_) {
    passed.names.push_back(name);
    passed.fds.push_back(fd.get());
  }
  return passed;
}

void HandoverState::snapshot_sent(std::optional<LinkEnd> link_end) {
  std::lock_guard lock(mutex_);
  snapshot_sent_ = true;
  if (link_end) next_gone_locked(*link_end);
}

std::uint64_t HandoverState::delta_sequence() const {
  std::lock_guard lock(mutex_);
  return delta_sequence_;
}

// ---------------------------------------------------------------------------------------------
// The application's threads

QueueOutcome HandoverState::queue_delta(std::string_view section,
                                        const std::function<std::string(std::uint32_t version)>& encode) {
  std::lock_guard lock(mutex_);
  auto it = streaming_.find(std::string(section));
  if (!next_link_ || it == streaming_.end()) return QueueOutcome::NothingToSendNow;  // No transfer under way.
  std::string payload = encode(it->second);
  if (payload.size() > max_delta_bytes_) return QueueOutcome::Refused;
  Outgoing out;
  const std::uint64_t sequence = ++delta_sequence_;
  if (payload.size() <= wire::kMaxDeltaPayload) {
    out.message = wire::Delta{std::string(section), it->second, sequence, std::move(payload)};
    out.bytes = message_bytes(out.message);
  } else {
    // Too large for one message: it goes as a sealed memfd in the section format, checked on
    // arrival like a snapshot.
    auto written = wire::write_section(
        std::string(section), it->second, sequence, [&](std::ostream& o) { o.write(payload.data(), payload.size()); },
        payload.size());
    if (!written) return QueueOutcome::Refused;
    out.message = wire::DeltaMemfd{written->offer};
    out.fds.push_back(std::move(written->memfd));
    out.bytes = payload.size() + 256;
  }
  return enqueue_locked(std::move(out));
}

QueueOutcome HandoverState::queue_fd(std::string name, Fd fd) {
  std::lock_guard lock(mutex_);
  const bool link = static_cast<bool>(next_link_);
  if (draining_ && !link) return QueueOutcome::Refused;  // Nothing will ever receive it.
  if (!draining_) {
    // Kept for every later transfer too, in case the next generation is rolled back.
    const int keep = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, 3);
    if (keep < 0) return QueueOutcome::Refused;
    passed_fds_.emplace_back(name, Fd(keep));
  }
  // Without a transfer it goes with the next one; in a transfer whose snapshot has not taken the
  // kept descriptors yet, it goes with the snapshot. Otherwise it follows the snapshot, queued.
  if (!link || (!passed_fds_taken_ && !draining_)) return QueueOutcome::NothingToSendNow;
  Outgoing out;
  out.message = wire::Fds{{std::move(name)}};
  out.fds.push_back(std::move(fd));
  out.bytes = 256;
  return enqueue_locked(std::move(out));
}

QueueOutcome HandoverState::enqueue_locked(Outgoing out) {
  if (queued_bytes_ + out.bytes > max_queued_bytes_) return QueueOutcome::Refused;
  queued_bytes_ += out.bytes;
  queue_.push_back(std::move(out));
  return QueueOutcome::Queued;
}

void HandoverState::start_draining() {
  std::lock_guard lock(mutex_);
  draining_ = true;
}

void HandoverState::stop_draining() {
  std::lock_guard lock(mutex_);
  draining_ = false;
}

// ---------------------------------------------------------------------------------------------
// The previous generation's side

void HandoverState::borrow_arena(ArenaShare share) {
  std::lock_guard lock(mutex_);
  borrowed_from_previous_.push_back(std::move(share));
}

void HandoverState::snapshot_covers(const std::string& section, std::uint64_t sequence) {
  std::lock_guard lock(mutex_);
  covered_[section] = sequence;
}

bool HandoverState::covered(std::string_view section, std::uint64_t sequence) const {
  std::lock_guard lock(mutex_);
  auto it = covered_.find(section);
  return it != covered_.end() && sequence <= it->second;
}

void HandoverState::previous_gone() {
  // Its process has exited (the link closes after its memory is unmapped): the arenas it lent
  // are this generation's alone.
  std::lock_guard lock(mutex_);
  for (auto& share : borrowed_from_previous_)
    share->store(false);
  borrowed_from_previous_.clear();
}

// ---------------------------------------------------------------------------------------------
// The SDK thread

bool HandoverState::flush() {
  std::lock_guard lock(mutex_);
  if (!next_link_) return false;
  if (!snapshot_sent_) return true;
  while (!queue_.empty()) {
    Outgoing& next = queue_.front();
    std::vector<int> fds;
    for (const auto& fd : next.fds)
      fds.push_back(fd.get());
    auto ok = wire::send_message(next_link_.get(), next.message, fds, wire::Blocking::No);
    if (!ok && ok.error().code() == EAGAIN) return true;
    if (!ok && transient_send_error(ok.error().code())) {
      // Nothing is dropped: run_thread() tries again shortly, without spinning on POLLOUT.
      backoff_ = true;
      return true;
    }
    if (!ok) {
      say("the next generation is gone (%s); %zu queued change(s) dropped", ok.error().text().c_str(), queue_.size());
      next_gone_locked(link_end_for(ok.error().code()));
      return false;
    }
    queued_bytes_ -= next.bytes;
    queue_.pop_front();
  }
  return true;
}

bool HandoverState::retry_after_backoff() {
  {
    std::lock_guard lock(mutex_);
    backoff_ = false;
  }
  return flush();
}

void HandoverState::next_gone(LinkEnd how) {
  std::lock_guard lock(mutex_);
  next_gone_locked(how);
}

void HandoverState::link_hung_up(std::uint64_t link) {
  std::lock_guard lock(mutex_);
  // The poll that saw the hang-up ran before the channel's messages of the same turn were served,
  // and a begin-export among them replaces the link: its revents are then the earlier link's.
  if (next_link_ && link == link_number_) next_gone_locked(LinkEnd::PeerClosed);
}

void HandoverState::next_gone_locked(LinkEnd how) {
  Fd link = std::move(next_link_);
  streaming_.clear();
  forget_queue_locked();
  if (how == LinkEnd::SendFailed) {
    // This side gave up on the link (a send failed), but the next generation may still be alive
    // and map arenas lent over it: the link stays open, so that it cannot take this for an exit,
    // and the arenas stay lent.
    if (!lent_to_next_.empty()) parked_links_.push_back(std::move(link));
    return;
  }
  // The next generation closed its end: an SDK closes a link over which it borrowed an arena only
  // by exiting (see leave_arena_links_open), and a process's memory is unmapped before its
  // descriptors are closed. The arenas lent over it are this generation's alone again.
  for (auto& share : lent_to_next_)
    share->store(false);
  lent_to_next_.clear();
  next_gone_notice_.store(true);
}

void HandoverState::forget_queue_locked() {
  queue_.clear();
  queued_bytes_ = 0;
}

HandoverState::PollRequest HandoverState::poll_request() const {
  std::lock_guard lock(mutex_);
  PollRequest request;
  request.backoff = backoff_;
  if (next_link_) {
    request.fd = next_link_.get();
    request.link = link_number_;
    // POLLOUT only while something waits, so that an idle link does not spin.
    const bool waiting = !queue_.empty() && snapshot_sent_ && !backoff_;
    request.events = static_cast<short>(waiting ? POLLOUT : 0);
  }
  return request;
}

// ---------------------------------------------------------------------------------------------
// The destructor

void HandoverState::flush_until(Clock::time_point deadline) {
  for (;;) {
    bool pending = false;
    {
      std::lock_guard lock(mutex_);
      pending = next_link_ && snapshot_sent_ && !queue_.empty();
    }
    if (!pending || !flush()) break;
    if (Clock::now() >= deadline) {
      std::lock_guard lock(mutex_);
      say("%zu change(s) for the next generation were not sent within the flush timeout", queue_.size());
      break;
    }
    pollfd p{};
    {
      std::lock_guard lock(mutex_);
      if (!next_link_) break;
      p = {next_link_.get(), POLLOUT, 0};
      backoff_ = false;
    }
    ::poll(&p, 1, std::clamp(ms_until(deadline), 1, 10));
  }
}

void HandoverState::leave_arena_links_open(Fd& previous_link) {
  // The other generation takes a link's closing for this process's exit, after which it makes the
  // arena's memory its own (Arena::reclaim), while this process may still map it: the kernel
  // closes these links when the process exits.
  std::lock_guard lock(mutex_);
  if (!lent_to_next_.empty()) (void)next_link_.release();
  if (!borrowed_from_previous_.empty()) (void)previous_link.release();
  for (Fd& link : parked_links_)
    (void)link.release();
}

}  // namespace hotrestart::sdk
