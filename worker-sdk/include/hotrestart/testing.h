// Unit tests of an application that uses hotrestart::Worker, with no supervisor and no process.
//
//   hotrestart::Worker v1(options), v2(options);
//   app1.register_with(v1);
//   REQUIRE(hotrestart::testing::StubSupervisor::start(v1).empty());     // binds fallback_listen
//   app1.put("k", "v");
//   app2.register_with(v2);
//   REQUIRE(hotrestart::testing::StubSupervisor::start_from(v2, v1).empty());
//   CHECK(app2.get("k") == "v");          // state went through the real section codec
//   hotrestart::testing::StubSupervisor::drain(v1);   // v1 passes its idle connections
//   hotrestart::testing::StubSupervisor::pump(v2);    // v2's on_fd and apply_delta run
//
// start_from() negotiates versions, writes every section into a sealed memfd, validates and
// imports it exactly as an upgrade does, and hands over the descriptors v1 passed with
// pass_fd(); only the processes and the supervisor are missing. Callbacks run on the calling
// thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include <hotrestart/worker.h>

namespace hotrestart::testing {

class StubSupervisor {
 public:
  // Starts `worker` in Mode::Stub as generation `generation`: it binds its fallback_listen
  // addresses and imports nothing. Returns what start() would. It is the active generation at once
  // (on_active runs before this returns).
  static std::string start(Worker& worker, std::uint64_t generation = 1);
  // Starts `next` as the generation after `previous` (which must have been started), carrying
  // the state and the passed descriptors over. `next` is a candidate until cut_over().
  static std::string start_from(Worker& next, Worker& previous);
  // The cutover: `next` becomes the active generation (its on_active runs on this thread).
  static void cut_over(Worker& next);
  // Delivers, on this thread, what `previous` has streamed to `next` since start_from(): deltas
  // (apply_delta) and descriptors (on_fd). Returns how many messages it handled.
  static std::size_t pump(Worker& next);
  // Ends `previous`'s side of the link, as its exit would: a pump() of `next` then runs its
  // on_previous_gone callback. Arenas lent between them count as released by `previous`, which
  // must not read them any more (`next` may reclaim them).
  static void end_previous(Worker& previous);
  // Runs `worker`'s on_drain / on_stop callback on this thread.
  static void drain(Worker& worker);
  static void stop(Worker& worker);
  // Whether ready() was called.
  static bool is_ready(const Worker& worker);
};

}  // namespace hotrestart::testing
