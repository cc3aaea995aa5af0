// The inside of hotrestart::Worker, shared by its rooms and by testing.cpp (the stub supervisor).
//
// Roles. Every worker may be a *new* generation (it imports in start()) and later an *old* one
// (it exports when the supervisor sends begin-export, then streams deltas and descriptors to the
// next generation over the peer link until it exits). The channel to the supervisor and both peer
// links are SOCK_SEQPACKET sockets; after start() one thread of the SDK's own serves them all.
//
// Rooms, one file each:
//   worker_start.cpp     start() in its modes: the supervised handshake, systemd, standalone, stub.
//   importer.cpp         the new generation's side of a transfer (class Importer).
//   exporter.cpp         the old generation's side of a transfer (class Exporter).
//   forked_save.cpp      a section's save in a forked child (Section::freeze).
//   worker_thread.cpp    the SDK thread: the channel, the peer links, and the destructor's flush.
//   worker.cpp           the public Worker methods.
//   handover_state.cpp   what is shared with the next and previous generations, under one lock.
//   supervisor_channel.cpp  the channel to the supervisor, under its own lock.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <hotrestart/worker.h>

#include <hotrestart/base/result.h>
#include <hotrestart/wire/channel.h>
#include <hotrestart/wire/message.h>
#include "handover_state.h"
#include "supervisor_channel.h"
#include "worker_common.h"

namespace hotrestart {

class Worker::Impl {
 public:
  using Clock = sdk::Clock;

  explicit Impl(Worker::Options o)
      : options(std::move(o)), handover(options.max_queued_bytes, options.max_delta_bytes) {}
  ~Impl();

  // --- Start-up (worker_start.cpp): start() in its three real modes, and in the stub's.
  std::string start();
  std::string start_stub(std::uint64_t generation);
  Status check_sections() const;

  // --- The transfer, as the SDK thread and the stub run it (import_from is in worker_start.cpp,
  // export_to in worker_thread.cpp; the work is the Importer's and the Exporter's).
  // The new generation's side: reads `peer` until snapshot-end (or EOF, or the deadline),
  // importing every offered section, and adds to `imported` and `received_fds`. Never fails as a
  // whole: a section that cannot be imported starts cold, with its reason.
  wire::TransferTotals import_from(int peer, const std::vector<wire::SectionVersions>& plan, Clock::time_point deadline,
                                   const std::function<void(const wire::SectionReport&)>& report);
  // The old generation's side: writes every section of the plan to the peer link, then the passed
  // descriptors and snapshot-end. Deltas published from here on are queued for the peer.
  wire::TransferTotals export_to(Fd peer, std::uint64_t sequence, const std::vector<wire::SectionVersions>& plan,
                                 const std::function<void(const wire::SectionReport&)>& report);

  // --- The SDK thread (worker_thread.cpp).
  // Handles one message from the previous generation after start(): a delta or descriptors.
  void on_peer_in(wire::Received received);
  void previous_gone();
  // `active`: runs on_active (once until the next drain). Without a supervisor, start() calls it
  // itself; the stub, at start() and cut_over().
  void become_active();
  // After a delta or a descriptor was queued for the next generation: the SDK thread sends it, or
  // in the stub (which has no SDK thread) this thread does at once. Returns false once the link to
  // the next generation is broken.
  bool send_queued();

  // Who owns what. Three kinds of thread reach this object: the application's (the one that calls
  // start(), and any that call ready, status, pass_fd or publish_delta), the SDK thread
  // (run_thread, and every callback it runs), and the destructor's, which stops the SDK thread
  // before it flushes. In Mode::Stub there is no SDK thread: the stub's caller does its work, and
  // start_from() runs the previous worker's export on a thread of its own, as its process would.
  //
  // Set before start() returns, and read-only afterwards (the SDK thread is created after them):
  //   options, sections, configs, the seven callbacks, started, mode, generation, notify_socket, wake_fd.
  // Owned by the application's thread: listeners, received_fds, imported, stub_ready, thread.
  // Owned by start() until it creates the SDK thread, by the SDK thread afterwards, and by the
  // destructor once that thread is joined: peer_in, reserve_fd.
  // Shared, each under its own lock: `handover` (sdk::HandoverState: the next generation's link,
  // its queue, passed descriptors, the drain flag, lent and borrowed arenas) and `channel`
  // (sdk::SupervisorChannel: sends from any thread; after start() only the SDK thread
  // receives from it and closes it).
  // Shared, atomic: `quitting`, set by the destructor and read by the SDK thread.

  Worker::Options options;
  std::vector<Section> sections;
  std::vector<ConfigHooks> configs;
  std::function<void()> drain_callback;
  std::function<void()> stop_callback;
  std::function<void(std::string, Fd)> fd_callback;
  std::function<void()> previous_gone_callback;
  std::function<void()> next_gone_callback;
  std::function<void()> active_callback;
  bool started = false;
  Mode mode = Mode::Standalone;
  std::uint64_t generation = 0;

  std::vector<std::pair<std::string, Fd>> listeners;
  std::vector<std::pair<std::string, Fd>> received_fds;
  std::vector<ImportedSection> imported;
  bool stub_ready = false;

  sdk::SupervisorChannel channel;
  // Mode::Systemd and Mode::Standalone: where READY=1 and STATUS= go. Mode::Supervised: the
  // supervisor's notify socket, where publish_metrics() sends.
  std::string notify_socket;
  // What publish_metrics() adds of the SDK's own (counted on the SDK thread and the application's).
  std::atomic<std::uint64_t> deltas_applied{0};
  std::atomic<std::uint64_t> fds_received{0};
  std::atomic<std::uint64_t> fds_passed{0};

  // The previous generation's link.
  Fd peer_in;

  sdk::HandoverState handover;

  // Parking (Options::resumable): the SDK thread moves it on `drain`, `resume` and `listeners`;
  // wait_for_resume() waits on it on the application's thread.
  struct Parking {
    enum class State {
      Active,    // Not parked: wait_for_resume() returns false.
      Parked,    // Drained, waiting for `resume` until `until`.
      Resuming,  // `resume` came; its `listeners` are arriving.
      Resumed,   // Every listener came: wait_for_resume() returns true.
    };
    std::mutex mutex;
    std::condition_variable changed;
    State state = State::Active;
    Clock::time_point until;
    std::uint32_t expected = 0;
    std::vector<std::pair<std::string, Fd>> listeners;
    bool waiting() const { return state == State::Parked || state == State::Resuming; }
  };
  Parking parking;

  std::thread thread;  // The SDK thread (Mode::Supervised).
  Fd wake_fd;          // An eventfd that wakes the SDK thread's poll.
  Fd reserve_fd;       // /dev/null, closed while receiving from the previous generation.
  std::atomic<bool> quitting{false};
  // HOTRESTART_REJOIN: where an active generation whose supervisor died connects again, to the
  // supervisor that takes it over. Set by start(); the SDK thread's afterwards.
  std::string rejoin_path;
  bool rejoining = false;
  Clock::time_point rejoin_at{};
  Clock::duration rejoin_every{};
  // The supervisor said `active` (or there is no supervisor), and no `drain` came since; and
  // whether a drain has begun (a candidate whose supervisor is gone drains only once).
  std::atomic<bool> active{false};
  std::atomic<bool> draining{false};

 private:
  // Start-up steps (worker_start.cpp).
  Status start_supervised(int channel_fd, Clock::time_point deadline);
  Status start_systemd(int count);
  Status start_standalone();
  Result<std::uint32_t> handshake(Clock::time_point deadline);
  Status receive_listeners(std::uint32_t count, Clock::time_point deadline);
  // The versions of the configurations this generation starts with (config-prepare and
  // config-commit after the listeners); returns the message that follows them, the plan.
  Result<wire::Received> receive_configs(Clock::time_point deadline);
  Status import_previous(wire::Received begin, Clock::time_point deadline);
  Status start_thread();

  // The SDK thread's steps (worker_thread.cpp).
  void run_thread();
  void wake();
  struct PollSet;
  PollSet poll_set() const;
  void serve_channel();
  void on_channel_message(wire::Received received);
  // A configuration reload's messages (configs.h).
  void on_config_message(wire::Received& received);
  // `drain` and `resume` with its `listeners` (Parking).
  void on_drain(const wire::Drain& drain);
  void on_resume(const wire::Resume& resume);
  void on_resumed_listeners(const wire::Listeners& names, std::vector<Fd>& fds);
  void end_parking();
  // The hello this worker says (at the handshake, and when it rejoins).
  wire::Hello make_hello() const;
  // One attempt to connect to a supervisor that took this generation over (rejoin_path); the next
  // is scheduled when it fails.
  void try_rejoin();
  void serve_previous_generation();
  void serve_next_generation(short revents, std::uint64_t link);
};

}  // namespace hotrestart
