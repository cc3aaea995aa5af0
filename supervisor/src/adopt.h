// `hotrestart run --adopt-binds`: the supervisor's side of the preload library
// (supervisor/adopt/adopt.c; docs/operations.md, "Servers that bind their own port").
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include <hotrestart/base/result.h>

#include "process_table.h"

namespace hotrestart {

inline constexpr const char* kAdoptLibraryName = "libhotrestart-adopt.so";

// Where the preload library is: $HOTRESTART_ADOPT_LIBRARY if set, else next to this executable's
// directory (../lib/ in a build tree, $libdir/hotrestart/ once installed). An error lists where it
// looked.
Result<std::string> find_adopt_library();

// Whether the dynamic linker will preload a library into `executable`: a script is judged by its
// interpreter; a statically linked program (no PT_INTERP) or a set-user-ID or set-group-ID one
// (the linker ignores LD_PRELOAD for those) is refused with a sentence saying so.
// `shown_as` names the file in the error when `executable` is a /proc/self/fd path.
Status check_preloadable(const std::string& executable, const std::string& shown_as = {});

// The signal that tells the library to close a generation's listeners (SIGURG, which a process
// without the library ignores).
int adopt_drain_signal();

// The signal that carries the supervisor's park and resume commands to the library (SIGCONT, which
// changes nothing for a process that is not stopped). The library takes it as a command only when
// it is queued (sigqueue) by the supervisor's pid, with one of these values.
int adopt_control_signal();
enum class AdoptCommand : int { Park = 1, Resume = 2 };
// Queues `command` to every process of process group `pgid`, and to each of `also` (its processes
// that left the group); returns how many took it.
int send_adopt_command(pid_t pgid, AdoptCommand command, const std::vector<ProcessEntry>& also = {});

// The TCP connections, other than listeners, that the processes of process group `pgid` hold on
// any of `ports` (local port), from /proc. -1 when they cannot be counted (/proc/net/tcp, or a
// member's /proc/PID/fd, cannot be read).
int count_connections(pid_t pgid, const std::vector<std::uint16_t>& ports);

}  // namespace hotrestart
