#include "reaper.h"

#include <signal.h>
#include <sys/wait.h>

#include "log.h"

namespace hotrestart {

Reaper::Reaper(uv_loop_t* loop) : sigchld_(std::make_unique<SignalWatch>(loop, SIGCHLD, [this](int) { reap(); })) {}

void Reaper::watch(pid_t pid, OnExit on_exit) {
  watched_[pid] = std::move(on_exit);
}

void Reaper::reap() {
  // SIGCHLD coalesces: one delivery may stand for many exits, so loop until none is left.
  while (true) {
    int wstatus = 0;
    const pid_t pid = ::waitpid(-1, &wstatus, WNOHANG);
    if (pid < 0 && errno == EINTR) continue;
    if (pid <= 0) return;
    auto it = watched_.find(pid);
    if (it == watched_.end()) {
      ++orphans_reaped_;
      log_debug("reaped pid {} ({})", pid, ExitStatus::from_wait(wstatus).describe());
      continue;
    }
    OnExit fn = std::move(it->second);
    watched_.erase(it);
    fn(pid, ExitStatus::from_wait(wstatus));
  }
}

}  // namespace hotrestart
