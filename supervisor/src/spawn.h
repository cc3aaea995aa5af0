// Starting worker processes.
//
// libuv's uv_spawn cannot set LISTEN_PID to the child's own pid (that must happen after
// fork and before exec), so the supervisor forks by itself and is the single owner of
// reaping (see reaper.h); nothing in the supervisor calls uv_spawn.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include <signal.h>

#include <hotrestart/base/result.h>
#include <hotrestart/fd.h>

namespace hotrestart {

enum class ListenPid { Set, Omit };

struct SpawnRequest {
  std::string executable;                  // A path (resolved with resolve_executable).
  std::vector<std::string> argv;           // argv[0] included.
  std::vector<std::string> env;            // "NAME=value" entries, complete.
  std::vector<int> pass_fds;               // Become fds 3, 4, ... in the child, in this order.
  ListenPid listen_pid = ListenPid::Omit;  // Adds LISTEN_PID=<the child's pid>.
  int stdin_fd = -1;                       // Becomes fd 0 in the child; -1: it keeps the supervisor's.
  int stdout_fd = -1;                      // Becomes fd 1 in the child; -1: it keeps the supervisor's.
  int stderr_fd = -1;                      // Becomes fd 2 in the child; -1: it keeps the supervisor's.
  int executable_fd = -1;  // If set: a compiled program, exec'd from this open file (execveat), not from the path.
  std::string cwd{};       // The directory the child starts in (an absolute path); empty: the supervisor's.
};

// Forks and execs. Returns the pid once exec has succeeded; an exec failure (its errno
// comes back through a close-on-exec pipe) is returned as an error naming the program,
// and that child is already reaped. So is a working directory that cannot be entered ("cannot
// enter working directory /srv/web: No such file or directory"). The child leads a new process group, so a terminal's
// Ctrl-C reaches only the supervisor (which then drains workers in order), and so the
// supervisor can SIGKILL a worker together with everything it started.
Result<pid_t> spawn_process(const SpawnRequest& request);

struct ChildFailure;

// The exec of a child started with start_process, which did not wait for it.
class PendingExec {
 public:
  // Readable once the answer is in.
  int fd() const { return pipe_.get(); }
  // Reads the answer without blocking: nullopt while it is not in; an empty Status once the child
  // has become the program (or has died before it could say otherwise); else why it could not, as
  // spawn_process says it. That child then exits with status 127, and its parent reaps it as any
  // other. Once in, the answer stays.
  std::optional<Status> outcome();

 private:
  friend Result<pid_t> start_process(const SpawnRequest& request, PendingExec& exec);
  Error failure_error(const ChildFailure& failure) const;
  Fd pipe_;
  std::optional<Status> answer_;
  std::string executable_;
  std::string cwd_;
  std::size_t passed_ = 0;
};

// spawn_process without the wait: returns once the child is forked (and leads its process group),
// before it has become the program, which may take milliseconds on a loaded host; `exec` tells how
// that went. For the loop, which must not wait on another process's turn on a CPU.
Result<pid_t> start_process(const SpawnRequest& request, PendingExec& exec);

// Raises this process's soft RLIMIT_NOFILE to its hard limit (each listener and each live
// generation costs the supervisor descriptors, and 1,024 is a common soft default). Every child
// spawn_process starts afterwards gets the soft limit back as it was before, or enough for what it
// is handed and 256 more if that is higher. Returns the limit now in force.
rlim_t raise_fd_limit();

// "name" with a '/' is used as it is; otherwise it is searched in `path_env` like execvp
// does. The result must be an executable regular file.
Result<std::string> resolve_executable(const std::string& name, const std::string& path_env);

// A child this process started and has not reaped yet, and the one way to signal it.
//
// Pid reuse: a pid names the child only until it is reaped. The Reaper (reaper.h) is the only
// caller of waitpid, and it reaps a child only after the child's exit callback has run, so a
// ChildProcess held by a live generation or probe always names its own process. On top of that,
// the process itself is signalled through a pidfd where the kernel gives one (Linux 5.3 and later,
// unless a sandbox refuses it), which names that process and no other even after it is gone;
// otherwise with kill(), which the rule above keeps safe.
class ChildProcess {
 public:
  ChildProcess() = default;
  // Takes over `pid`, a child just started and not reaped, and opens its pidfd (close-on-exec).
  explicit ChildProcess(pid_t pid);

  pid_t pid() const { return pid_; }
  explicit operator bool() const { return pid_ > 0; }

  // Sends `signo` to the process itself.
  void signal(int signo) const;
  // Sends `signo` to its process group, which it leads (spawn_process). No pidfd reaches a group;
  // the group id stays the leader's until the leader is reaped, which happens only after its exit
  // callback (see above), so a group signalled from here or from that callback is this one.
  void signal_group(int signo) const;

 private:
  pid_t pid_ = 0;
  Fd pidfd_;  // Empty when pidfd_open failed: then kill(), safe for the reason above.
};

// How a child ended, from a waitpid status or a waitid siginfo.
struct ExitStatus {
  int code = -1;      // exit status, or -1 when killed by a signal.
  int signal = 0;     // terminating signal, or 0.
  bool known = true;  // False for a process that is not this one's child (its parent got the status).
  // Why it never became the program (PendingExec), if so: its status 127 is then not its own.
  std::string not_started{};
  static ExitStatus from_wait(int wstatus);
  static ExitStatus from_siginfo(const siginfo_t& info);
  // "exited with status 3", "was killed by SIGABRT", "failed to start (exec /srv/app: Exec format error)".
  std::string describe() const;
  bool success() const { return code == 0; }
};

}  // namespace hotrestart
