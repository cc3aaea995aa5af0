// The guard: the process that carries the supervisor's promises past its death.
//
// `hotrestart run` starts it (the same binary, as `hotrestart __guard`) with one end of a
// seqpacket socketpair at fd 3, and keeps it told of every generation (guard_link.h). While the
// supervisor lives, the guard only holds: copies of the listening sockets, of each generation's
// output pipe, and the table of roles and deadlines. When the link reaches end of file, the
// supervisor is gone, and the guard carries out the death policy (docs/architecture.md, "When the
// supervisor dies"):
//
// - a candidate (not cut over) is asked to drain with its drain signal, and killed with its process
//   group after its drain timeout: it never serves on its own authority;
// - a draining generation is killed at the deadline the supervisor had set;
// - the active generation is left alone, and its output is read and relayed, so that a worker that
//   logs neither dies of SIGPIPE nor blocks on a full pipe;
// - the listening sockets stay open, so that the port refuses nothing.
//
// It exits once no generation is left (closing the listeners), or at once when the supervisor
// releases it at a stop. Signals to the guard are ignored while the supervisor lives (a terminal's
// Ctrl-C, or a service manager that signals every process, must not take the guard away while the
// supervisor drains); once it is alone, SIGTERM ends it.
#pragma once

#include <cstdint>

#include "guard_protocol.h"

namespace hotrestart {

// What the guard does for one generation once the supervisor is gone.
struct OrphanPlan {
  bool drain_now = false;       // Send its drain signal now.
  std::int64_t kill_at_ns = 0;  // SIGKILL to its process group then (CLOCK_MONOTONIC); 0: never.
};
OrphanPlan plan_for_orphan(const GuardGeneration& g, std::int64_t now_ns);

// The guard's log format (log.h), given in its environment: "text", "journal" or "json".
inline constexpr char kGuardLogFormat[] = "HOTRESTART_GUARD_LOG_FORMAT";

// The guard process's main: `argv` is {"hotrestart", "__guard", NAME}. Returns its exit code.
int run_guard(int argc, char** argv);

}  // namespace hotrestart
