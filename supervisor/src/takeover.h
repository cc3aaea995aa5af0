// Taking over what a supervisor that died left serving: `hotrestart run` with the same name asks
// the dead supervisor's guard (guard.h) for its listening sockets, its table of generations and
// their output pipes, and then manages those generations as its own (docs/architecture.md,
// "Taking over").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

#include "guard_protocol.h"

namespace hotrestart {

struct Inheritance {
  pid_t supervisor = 0;  // The supervisor that died.
  pid_t guard = 0;
  std::vector<std::string> listener_names;
  std::vector<Fd> listeners;  // In the order of the names.
  struct Generation {
    GuardGeneration facts;
    Fd output;  // The read end of its stderr pipe, if the guard had it.
  };
  std::vector<Generation> generations;
  Fd link;  // To the guard, for confirm().
};

// Asks the guard waiting at `path` for what it holds. Nothing when no guard waits there (no
// supervisor of this name died with generations left); an error naming the trouble when one does
// but the exchange fails. Blocks for at most a few seconds: it runs before the loop starts.
Result<std::optional<Inheritance>> ask_guard(const std::string& path);

// The record of what a supervisor runs (STATE-DIR/running.json, format 1): itself, its guard, its
// listeners (name, address, socket inode) and the guard's table of generations. Written at every
// change (release_store.h's BackgroundFile), read by a supervisor that takes over when the guard is
// gone too.
inline constexpr const char* kRunningRecord = "running.json";
struct ListenerRecord {
  std::string name;
  std::string address;
  std::uint64_t inode = 0;
};
struct ProcessRecord {
  pid_t pid = 0;
  std::uint64_t start = 0;
};
nlohmann::json running_record(ProcessRecord supervisor, ProcessRecord guard,
                              const std::vector<ListenerRecord>& listeners,
                              const std::vector<GuardGeneration>& generations);

// Takes over from the generations themselves, by the record in `state_dir`, when no guard answers:
// the listening sockets are taken from the live generations with pidfd_getfd (Linux 5.6; it needs
// ptrace rights over them), their stderr pipes opened through /proc. Nothing when the record names
// no live generation of a supervisor that is gone; an error naming the pids that hold the sockets
// when they cannot be taken.
Result<std::optional<Inheritance>> take_from_generations(const std::string& state_dir);

// A listening SOCK_SEQPACKET socket at `path` (mode 0600, a socket left there replaced, anything
// else left alone), non-blocking: the guard's takeover socket, and the one SDK workers of
// generations taken over connect to again (HOTRESTART_REJOIN).
Result<Fd> listen_seqpacket(const std::string& path);

// Tells the guard that everything was taken: it exits, and the generations are the caller's.
Status confirm_takeover(Inheritance& inheritance);

}  // namespace hotrestart
