// The one place that calls waitpid (see reaper.h).
#include "reaper.h"

#include <signal.h>
#include <sys/wait.h>

#include "log.h"

namespace hotrestart {

Reaper::Reaper(uv_loop_t* loop) : sigchld_(std::make_unique<SignalWatch>(loop, SIGCHLD, [this](int) { reap(); })) {}

void Reaper::watch(pid_t pid, OnExit on_exit, PendingExec exec) {
  watched_[pid] = Watched{std::move(on_exit), std::move(exec)};
}

void Reaper::reap() {
  // SIGCHLD coalesces: one delivery may stand for many exits, so loop until none is left.
  while (true) {
    siginfo_t info{};
    if (::waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) != 0) {
      if (errno == EINTR) continue;
      return;  // ECHILD: no children at all.
    }
    const pid_t pid = info.si_pid;
    if (pid <= 0) return;  // Children, but none has exited.
    ExitStatus status = ExitStatus::from_siginfo(info);
    auto it = watched_.find(pid);
    if (it == watched_.end()) {
      ++orphans_reaped_;
      log_debug("reaped pid {} ({})", pid, status.describe());
    } else {
      OnExit fn = std::move(it->second.on_exit);
      // It has exited: what it wrote before (if anything) is there to read.
      if (auto outcome = it->second.exec.outcome(); outcome && !*outcome) status.not_started = outcome->error().text();
      watched_.erase(it);
      fn(pid, status);  // The child is still a zombie: its pid and group are still its own.
    }
    int wstatus = 0;
    while (::waitpid(pid, &wstatus, WNOHANG) < 0 && errno == EINTR) {
    }
  }
}

}  // namespace hotrestart
