// What `hotrestart status` shows, and what the supervisor keeps for it: its counters and its last
// error. The status object itself (docs/protocol.md, "status") is put together by the Supervisor
// from these pieces, each built here from the room that owns the facts.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "generation.h"
#include "listener_set.h"
#include "run_options.h"

namespace hotrestart {

struct Counters {
  std::uint64_t upgrades_done = 0;
  std::uint64_t upgrades_rolled_back = 0;
  std::uint64_t crashes = 0;
  std::uint64_t restarts = 0;
  std::uint64_t reverts = 0;           // Releases reverted in their watch window.
  std::uint64_t draining_stopped = 0;  // Draining generations stopped early by --max-draining.
  nlohmann::json to_json() const;
};

// The last error the supervisor reported (and logged), with its age.
class LastError {
 public:
  // Logs `message` as an error and keeps it.
  void note(std::string message);
  nlohmann::json to_json() const;  // {"message", "age_ms"}, or null.

 private:
  std::string message_;
  std::chrono::steady_clock::time_point at_;
};

nlohmann::json listeners_json(const ListenerSet& listeners);
// `role`: "active", "candidate" or "old".
nlohmann::json generation_json(const Generation& g, std::string_view role);
// The settings `status` repeats: "ready", "drain", "state".
nlohmann::json ready_json(const RunOptions& options);
nlohmann::json drain_json(const RunOptions& options);
nlohmann::json state_json(const RunOptions& options);

std::int64_t ms_since(std::chrono::steady_clock::time_point t);

}  // namespace hotrestart
