// What a worker hands to the next generation and borrows from the previous one, and the one lock
// that guards it: the link to the next generation and the deltas and descriptors waiting to go
// over it, the descriptors passed for every transfer, the drain flag, and the arenas lent to the
// next generation or borrowed from the previous one. The application's threads (publish_delta,
// pass_fd), the SDK thread (the export, the link's events) and the destructor's flush all reach
// it; every field is private and every method takes the lock itself, so that no caller can touch
// a field without it.
//
// The rules it keeps:
//  - A section streams (its changes are queued) from before its snapshot is taken: a change made
//    while `save` runs is then in the snapshot, in a delta, or in both, never in neither. Each
//    change gets the next sequence number, and each snapshot says which it holds (snapshot-covers):
//    the importer applies only the later ones, so that a change is applied exactly once.
//  - Queued messages go only once snapshot-end has (snapshot_sent()). Until then the exporter alone
//    writes to the link, blocking and outside the lock, and flush() sends nothing.
//  - An arena's flag is set before the offer that lends it is sent (lend_arena) or before
//    load_arena sees it (borrow_arena), and cleared only once the other process is gone: its link
//    closed (next_gone(LinkEnd::PeerClosed), previous_gone()).
//  - A link over which an arena was lent is never closed while the process lives: given up on
//    after a failed send, it is parked; at exit it is left for the kernel to close. (A new
//    transfer closes the link of an earlier one, assuming that the earlier next generation is
//    gone by then; see begin_transfer.)
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <hotrestart/fd.h>

#include <hotrestart/wire/message.h>
#include "worker_common.h"

namespace hotrestart::sdk {

// How the link to the next generation ended.
enum class LinkEnd {
  PeerClosed,  // The next generation closed it: its process has exited.
  SendFailed,  // A send failed here; the next generation may still be alive.
};
// The end that a failed send's errno means.
LinkEnd link_end_for(int error_code);

// What became of a change or a descriptor handed to the next generation.
enum class QueueOutcome {
  Refused,           // It cannot be queued (too large, no room, nothing will ever receive it).
  NothingToSendNow,  // No transfer needs it now: not streamed, or kept for the next transfer.
  Queued,            // Waiting for flush().
};

// Set while another process may map an arena's memory (see arena.h).
using ArenaShare = std::shared_ptr<std::atomic<bool>>;

class HandoverState {
 public:
  HandoverState(std::size_t max_queued_bytes, std::size_t max_delta_bytes)
      : max_queued_bytes_(max_queued_bytes), max_delta_bytes_(max_delta_bytes) {}

  // --- The export, on the SDK thread (in the stub, on its exporter thread).

  // Takes `link` as the next generation's for a new transfer and forgets what was streamed or
  // queued for an earlier one. Returns the descriptor, for the exporter's own blocking sends. An
  // earlier link still held is closed, not parked, even when arenas were lent over it: this relies
  // on the supervisor beginning a transfer only once the earlier next generation is gone.
  int begin_transfer(Fd link);
  // From here on publish_delta() queues changes to `section`, encoded in `version`.
  void start_streaming(const std::string& section, std::uint32_t version);
  void lend_arena(ArenaShare share);
  struct PassedFds {
    std::vector<std::string> names;
    std::vector<int> fds;  // Still owned here: never closed before the HandoverState is destroyed.
  };
  // The descriptors pass_fd() kept for every transfer, which go with this transfer's snapshot; one
  // passed from here on follows the snapshot in the queue instead.
  PassedFds take_passed_fds_for_snapshot();
  // Snapshot-end went (or the link failed on the way, `link_end` says how): queued messages may
  // follow.
  void snapshot_sent(std::optional<LinkEnd> link_end);
  // The sequence number of the last change queued (0: none yet).
  std::uint64_t delta_sequence() const;

  // --- The application's threads.

  // Queues a change to `section` if a transfer of it is under way. `encode` runs under the lock.
  QueueOutcome queue_delta(std::string_view section, const std::function<std::string(std::uint32_t version)>& encode);
  // Keeps a copy of `fd` for every later transfer (before the drain) and queues it for a next
  // generation whose snapshot has taken the kept ones already.
  QueueOutcome queue_fd(std::string name, Fd fd);
  void start_draining();
  // A resume undid the drain: descriptors passed from here on are kept for later transfers again.
  void stop_draining();

  // --- The previous generation's side.

  void borrow_arena(ArenaShare share);
  // The snapshot of `section` holds every change of the previous generation numbered up to
  // `sequence` (snapshot-covers).
  void snapshot_covers(const std::string& section, std::uint64_t sequence);
  // Whether the imported snapshot of `section` held the change numbered `sequence` already.
  bool covered(std::string_view section, std::uint64_t sequence) const;
  // The previous generation has exited: the arenas it lent are this generation's alone.
  void previous_gone();

  // --- The SDK thread.

  // Sends what is queued for the next generation without blocking. Returns false once the link is
  // broken (the next generation is gone), after which nothing more is queued.
  bool flush();
  // After a send failed for a passing reason: ends the back-off and flushes again.
  bool retry_after_backoff();
  // The next generation's link is done with: drops what was queued for it.
  void next_gone(LinkEnd how);
  // What run_thread() polls the link for. `fd` is -1 without a link.
  struct PollRequest {
    int fd = -1;
    short events = 0;
    bool backoff = false;    // Poll with a short timeout, then retry_after_backoff().
    std::uint64_t link = 0;  // Which link `fd` was: each transfer's gets a new number.
  };
  PollRequest poll_request() const;
  // poll() saw `link` (PollRequest::link) hang up: the next generation closed it. A link replaced
  // since it was polled (a new transfer began meanwhile) is left alone.
  void link_hung_up(std::uint64_t link);
  // Whether the next generation went away since the last call (on_next_gone is owed).
  bool take_next_gone_notice() { return next_gone_notice_.exchange(false); }

  // --- The destructor, once the SDK thread has stopped.

  // Sends what is queued, waiting for room on the link until `deadline`.
  void flush_until(Clock::time_point deadline);
  // Leaves open, for the kernel to close at exit, every link over which an arena was lent or
  // borrowed (`previous_link` is the previous generation's).
  void leave_arena_links_open(Fd& previous_link);

 private:
  struct Outgoing {
    wire::Message message;
    std::vector<Fd> fds;
    std::size_t bytes = 0;
  };
  void next_gone_locked(LinkEnd how);
  void forget_queue_locked();
  QueueOutcome enqueue_locked(Outgoing out);

  const std::size_t max_queued_bytes_;
  const std::size_t max_delta_bytes_;

  mutable std::mutex mutex_;
  Fd next_link_;
  std::uint64_t link_number_ = 0;  // Counts the transfers' links (PollRequest::link).
  bool passed_fds_taken_ = false;  // This transfer's snapshot has taken passed_fds_.
  bool snapshot_sent_ = false;
  std::map<std::string, std::uint32_t> streaming_;  // Section -> negotiated version, while exporting.
  std::deque<Outgoing> queue_;
  std::size_t queued_bytes_ = 0;
  std::uint64_t delta_sequence_ = 0;
  std::map<std::string, std::uint64_t, std::less<>> covered_;  // Section -> snapshot-covers' sequence.
  std::vector<std::pair<std::string, Fd>> passed_fds_;         // Sent with every export.
  bool draining_ = false;
  std::vector<ArenaShare> lent_to_next_;
  std::vector<ArenaShare> borrowed_from_previous_;
  std::vector<Fd> parked_links_;  // Given up on, but kept open while arenas are lent over them.
  bool backoff_ = false;          // A send failed for a passing reason; retry shortly.
  // Set by next_gone_locked(); the SDK thread runs on_next_gone after, outside the lock.
  std::atomic<bool> next_gone_notice_{false};
};

}  // namespace hotrestart::sdk
