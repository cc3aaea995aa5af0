// Starting worker processes.
//
// libuv's uv_spawn cannot set LISTEN_PID to the child's own pid (that must happen after
// fork and before exec), so the supervisor forks by itself and is the single owner of
// reaping (see reaper.h); nothing in the supervisor calls uv_spawn.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include <hotrestart/base/result.h>

namespace hotrestart {

enum class ListenPid { Set, Omit };

struct SpawnRequest {
  std::string executable;                  // A path (resolved with resolve_executable).
  std::vector<std::string> argv;           // argv[0] included.
  std::vector<std::string> env;            // "NAME=value" entries, complete.
  std::vector<int> pass_fds;               // Become fds 3, 4, ... in the child, in this order.
  ListenPid listen_pid = ListenPid::Omit;  // Adds LISTEN_PID=<the child's pid>.
};

// Forks and execs. Returns the pid once exec has succeeded; an exec failure (its errno
// comes back through a close-on-exec pipe) is returned as an error naming the program,
// and that child is already reaped. The child leads a new process group, so a terminal's
// Ctrl-C reaches only the supervisor (which then drains workers in order), and so the
// supervisor can SIGKILL a worker together with everything it started.
Result<pid_t> spawn_process(const SpawnRequest& request);

// "name" with a '/' is used as it is; otherwise it is searched in `path_env` like execvp
// does. The result must be an executable regular file.
Result<std::string> resolve_executable(const std::string& name, const std::string& path_env);

// How a child ended, from a waitpid status.
struct ExitStatus {
  int code = -1;   // exit status, or -1 when killed by a signal.
  int signal = 0;  // terminating signal, or 0.
  static ExitStatus from_wait(int wstatus);
  std::string describe() const;  // "exited with status 3", "was killed by SIGABRT".
  bool success() const { return code == 0; }
};

}  // namespace hotrestart
