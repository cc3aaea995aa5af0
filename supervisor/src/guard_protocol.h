// What the supervisor tells its guard (guard.h), and the datagrams that carry it.
//
// The guard is a small process of the supervisor's own binary that outlives it: it holds copies of
// the listening sockets and of each generation's output pipe, and knows every generation's role and
// deadline, so that when the supervisor dies a candidate is ended, a drain still ends in SIGKILL on
// time, and the active generation's output is still read (docs/architecture.md, "When the
// supervisor dies"). docs/protocol.md, "Guard link", has the format.
//
// Each message is one SOCK_SEQPACKET datagram: a JSON object of at most kGuardMaxMessage bytes with
// "v" (kGuardProtocolVersion) and "op", and the descriptors the op names (SCM_RIGHTS). Both ends
// are the same binary except across a self-upgrade, so the version is checked all the same.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>
#include <hotrestart/wire/channel.h>

namespace hotrestart {

inline constexpr int kGuardProtocolVersion = 1;
inline constexpr std::size_t kGuardMaxMessage = 64 * 1024;
inline constexpr std::size_t kGuardMaxFds = 253;

// A generation's standing, as the guard acts on it when the supervisor is gone.
enum class GuardRole : std::uint8_t {
  Candidate,  // Not cut over: asked to drain (its drain signal), SIGKILL after its drain timeout.
  Active,     // Serves: left alone.
  Draining,   // Ending: SIGKILL at its deadline (or its drain timeout from the supervisor's death).
};
std::string_view guard_role_name(GuardRole role);

struct GuardGeneration {
  std::uint64_t number = 0;
  std::uint64_t release = 0;  // The release it runs (the history's number).
  pid_t pid = 0;              // Its main process, which leads its process group.
  std::uint64_t start = 0;    // The main process's start time (/proc/PID/stat), with the pid naming it.
  GuardRole role = GuardRole::Candidate;
  std::int64_t kill_at_ns = 0;  // Draining: when its SIGKILL is due (CLOCK_MONOTONIC); 0: not set.
  int drain_signal = 15;
  std::int64_t drain_ms = 30'000;
  bool operator==(const GuardGeneration&) const = default;
};
nlohmann::json to_json(const GuardGeneration& g);
Result<GuardGeneration> guard_generation_from_json(const nlohmann::json& j);

// One datagram: its JSON body and the descriptors that came with it.
struct GuardMessage {
  nlohmann::json body;
  std::vector<Fd> fds;
};

// Sends `body` (with "v" added) and `fds` as one datagram. A peer that is gone is an error with
// code() EPIPE; with Blocking::No, a full socket is one with code() EAGAIN (nothing was sent).
Status send_guard_message(int sock, nlohmann::json body, std::span<const int> fds = {},
                          wire::Blocking blocking = wire::Blocking::Yes);
// Receives one datagram without waiting: EAGAIN when there is none, EPIPE at end of file; any other
// error names what was wrong, and every descriptor that came with it is closed.
Result<GuardMessage> receive_guard_message(int sock);

}  // namespace hotrestart
