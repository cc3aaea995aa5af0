// The inside of hotrestart::Worker, shared by its rooms and by testing.cpp (the stub supervisor).
//
// Roles. Every worker may be a *new* generation (it imports in start()) and later an *old* one
// (it exports when the supervisor sends begin-export, then streams deltas and descriptors to the
// next generation over the peer link until it exits). The channel to the supervisor and both peer
// links are SOCK_SEQPACKET sockets; after start() one thread of the SDK's own serves them all.
//
// Rooms, one file each:
//   worker_start.cpp     start() in its modes: the supervised handshake, systemd, standalone, stub.
//   importer.cpp         the new generation's side of a transfer.
//   exporter.cpp         the old generation's side of a transfer.
//   worker_thread.cpp    the SDK thread: the channel, the peer links, and the destructor's flush.
//   worker.cpp           the public Worker methods.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <hotrestart/worker.h>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/channel.h>
#include <hotrestart/wire/message.h>
#include "worker_common.h"

namespace hotrestart {

class Worker::Impl {
 public:
  using Clock = std::chrono::steady_clock;

  explicit Impl(Worker::Options o) : options(std::move(o)) {}
  ~Impl();

  // start() in its three real modes, and in the stub's.
  std::string start();
  std::string start_stub(std::uint64_t generation);
  Status start_supervised(int channel_fd, Clock::time_point deadline);
  Status start_systemd(int count);
  Status start_standalone();
  Status check_sections() const;

  // The new generation's side of a transfer: reads the peer link until snapshot-end (or EOF, or
  // the deadline), importing every offered section. Fills `imported`. Never fails as a whole: a
  // section that cannot be imported starts cold, with its reason.
  wire::TransferTotals import_from(int peer, const std::vector<wire::SectionVersions>& plan, Clock::time_point deadline,
                                   const std::function<void(const wire::SectionReport&)>& report);
  // The old generation's side: writes every section of the plan to the peer link, then the passed
  // descriptors and snapshot-end. Deltas published from here on are queued for the peer.
  wire::TransferTotals export_to(Fd peer, std::uint64_t sequence, const std::vector<wire::SectionVersions>& plan,
                                 const std::function<void(const wire::SectionReport&)>& report);

  // An arena section from the previous generation: checked, mapped, and given to load_arena.
  ImportedSection import_arena(const wire::ArenaOffer& offer, Fd header, Fd memfd);
  // Sends a section as an arena if save_arena gives a snapshot. Returns false when it gave none
  // (the caller then tries `save`); true when it did, with `r` saying whether it went.
  bool export_arena(const Section& section, const std::string& name, std::uint32_t version, std::uint64_t sequence,
                    int link, wire::SectionReport& r, int& link_error);
  // A streamed section from the previous generation, read from `sock` as it arrives.
  ImportedSection import_stream(const wire::SectionStream& offer, Fd sock, Clock::time_point deadline);
  // Streams a section to the next generation while `save` writes it. Returns true when the stream
  // was offered (then `r` says whether it ended well, and the importer heard of a failure through
  // the stream itself); false when not even the offer could be sent.
  bool export_stream(const Section& section, const std::string& name, std::uint32_t version, std::uint64_t sequence,
                     int link, wire::SectionReport& r, int& link_error);
  // The next generation's link is done with: drops what was queued for it. `peer_closed`: the next
  // generation closed it (it has exited), rather than a send failing here. Under `mutex`.
  void next_gone_locked(bool peer_closed);

  // Sends what is queued for the next generation without blocking. Returns false once the peer
  // link is broken (the next generation is gone), after which nothing more is queued.
  bool flush_peer_out();
  // Handles one message from the previous generation after start(): a delta or descriptors.
  void on_peer_in(wire::Received received);
  void previous_gone();

  // The SDK thread (Mode::Supervised): polls the channel, the peer links and a wake-up eventfd.
  void run_thread();
  void wake();
  void on_channel_message(wire::Received received);
  void send_channel(const wire::Message& m);

  // Fields set before start() and read-only afterwards.
  Worker::Options options;
  std::vector<Section> sections;
  std::function<void()> drain_callback;
  std::function<void()> stop_callback;
  std::function<void(std::string, Fd)> fd_callback;
  std::function<void()> previous_gone_callback;
  std::function<void()> next_gone_callback;
  bool started = false;
  Mode mode = Mode::Standalone;
  std::uint64_t generation = 0;

  // Owned by the thread that called start() (the application's).
  std::vector<std::pair<std::string, Fd>> listeners;
  std::vector<std::pair<std::string, Fd>> received_fds;
  std::vector<ImportedSection> imported;
  bool stub_ready = false;

  // The channel to the supervisor. Sends come from the application's threads (ready, status)
  // and from the SDK thread; channel_mutex keeps each message whole and in order.
  Fd channel;
  std::mutex channel_mutex;
  std::string notify_socket;  // Mode::Systemd.

  // The previous generation's link, read by the SDK thread after start().
  Fd peer_in;

  // The next generation's link and what waits to go over it. Guarded by `mutex`.
  std::mutex mutex;
  struct Outgoing {
    wire::Message message;
    std::vector<Fd> fds;
    std::size_t bytes = 0;
  };
  Fd peer_out;
  bool snapshot_sent = false;                      // Queued messages may go once snapshot-end has.
  std::map<std::string, std::uint32_t> streaming;  // Section -> negotiated version, while exporting.
  std::deque<Outgoing> peer_queue;
  std::size_t peer_queue_bytes = 0;
  std::uint64_t delta_sequence = 0;
  std::vector<std::pair<std::string, Fd>> passed_fds;  // Sent with every export.
  bool draining = false;
  // Arenas lent to the next generation, and borrowed from the previous one: each flag is set while
  // the other process may map the arena's memory (see arena.h), and cleared once it is gone.
  std::vector<std::shared_ptr<std::atomic<bool>>> lent_to_next;
  std::vector<std::shared_ptr<std::atomic<bool>>> borrowed_from_previous;
  std::vector<Fd> parked_links;  // Given up on, but kept open while arenas are lent over them.
  bool peer_backoff = false;     // A send failed for a passing reason; retry shortly.

  // The SDK thread.
  std::thread thread;
  Fd wake_fd;     // An eventfd.
  Fd reserve_fd;  // /dev/null, closed while receiving from the previous generation.
  std::atomic<bool> quitting{false};
  std::atomic<bool> next_gone_notice{false};  // Set by next_gone_locked(); on_next_gone runs after.
};

}  // namespace hotrestart
