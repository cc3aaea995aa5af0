// hotrestart worker SDK: receive listening sockets, report readiness, drain, and carry in-memory
// state and open descriptors from one generation of a server to the next.
//
//   hotrestart::Worker worker({.fallback_listen = {{"http", "127.0.0.1:8080"}}});
//   worker.add_section({.name = "cache", .versions = {1, 2},
//                       .save = [&](std::uint32_t v, std::ostream& out) { cache.save(v, out); },
//                       .load = [&](std::uint32_t v, std::istream& in) { cache.load(v, in); }});
//   worker.on_drain([&] { server.stop_accepting_then_exit(); });
//   if (auto error = worker.start(); !error.empty()) { fprintf(stderr, "%s\n", error.c_str()); return 1; }
//   server.serve(worker.take_listener("http"));  // yours now: close it when you drain
//   worker.ready();                               // (the state was imported before start() returned)
//
// Under `hotrestart run` the worker talks to the supervisor over a channel (an anonymous socket
// whose fd number is in HOTRESTART_CHANNEL_FD). Started by systemd (LISTEN_FDS, NOTIFY_SOCKET) it
// uses those; started by hand it binds `fallback_listen` itself, so `./server` runs during
// development. hotrestart/testing.h has a stub for unit tests of applications.
//
// Threads. start() runs on the thread that calls it; every `load` and `load_arena` runs while
// start() waits, on a thread of the SDK's at a lower priority (Options::transfer_nice; with 0, and
// in the stub, on the thread that called start()).
// The SDK then runs the channel on a thread of its own; `save`, `save_arena`, `freeze`,
// `apply_delta`, on_drain, on_stop, on_active, on_fd, on_previous_gone and on_next_gone run there,
// one at a time, so they must synchronise with the application's threads (a `save` must see a
// consistent state: take the lock the writers take, or let Section::freeze fork a child that
// saves without stopping the application). An exception from a callback is reported on stderr, not
// propagated. No callback runs once ~Worker() has begun. The SDK never touches the application's
// event loop and installs no signal handler.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <istream>
#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include <hotrestart/arena.h>
#include <hotrestart/config.h>
#include <hotrestart/fd.h>

namespace hotrestart {

// What Section::freeze is given: the SDK's fork, to be called under the lock the writers take.
class SnapshotFork {
 public:
  // Forks the process here: the child saves the section from the state as it is at this instant.
  // `arenas` are the hotrestart::Arena objects the section's state lives in, if any: their memory
  // is shared between the processes, so this process writes its own copies of their pages until
  // the child is done (as after Arena::snapshot()). Call it once per freeze; a second call does
  // nothing. When the SDK calls freeze again because the snapshot's copies outgrew
  // Options::max_snapshot_copy_bytes, this waits, under that same lock, for the child to finish.
  void operator()(std::initializer_list<Arena*> arenas = {}) const;

  class Impl;
  explicit SnapshotFork(Impl& impl) : impl_(impl) {}

 private:
  Impl& impl_;
};

// A named piece of in-memory state carried to the next generation.
//
// The importer lists the schema versions it can read; the exporter writes the newest of those it
// can produce, so upgrades and downgrades both keep the state. The SDK frames the bytes (name,
// version, sequence, length, checksum) and validates the frame before `load` sees a byte. A section
// is imported whole or not at all: `load` must build into a staging object and swap only at the
// end; if it throws, the section starts cold (or, if the operator made it required, the upgrade
// rolls back) and the reason is reported.
struct Section {
  std::string name;                     // 1-64 characters: letters, digits, '-', '_', '.'.
  std::vector<std::uint32_t> versions;  // Schema versions this binary reads and writes (>= 1).
  std::function<void(std::uint32_t version, std::ostream& out)> save;
  std::function<void(std::uint32_t version, std::istream& in)> load;
  // Optional: applies one change published by the previous generation with publish_delta(),
  // encoded in the version negotiated for this section. With `freeze`, each change arrives exactly
  // once (in the snapshot or here, never both), so a change may be an operation ("add 1").
  // Without it, a change published while `save` ran may arrive both in the snapshot and here:
  // make such changes idempotent (docs/sdk.md, "Deltas applied exactly once"). It may call
  // publish_delta().
  std::function<void(std::uint32_t version, std::string_view delta)> apply_delta = {};

  // Optional, for state that lives in a hotrestart::Arena (arena.h): the arena goes to the next
  // generation as it is, with no copy, whenever both generations have these two and save_arena
  // returns a snapshot for the negotiated version; otherwise save and load run as above.
  // save_arena writes a small header (where things are in the arena, by offset) and returns
  // arena.snapshot(), both under the lock the writers take. load_arena gets that header and the
  // arena, checked against the checksum the exporter computed, mapped in this process and borrowed
  // (see arena.h); it must check the header against the arena (Arena::block_at) before trusting
  // an offset, and, like load, swap only at the end.
  std::function<Arena::Snapshot(std::uint32_t version, std::ostream& header)> save_arena = {};
  std::function<void(std::uint32_t version, std::istream& header, Arena arena)> load_arena = {};

  // Optional: stream the section to the next generation over a socket of its own while `save`
  // writes it, rather than write it whole into a memfd first. Export and import then overlap, and
  // no third copy of the state is held in memory; but `save` (and the lock it holds) lasts until the
  // importer has read all but the last few megabytes, so choose it when `load` keeps pace with
  // `save`. The importer's `load` reads the bytes as they arrive: use InputArchive, and check
  // at_end() when done, which fails if the stream was cut short or corrupted.
  bool stream = false;

  // Optional: save without stopping the application. Without it, `save` holds the writers' lock
  // from its first byte to its last, and every request that needs the lock waits that long. With
  // it, the SDK calls freeze(fork) on its thread; freeze takes the lock the writers take and calls
  // fork() under it, and returns:
  //
  //   .freeze = [&](const hotrestart::SnapshotFork& fork) { std::lock_guard lock(mutex); fork(); },
  //
  // The SDK forks the process there. The child, a copy-on-write image of this process in which
  // only the SDK's thread runs, calls `save` (whose lock is free in the child once freeze has
  // returned there), writes the section, and exits; meanwhile the application serves and writes
  // on, its changes travelling as deltas. The application pauses only for the fork (page tables:
  // milliseconds per GiB of heap). In the child `save` must use nothing but the state and `out`:
  // no other thread runs there, so a lock another thread held at the fork stays held, and the child
  // has no descriptors but the standard ones and its output. Each page this process writes while the
  // child runs is copied once; when the copies pass Options::max_snapshot_copy_bytes, the SDK calls
  // freeze again, and fork() then waits under the lock for the child (the locked path, logged).
  // If freeze does not call fork(), or the fork fails, `save` runs as without freeze (logged).
  // See docs/sdk.md, "Snapshots without a pause".
  std::function<void(const SnapshotFork& fork)> freeze = {};
};

// What start() brought over from the previous generation, section by section.
struct ImportedSection {
  std::string name;
  bool imported = false;      // false: the section starts cold, for `reason`.
  std::uint32_t version = 0;  // The schema version it was imported in.
  std::uint64_t bytes = 0;    // Payload size.
  std::string reason;         // Why it starts cold ("no common schema version: ...").
};

// A configuration the supervisor manages (`hotrestart run --config NAME=PATH`), as Worker sees it:
// Worker::add_config() makes one of a hotrestart::Config<T>. The SDK calls these on the SDK thread
// (and, for the version the generation starts with, in start()).
struct ConfigHooks {
  std::string name;  // 1-128 characters: letters, digits, '.', '_', ':', '-'.
  // Parses and stages `bytes` as `version`: "" when staged, else why not.
  std::function<std::string(std::string_view bytes, std::uint64_t version)> prepare;
  // Makes the staged `version` live; false when it is not staged.
  std::function<bool(std::uint64_t version)> commit;
  std::function<void(std::uint64_t version)> abort;
  std::function<std::uint64_t()> version;  // The live version (0: none).
};

// How the worker was started, as start() found out.
enum class Mode {
  Supervised,  // by `hotrestart run`, with a channel: state, fds and drain messages.
  Systemd,     // with LISTEN_FDS / NOTIFY_SOCKET and no channel: no state carried.
  Standalone,  // by hand: the listeners were bound from `fallback_listen`.
  Stub,        // by hotrestart::testing::StubSupervisor.
};
std::string_view mode_name(Mode mode);

class Worker {
 public:
  struct Options {
    // Listener name -> "HOST:PORT" ("[::1]:PORT" for IPv6, port 0 for any free port), bound
    // by the worker itself when it is started without a supervisor.
    std::map<std::string, std::string> fallback_listen;
    // Bounds start(): the handshake and the state import together.
    std::chrono::milliseconds start_timeout{60'000};
    // How long the destructor waits to hand queued deltas and fds to the next generation.
    std::chrono::milliseconds flush_timeout{5'000};
    // The largest section this worker imports; a larger one starts cold.
    std::uint64_t max_section_bytes = std::uint64_t{64} << 30;
    // The most bytes of deltas and descriptors waiting for the next generation; past it,
    // publish_delta() returns false.
    std::size_t max_queued_bytes = std::size_t{64} << 20;
    // The largest single change publish_delta() sends (one larger is refused). Changes over
    // 60,000 bytes travel in a sealed memfd instead of inside a message.
    std::size_t max_delta_bytes = std::size_t{16} << 20;
    // The application can be taken back into service after its drain: it calls wait_for_resume()
    // when its drain is done, before it exits. The supervisor then keeps this generation parked
    // (alive, serving nothing, its state kept) through the next release's watch window, and a
    // revert in that window resumes it in milliseconds instead of starting the release again.
    bool resumable = false;
    // The largest configuration this worker takes from the supervisor; a larger one is refused.
    std::uint64_t max_config_bytes = std::uint64_t{64} << 20;
    // Sections with Section::freeze: the most memory the pages copied while a forked save runs
    // may take (pages this process writes, each copied once). Past it, writes wait for the save.
    // 0: never fork; every save holds the lock.
    std::uint64_t max_snapshot_copy_bytes = std::uint64_t{1} << 30;
    // The nice value (0 to 19) of a transfer's heavy work: a forked save, the checksums of an
    // arena, and (in a new generation) the import, which runs on a thread of the SDK's while
    // start() waits. Both generations run at once during an upgrade, and this keeps that work from
    // taking CPU from the one that serves. Under a saturated CPU the transfer then takes longer
    // (the supervisor's --state-timeout bounds it). 0: the transfer runs at the application's
    // priority, and the import on the thread that calls start().
    int transfer_nice = 10;
  };

  Worker();
  explicit Worker(Options options);
  ~Worker();  // Flushes what is queued for the next generation (bounded), then disconnects.
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Before start().
  void add_section(Section section);
  // Before start(): the configuration `name`, which the supervisor reloads (`hotrestart run
  // --config NAME=PATH`, then `hotrestart reload`, SIGHUP or --watch-config). start() returns with
  // the supervisor's live version committed in `config` (a version that the parser refuses makes
  // start() fail, and an upgrade roll back); afterwards each reload is offered to every generation
  // that serves: the parser runs on the SDK thread (prepare), and the new version is committed only
  // once every generation has accepted it, so that all of them switch or none does. Without a
  // supervisor, or for a name the supervisor does not manage, `config` stays as the application
  // loaded it. See docs/sdk.md, "Configuration".
  template <class T>
  void add_config(std::string name, Config<T>& config) {
    add_config(ConfigHooks{std::move(name),
                           [&config](std::string_view bytes, std::uint64_t v) { return config.prepare(bytes, v); },
                           [&config](std::uint64_t v) { return config.commit(v); },
                           [&config](std::uint64_t v) { config.abort(v); }, [&config] { return config.version(); }});
  }
  void add_config(ConfigHooks hooks);
  // The supervisor asks this generation to drain: close the listeners (close(), never
  // shutdown(): the socket is shared with the next generation), finish in-flight work, exit.
  // Without a callback the SDK raises SIGTERM in the process, as a plain worker would get it.
  void on_drain(std::function<void()> callback);
  // The supervisor asks this generation to stop at once. Without a callback: SIGKILL.
  void on_stop(std::function<void()> callback);
  // A descriptor the previous generation handed over after start() returned (pass_fd() during
  // its drain, such as an idle keep-alive connection). The callback owns it.
  void on_fd(std::function<void(std::string name, Fd fd)> callback);
  // The previous generation has exited: no more deltas or descriptors will arrive, and arenas it
  // lent are this generation's alone (Arena::reclaim() succeeds from here on).
  void on_previous_gone(std::function<void()> callback);
  // The next generation ended before this one did (it was rolled back, or crashed): this one goes
  // on serving, and arenas it handed over are its own again (Arena::reclaim() succeeds).
  void on_next_gone(std::function<void()> callback);
  // This generation is now the one that serves: under `hotrestart run`, the supervisor says so at
  // its first generation's start, at the cutover of an upgrade, and when a revert resumes it. Until
  // then the generation is a *candidate*: should its supervisor die before the cutover, the SDK
  // drains it (on_drain) so that the old generation alone serves. A server whose requests change
  // state should accept connections only from here, so that no write is ever acknowledged by a
  // generation that may never serve: after start(), take the listeners and call ready() (the
  // cutover waits for ready(), so calling it here would never come), and start accepting (polling
  // the listeners) in this callback. In every other mode the generation is active at once, and
  // this runs at the end of start(), on its caller's thread. Set it before start().
  void on_active(std::function<void()> callback);

  // Connects to the supervisor (or reads LISTEN_FDS, or binds the fallback addresses), receives
  // the listeners, and imports the previous generation's state. Returns an empty string on
  // success, otherwise a sentence saying what failed; the application should then exit non-zero
  // (an upgrade rolls back). Call once.
  [[nodiscard]] std::string start();

  Mode mode() const;
  // Whether this generation is the active one (see on_active); false again once it drains.
  bool active() const;
  std::uint64_t generation() const;  // 1, 2, ... under a supervisor; 0 otherwise.

  // The listening socket of that name, or -1, to look at (its address, say): the Worker owns it
  // until take_listener(), and closes it when it is destroyed, so never close it yourself or hand it
  // to code that will. take_listener() gives it to you: serve on that one, and close it when you
  // drain. A listener arrives blocking, and is one socket (one open file description) shared with
  // the supervisor and every generation: setting or clearing O_NONBLOCK on it does so for all of
  // them (docs/sdk.md, "The listening sockets").
  int listener(std::string_view name) const;
  Fd take_listener(std::string_view name);
  std::vector<std::string> listener_names() const;

  // A descriptor the previous generation passed with pass_fd() before the state transfer, or an
  // empty Fd.
  Fd take_fd(std::string_view name);
  const std::vector<ImportedSection>& imported() const;

  // Tells the supervisor that this generation serves (again, after wait_for_resume() returned
  // true). Under systemd: sd_notify READY=1.
  void ready();

  // With Options::resumable, once the drain is done (listeners closed, connections finished or
  // handed over): blocks while the supervisor may still bring this generation back. Returns true
  // when it does: the listeners are back (listener(), take_listener()), publish_delta() and
  // pass_fd() work as before the drain; open the listeners, then call ready(). Returns false, at
  // once when this generation was not parked, when the application should exit: the parking ended
  // (the new release proved itself, or the supervisor stops or is gone). The state stays as the
  // application left it; changes the next generation accepted since are not in it. Call it from the
  // application's thread, not from a callback.
  [[nodiscard]] bool wait_for_resume();
  // A short status line for `hotrestart status` (at most 256 bytes are kept).
  void status(std::string_view text);

  // Gauges for the supervisor's metrics endpoint (`hotrestart run --metrics`), each exported as
  // hotrestart_worker_NAME{generation="N",release="R"} until this generation exits. A NAME is 1 to
  // 64 of [a-zA-Z0-9_], not starting with a digit; a value is a finite number. Each call sends the
  // values it is given (the others keep theirs), with the SDK's own: sdk_deltas_applied and
  // sdk_fds_received (changes and descriptors taken from the previous generation), sdk_fds_passed.
  // The supervisor keeps 64 per generation. Returns false when there is no supervisor to receive
  // them (or they could not be sent); names the supervisor refuses are named in its log.
  bool publish_metrics(const std::vector<std::pair<std::string, double>>& gauges = {});

  // Hands a duplicate of `fd` to the next generation. Before this generation's drain, the SDK keeps
  // a copy and sends it with every state transfer (take_fd() in the next one), and also at once to
  // a next generation that has already taken the state; during the drain it goes at once (on_fd()
  // in the next one). Returns false when nothing can receive it (draining, with no next
  // generation): then keep or close it.
  bool pass_fd(std::string name, int fd);

  // Streams a change made after this section's snapshot to the next generation. Call it, and make
  // the change, under the lock `save` takes. `encode` is called (at once, on this thread, under the
  // SDK's lock: it must not call the Worker) only while a transfer of the section is under way,
  // with the negotiated version. Returns false only when the change could not be queued (larger than
  // Options::max_delta_bytes, or more than max_queued_bytes waiting): a write should then be
  // refused rather than acknowledged.
  bool publish_delta(std::string_view section, const std::function<std::string(std::uint32_t version)>& encode);

  class Impl;

 private:
  friend class testing_access;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hotrestart
