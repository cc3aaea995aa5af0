// Releases: what each generation runs, and what became of it, kept for `hotrestart history` and
// `hotrestart rollback`.
//
// A release is one command line put in service: by `hotrestart run`, by an upgrade (the control
// socket or SIGUSR2), or by a rollback. It records the command, its executable's path and SHA-256
// (and a script's interpreter), who asked and when, and its outcome. The generations that run it
// (the first, and any crash restarts) share its number. Release numbers grow for as long as the
// state directory lives, across supervisor restarts; the history keeps the last kKept of them.
//
// The outcome is a lifecycle with a transition table, like a generation's:
//
//   starting ──► serving ──► retired     (a newer release replaced it)
//       │           ├──────► reverted    (it failed after cutover and the previous one came back)
//       │           └──────► stopped     (the supervisor stopped, or died, while it served)
//       ├──► rolled-back                 (it failed before cutover: the old one never stopped)
//       └──► stopped                     (the supervisor stopped while it was starting)
//
// ReleaseHistory is pure (no I/O): release_store.h keeps it on disk.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>

namespace hotrestart {

enum class ReleaseOutcome : std::uint8_t { Starting, Serving, RolledBack, Reverted, Retired, Stopped };
inline constexpr std::size_t kReleaseOutcomeCount = 6;
std::string_view release_outcome_name(ReleaseOutcome outcome);
bool transition_allowed(ReleaseOutcome from, ReleaseOutcome to);

// How a release was asked for.
// Signal: SIGUSR2. Reload: SIGHUP, which starts a new generation of the current release as SIGUSR2
// does (and will read --config files again once there are any).
enum class ReleaseOrigin : std::uint8_t { Run, Upgrade, Signal, Rollback, Revert, Reload };
inline constexpr std::size_t kReleaseOriginCount = 6;
std::string_view release_origin_name(ReleaseOrigin origin);  // "run", "upgrade", "SIGUSR2", ..., "SIGHUP"

struct Release {
  std::uint64_t number = 0;
  std::vector<std::string> command;
  std::string executable;          // The resolved path.
  std::string sha256;              // Of the executable, lower-case hex.
  std::string interpreter;         // A script's interpreter, or "".
  std::string interpreter_sha256;  // Its hash, or "".
  ReleaseOrigin origin = ReleaseOrigin::Run;
  std::int64_t uid = -1;  // Who asked, when known (the control socket's peer); -1 otherwise.
  std::int64_t pid = -1;
  std::int64_t started_ms = 0;  // Wall clock, milliseconds since the epoch.
  std::int64_t serving_ms = 0;  // When it began to serve; 0 if it never did.
  std::int64_t ended_ms = 0;    // 0 while it lasts.
  ReleaseOutcome outcome = ReleaseOutcome::Starting;
  std::string reason;             // Why it ended (rolled back, reverted), or "".
  std::uint64_t rollback_of = 0;  // A rollback: the release whose command it runs again.
  std::uint64_t generation = 0;   // The last generation that ran it (numbers restart with the supervisor).
  std::uint64_t restarts = 0;     // Crash restarts while it served.

  // It served, and was not reverted for failing: a release to go back to.
  bool served() const { return serving_ms != 0 && outcome != ReleaseOutcome::Reverted; }
  // The same command line from the same bytes (executable and interpreter).
  bool runs_the_same_as(const Release& other) const {
    return command == other.command && sha256 == other.sha256 && interpreter_sha256 == other.interpreter_sha256;
  }
  nlohmann::json to_json() const;
};

class ReleaseHistory {
 public:
  static constexpr std::size_t kKept = 50;
  static constexpr int kFormatVersion = 1;

  // Adds `release` as the newest, numbered next; the oldest beyond kKept is forgotten.
  Release& add(Release release);
  Release* find(std::uint64_t number);
  const Release* find(std::uint64_t number) const;
  // Moves `number` to `outcome` (checked against the table; a move the table refuses is ignored and
  // false), recording the reason and the end time for an outcome that ends it.
  bool set_outcome(std::uint64_t number, ReleaseOutcome outcome, std::string reason, std::int64_t now_ms);
  // A release that end_inherited() ended because its supervisor was gone serves after all: a
  // supervisor took its generation over. False when it was not ended that way.
  bool serving_again(std::uint64_t number);
  // The release `rollback` goes back to by default: the newest one older than `active` that served
  // (and so was neither rolled back nor reverted) and runs something else than `active`, or null.
  const Release* last_good_before(std::uint64_t active) const;

  const std::deque<Release>& releases() const { return releases_; }
  std::uint64_t next_number() const { return next_number_; }

  // The file format (docs/protocol.md, "State directory"): {"v":1,"next_release":N,"releases":[...]}.
  nlohmann::json to_json() const;
  // Reads what to_json() wrote, checking every field; the error names the first one that is wrong.
  static Result<ReleaseHistory> from_json(const nlohmann::json& j);

  // A history read at start-up that a supervisor before this one left: whatever was starting or
  // serving then ended with it.
  void end_inherited(std::int64_t now_ms);

 private:
  std::deque<Release> releases_;
  std::uint64_t next_number_ = 1;
};

}  // namespace hotrestart
