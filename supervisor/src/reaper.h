// Reaper: the one place that calls waitpid.
//
// libuv would reap only the children it spawned; the supervisor spawns its own (see
// spawn.h) and, as a child subreaper or PID 1, also inherits orphans of its workers.
// A single owner avoids the classic bug where one waitpid(-1) steals another's status.
//
// Pid reuse: an exited child is seen first with waitid(WNOWAIT), which leaves it a zombie; its
// exit callback runs then, and only afterwards is it reaped. So while any callback or any holder
// of its ChildProcess can still signal it, its pid and the process group it leads are still its
// own: the kernel cannot give them to another process before the reap.
#pragma once

#include <sys/types.h>

#include <functional>
#include <map>
#include <memory>

#include "spawn.h"
#include "uv_handles.h"

namespace hotrestart {

class Reaper {
 public:
  using OnExit = std::function<void(pid_t, ExitStatus)>;

  explicit Reaper(uv_loop_t* loop);

  // Registers interest in one child. The callback runs once, on the loop, while the child is
  // still a zombie (see above). With `exec` (start_process), an exec that failed is the status's
  // `not_started`.
  void watch(pid_t pid, OnExit on_exit, PendingExec exec = {});
  bool watching(pid_t pid) const { return watched_.count(pid) != 0; }
  void forget(pid_t pid) { watched_.erase(pid); }
  std::size_t orphans_reaped() const { return orphans_reaped_; }

  // Reaps everything that has exited so far. Also called on SIGCHLD.
  void reap();

 private:
  struct Watched {
    OnExit on_exit;
    PendingExec exec;
  };
  std::map<pid_t, Watched> watched_;
  std::unique_ptr<SignalWatch> sigchld_;
  std::size_t orphans_reaped_ = 0;
};

}  // namespace hotrestart
