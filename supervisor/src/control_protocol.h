// The control protocol, version 1 (docs/protocol.md has the full description).
//
// Transport: a Unix stream socket, mode 0600, peers checked with SO_PEERCRED.
// Framing:   one JSON object per line ("\n"-terminated UTF-8), at most kControlMaxLine bytes
//            per line and at most kControlMaxDepth levels of nesting.
// Exchange:  the client sends exactly one request line; the supervisor answers with one or
//            more lines and then closes the connection.
//
//   request   {"v":1,"cmd":"status"}
//             {"v":1,"cmd":"upgrade"}                        same command line
//             {"v":1,"cmd":"upgrade","exec":"/path"}         new executable, same arguments
//             {"v":1,"cmd":"upgrade","command":["prog","arg"]}  new command line
//             {"v":1,"cmd":"upgrade","hold":30000}           both serve for 30 s before cutover
//             {"v":1,"cmd":"upgrade","hold":"manual"}        both serve until promote or abort
//             {"v":1,"cmd":"upgrade","preflight":"CMD"}      CMD checks it first ("": no check);
//                                                            with any of the above, and with rollback
//             {"v":1,"cmd":"rollback"}                       the last good release before the active one
//             {"v":1,"cmd":"rollback","to":N}                release N (takes "hold" too)
//             {"v":1,"cmd":"promote"}                        end the hold now: cutover
//             {"v":1,"cmd":"abort"}                          end the hold now: rollback
//             {"v":1,"cmd":"history"}                        the releases
//             {"v":1,"cmd":"stop"}                           graceful stop
//             {"v":1,"cmd":"events","last":N,"follow":B}     the newest N events (default 20), and with
//                                                            "follow" each one after as it happens
//             {"v":1,"cmd":"reload","config":NAME,"file":F}  reload configurations (both fields optional)
//             {"v":1,"cmd":"config-rollback","config":NAME,"version":V}  a configuration's earlier version
//             {"v":1,"cmd":"config-history","config":NAME}   a configuration's versions
//   answers   {"v":1,"type":"status", ...}                   see Supervisor::status_json
//             {"v":1,"type":"history","releases":[...],...}  see docs/protocol.md
//             {"v":1,"type":"event","phase":"warming",...}   upgrade progress, zero or more
//             {"v":1,"type":"result","ok":true|false,...}    upgrade verdict, last line (but see "wait")
//             {"v":1,"type":"watch","ok":...,"outcome":...}  with "wait": how the watch window ended
//             {"v":1,"type":"stopping","pid":N}              stop accepted; closes at exit
//             {"v":1,"type":"events","seq":N,"file":...}     events: first, the newest event's number,
//             {"v":1,"type":"logged","event":{...}}          then the events, one a line (event_log.h);
//             {"v":1,"type":"end"}                           without "follow", last
//             {"v":1,"type":"ok","outcome":"done",...}       promote, abort: the verdict of the hold
//             {"v":1,"type":"reloaded","configs":[...]}      reload, config-rollback: the versions now live
//             {"v":1,"type":"config-history",...}            config-history
//             {"v":1,"type":"error","code":"...","error":"sentence"}
//
// Error codes: "invalid" (a reload refused: the file, or a generation's parser), "bad-request" (malformed, oversized,
// unknown field values), "version" (unsupported "v"), "busy" (an upgrade is in progress), "stopping", "forbidden" (peer
// uid), "unavailable" (a rollback whose release cannot be run again, or no release to go back to; a promote or abort
// when no upgrade is holding), "reverted" (an upgrade to an executable that was reverted, without "force").
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>

#include "hold.h"

namespace hotrestart {

inline constexpr int kControlProtocolVersion = 1;
// A request line: what the supervisor reads from anyone who can reach its socket.
inline constexpr std::size_t kControlMaxLine = 64 * 1024;
// An answer line, which the command-line client reads from its supervisor: a status grows with the
// listeners, the generations and their command lines, so the bound is only against a runaway.
inline constexpr std::size_t kControlMaxAnswer = 256 * 1024 * 1024;
inline constexpr int kControlMaxDepth = 8;
inline constexpr std::size_t kMaxCommandArgs = 4096;
inline constexpr std::uint64_t kDefaultEvents = 20;
inline constexpr std::uint64_t kMaxEvents = 100'000;

// Accumulates bytes from a stream and cuts them into lines, refusing a line longer than
// the limit before buffering more of it.
class LineReader {
 public:
  explicit LineReader(std::size_t max_line = kControlMaxLine) : max_line_(max_line) {}

  // Appends bytes. Returns false (and stays failed) if a line outgrows the limit.
  bool feed(std::string_view bytes);
  // The next complete line, without its "\n".
  std::optional<std::string> next_line();
  bool overflowed() const { return overflowed_; }
  std::size_t buffered() const { return buffer_.size(); }

 private:
  std::string buffer_;
  std::size_t tail_start_ = 0;  // Where the line after the last checked newline starts.
  std::size_t max_line_;
  bool overflowed_ = false;
};

// Parses a line as a JSON object after checking its nesting depth without recursion.
Result<nlohmann::json> parse_control_line(std::string_view line, std::size_t max_line = kControlMaxLine);

struct ControlRequest {
  enum class Command {
    ShowStatus,
    Upgrade,
    Rollback,
    History,
    Stop,
    Promote,
    Abort,
    SelfUpgrade,
    Events,
    Reload,
    ConfigRollback,
    ConfigHistory
  };
  Command command = Command::ShowStatus;
  std::optional<std::string> exec;               // upgrade: new executable; self-upgrade: the supervisor's
  std::optional<std::vector<std::string>> argv;  // upgrade: new command line
  std::optional<std::uint64_t> to;               // rollback: the release to run again
  Hold hold;                                     // upgrade, rollback: both generations serve a while
  bool wait = false;                             // upgrade, rollback: stay through the watch window and hear its end.
  bool force = false;                            // upgrade: even to an executable that was reverted.
  std::optional<std::string> preflight;          // upgrade, rollback: the check instead of run's ("": none)
  std::uint64_t last = kDefaultEvents;           // events: how many of the newest
  bool follow = false;                           // events: then each new one as it comes
  std::optional<std::string> config;             // reload, config-rollback, config-history: which one
  std::optional<std::string> file;               // reload: read this file instead of the configured path
  std::optional<std::uint64_t> version;          // config-rollback: the version to bring back
  // Who sent it (SO_PEERCRED), filled in by the control server; -1 when unknown.
  std::int64_t peer_uid = -1;
  std::int64_t peer_pid = -1;
};

// The request's "cmd": "status", "upgrade", ...
std::string_view control_command_name(ControlRequest::Command command);

// Validates a request object. Errors carry the protocol error code in `code()`-free form:
// the caller maps them with control_error_code().
struct ControlRequestError {
  std::string code;  // "bad-request" or "version"
  std::string message;
};
std::variant<ControlRequest, ControlRequestError> decode_control_request(const nlohmann::json& j);

nlohmann::json control_error(std::string_view code, std::string_view message);
std::string to_line(const nlohmann::json& j);  // Compact JSON plus "\n".

}  // namespace hotrestart
